//! Small line charts drawn on the server as SVG: one series over time, its
//! lowest and highest value and the time it spans as axis labels, and a
//! title and description that say the latest value in words for those who
//! cannot see the line. Styled by classes only (`svg.chart` in the
//! stylesheet): the Content-Security-Policy forbids inline styles.

use maud::{Markup, html};

/// The drawing's coordinate system; the stylesheet sizes it.
const WIDTH: f64 = 400.0;
const HEIGHT: f64 = 120.0;
/// The plot area inside it, with room for the labels on the left and below.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 392.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 96.0;

/// One series to draw.
pub(super) struct Series<'a> {
    /// The chart's element id; its title and description get `-title` and
    /// `-desc` after it.
    pub(super) id: &'a str,
    /// What is measured, as a heading: "Agent memory (RSS)".
    pub(super) what: &'a str,
    /// The unit after each value: "MiB", "%".
    pub(super) unit: &'a str,
    /// `(unix milliseconds, value)`, oldest first; `None` where the value
    /// is not known, which breaks the line.
    pub(super) points: Vec<(u64, Option<f64>)>,
}

/// `value` with the unit, one decimal below 100 and none above.
fn amount(value: f64, unit: &str) -> String {
    // Short enough for the axis: 2618 MiB, 12.5 %, 0.35 %.
    if value.abs() >= 100.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// "last 40 s", "last 14 min", "last 5 h", "last 2 d": the time a chart spans.
pub(super) fn span_words(millis: u64) -> String {
    let secs = millis / 1000;
    match secs {
        0..120 => format!("last {secs} s"),
        120..7200 => format!("last {} min", secs / 60),
        7200..172_800 => format!("last {} h", secs / 3600),
        _ => format!("last {} d", secs / 86_400),
    }
}

/// The runs of known values, each a list of `(x, y)` in the drawing.
fn runs(points: &[(u64, Option<f64>)], low: f64, high: f64) -> Vec<Vec<(f64, f64)>> {
    let first = points.first().map_or(0, |p| p.0);
    let last = points.last().map_or(0, |p| p.0);
    let x = |t: u64| {
        if last > first {
            LEFT + (t.saturating_sub(first)) as f64 / (last - first) as f64 * (RIGHT - LEFT)
        } else {
            (LEFT + RIGHT) / 2.0
        }
    };
    let y = |v: f64| {
        if high > low {
            BOTTOM - (v - low) / (high - low) * (BOTTOM - TOP)
        } else {
            (TOP + BOTTOM) / 2.0
        }
    };
    let mut runs = Vec::new();
    let mut run = Vec::new();
    for &(t, value) in points {
        match value {
            Some(v) => run.push((x(t), y(v))),
            None if !run.is_empty() => runs.push(std::mem::take(&mut run)),
            None => {}
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// The chart of `series`; `None` when it has no known value to draw.
pub(super) fn line_chart(series: &Series<'_>) -> Option<Markup> {
    let known: Vec<f64> = series.points.iter().filter_map(|p| p.1).collect();
    let latest = *known.last()?;
    let low = known.iter().copied().fold(f64::INFINITY, f64::min);
    let high = known.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let first = series.points.first().map_or(0, |p| p.0);
    let last = series.points.last().map_or(0, |p| p.0);
    let span = span_words(last.saturating_sub(first));
    let latest_known = series.points.last().is_some_and(|p| p.1.is_some());
    let id = series.id;
    let title = format!(
        "{}: {} {}",
        series.what,
        if latest_known { "latest" } else { "last known" },
        amount(latest, series.unit)
    );
    let range = if high > low {
        format!(
            "Between {} and {}",
            amount(low, series.unit),
            amount(high, series.unit)
        )
    } else {
        format!("Steady at {}", amount(low, series.unit))
    };
    let desc = format!(
        "{range} over the {span}, {} of {} samples known.",
        known.len(),
        series.points.len()
    );
    let polyline = |run: &[(f64, f64)]| {
        run.iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Some(html! {
        figure.chart {
            figcaption { (series.what) ", " (series.unit) }
            svg.chart #(id) viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img"
                aria-labelledby={ (id) "-title " (id) "-desc" } {
                title #{ (id) "-title" } { (title) }
                desc #{ (id) "-desc" } { (desc) }
                line.grid x1=(LEFT) y1=(TOP) x2=(RIGHT) y2=(TOP) {}
                line.grid x1=(LEFT) y1=(BOTTOM) x2=(RIGHT) y2=(BOTTOM) {}
                @if high > low {
                    text.axis x=(LEFT - 6.0) y=(TOP + 4.0) text-anchor="end" { (amount(high, series.unit)) }
                    text.axis x=(LEFT - 6.0) y=(BOTTOM + 4.0) text-anchor="end" { (amount(low, series.unit)) }
                } @else {
                    text.axis x=(LEFT - 6.0) y=((TOP + BOTTOM) / 2.0 + 4.0) text-anchor="end" { (amount(low, series.unit)) }
                }
                text.axis x=(RIGHT) y=(HEIGHT - 4.0) text-anchor="end" { (span) }
                @for run in runs(&series.points, low, high) {
                    @if run.len() == 1 {
                        circle cx=(format!("{:.1}", run[0].0)) cy=(format!("{:.1}", run[0].1)) r="2.5" {}
                    } @else {
                        polyline points=(polyline(&run)) {}
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: Vec<(u64, Option<f64>)>) -> Series<'static> {
        Series {
            id: "c",
            what: "Agent CPU",
            unit: "%",
            points,
        }
    }

    #[test]
    fn the_time_span_is_told_in_the_largest_unit_that_fits() {
        assert_eq!(span_words(40_000), "last 40 s");
        assert_eq!(span_words(14 * 60_000 + 59_000), "last 14 min");
        assert_eq!(span_words(5 * 3_600_000), "last 5 h");
        assert_eq!(span_words(3 * 86_400_000), "last 3 d");
    }

    #[test]
    fn unknown_values_break_the_line() {
        let points = vec![
            (0, None),
            (1_000, Some(1.0)),
            (2_000, Some(3.0)),
            (3_000, None),
            (4_000, Some(2.0)),
        ];
        let drawn = runs(&points, 1.0, 3.0);
        assert_eq!(
            drawn,
            [
                vec![
                    (LEFT + (RIGHT - LEFT) / 4.0, BOTTOM),
                    (LEFT + (RIGHT - LEFT) / 2.0, TOP)
                ],
                vec![(RIGHT, (TOP + BOTTOM) / 2.0)],
            ]
        );
        let html = line_chart(&series(points)).expect("a chart").into_string();
        assert!(
            html.contains("<title id=\"c-title\">Agent CPU: latest 2.0 %</title>"),
            "{html}"
        );
        assert!(
            html.contains("Between 1.0 % and 3.0 % over the last 4 s, 3 of 5 samples known."),
            "{html}"
        );
        assert_eq!(html.matches("<polyline").count(), 1, "{html}");
        assert_eq!(html.matches("<circle").count(), 1, "{html}");
        assert!(!html.contains("style="), "no inline styles: {html}");
    }

    #[test]
    fn a_flat_or_empty_series_still_draws_or_says_nothing() {
        let flat = line_chart(&series(vec![(0, Some(5.0)), (60_000, Some(5.0))]))
            .expect("a chart")
            .into_string();
        assert!(flat.contains("points=\"64.0,53.0 392.0,53.0\""), "{flat}");
        assert!(
            flat.contains("Steady at 5.0 % over the last 60 s"),
            "{flat}"
        );
        assert_eq!(
            flat.matches("<text").count(),
            2,
            "one value and the span: {flat}"
        );
        assert!(line_chart(&series(vec![(0, None), (1, None)])).is_none());
        let stale = line_chart(&series(vec![(0, Some(1.0)), (1_000, None)]))
            .expect("a chart")
            .into_string();
        assert!(stale.contains("last known 1.0 %"), "{stale}");
    }
}
