//! The servers' sockets as the kernel has them: the receive and send buffer sizes in
//! force (`ss -uamn`, whoever owns the socket), the process that owns a UDP port
//! (`/proc/net/udp` and `/proc/*/fd`), and raising the kernel's default buffer sizes for
//! a run (coturn has no setting of its own for them), put back afterwards.

use serde::Serialize;
use std::collections::BTreeSet;

/// Buffer sizes in force on a server's sockets, as `ss` reports them (`rb`, `tb`: the
/// kernel's own figure, twice what a program asks for with SO_RCVBUF / SO_SNDBUF).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Buffers {
    /// Sockets found on the server's ports.
    pub sockets: usize,
    /// Distinct receive buffer sizes among them, bytes.
    pub recv: BTreeSet<u64>,
    /// Distinct send buffer sizes among them, bytes.
    pub send: BTreeSet<u64>,
}

impl Buffers {
    /// "8.0 / 8.0 MiB" (receive / send; several sizes joined with `,`), or n/a.
    pub fn cell(&self) -> String {
        if self.sockets == 0 {
            return "n/a".into();
        }
        let list = |s: &BTreeSet<u64>| {
            s.iter().map(|b| format!("{:.2}", *b as f64 / (1 << 20) as f64)).collect::<Vec<_>>().join(",")
        };
        format!("{} / {}", list(&self.recv), list(&self.send))
    }
}

/// The buffer sizes of every UDP socket bound to one of `ports` on this machine.
pub fn buffers(ports: &BTreeSet<u16>) -> Buffers {
    let out = match std::process::Command::new("ss").args(["-uamnH"]).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => return Buffers::default(),
    };
    parse_ss(&out, ports)
}

/// `ss -uamnH` output: a socket line (state, queues, local address, peer), then its
/// `skmem:(r0,rb…,t0,tb…,…)` on the next line.
fn parse_ss(text: &str, ports: &BTreeSet<u16>) -> Buffers {
    let mut b = Buffers::default();
    let mut wanted = false;
    for line in text.lines() {
        if let Some(i) = line.find("skmem:(") {
            if wanted {
                let inner = line[i + 7..].split(')').next().unwrap_or("");
                let field =
                    |p: &str| inner.split(',').find_map(|f| f.strip_prefix(p).and_then(|v| v.parse::<u64>().ok()));
                if let (Some(rb), Some(tb)) = (field("rb"), field("tb")) {
                    b.sockets += 1;
                    b.recv.insert(rb);
                    b.send.insert(tb);
                }
            }
            wanted = false;
            continue;
        }
        let local = line.split_whitespace().nth(3).unwrap_or("");
        wanted = local.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_some_and(|p| ports.contains(&p));
    }
    b
}

/// The process that owns the UDP socket bound to `port` (the first found), from the
/// socket's inode in `/proc/net/udp{,6}` and the processes' open files.
pub fn pid_of_udp_port(port: u16) -> Option<u32> {
    let mut inodes = BTreeSet::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some(local) = f.get(1) else { continue };
            let p = local.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if p == Some(port)
                && let Some(inode) = f.get(9).and_then(|i| i.parse::<u64>().ok())
                && inode != 0
            {
                inodes.insert(inode);
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else { continue };
            let link = link.to_string_lossy();
            if let Some(inode) = link.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'))
                && inode.parse::<u64>().is_ok_and(|i| inodes.contains(&i))
            {
                return Some(pid);
            }
        }
    }
    None
}

/// The kernel's four socket buffer settings (`net.core.*`).
const KEYS: [&str; 4] = ["rmem_default", "wmem_default", "rmem_max", "wmem_max"];

fn read_key(key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/net/core/{key}")).ok()?.trim().parse().ok()
}

fn write_key(key: &str, v: u64) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/net/core/{key}"), format!("{v}\n"))
}

/// The kernel's default socket buffers raised for a run; the old values are written back
/// on drop.
#[derive(Debug)]
pub struct RaisedDefaults {
    saved: Vec<(&'static str, u64)>,
    /// Held while raised, so two runs at once do not save each other's raised values as
    /// the ones to put back.
    _lock: Option<std::fs::File>,
    /// The default receive and send buffer now in force, bytes.
    pub bytes: u64,
}

impl RaisedDefaults {
    /// Sets `net.core.rmem_default` and `wmem_default` to `bytes` (and `rmem_max` /
    /// `wmem_max` to at least that): every socket made afterwards that does not ask for
    /// a size gets `bytes`. Needs root (or CAP_NET_ADMIN in the network namespace).
    pub fn raise(bytes: u64) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join("confab-loadtest-buffers.lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        // SAFETY: a plain flock on a descriptor this function owns.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !locked {
            // Another run raised them and will put them back: use them as they are.
            let now = read_key("rmem_default").unwrap_or(0).min(read_key("wmem_default").unwrap_or(0));
            anyhow::ensure!(now >= bytes, "another run holds {} with smaller defaults ({now})", path.display());
            return Ok(Self { saved: Vec::new(), _lock: None, bytes: now });
        }
        let mut saved = Vec::new();
        for key in KEYS {
            let v = read_key(key).ok_or_else(|| anyhow::anyhow!("cannot read net.core.{key}"))?;
            saved.push((key, v));
        }
        let mut me = Self { saved: Vec::new(), _lock: Some(file), bytes };
        for (key, old) in &saved {
            let new = if key.ends_with("_max") { (*old).max(bytes) } else { bytes };
            if new != *old {
                write_key(key, new).map_err(|e| anyhow::anyhow!("net.core.{key} = {new}: {e}"))?;
                me.saved.push((key, *old));
            }
        }
        Ok(me)
    }
}

impl Drop for RaisedDefaults {
    fn drop(&mut self) {
        for (key, old) in self.saved.drain(..).rev() {
            if let Err(e) = write_key(key, old) {
                eprintln!("warning: could not restore net.core.{key} = {old}: {e}");
            }
        }
    }
}

/// The kernel's default receive buffer for sockets that ask for none.
pub fn default_recv_bytes() -> Option<u64> {
    read_key("rmem_default")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_output_gives_the_sizes_per_port() {
        let text = "UNCONN 0 0 127.0.0.1:34781 0.0.0.0:*\n\t skmem:(r0,rb4194304,t0,tb4194304,f0,w0,o0,bl0,d0)\n\
                    UNCONN 0 0 127.0.0.1:5000 0.0.0.0:*\n\t skmem:(r0,rb212992,t0,tb212992,f0,w0,o0,bl0,d0)\n\
                    UNCONN 0 0 [::1]:5001 [::]:*\n\t skmem:(r0,rb8388608,t0,tb212992,f0,w0,o0,bl0,d0)\n";
        let b = parse_ss(text, &[34781, 5001].into());
        assert_eq!(b.sockets, 2);
        assert_eq!(b.recv, [4194304, 8388608].into());
        assert_eq!(b.send, [212992, 4194304].into());
        assert_eq!(parse_ss(text, &[9].into()).sockets, 0);
    }

    #[test]
    fn a_socket_of_this_process_is_found_by_port() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        assert_eq!(pid_of_udp_port(port), Some(std::process::id()));
        let b = buffers(&[port].into());
        if b.sockets > 0 {
            assert_eq!(b.recv.len(), 1);
        }
    }
}
