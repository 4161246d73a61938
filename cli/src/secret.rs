//! Reading secrets: a token or password from a file, from standard input
//! (`-`), or asked for on the terminal without echo. Never from the command
//! line, where other users could read it in the process list.

use std::io::{IsTerminal as _, Read as _};
use std::path::Path;

use anyhow::{Context as _, bail};

use crate::failure::Usage;

/// The most read from a secret's file or standard input.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// The first line of `path` (`-`: standard input), trimmed; never empty.
pub fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .take(MAX_SECRET_BYTES)
            .read_to_string(&mut text)
            .with_context(|| format!("reading the {what} from standard input"))?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_SECRET_BYTES).read_to_string(&mut text))
            .with_context(|| format!("reading the {what} from {}", path.display()))?;
    }
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        bail!(Usage(format!("the {what} in {} is empty", path.display())));
    }
    Ok(line.to_owned())
}

/// Asks for a secret on the terminal without echo.
pub fn prompt(what: &str) -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!(Usage(format!(
            "no {what}: give a file (`-` for standard input); standard input is not a terminal to ask on"
        )));
    }
    let text = rpassword::prompt_password(format!("{what}: "))
        .with_context(|| format!("reading the {what} from the terminal"))?;
    if text.is_empty() {
        bail!(Usage(format!("the {what} is empty")));
    }
    Ok(text)
}

/// From the file when given, else asked for.
pub fn from_file_or_prompt(path: Option<&Path>, what: &str) -> anyhow::Result<String> {
    match path {
        Some(path) => read(path, what),
        None => prompt(what),
    }
}
