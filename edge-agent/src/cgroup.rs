//! cgroup v2 limits for workloads, where the machine offers a usable
//! unified hierarchy (docs/workloads.md#limits).
//!
//! Usable means: a `cgroup2` file system is mounted, the agent's own group
//! in it offers the `memory` and `cpu` controllers (in the hybrid v1/v2
//! layout they are bound to v1 and missing here), and the agent may create
//! groups below its own (root, or a subtree delegated to it, as systemd's
//! `Delegate=yes` does). The agent then moves itself into `<own>/agent`
//! (a group with processes cannot hand controllers to children), enables
//! `memory` and `cpu` for `<own>/workloads`, and gives each workload its own
//! `<own>/workloads/<service>` with `memory.max` and `cpu.max` from its
//! resources. The `exec-workload` helper joins that group before it drops
//! privileges and execs the artifact, so the workload and everything it
//! starts are in it. Stopping a workload kills what is left in its group
//! (`cgroup.kill`), which also reaches processes that left its process group.
//!
//! Everything here works on a root directory so that tests can run it
//! against a fake tree; the agent passes `/`.

use std::path::{Path, PathBuf};

use verge_shared::ServiceName;
use verge_shared::messages::Resources;

/// The `cpu.max` period, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The kernel's smallest `cpu.max` quota, in microseconds.
const CPU_MIN_QUOTA_US: u64 = 1_000;
/// The controllers workload groups need.
const CONTROLLERS: [&str; 2] = ["memory", "cpu"];

/// The agent's workload groups, once set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroups {
    workloads: PathBuf,
}

impl Cgroups {
    /// Detects and sets up cgroup v2 for this process; `Err` says why it
    /// cannot be used (then workloads get rlimits).
    pub fn detect() -> Result<Cgroups, String> {
        let read = |path: &str| {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
        };
        Cgroups::setup(
            Path::new("/"),
            &read("/proc/self/mountinfo")?,
            &read("/proc/self/cgroup")?,
            std::process::id(),
        )
    }

    /// [`Cgroups::detect`] with the host's files given: paths are taken
    /// under `root`, `mountinfo` and `own_cgroup` are the contents of
    /// `/proc/self/mountinfo` and `/proc/self/cgroup`, `pid` is the agent.
    pub fn setup(
        root: &Path,
        mountinfo: &str,
        own_cgroup: &str,
        pid: u32,
    ) -> Result<Cgroups, String> {
        let mount =
            unified_mount(mountinfo).ok_or("no cgroup v2 (unified) hierarchy is mounted")?;
        let own = own_group(own_cgroup).ok_or("this process is in no cgroup v2 group")?;
        let base = under(root, &mount).join(own.trim_start_matches('/'));
        let offered = std::fs::read_to_string(base.join("cgroup.controllers"))
            .map_err(|e| format!("cannot read {}/cgroup.controllers: {e}", base.display()))?;
        let missing: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| !offered.split_whitespace().any(|o| o == *c))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the cgroup v2 group {} does not offer the {} controller(s) (in a hybrid layout cgroup v1 holds them)",
                base.display(),
                missing.join(", ")
            ));
        }
        let enable = format!("+{}", CONTROLLERS.join(" +"));
        let not_delegated = |what: &Path, e: std::io::Error| {
            format!(
                "cannot write {}: {e} (the group is not delegated to this user)",
                what.display()
            )
        };
        // Only the root group may hold processes and give children
        // controllers at once: elsewhere, move out of the way first.
        if own != "/" {
            let agent = base.join("agent");
            std::fs::create_dir_all(&agent).map_err(|e| not_delegated(&agent, e))?;
            let procs = agent.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(|e| not_delegated(&procs, e))?;
        }
        let workloads = base.join("workloads");
        for (dir, create) in [(&base, false), (&workloads, true)] {
            if create {
                std::fs::create_dir_all(dir).map_err(|e| not_delegated(dir, e))?;
            }
            let control = dir.join("cgroup.subtree_control");
            std::fs::write(&control, &enable).map_err(|e| not_delegated(&control, e))?;
        }
        Ok(Cgroups { workloads })
    }

    /// The group of `service`.
    pub fn group_of(&self, service: &ServiceName) -> PathBuf {
        self.workloads.join(service.as_str())
    }

    /// Creates (or re-uses) the group of `service` with its limits.
    pub fn prepare(
        &self,
        service: &ServiceName,
        resources: &Resources,
    ) -> std::io::Result<PathBuf> {
        let dir = self.group_of(service);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("memory.max"), memory_max(resources))?;
        std::fs::write(dir.join("cpu.max"), cpu_max(resources))?;
        Ok(dir)
    }

    /// Kills whatever is left in the group of `service` and removes it (best
    /// effort: a group that is still busy is re-used by the next start).
    pub fn release(&self, service: &ServiceName) {
        let dir = self.group_of(service);
        if dir.is_dir() {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// `memory.max` for `resources`: the bytes, or `max` without a limit.
pub fn memory_max(resources: &Resources) -> String {
    match resources.memory_mb {
        0 => "max".to_owned(),
        mb => (u64::from(mb) * 1024 * 1024).to_string(),
    }
}

/// `cpu.max` for `resources`: 1000 millicores are one full period.
pub fn cpu_max(resources: &Resources) -> String {
    match resources.cpu_millis {
        0 => format!("max {CPU_PERIOD_US}"),
        millis => {
            let quota = (u64::from(millis) * CPU_PERIOD_US / 1000).max(CPU_MIN_QUOTA_US);
            format!("{quota} {CPU_PERIOD_US}")
        }
    }
}

/// Where the `cgroup2` file system is mounted, from `/proc/self/mountinfo`
/// (the file system type follows the ` - ` separator; the mount point is
/// the fifth field).
fn unified_mount(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        if rest.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        fields.split_whitespace().nth(4).map(unescape)
    })
}

