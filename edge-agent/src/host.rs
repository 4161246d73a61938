//! What the host and its processes look like, read from `/proc` and `/sys`
//! without spawning anything: CPU, load, memory, disk, network, thermal
//! zones, and one process's CPU time, memory and age. Each file is parsed
//! by a pure function of its text, so the parsers are tested on fixed
//! samples; a file that is missing or unreadable leaves its figures at zero.

use std::path::Path;

use verge_shared::telemetry::{
    HostMetrics, InterfaceMetrics, MAX_INTERFACES, MAX_SENSORS, ProcessMetrics, Temperature,
};

/// Clock ticks per second in `/proc/*/stat`: the kernel's `USER_HZ`, 100 on
/// every architecture the agent targets.
const TICKS_PER_SECOND: f64 = 100.0;
/// Bytes per page in `/proc/*/statm`: 4 KiB on every target of the agent.
const PAGE_BYTES: u64 = 4096;
/// Largest `/proc` or `/sys` file read (a `/proc/stat` of a big host is
/// a few KiB; more is not a file this module knows).
const MAX_FILE_BYTES: u64 = 256 * 1024;

/// The aggregate CPU counters of `/proc/stat`, kept between samples to
/// turn them into a utilisation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    total: u64,
    idle: u64,
}

/// Reads the host's figures; `previous` holds the CPU counters of the last
/// sample and is updated.
pub fn read_host(data_dir: &Path, previous: &mut Option<CpuTimes>) -> HostMetrics {
    let mut host = HostMetrics {
        boot_id: read("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().chars().take(64).collect())
            .unwrap_or_default(),
        uptime_seconds: read("/proc/uptime")
            .and_then(|s| uptime_seconds(&s))
            .unwrap_or(0.0) as u64,
        ..HostMetrics::default()
    };
    if let Some(stat) = read("/proc/stat") {
        let (times, cpus) = cpu_times(&stat);
        host.cpus = cpus;
        if let (Some(now), Some(before)) = (times, *previous) {
            host.cpu_percent = cpu_percent(before, now);
        }
        if times.is_some() {
            *previous = times;
        }
    }
    if let Some([one, five, fifteen]) = read("/proc/loadavg").and_then(|s| load_averages(&s)) {
        (host.load_1, host.load_5, host.load_15) = (one, five, fifteen);
    }
    if let Some(meminfo) = read("/proc/meminfo") {
        host.memory_total_bytes = meminfo_bytes(&meminfo, "MemTotal").unwrap_or(0);
        host.memory_available_bytes = meminfo_bytes(&meminfo, "MemAvailable").unwrap_or(0);
    }
    if let Ok((total, free)) = crate::disk::total_and_free_bytes(data_dir) {
        (host.disk_total_bytes, host.disk_free_bytes) = (total, free);
    }
    host.network = read("/proc/net/dev")
        .map(|s| interfaces(&s))
        .unwrap_or_default();
    host.temperatures = temperatures(Path::new("/sys/class/thermal"));
    host
}

/// The figures of process `pid`, or `None` when it is gone.
pub fn read_process(pid: u32, host_uptime_seconds: u64) -> Option<ProcessMetrics> {
    let dir = format!("/proc/{pid}");
    let stat = read(&format!("{dir}/stat"))?;
    let (cpu_ticks, start_ticks) = process_ticks(&stat)?;
    let rss_pages = read(&format!("{dir}/statm")).and_then(|s| statm_resident_pages(&s));
    let started = (start_ticks as f64 / TICKS_PER_SECOND) as u64;
    Some(ProcessMetrics {
        uptime_seconds: host_uptime_seconds.saturating_sub(started),
        rss_bytes: rss_pages.unwrap_or(0).saturating_mul(PAGE_BYTES),
        cpu_seconds: cpu_ticks as f64 / TICKS_PER_SECOND,
    })
}

/// Reads at most [`MAX_FILE_BYTES`] of a small kernel file.
fn read(path: &str) -> Option<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Seconds since boot, the first figure of `/proc/uptime`.
fn uptime_seconds(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The aggregate `cpu` line of `/proc/stat`, and how many `cpuN` lines
/// follow it. Idle time counts `idle` and `iowait`.
fn cpu_times(stat: &str) -> (Option<CpuTimes>, u32) {
    let mut aggregate = None;
    let mut cpus = 0u32;
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => {
                let values: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
                if values.len() >= 5 {
                    aggregate = Some(CpuTimes {
                        total: values.iter().sum(),
                        idle: values[3] + values[4],
                    });
                }
            }
            Some(name) if name.starts_with("cpu") => cpus += 1,
            _ => {}
        }
    }
    (aggregate, cpus)
}

/// The busy share of all CPUs between two readings, in percent.
fn cpu_percent(before: CpuTimes, now: CpuTimes) -> Option<f32> {
    let total = now.total.checked_sub(before.total)?;
    let idle = now.idle.checked_sub(before.idle)?;
    if total == 0 {
        return None;
    }
    let busy = total.saturating_sub(idle) as f64 / total as f64 * 100.0;
    Some((busy * 10.0).round() as f32 / 10.0)
}

/// The three load averages of `/proc/loadavg`.
fn load_averages(text: &str) -> Option<[f32; 3]> {
    let mut fields = text.split_whitespace().map(|f| f.parse::<f32>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// A `kB` line of `/proc/meminfo`, in bytes.
fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kib.saturating_mul(1024))
    })
}

