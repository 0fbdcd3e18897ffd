//! CPU time of a server, measured the same way for every server in a comparison: the
//! whole process, and its forwarding threads alone, both from `/proc/PID/task/*/schedstat`
//! (nanoseconds on a CPU, per thread), read just before and just after the window.
//!
//! Which threads forward depends on the server: confab's relay workers are named
//! `relay-0`, `relay-1`, … (the TCP legs' thread, `relay-tcp`, is not one of them); the
//! harness's raw forwarder runs in its own process, in a thread named `raw-forwarder`;
//! coturn names every thread `turnserver`, so there every thread that ran during the
//! window counts (with `--relay-threads 1` that is its relay thread and little else).

use serde::Serialize;
use std::collections::BTreeMap;

/// Which threads of a process are its forwarding threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Threads {
    /// Threads whose name is `prefix` followed by digits only (`relay-` → `relay-0`).
    Numbered(&'static str),
    /// Threads with exactly this name.
    Named(&'static str),
    /// Every thread that ran during the window.
    Busy,
}

impl Threads {
    fn matches(&self, name: &str) -> bool {
        match self {
            Threads::Numbered(prefix) => name
                .strip_prefix(prefix)
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())),
            Threads::Named(n) => name == *n,
            Threads::Busy => true,
        }
    }

    /// How the forwarding threads are picked, for the table and JSON.
    pub fn describe(&self) -> String {
        match self {
            Threads::Numbered(p) => format!("{p}N"),
            Threads::Named(n) => n.to_string(),
            Threads::Busy => "every thread that ran".into(),
        }
    }
}

/// One reading of every thread of a process: thread id → (name, nanoseconds on a CPU).
#[derive(Debug, Clone, Default)]
pub struct TaskSample {
    /// Per thread.
    pub tasks: BTreeMap<u32, (String, u64)>,
}

/// Reads every thread of `pid` (None when the process is gone).
pub fn sample(pid: u32) -> Option<TaskSample> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut tasks = BTreeMap::new();
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let base = e.path();
        let (Ok(comm), Ok(sched)) =
            (std::fs::read_to_string(base.join("comm")), std::fs::read_to_string(base.join("schedstat")))
        else {
            continue;
        };
        let Some(ns) = sched.split_whitespace().next().and_then(|v| v.parse().ok()) else { continue };
        tasks.insert(tid, (comm.trim_end().to_owned(), ns));
    }
    Some(TaskSample { tasks })
}

/// CPU spent between two readings of one process.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Split {
    /// Every thread of the process, seconds.
    pub process_s: f64,
    /// The forwarding threads, seconds.
    pub threads_s: f64,
    /// How many forwarding threads counted.
    pub threads: usize,
}

/// What the process and its forwarding threads spent from `before` to `after` (threads
/// that started during the window count from zero; threads that ended are lost, which
/// a server under test does not do).
pub fn between(before: &TaskSample, after: &TaskSample, pick: &Threads) -> Split {
    let mut s = Split::default();
    for (tid, (name, ns)) in &after.tasks {
        let was = before.tasks.get(tid).map(|(_, n)| *n).unwrap_or(0);
        let d = ns.saturating_sub(was) as f64 / 1e9;
        s.process_s += d;
        let ran = d > 0.0;
        if pick.matches(name) && (ran || *pick != Threads::Busy) {
            s.threads_s += d;
            s.threads += 1;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_names_pick_the_forwarders() {
        let r = Threads::Numbered("relay-");
        assert!(r.matches("relay-0") && r.matches("relay-12"));
        assert!(!r.matches("relay-tcp") && !r.matches("relay-") && !r.matches("xrelay-0"));
        assert!(Threads::Named("raw-forwarder").matches("raw-forwarder"));
    }

    #[test]
    fn a_busy_thread_of_this_process_is_counted() {
        let before = sample(std::process::id()).unwrap();
        let t = std::thread::Builder::new()
            .name("relay-7".into())
            .spawn(|| {
                // 30 ms of this thread's own CPU (the machine may be busy), 5 s at most.
                let started = std::time::Instant::now();
                let own = || {
                    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                    // SAFETY: a valid out pointer.
                    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
                    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
                };
                let mut x = 0u64;
                while own() < 0.03 && started.elapsed() < std::time::Duration::from_secs(5) {
                    x = x.wrapping_add(std::hint::black_box(1));
                }
                // Sampled while still alive: a thread that ended has no task entry.
                let after = sample(std::process::id()).unwrap();
                (x, after)
            })
            .unwrap();
        let (_, after) = t.join().unwrap();
        let s = between(&before, &after, &Threads::Numbered("relay-"));
        assert_eq!(s.threads, 1);
        assert!(s.threads_s >= 0.025 && s.process_s >= s.threads_s, "{s:?}");
    }
}
