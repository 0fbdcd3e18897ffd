//! CPU time (user + system) as the kernel accounts it in `/proc/…/stat`, the same way for
//! a child process (every thread it ever had) and for a thread of the test.

use std::process::{Child, ExitStatus};
use std::time::Duration;

/// User + system time in a `/proc/<pid>/stat` or `/proc/self/task/<tid>/stat` file.
fn of_stat(path: &str) -> Duration {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // The command name, in parentheses, may hold spaces: fields are counted after it.
    let rest = &text[text.rfind(')').unwrap_or_else(|| panic!("{path}: {text}")) + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// A process's CPU time so far, its exited threads included.
pub fn of_process(pid: u32) -> Duration {
    of_stat(&format!("/proc/{pid}/stat"))
}

/// The calling thread's CPU time so far.
pub fn of_this_thread() -> Duration {
    // SAFETY: gettid has no preconditions.
    of_stat(&format!("/proc/self/task/{}/stat", unsafe { libc::gettid() }))
}

/// Waits (at most `limit`, failing the test past it) for `child` to exit, reads its CPU
/// time while it is a zombie (the kernel keeps it until the child is reaped), then reaps it.
pub fn at_exit(child: &mut Child, limit: Duration) -> (ExitStatus, Duration) {
    let pid = child.id();
    super::poll_until(&format!("process {pid} to exit"), limit, || {
        // SAFETY: waitid on our own child with a zeroed siginfo; WNOWAIT leaves it unreaped.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r =
                libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
            assert_eq!(r, 0, "waitid {pid}: {}", std::io::Error::last_os_error());
            info.si_pid() != 0
        }
    });
    let cpu = of_process(pid);
    (child.wait().unwrap(), cpu)
}
