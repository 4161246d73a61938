//! Runs the `verge` CLI binary as an operator would, each runner with its
//! own contexts file (a fresh `XDG_CONFIG_HOME`) and none of the caller's
//! `VERGE_*` variables unless set on purpose.

use std::path::PathBuf;
use std::process::Command;

use crate::cluster::binary;

/// What one `verge` run did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts exit code 0, showing the output otherwise.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "verge failed:\n{self}");
        self
    }

    /// Asserts exit code `code`, showing the output otherwise.
    pub fn exits(self, code: i32) -> Run {
        assert_eq!(self.code, Some(code), "verge's exit code:\n{self}");
        self
    }

    /// stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("verge's -o json output is not JSON ({e}):\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A `verge` with its own contexts file and environment.
pub struct Verge {
    config_home: tempfile::TempDir,
    env: Vec<(String, String)>,
    dir: Option<PathBuf>,
}

impl Default for Verge {
    fn default() -> Self {
        Self::new()
    }
}

impl Verge {
    pub fn new() -> Verge {
        Verge {
            config_home: tempfile::tempdir().expect("a config directory"),
            env: Vec::new(),
            dir: None,
        }
    }

    /// Sets an environment variable for every run.
    pub fn env(mut self, name: &str, value: &str) -> Verge {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Runs in `dir`.
    pub fn in_dir(mut self, dir: PathBuf) -> Verge {
        self.dir = Some(dir);
        self
    }

    /// The `XDG_CONFIG_HOME` its contexts file is under.
    pub fn config_home(&self) -> PathBuf {
        self.config_home.path().to_owned()
    }

    /// The command, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary("verge"));
        command.args(args);
        for (name, _) in std::env::vars() {
            if name.starts_with("VERGE_") {
                command.env_remove(name);
            }
        }
        command
            .env("XDG_CONFIG_HOME", self.config_home.path())
            .env_remove("COLUMNS");
        for (name, value) in &self.env {
            command.env(name, value);
        }
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        command
    }

    /// Runs `verge args` to its end (off the async runtime's threads).
    pub async fn run(&self, args: &[&str]) -> Run {
        let mut command = self.command(args);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .expect("verge runs");
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}
