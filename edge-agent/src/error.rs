//! Helpers for reporting errors, shared by every module (a leaf: it imports
//! nothing from the agent).

/// `e` and its sources, joined by ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
