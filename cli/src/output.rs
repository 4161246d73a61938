//! How results are printed: `-o table` (aligned columns fitted to the
//! terminal) or `-o json` (the API's own JSON), and small helpers that turn
//! JSON values into table cells.

use std::io::IsTerminal as _;

use comfy_table::{ContentArrangement, Table, presets};
use serde_json::Value;

/// The `-o` choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns for people, fitted to the terminal's width.
    Table,
    /// The API's JSON, one document (or one per line for streams).
    Json,
}

/// The width tables must fit: the terminal's, else `COLUMNS`, else none
/// (output to a pipe or a file is not wrapped).
fn width() -> Option<u16> {
    if let Some((terminal_size::Width(w), _)) = terminal_size::terminal_size() {
        return Some(w);
    }
    std::env::var("COLUMNS").ok()?.parse().ok()
}

/// A table with a header row, no borders and two spaces between columns.
pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_header(header.to_vec());
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    match width() {
        Some(w) if std::io::stdout().is_terminal() || std::env::var_os("COLUMNS").is_some() => {
            table.set_content_arrangement(ContentArrangement::Dynamic);
            table.set_width(w);
        }
        _ => {
            table.set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    table
}

/// Prints a table, trailing spaces trimmed.
pub fn print_table(table: &Table) {
    for line in table.lines() {
        println!("{}", line.trim_end());
    }
}

/// Prints `value` as pretty JSON.
pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// A JSON value as a table cell: strings bare, `null` as `-`, arrays and
/// objects compact.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Object(map) if map.is_empty() => "-".to_owned(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(map) if map.values().all(|v| !v.is_object() && !v.is_array()) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// The cell of `value[key]`.
pub fn field(value: &Value, key: &str) -> String {
    cell(value.get(key).unwrap_or(&Value::Null))
}

/// The items of `value[key]` when it is an array (none otherwise).
pub fn items<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
}

/// Prints `key: value` lines, keys aligned, for one object's chosen fields.
pub fn print_fields(value: &Value, keys: &[&str]) {
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0);
    for key in keys {
        println!("{key:<width$}  {}", field(value, key));
    }
}

/// Prints the array `reply[key]` as a table of `columns` (header, field),
/// or the whole reply as JSON.
pub fn print_list(reply: &Value, key: &str, columns: &[(&str, &str)], format: Format) {
    match format {
        Format::Json => print_json(reply),
        Format::Table => {
            let header: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
            let mut table = table(&header);
            for item in items(reply, key) {
                table.add_row(
                    columns
                        .iter()
                        .map(|(_, k)| field(item, k))
                        .collect::<Vec<_>>(),
                );
            }
            print_table(&table);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_are_short_and_plain() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!("a")), "a");
        assert_eq!(cell(&json!(["a", "b"])), "a,b");
        assert_eq!(cell(&json!({"http": 80})), "http=80");
        assert_eq!(cell(&json!(3)), "3");
        assert_eq!(cell(&json!([])), "-");
    }
}
