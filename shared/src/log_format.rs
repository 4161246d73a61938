//! How Verge's binaries write their logs, as `VERGE_LOG_FORMAT` says: human
//! text (the default) or one JSON object per line for journald, Vector or
//! Loki. The same rule for the agent and the controller.

/// The environment variable that chooses the format.
pub const VARIABLE: &str = "VERGE_LOG_FORMAT";

/// A log format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// The format the variable's value asks for; a value it does not know
    /// gives text and comes back as the problem to log.
    pub fn from_variable(value: Option<&str>) -> (LogFormat, Option<String>) {
        match value.map(str::trim) {
            None | Some("" | "text") => (LogFormat::Text, None),
            Some("json") => (LogFormat::Json, None),
            Some(other) => (LogFormat::Text, Some(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_chooses_text_or_json_and_names_anything_else() {
        assert_eq!(LogFormat::from_variable(None), (LogFormat::Text, None));
        assert_eq!(
            LogFormat::from_variable(Some("json")),
            (LogFormat::Json, None)
        );
        assert_eq!(
            LogFormat::from_variable(Some(" text ")),
            (LogFormat::Text, None)
        );
        assert_eq!(
            LogFormat::from_variable(Some("JSONL")),
            (LogFormat::Text, Some("JSONL".into()))
        );
    }
}
