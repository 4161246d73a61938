//! Confining workloads: the user they run as and their memory limit.
//!
//! Setting rlimits or switching user between `fork` and `exec` needs
//! `pre_exec`, which is `unsafe` (forbidden here). Instead the agent starts
//! itself as a tiny helper, `edge-agent exec-workload`, which applies the
//! limits and the user with safe `nix` calls in its own process and then
//! replaces itself with the artifact. The pid, the process group and the
//! open stdout/stderr files carry over through `exec`, so the supervisor
//! sees the workload itself.
//!
//! Limits come from a cgroup v2 group per workload where the machine has a
//! usable unified hierarchy ([`crate::cgroup`]): `memory.max` and `cpu.max`,
//! the helper joining the group before it execs. Otherwise they are
//! per-process rlimits: `memory_mb` becomes `RLIMIT_DATA` (heap and private
//! mappings), and since a CPU *rate* cannot be expressed as an rlimit,
//! `cpu_millis` is not enforced. Each workload's status says which one
//! (`cgroup_v2` or `rlimit`) so that nobody assumes more.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Uid, User};
use tracing::warn;
use verge_shared::ServiceName;
use verge_shared::messages::{Isolation, LimitMechanism, Resources};

use crate::cgroup::Cgroups;

/// The subcommand that runs the helper.
pub const EXEC_SUBCOMMAND: &str = "exec-workload";

/// The unprivileged user a workload runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// How workload processes are started.
#[derive(Clone, Debug)]
pub enum Launcher {
    /// The artifact directly, as the agent's user, without limits (used by
    /// unit tests, where the helper binary is not at hand).
    Direct,
    /// Through `exe exec-workload`, with limits and, when set, another user;
    /// in a cgroup v2 group per workload when `cgroups` is set.
    Helper {
        exe: PathBuf,
        user: Option<RunAs>,
        cgroups: Option<Cgroups>,
    },
}

/// Why the workload user cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("workload_user: no user {0:?} on this system")]
    NoSuchUser(String),
    #[error("workload_user: cannot look up {name:?}: {source}")]
    Lookup {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("workload_user: {0:?} is root; workloads must not run as root")]
    Root(String),
}

impl Launcher {
    /// The helper launcher. When the agent runs as root, workloads run as
    /// `workload_user` (default `nobody`); otherwise as the agent's user.
    pub fn helper(
        exe: PathBuf,
        workload_user: Option<&str>,
        cgroups: Option<Cgroups>,
    ) -> Result<Self, ConfineError> {
        let user = if Uid::effective().is_root() {
            let name = workload_user.unwrap_or("nobody");
            let user = User::from_name(name)
                .map_err(|source| ConfineError::Lookup {
                    name: name.to_owned(),
                    source,
                })?
                .ok_or_else(|| ConfineError::NoSuchUser(name.to_owned()))?;
            if user.uid.is_root() {
                return Err(ConfineError::Root(name.to_owned()));
            }
            Some(RunAs {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            })
        } else {
            None
        };
        Ok(Launcher::Helper { exe, user, cgroups })
    }

    /// The limit mechanism in force for workloads with limits, for the
    /// start-up log.
    pub fn mechanism(&self) -> LimitMechanism {
        match self {
            Launcher::Helper {
                cgroups: Some(_), ..
            } => LimitMechanism::CgroupV2,
            Launcher::Helper { .. } => LimitMechanism::Rlimit,
            Launcher::Direct => LimitMechanism::None,
        }
    }

    /// Ends what is left of `service`'s processes in its cgroup, when it
    /// has one (after the process group was stopped).
    pub fn release(&self, service: &ServiceName) {
        if let Launcher::Helper {
            cgroups: Some(cgroups),
            ..
        } = self
        {
            cgroups.release(service);
        }
    }

