//! The regions file (`regions.toml`): known regions with their optional
//! parent and zone, and static latency hints between regions that stand in
//! until measurements exist. Every problem is reported at once.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use verge_shared::RegionId;

/// The latency assumed within one region when no hint and no measurement exists.
pub const DEFAULT_INTRA_REGION_MS: f64 = 1.0;

/// One region as the operator described it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RegionInfo {
    pub name: RegionId,
    /// A larger area the region belongs to (informational).
    pub parent: Option<String>,
    /// The failure domain replicas are spread over; the region itself when absent.
    pub zone: Option<String>,
}

/// Validated regions and hints; the default knows no regions.
#[derive(Clone, Debug, PartialEq)]
pub struct Regions {
    pub regions: BTreeMap<RegionId, RegionInfo>,
    /// Symmetric: stored once with the smaller region first.
    hints: BTreeMap<(RegionId, RegionId), f64>,
    pub intra_region_ms: f64,
}

impl Default for Regions {
    fn default() -> Self {
        Self {
            regions: BTreeMap::new(),
            hints: BTreeMap::new(),
            intra_region_ms: DEFAULT_INTRA_REGION_MS,
        }
    }
}

/// Every problem found in a regions file, each naming its field.
#[derive(Debug, thiserror::Error)]
#[error("invalid regions file {source_name}:\n  - {}", problems.join("\n  - "))]
pub struct RegionsError {
    pub source_name: String,
    pub problems: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegions {
    intra_region_ms: Option<f64>,
    #[serde(default)]
    region: Vec<RawRegion>,
    #[serde(default)]
    hint: Vec<RawHint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    parent: Option<String>,
    zone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHint {
    from: String,
    to: String,
    ms: f64,
}

fn ordered(a: &RegionId, b: &RegionId) -> (RegionId, RegionId) {
    if a <= b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

fn valid_ms(ms: f64) -> bool {
    ms.is_finite() && (0.0..=60_000.0).contains(&ms)
}

impl Regions {
    pub fn load(path: &Path) -> Result<Self, RegionsError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| RegionsError {
            source_name: name.clone(),
            problems: vec![format!("cannot read the file: {e}")],
        })?;
        Self::parse(&text, &name)
    }

    pub fn parse(text: &str, source_name: &str) -> Result<Self, RegionsError> {
        let fail = |problems| RegionsError {
            source_name: source_name.to_owned(),
            problems,
        };
        let raw: RawRegions = toml::from_str(text)
            .map_err(|e| fail(vec![e.to_string().trim_end().replace('\n', "\n    ")]))?;
        let mut problems = Vec::new();
        let intra_region_ms = raw.intra_region_ms.unwrap_or(DEFAULT_INTRA_REGION_MS);
        if !valid_ms(intra_region_ms) {
            problems.push("intra_region_ms: must be 0 to 60000".to_owned());
        }
        let mut regions = BTreeMap::new();
        for (i, r) in raw.region.into_iter().enumerate() {
            match RegionId::new(r.name.as_str()) {
                Err(e) => problems.push(format!("region[{i}].name: {e}")),
                Ok(name) if regions.contains_key(&name) => {
                    problems.push(format!("region[{i}].name: {name} appears twice"));
                }
                Ok(name) => {
                    regions.insert(
                        name.clone(),
                        RegionInfo {
                            name,
                            parent: r.parent,
                            zone: r.zone,
                        },
                    );
                }
            }
        }
        let mut hints = BTreeMap::new();
        for (i, h) in raw.hint.into_iter().enumerate() {
            let mut end = |field: &str, value: &str| match RegionId::new(value) {
                Ok(id) if regions.contains_key(&id) => Some(id),
                Ok(id) => {
                    problems.push(format!(
                        "hint[{i}].{field}: {id} is not a region listed in [[region]]"
                    ));
                    None
                }
                Err(e) => {
                    problems.push(format!("hint[{i}].{field}: {e}"));
                    None
                }
            };
            let (from, to) = (end("from", &h.from), end("to", &h.to));
            if !valid_ms(h.ms) {
                problems.push(format!("hint[{i}].ms: must be 0 to 60000"));
            }
            if let (Some(from), Some(to)) = (from, to) {
                hints.insert(ordered(&from, &to), h.ms);
            }
        }
        if problems.is_empty() {
            Ok(Self {
                regions,
                hints,
                intra_region_ms,
            })
        } else {
            Err(fail(problems))
        }
    }

    /// The static hint between two regions (symmetric; a region to itself
    /// is `intra_region_ms` unless a hint says otherwise).
    pub fn hint(&self, a: &RegionId, b: &RegionId) -> Option<f64> {
        match self.hints.get(&ordered(a, b)) {
            Some(ms) => Some(*ms),
            None if a == b => Some(self.intra_region_ms),
            None => None,
        }
    }

    /// The zone of a region, when the file gives one.
    pub fn zone(&self, region: &RegionId) -> Option<&str> {
        self.regions.get(region).and_then(|r| r.zone.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> RegionId {
        RegionId::new(s).expect("region")
    }

    #[test]
    fn hints_are_symmetric_and_regions_have_zones() {
        let r = Regions::parse(
            r#"
            intra_region_ms = 2
            [[region]]
            name = "ap-seoul"
            zone = "kr"
            [[region]]
            name = "ap-busan"
            zone = "kr"
            parent = "korea"
            [[hint]]
            from = "ap-seoul"
            to = "ap-busan"
            ms = 9
            "#,
            "t",
        )
        .expect("valid");
        assert_eq!(r.hint(&id("ap-busan"), &id("ap-seoul")), Some(9.0));
        assert_eq!(r.hint(&id("ap-seoul"), &id("ap-seoul")), Some(2.0));
        assert_eq!(r.hint(&id("ap-seoul"), &id("eu-west")), None);
        assert_eq!(r.zone(&id("ap-busan")), Some("kr"));
    }

    #[test]
    fn every_problem_is_named() {
        let err = Regions::parse(
            r#"
            intra_region_ms = -1
            [[region]]
            name = "A B"
            [[region]]
            name = "x"
            [[region]]
            name = "x"
            [[hint]]
            from = "x"
            to = "nowhere"
            ms = 1e9
            "#,
            "t",
        )
        .expect_err("invalid");
        let joined = err.problems.join("\n");
        for field in [
            "intra_region_ms",
            "region[0].name",
            "region[2].name: x appears twice",
            "hint[0].to: nowhere",
            "hint[0].ms",
        ] {
            assert!(joined.contains(field), "{field} missing from {joined}");
        }
    }
}