/// The process's group in the unified hierarchy: the `0::` line of
/// `/proc/self/cgroup`.
fn own_group(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Mount points escape space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn under(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIFIED: &str = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate
";
    /// This development machine: cgroup v1 hybrid, v2 with no controllers.
    const HYBRID: &str = "\
31 25 0:27 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
44 31 0:41 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";

    fn fake_group(root: &Path, group: &str, controllers: &str) -> PathBuf {
        let dir = root.join(group);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("cgroup.controllers"), controllers).expect("write");
        dir
    }

    #[test]
    fn mounts_and_own_groups_are_read() {
        assert_eq!(unified_mount(UNIFIED).as_deref(), Some("/sys/fs/cgroup"));
        assert_eq!(
            unified_mount(HYBRID).as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        assert_eq!(
            unified_mount("31 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw"),
            None
        );
        assert_eq!(
            unified_mount("1 2 0:1 / /a\\040b rw - cgroup2 cgroup2 rw").as_deref(),
            Some("/a b")
        );
        let own = "4:memory:/x\n0::/system.slice/verge.service\n";
        assert_eq!(
            own_group(own).as_deref(),
            Some("/system.slice/verge.service")
        );
        assert_eq!(own_group("4:memory:/x\n"), None);
    }

    #[test]
    fn a_delegated_group_is_set_up_and_workloads_get_their_limits() {
        let root = tempfile::tempdir().expect("tempdir");
        let base = fake_group(
            root.path(),
            "sys/fs/cgroup/system.slice/verge.service",
            "cpuset cpu io memory pids\n",
        );
        let cgroups = Cgroups::setup(
            root.path(),
            UNIFIED,
            "0::/system.slice/verge.service\n",
            4242,
        )
        .expect("usable");
        let read = |p: PathBuf| std::fs::read_to_string(p).expect("read");
        assert_eq!(read(base.join("agent/cgroup.procs")), "4242");
        assert_eq!(read(base.join("cgroup.subtree_control")), "+memory +cpu");
        assert_eq!(
            read(base.join("workloads/cgroup.subtree_control")),
            "+memory +cpu"
        );

        let service = ServiceName::new("web").expect("valid");
        let dir = cgroups
            .prepare(
                &service,
                &Resources {
                    cpu_millis: 250,
                    memory_mb: 64,
                },
            )
            .expect("prepare");
        assert_eq!(dir, base.join("workloads/web"));
        assert_eq!(read(dir.join("memory.max")), "67108864");
        assert_eq!(read(dir.join("cpu.max")), "25000 100000");
        cgroups
            .prepare(&service, &Resources::default())
            .expect("prepare again");
        assert_eq!(read(dir.join("memory.max")), "max");
        assert_eq!(read(dir.join("cpu.max")), "max 100000");
    }

    #[test]
    fn the_root_group_is_used_without_moving_the_agent() {
        let root = tempfile::tempdir().expect("tempdir");
        let base = fake_group(root.path(), "sys/fs/cgroup", "cpu memory\n");
        Cgroups::setup(root.path(), UNIFIED, "0::/\n", 1).expect("usable");
        assert!(!base.join("agent").exists());
        assert!(base.join("workloads/cgroup.subtree_control").is_file());
    }

    #[test]
    fn unusable_hierarchies_say_why() {
        let root = tempfile::tempdir().expect("tempdir");
        // Hybrid: the v2 hierarchy has no memory or cpu controller.
        fake_group(root.path(), "sys/fs/cgroup/unified", "hugetlb\n");
        let why =
            Cgroups::setup(root.path(), HYBRID, "4:memory:/x\n0::/\n", 1).expect_err("hybrid");
        assert!(why.contains("memory, cpu controller"), "{why}");
        let why = Cgroups::setup(root.path(), "", "0::/\n", 1).expect_err("no cgroup2");
        assert!(why.contains("no cgroup v2"), "{why}");
        let why = Cgroups::setup(root.path(), UNIFIED, "1:cpu:/\n", 1).expect_err("no group");
        assert!(why.contains("no cgroup v2 group"), "{why}");
    }

    #[test]
    fn cpu_quotas_follow_millicores() {
        let cpu = |millis| {
            cpu_max(&Resources {
                cpu_millis: millis,
                memory_mb: 0,
            })
        };
        assert_eq!(cpu(1000), "100000 100000");
        assert_eq!(cpu(2500), "250000 100000");
        assert_eq!(cpu(1), "1000 100000", "the kernel's minimum quota");
    }
}
