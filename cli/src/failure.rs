//! The errors that decide the exit code: an API error (its code and
//! message, exit 1) and a usage error found after parsing (exit 2).
//! Everything else (network, files) exits 1 too.

use serde_json::Value;

/// Exit code when the API or the network refused or failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage error (clap's own).
pub const EXIT_USAGE: u8 = 2;

/// A usage problem found after the command line parsed (no context, no
/// token, a file of the wrong kind): exit 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// An error the API answered with: `{"error": {"code", "message", "field"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    /// The API's error from a reply body, or a description of the body when
    /// it is not the API's error shape (a proxy's page, say).
    pub fn from_body(status: u16, body: &[u8]) -> ApiError {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        let text = |key: &str| {
            error
                .and_then(|e| e.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match (text("code"), text("message")) {
            (Some(code), Some(message)) => ApiError {
                status,
                code,
                message,
            },
            _ => {
                let snippet: String = String::from_utf8_lossy(body)
                    .chars()
                    .take(200)
                    .filter(|c| !c.is_control())
                    .collect();
                ApiError {
                    status,
                    code: format!("http_{status}"),
                    message: if snippet.trim().is_empty() {
                        "the controller answered without an error message".to_owned()
                    } else {
                        format!("the controller answered: {}", snippet.trim())
                    },
                }
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// The exit code for an error.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<Usage>().is_some() {
        EXIT_USAGE
    } else {
        EXIT_FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apis_code_and_message_are_shown_as_they_came() {
        let e = ApiError::from_body(
            403,
            br#"{"error": {"code": "forbidden", "message": "this needs role operator", "field": null}}"#,
        );
        assert_eq!(e.to_string(), "forbidden: this needs role operator");
        let e = ApiError::from_body(502, b"<html>Bad Gateway</html>");
        assert_eq!(
            e.to_string(),
            "http_502: the controller answered: <html>Bad Gateway</html>"
        );
    }
}