    /// The user workloads run as, for status and logs.
    pub fn user_name(&self) -> String {
        match self {
            Launcher::Helper { user: Some(u), .. } => u.name.clone(),
            _ => {
                let uid = Uid::effective();
                User::from_uid(uid)
                    .ok()
                    .flatten()
                    .map_or_else(|| uid.to_string(), |u| u.name)
            }
        }
    }

    /// A command running `program args` under this launcher's confinement,
    /// and what that confinement is. With `group`, the command is that
    /// workload's own process and goes into its cgroup when there are
    /// cgroups (a cgroup that cannot be prepared falls back to rlimits).
    pub fn command(
        &self,
        program: &Path,
        args: &[String],
        resources: &Resources,
        group: Option<&ServiceName>,
    ) -> (tokio::process::Command, Isolation) {
        let cgroup = match (self, group) {
            (
                Launcher::Helper {
                    cgroups: Some(cgroups),
                    ..
                },
                Some(service),
            ) => cgroups
                .prepare(service, resources)
                .inspect_err(|e| {
                    warn!(service = %service, error = %e, "Cannot prepare the workload's cgroup; using rlimits.");
                })
                .ok(),
            _ => None,
        };
        let limits = match self {
            Launcher::Helper { .. } if cgroup.is_some() => LimitMechanism::CgroupV2,
            Launcher::Helper { .. } if resources.memory_mb > 0 => LimitMechanism::Rlimit,
            _ => LimitMechanism::None,
        };
        let isolation = Isolation {
            limits,
            user: self.user_name(),
        };
        let command = match self {
            Launcher::Direct => {
                let mut c = tokio::process::Command::new(program);
                c.args(args);
                c
            }
            Launcher::Helper { exe, user, .. } => {
                let mut c = tokio::process::Command::new(exe);
                c.arg(EXEC_SUBCOMMAND);
                if let Some(user) = user {
                    c.arg("--user").arg(format!("{}:{}", user.uid, user.gid));
                }
                if let Some(dir) = &cgroup {
                    c.arg("--cgroup").arg(dir);
                } else if resources.memory_mb > 0 {
                    let bytes = u64::from(resources.memory_mb) * 1024 * 1024;
                    c.arg("--memory-bytes").arg(bytes.to_string());
                }
                c.arg("--").arg(program).args(args);
                c
            }
        };
        (command, isolation)
    }

    /// Gives the workload's directory to its user, so it can write there.
    pub fn prepare_dir(&self, dir: &Path) -> std::io::Result<()> {
        if let Launcher::Helper { user: Some(u), .. } = self {
            nix::unistd::chown(dir, Some(Uid::from_raw(u.uid)), Some(Gid::from_raw(u.gid)))
                .map_err(std::io::Error::from)?;
        }
        Ok(())
    }
}

/// What the helper was asked to do.
#[derive(Debug, PartialEq, Eq)]
struct HelperArgs {
    user: Option<(u32, u32)>,
    memory_bytes: Option<u64>,
    cgroup: Option<PathBuf>,
    program: OsString,
    args: Vec<OsString>,
}