/// Received and sent bytes of each non-loopback interface in
/// `/proc/net/dev`, at most [`MAX_INTERFACES`].
fn interfaces(text: &str) -> Vec<InterfaceMetrics> {
    text.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            let fields: Vec<u64> = counters
                .split_whitespace()
                .map(|f| f.parse().ok())
                .collect::<Option<_>>()?;
            (name != "lo" && fields.len() >= 16).then(|| InterfaceMetrics {
                name: name.chars().take(32).collect(),
                received_bytes: fields[0],
                sent_bytes: fields[8],
            })
        })
        .take(MAX_INTERFACES)
        .collect()
}

/// The thermal zones under `dir` (`thermal_zoneN/type` and `temp` in
/// millidegrees), at most [`MAX_SENSORS`], in zone order.
fn temperatures(dir: &Path) -> Vec<Temperature> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut zones: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("thermal_zone"))
        })
        .take(256)
        .collect();
    zones.sort();
    zones
        .iter()
        .filter_map(|zone| {
            let text = |name: &str| read(zone.join(name).to_str()?);
            let millidegrees: i64 = text("temp")?.trim().parse().ok()?;
            Some(Temperature {
                sensor: text("type")?.trim().chars().take(32).collect(),
                celsius: millidegrees as f32 / 1000.0,
            })
        })
        .take(MAX_SENSORS)
        .collect()
}

/// User + system CPU ticks and the start time in ticks after boot, from
/// `/proc/<pid>/stat` (fields 14, 15 and 22; the name in parentheses may
/// hold spaces and parentheses, so fields count from the last `)`).
fn process_ticks(stat: &str) -> Option<(u64, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().take(20).collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)? + field(15)?, field(22)?))
}

/// Resident pages, the second figure of `/proc/<pid>/statm`.
fn statm_resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_gives_cpu_counters_and_a_utilisation() {
        let stat = "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\ncpu1 50 0 50 350 50 0 0 0 0 0\nintr 1\n";
        let (times, cpus) = cpu_times(stat);
        let before = times.expect("aggregate line");
        assert_eq!(cpus, 2);
        assert_eq!(
            before,
            CpuTimes {
                total: 1000,
                idle: 800
            }
        );
        let now = CpuTimes {
            total: 1200,
            idle: 850,
        };
        assert_eq!(cpu_percent(before, now), Some(75.0));
        assert_eq!(cpu_percent(before, before), None);
        assert_eq!(cpu_percent(now, before), None, "counters went backwards");
        assert_eq!(cpu_times("garbage").0, None);
    }

    #[test]
    fn small_proc_files_are_parsed() {
        assert_eq!(uptime_seconds("12345.67 999.0\n"), Some(12345.67));
        assert_eq!(
            load_averages("0.50 1.25 2.00 1/234 5678\n"),
            Some([0.5, 1.25, 2.0])
        );
        assert_eq!(load_averages("0.5"), None);
        let meminfo = "MemTotal:       16384 kB\nMemFree:  1 kB\nMemAvailable:    8192 kB\n";
        assert_eq!(meminfo_bytes(meminfo, "MemTotal"), Some(16384 * 1024));
        assert_eq!(meminfo_bytes(meminfo, "MemAvailable"), Some(8192 * 1024));
        assert_eq!(meminfo_bytes(meminfo, "Mem"), None);
    }

    #[test]
    fn net_dev_lists_interfaces_but_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 5000 50 0 0 0 0 0 0 5000 50 0 0 0 0 0 0
  eth0: 123456 100 0 0 0 0 0 0 654321 90 0 0 0 0 0 0
";
        assert_eq!(
            interfaces(text),
            vec![InterfaceMetrics {
                name: "eth0".into(),
                received_bytes: 123_456,
                sent_bytes: 654_321,
            }]
        );
    }

    #[test]
    fn process_stat_survives_odd_names() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5000 1000 250";
        assert_eq!(process_ticks(stat), Some((10, 5000)));
        assert_eq!(process_ticks("42 (x"), None);
        assert_eq!(statm_resident_pages("1000 250 30 1 0 80 0\n"), Some(250));
    }

    #[test]
    fn thermal_zones_are_read_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (zone, kind, temp) in [
            (1, "gpu", "41500"),
            (0, "cpu-thermal", "52000"),
            (2, "bad", "x"),
        ] {
            let path = dir.path().join(format!("thermal_zone{zone}"));
            std::fs::create_dir(&path).expect("zone");
            std::fs::write(path.join("type"), format!("{kind}\n")).expect("type");
            std::fs::write(path.join("temp"), format!("{temp}\n")).expect("temp");
        }
        let found = temperatures(dir.path());
        assert_eq!(
            found,
            vec![
                Temperature {
                    sensor: "cpu-thermal".into(),
                    celsius: 52.0
                },
                Temperature {
                    sensor: "gpu".into(),
                    celsius: 41.5
                },
            ]
        );
    }

    #[test]
    fn this_host_and_process_read_back() {
        let mut previous = None;
        let dir = tempfile::tempdir().expect("temp dir");
        let host = read_host(dir.path(), &mut previous);
        assert!(host.cpus >= 1 && host.memory_total_bytes > 0 && host.disk_total_bytes > 0);
        assert!(host.uptime_seconds > 0 && !host.boot_id.is_empty());
        assert!(previous.is_some(), "CPU counters kept for the next sample");
        let me = read_process(std::process::id(), host.uptime_seconds).expect("this process");
        assert!(me.rss_bytes > 0, "{me:?}");
        assert!(read_process(u32::MAX, host.uptime_seconds).is_none());
    }
}
