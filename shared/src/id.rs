//! Validated identifiers: agents, regions and services.
//!
//! Identifiers end up inside MQTT topics, file names and log lines, so each one
//! is checked once, when it is constructed or deserialised, and can never
//! contain `/`, `+`, `#`, whitespace or control characters afterwards.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier. The message names the kind of
/// identifier and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct IdError {
    pub kind: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// The character rules an identifier kind follows.
pub(crate) struct Rules {
    pub(crate) kind: &'static str,
    pub(crate) max_len: usize,
    /// Upper-case letters, `_` and `.` are allowed too (host-name-like ids).
    pub(crate) relaxed: bool,
}

fn check(rules: &Rules, value: &str) -> Result<(), IdError> {
    let fail = |reason| IdError {
        kind: rules.kind,
        value: value.chars().take(80).collect(),
        reason,
    };
    if value.is_empty() {
        return Err(fail("must not be empty"));
    }
    if value.len() > rules.max_len {
        return Err(fail("is too long"));
    }
    let first = value.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(fail("must start with a letter or digit"));
    }
    let allowed = |c: char| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || c == '-'
            || (rules.relaxed && (c.is_ascii_uppercase() || c == '_' || c == '.'))
    };
    if !value.chars().all(allowed) {
        return Err(fail(if rules.relaxed {
            "may contain only ASCII letters, digits, '-', '_' and '.'"
        } else {
            "may contain only lower-case ASCII letters, digits and '-'"
        }));
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $relaxed:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub(crate) const RULES: Rules = Rules { kind: $kind, max_len: $max, relaxed: $relaxed };

            /// Checks `value` against this identifier's rules.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check(&Self::RULES, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(
    /// An edge agent (node) id: 1-64 ASCII letters, digits, `-`, `_`, `.`,
    /// starting with a letter or digit; host names fit.
    AgentId, "agent id", 64, true
);
identifier!(
    /// A region name such as `eu-west` or `ap-seoul`: 1-63 lower-case
    /// letters, digits and `-`.
    RegionId, "region", 63, false
);
identifier!(
    /// A service name: a DNS label (1-63 lower-case letters, digits, `-`).
    ServiceName, "service name", 63, false
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_names() {
        assert!(AgentId::new("edge-01.Site_A").is_ok());
        assert!(RegionId::new("ap-seoul").is_ok());
        assert!(ServiceName::new("video-cache").is_ok());
    }

    #[test]
    fn rejects_wildcards_separators_and_bad_starts() {
        for bad in [
            "", "a/b", "a+b", "a#", "-lead", ".hidden", "sp ace", "tab\t",
        ] {
            assert!(AgentId::new(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(RegionId::new("EU").is_err());
        assert!(ServiceName::new("a_b").is_err());
        assert!(ServiceName::new("x".repeat(64)).is_err());
    }

    #[test]
    fn error_names_kind_and_value() {
        let err = ServiceName::new("Bad/Name").expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("service name") && text.contains("Bad/Name"),
            "{text}"
        );
    }

    #[test]
    fn deserialisation_validates() {
        assert!(serde_json::from_str::<AgentId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<AgentId>("\"no/slash\"").is_err());
    }

    proptest! {
        #[test]
        fn valid_ids_never_contain_topic_metacharacters(s in "\\PC{0,80}") {
            if let Ok(id) = AgentId::new(s) {
                prop_assert!(!id.as_str().contains(['/', '+', '#']));
                prop_assert!(!id.as_str().is_empty());
            }
        }
    }
}
