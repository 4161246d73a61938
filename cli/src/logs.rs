//! `verge logs SERVICE [--replica N] [--stream stderr] [-f]`: a replica's
//! log tail, fetched from its node; `-f` asks again every interval and
//! prints the lines that are new.

use serde_json::{Value, json};

use crate::args::{LogsArgs, Stream};
use crate::client::{Client, segment, with_query};
use crate::output::{self, Format};

/// How many lines at the start of `new` repeat the end of `old`: the
/// longest suffix of `old` that is a prefix of `new`.
pub fn overlap(old: &[String], new: &[String]) -> usize {
    let most = old.len().min(new.len());
    (0..=most)
        .rev()
        .find(|&k| old[old.len() - k..] == new[..k])
        .unwrap_or(0)
}

fn lines_of(reply: &Value) -> Vec<String> {
    output::items(reply, "lines")
        .iter()
        .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_owned))
        .collect()
}

pub async fn run(client: &Client, args: LogsArgs, format: Format) -> anyhow::Result<()> {
    let stream = match args.stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    let path = with_query(
        &format!(
            "/api/v1/services/{}/replicas/{}/logs",
            segment(&args.service),
            args.replica
        ),
        &[
            ("stream", Some(stream.to_owned())),
            ("lines", Some(args.lines.to_string())),
        ],
    );
    let mut last: Vec<String> = Vec::new();
    loop {
        let reply = client.get(&path).await?;
        let lines = lines_of(&reply);
        let fresh = &lines[overlap(&last, &lines)..];
        match (format, args.follow) {
            (Format::Json, false) => output::print_json(&reply),
            (Format::Json, true) => {
                for line in fresh {
                    println!("{}", json!({"line": line}));
                }
            }
            (Format::Table, _) => {
                for line in fresh {
                    println!("{line}");
                }
            }
        }
        if !args.follow {
            return Ok(());
        }
        last = lines;
        tokio::time::sleep(args.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn following_prints_only_what_is_new() {
        assert_eq!(overlap(&v(&[]), &v(&["a"])), 0);
        assert_eq!(overlap(&v(&["a", "b"]), &v(&["a", "b", "c"])), 2);
        assert_eq!(overlap(&v(&["a", "b", "c"]), &v(&["b", "c", "d"])), 2);
        assert_eq!(overlap(&v(&["a", "b"]), &v(&["x", "y"])), 0);
        assert_eq!(overlap(&v(&["a", "a"]), &v(&["a", "a", "a"])), 2);
    }
}