fn parse_helper_args(mut args: impl Iterator<Item = OsString>) -> Result<HelperArgs, String> {
    let mut user = None;
    let mut memory_bytes = None;
    let mut cgroup = None;
    loop {
        let arg = args.next().ok_or("expected `-- PROGRAM [ARGS...]`")?;
        match arg.to_str() {
            Some("--") => break,
            Some("--user") => {
                let value = args.next().ok_or("--user needs UID:GID")?;
                let (uid, gid) = value
                    .to_str()
                    .and_then(|v| v.split_once(':'))
                    .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
                    .ok_or("--user needs UID:GID")?;
                user = Some((uid, gid));
            }
            Some("--memory-bytes") => {
                let value = args.next().ok_or("--memory-bytes needs a number")?;
                memory_bytes = Some(
                    value
                        .to_str()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--memory-bytes needs a number")?,
                );
            }
            Some("--cgroup") => {
                cgroup = Some(PathBuf::from(
                    args.next().ok_or("--cgroup needs a directory")?,
                ));
            }
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    let program = args.next().ok_or("expected a PROGRAM after --")?;
    Ok(HelperArgs {
        user,
        memory_bytes,
        cgroup,
        program,
        args: args.collect(),
    })
}

/// Finds a program without '/' on `PATH`, as a shell would.
fn resolve(program: &OsString) -> PathBuf {
    let path = Path::new(program);
    if program.as_bytes().contains(&b'/') {
        return path.to_owned();
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .map(|dir| dir.join(path))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| path.to_owned())
}

fn cstring(bytes: &[u8]) -> Result<CString, String> {
    CString::new(bytes).map_err(|_| "an argument contains NUL".to_owned())
}

/// The helper's main: apply limits and user, then exec the program. Returns
/// only on failure: 64 for bad arguments, 126 when the program cannot be
/// executed, 127 when it does not exist (the shell's codes), 71 when the
/// confinement cannot be applied. The reason goes to stderr, which is the
/// workload's stderr log.
pub fn exec_workload(args: impl Iterator<Item = OsString>) -> ExitCode {
    let fail = |code: u8, message: String| {
        eprintln!("edge-agent {EXEC_SUBCOMMAND}: {message}");
        ExitCode::from(code)
    };
    let parsed = match parse_helper_args(args) {
        Ok(p) => p,
        Err(e) => return fail(64, e),
    };
    let program = resolve(&parsed.program);
    // Joined while still privileged; the workload and its children stay in it.
    if let Some(dir) = &parsed.cgroup
        && let Err(e) = std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
    {
        return fail(71, format!("cannot join the cgroup {}: {e}", dir.display()));
    }
    if let Some(bytes) = parsed.memory_bytes
        && let Err(e) = setrlimit(Resource::RLIMIT_DATA, bytes, bytes)
    {
        return fail(71, format!("cannot set the memory limit: {e}"));
    }
    // Opened while still privileged: the artifact cache is not readable by
    // the workload user, but executing an open descriptor needs no path.
    let file = match std::fs::File::open(&program) {
        Ok(f) => f,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return fail(code, format!("cannot open {}: {e}", program.display()));
        }
    };
    if let Some((uid, gid)) = parsed.user {
        let gid = Gid::from_raw(gid);
        let dropped = nix::unistd::setgroups(&[gid])
            .and_then(|()| nix::unistd::setgid(gid))
            .and_then(|()| nix::unistd::setuid(Uid::from_raw(uid)));
        if let Err(e) = dropped {
            return fail(71, format!("cannot switch to uid {uid}: {e}"));
        }
    }
    let argv: Result<Vec<CString>, String> = std::iter::once(program.as_os_str())
        .chain(parsed.args.iter().map(OsString::as_os_str))
        .map(|a| cstring(a.as_bytes()))
        .collect();
    let env: Result<Vec<CString>, String> = std::env::vars_os()
        .map(|(k, v)| {
            let mut pair = k.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(v.as_bytes());
            cstring(&pair)
        })
        .collect();
    let (argv, env) = match (argv, env) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return fail(64, e),
    };
    let Err(e) = nix::unistd::fexecve(&file, &argv, &env);
    fail(126, format!("cannot execute {}: {e}", program.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> impl Iterator<Item = OsString> {
        args.iter()
            .map(OsString::from)
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn helper_arguments_parse() {
        let parsed = parse_helper_args(os(&[
            "--user",
            "65534:65534",
            "--memory-bytes",
            "1048576",
            "--",
            "/bin/echo",
            "hi",
        ]))
        .expect("valid");
        assert_eq!(parsed.user, Some((65534, 65534)));
        assert_eq!(parsed.memory_bytes, Some(1_048_576));
        assert_eq!(parsed.program, OsString::from("/bin/echo"));
        assert_eq!(parsed.args, [OsString::from("hi")]);
        let parsed = parse_helper_args(os(&["--cgroup", "/sys/fs/cgroup/w/a", "--", "/bin/true"]))
            .expect("valid");
        assert_eq!(parsed.cgroup, Some(PathBuf::from("/sys/fs/cgroup/w/a")));
        assert_eq!(parsed.memory_bytes, None);
        assert!(parse_helper_args(os(&["--user", "x", "--", "/bin/true"])).is_err());
        assert!(parse_helper_args(os(&["/bin/true"])).is_err());
        assert!(parse_helper_args(os(&["--"])).is_err());
    }

    #[test]
    fn programs_without_a_slash_are_found_on_path() {
        assert!(resolve(&OsString::from("sh")).is_absolute());
        assert_eq!(
            resolve(&OsString::from("./x")),
            PathBuf::from("./x"),
            "a path is taken as is"
        );
    }

    #[test]
    fn the_helper_reports_limits_and_user() {
        let launcher = Launcher::Helper {
            exe: PathBuf::from("/usr/bin/edge-agent"),
            user: Some(RunAs {
                name: "nobody".into(),
                uid: 65534,
                gid: 65534,
            }),
            cgroups: None,
        };
        let resources = Resources {
            cpu_millis: 100,
            memory_mb: 16,
        };
        let service = ServiceName::new("web").expect("valid");
        let (command, isolation) =
            launcher.command(Path::new("/a/b"), &["x".into()], &resources, Some(&service));
        assert_eq!(isolation.limits, LimitMechanism::Rlimit);
        assert_eq!(isolation.user, "nobody");
        let args: Vec<_> = command.as_std().get_args().collect();
        assert_eq!(
            args,
            [
                "exec-workload",
                "--user",
                "65534:65534",
                "--memory-bytes",
                "16777216",
                "--",
                "/a/b",
                "x"
            ]
        );
        let (_, none) = Launcher::Direct.command(Path::new("/a/b"), &[], &resources, None);
        assert_eq!(none.limits, LimitMechanism::None);
    }

    #[test]
    fn with_cgroups_the_helper_joins_the_workloads_group() {
        let root = tempfile::tempdir().expect("tempdir");
        let base = root.path().join("cg/verge");
        std::fs::create_dir_all(&base).expect("mkdir");
        std::fs::write(base.join("cgroup.controllers"), "cpu memory pids").expect("write");
        let cgroups = Cgroups::setup(
            root.path(),
            "9 1 0:9 / /cg rw - cgroup2 cgroup2 rw",
            "0::/verge",
            7,
        )
        .expect("usable");
        let launcher = Launcher::Helper {
            exe: PathBuf::from("/usr/bin/edge-agent"),
            user: None,
            cgroups: Some(cgroups),
        };
        assert_eq!(launcher.mechanism(), LimitMechanism::CgroupV2);
        let resources = Resources {
            cpu_millis: 500,
            memory_mb: 16,
        };
        let service = ServiceName::new("web").expect("valid");
        let (command, isolation) =
            launcher.command(Path::new("/a/b"), &[], &resources, Some(&service));
        assert_eq!(isolation.limits, LimitMechanism::CgroupV2);
        let group = base.join("workloads/web");
        let args: Vec<_> = command.as_std().get_args().collect();
        assert_eq!(
            args,
            [
                "exec-workload".as_ref(),
                "--cgroup".as_ref(),
                group.as_os_str(),
                "--".as_ref(),
                "/a/b".as_ref()
            ]
        );
        let read = |f: &str| std::fs::read_to_string(group.join(f)).expect("read");
        assert_eq!(read("memory.max"), "16777216");
        assert_eq!(read("cpu.max"), "50000 100000");
        // Health probes are not the workload: no group, no limits.
        let (_, probe) = launcher.command(Path::new("/bin/true"), &[], &Resources::default(), None);
        assert_eq!(probe.limits, LimitMechanism::None);
        // What is left in the group goes with the workload.
        launcher.release(&service);
        assert_eq!(read("cgroup.kill"), "1");
    }
}
