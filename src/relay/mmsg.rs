//! Batched datagram I/O for the relay workers: `recvmmsg(2)` and `sendmmsg(2)` on Linux,
//! one datagram per call elsewhere. This is the crate's one module of `unsafe` socket
//! code; everything it hands out is safe.
//!
//! **What the unsafe code relies on.** Each call builds its `mmsghdr` array afresh from
//! buffers this module owns (or the caller lends for the call's duration), so every
//! pointer the kernel sees points into live memory of the stated length for the whole
//! call, and nothing is read back beyond what the kernel says it wrote (`msg_len`,
//! `msg_namelen`, `msg_controllen`). Addresses are converted by hand from
//! `sockaddr_in`/`sockaddr_in6`; any other family is refused.
//!
//! **Receive-queue overflow.** With `SO_RXQ_OVFL` set, the kernel attaches to each
//! received datagram the socket's running count of datagrams it dropped because the
//! receive queue was full; [`RecvBatch::overflow`] reports the latest, so the worker can
//! count drops the relay never saw.
//!
//! **Receive timestamps.** With `SO_TIMESTAMPNS` set, each datagram carries the time
//! (CLOCK_REALTIME) the kernel received it; [`RecvBatch::received_at`] gives the first
//! datagram's, so a sampled forward latency includes the time spent queued in the socket.

#![allow(unsafe_code)]

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Datagrams one receive or send call handles at most.
pub const BATCH_MAX: usize = 32;

/// Receive buffers for up to [`BATCH_MAX`] datagrams, reused from call to call.
pub struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    lens: Vec<usize>,
    froms: Vec<Option<SocketAddr>>,
    /// Datagrams the next receive asks for: doubled after a receive that filled its
    /// request, cut to what came after one that did not (see [`RecvBatch::recv`]).
    want: usize,
    /// Whether `want` follows the traffic (else every receive asks for the capacity).
    adaptive: bool,
    /// Datagrams the last receive asked for, and took.
    asked: usize,
    took: usize,
    overflow: Option<u32>,
    /// The first datagram's kernel receive time as (seconds, nanoseconds) since the
    /// Unix epoch, turned into a `SystemTime` only when asked (one batch in many).
    received_at: Option<(u64, u32)>,
    #[cfg(target_os = "linux")]
    names: Vec<libc::sockaddr_storage>,
    #[cfg(target_os = "linux")]
    controls: Vec<[u64; CONTROL_WORDS]>,
}

/// Room for an `SO_RXQ_OVFL` control message (a u32 after a cmsghdr) and an
/// `SCM_TIMESTAMPNS` one (a timespec), in u64 words so it is aligned for `cmsghdr`.
#[cfg(target_os = "linux")]
const CONTROL_WORDS: usize = 8;

impl RecvBatch {
    /// Buffers for `count` (at most [`BATCH_MAX`]) datagrams of up to `len` bytes each.
    pub fn new(count: usize, len: usize) -> Self {
        let count = count.clamp(1, BATCH_MAX);
        Self {
            bufs: (0..count).map(|_| vec![0u8; len].into_boxed_slice()).collect(),
            lens: vec![0; count],
            froms: vec![None; count],
            want: 1,
            adaptive: true,
            asked: 1,
            took: 0,
            overflow: None,
            received_at: None,
            // SAFETY: sockaddr_storage is plain old data; all zeros is a valid value.
            #[cfg(target_os = "linux")]
            names: vec![unsafe { std::mem::zeroed() }; count],
            #[cfg(target_os = "linux")]
            controls: vec![[0u64; CONTROL_WORDS]; count],
        }
    }

    /// Every receive asks for the capacity, as for a reader of non-blocking sockets that
    /// reads each dry (a short request there only adds calls).
    pub fn full_requests(mut self) -> Self {
        self.adaptive = false;
        self.want = self.bufs.len();
        self
    }

    /// How many datagrams one call can take.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// Whether the last receive took less than a full batch: the socket's queue may be
    /// empty, so a loop that must not sleep between receives stops here (the next
    /// receive may block). A receive that asked for fewer than the capacity and got them
    /// all counts as drained too: only a full batch says more is likely queued.
    pub fn drained(&self) -> bool {
        self.took < self.bufs.len()
    }

    /// Datagram `i` of the last receive (its bytes, which the caller may change in
    /// place, and its sender; None for an address family we do not speak).
    pub fn get_mut(&mut self, i: usize) -> (&mut [u8], Option<SocketAddr>) {
        let len = self.lens[i];
        (&mut self.bufs[i][..len], self.froms[i])
    }

    /// Datagram `i` of the last receive.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.bufs[i][..self.lens[i]]
    }

    /// The socket's count of datagrams dropped for a full receive queue, as of the last
    /// receive (needs [`enable_overflow_count`]).
    pub fn overflow(&self) -> Option<u32> {
        self.overflow
    }

    /// When the kernel received the first datagram of the last receive (needs
    /// [`enable_rx_timestamps`]).
    pub fn received_at(&self) -> Option<std::time::SystemTime> {
        self.received_at.map(|(secs, nanos)| std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos))
    }

    /// Receives up to [`RecvBatch::capacity`] datagrams: blocks (up to the socket's read
    /// timeout) for the first, then takes what is already queued. Returns how many.
    ///
    /// It asks for as many as the last receive suggests, not always the capacity: after
    /// taking the first datagram the kernel tries once more for every slot left, and a
    /// try that finds the queue empty is as dear as a receive. At voice rates a wake-up
    /// finds one datagram, so asking for one spares that try; a receive that fills its
    /// request doubles the next, so a burst reaches the full batch within a few calls.
    /// A datagram longer than its buffer is cut to the buffer's length (the caller sizes
    /// buffers one byte above the longest valid datagram to tell).
    #[cfg(target_os = "linux")]
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let n = self.want.clamp(1, self.bufs.len());
        self.asked = n;
        self.took = 0;
        // SAFETY: plain old data; all zeros is valid for each. On the stack: no
        // allocation per call.
        let mut iovecs: [libc::iovec; BATCH_MAX] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH_MAX] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            iovecs[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: self.bufs[i].len() };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&raw mut self.names[i]).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &raw mut iovecs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.controls[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of::<[u64; CONTROL_WORDS]>() as _;
        }
        // SAFETY: every pointer in `hdrs` points into `iovecs`, `self.bufs`,
        // `self.names` or `self.controls`, all alive and unmoved until this returns, with
        // the lengths given; `n` is the array's length.
        let got = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = (got as usize).min(n);
        self.received_at = None;
        self.took = got;
        if self.adaptive {
            self.want = if got == n { (2 * n).min(self.bufs.len()) } else { got.max(1) };
        }
        for (i, h) in hdrs.iter().enumerate().take(got) {
            self.lens[i] = (h.msg_len as usize).min(self.bufs[i].len());
            self.froms[i] = from_storage(&self.names[i], h.msg_hdr.msg_namelen);
        }
        // Control messages are read at most twice a call, not per datagram: the first
        // datagram's receive time, and the last one's drop count (a running total, so
        // the newest). One datagram, the common case at voice rates, is read once.
        if got > 0 {
            let (first_count, first_at) = control_of(&hdrs[0].msg_hdr);
            self.received_at = first_at;
            let count = if got == 1 { first_count } else { control_of(&hdrs[got - 1].msg_hdr).0 };
            if let Some(count) = count {
                self.overflow = Some(count);
            }
        }
        Ok(got)
    }

    /// One datagram per call where `recvmmsg` is not available.
    #[cfg(not(target_os = "linux"))]
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        // One per call here: a call always leaves the queue looking drained.
        self.asked = self.bufs.len();
        self.took = 0;
        let (len, from) = socket.recv_from(&mut self.bufs[0])?;
        self.lens[0] = len;
        self.froms[0] = Some(from);
        self.took = 1;
        Ok(1)
    }
}

/// The running drop count (`SO_RXQ_OVFL`) and the receive time (`SCM_TIMESTAMPNS`) in a
/// received message's control messages.
#[cfg(target_os = "linux")]
fn control_of(msg: &libc::msghdr) -> (Option<u32>, Option<(u64, u32)>) {
    let (mut overflow, mut at) = (None, None);
    // SAFETY: `msg` is a msghdr the kernel just filled: its control pointer and length
    // describe our control buffer, and the CMSG_* macros stay within that length; each
    // payload is read unaligned, as the type its cmsg_type says.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_RXQ_OVFL {
                overflow = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u32>()));
            } else if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                at = u64::try_from(ts.tv_sec).ok().map(|secs| (secs, ts.tv_nsec.clamp(0, 999_999_999) as u32));
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    (overflow, at)
}

/// A socket address from what the kernel wrote into `storage` (`len` bytes).
#[cfg(target_os = "linux")]
fn from_storage(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and the length
            // covers it; sockaddr_storage is aligned for every sockaddr type.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Asks the kernel to report receive-queue overflow drops with each datagram.
pub fn enable_overflow_count(socket: &UdpSocket) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return set_int_option(socket, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        Ok(())
    }
}

/// Asks the kernel to stamp each datagram with the time it was received.
pub fn enable_rx_timestamps(socket: &UdpSocket) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return set_int_option(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn set_int_option(socket: &UdpSocket, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain setsockopt with an int option value that outlives the call.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// What a batched send did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams sent.
    pub sent: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Datagrams the kernel refused (each skipped; the others still went).
    pub failed: usize,
}

impl RecvBatch {
    /// Sends datagram `i` of the last receive (as the caller left it) to `targets[i]`
    /// where that is `Some`, in as few calls as the kernel allows.
    pub fn send(&self, socket: &UdpSocket, targets: &[Option<SocketAddr>]) -> Sent {
        let mut picked = [(0usize, SocketAddr::from(([0, 0, 0, 0], 0))); BATCH_MAX];
        let mut n = 0;
        for (i, t) in targets.iter().enumerate().take(self.bufs.len()) {
            if let Some(to) = t {
                picked[n] = (i, *to);
                n += 1;
            }
        }
        send_each(socket, n, |k| {
            let (i, to) = picked[k];
            (&self.bufs[i][..self.lens[i]], to)
        })
    }
}

/// Sends `(datagram, destination)` pairs (at most [`BATCH_MAX`] per kernel call).
pub fn send(socket: &UdpSocket, msgs: &[(&[u8], SocketAddr)]) -> Sent {
    let mut total = Sent::default();
    for chunk in msgs.chunks(BATCH_MAX) {
        let s = send_each(socket, chunk.len(), |k| chunk[k]);
        total.sent += s.sent;
        total.bytes += s.bytes;
        total.failed += s.failed;
    }
    total
}

/// Sends the `count` (at most [`BATCH_MAX`]) datagrams `msg(0..count)` gives, skipping
/// any the kernel refuses.
#[cfg(target_os = "linux")]
fn send_each<'a>(socket: &UdpSocket, count: usize, msg: impl Fn(usize) -> (&'a [u8], SocketAddr)) -> Sent {
    use std::os::fd::AsRawFd;
    let count = count.min(BATCH_MAX);
    let mut out = Sent::default();
    // SAFETY: plain old data; all zeros is valid for each. Names are `sockaddr_in6`, the
    // larger of the two families, not `sockaddr_storage`: a quarter of the bytes to
    // clear on every call.
    let mut names: [libc::sockaddr_in6; BATCH_MAX] = unsafe { std::mem::zeroed() };
    let mut iovecs: [libc::iovec; BATCH_MAX] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH_MAX] = unsafe { std::mem::zeroed() };
    let mut lens = [0usize; BATCH_MAX];
    for k in 0..count {
        let (d, to) = msg(k);
        lens[k] = d.len();
        iovecs[k] = libc::iovec { iov_base: d.as_ptr() as *mut libc::c_void, iov_len: d.len() };
        let namelen = to_storage(to, &mut names[k]);
        hdrs[k].msg_hdr.msg_name = (&raw mut names[k]).cast();
        hdrs[k].msg_hdr.msg_namelen = namelen;
        hdrs[k].msg_hdr.msg_iov = &raw mut iovecs[k];
        hdrs[k].msg_hdr.msg_iovlen = 1;
    }
    let mut done = 0;
    while done < count {
        // SAFETY: hdrs[done..count] point into `names`, `iovecs` and the datagrams `msg`
        // lent for 'a, all alive until this returns; the kernel only reads them.
        let r =
            unsafe { libc::sendmmsg(socket.as_raw_fd(), hdrs[done..].as_mut_ptr(), (count - done) as libc::c_uint, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first remaining datagram was refused: skip it, go on with the rest.
            tracing::trace!(error = %e, "relay send refused");
            out.failed += 1;
            done += 1;
            continue;
        }
        let r = r as usize;
        out.sent += r;
        out.bytes += lens[done..done + r].iter().sum::<usize>();
        done += r;
    }
    out
}

/// One `send_to` per datagram where `sendmmsg` is not available.
#[cfg(not(target_os = "linux"))]
fn send_each<'a>(socket: &UdpSocket, count: usize, msg: impl Fn(usize) -> (&'a [u8], SocketAddr)) -> Sent {
    let mut out = Sent::default();
    for k in 0..count.min(BATCH_MAX) {
        let (d, to) = msg(k);
        match socket.send_to(d, to) {
            Ok(n) => {
                out.sent += 1;
                out.bytes += n;
            }
            Err(_) => out.failed += 1,
        }
    }
    out
}

/// Writes `addr` into `storage` (all zeros before) as the kernel expects it; returns its
/// length.
#[cfg(target_os = "linux")]
fn to_storage(addr: SocketAddr, storage: &mut libc::sockaddr_in6) -> libc::socklen_t {
    const _: () = assert!(
        std::mem::size_of::<libc::sockaddr_in>() <= std::mem::size_of::<libc::sockaddr_in6>()
            && std::mem::align_of::<libc::sockaddr_in>() <= std::mem::align_of::<libc::sockaddr_in6>()
    );
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in6 is at least as large and as aligned as sockaddr_in
            // (checked above at compile time).
            let s = unsafe { &mut *(storage as *mut libc::sockaddr_in6).cast::<libc::sockaddr_in>() };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr = libc::in_addr { s_addr: u32::from(*a.ip()).to_be() };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let s = storage;
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = a.port().to_be();
            s.sin6_flowinfo = a.flowinfo();
            s.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            s.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn udp(addr: &str) -> UdpSocket {
        let s = UdpSocket::bind(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    #[test]
    fn a_batch_goes_out_and_comes_in_with_its_senders() {
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(rx) = UdpSocket::bind(any) else { continue };
            rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let to = rx.local_addr().unwrap();
            let (a, b) = (udp(any), udp(any));
            let msgs: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
            let out: Vec<(&[u8], SocketAddr)> = msgs.iter().map(|m| (&m[..], to)).collect();
            let s = send(&a, &out[..20]);
            assert_eq!((s.sent, s.failed), (20, 0));
            assert_eq!(s.bytes, (10..30).sum::<usize>());
            // Back out of a batch: forwarded in place to B.
            assert_eq!(send(&b, &out[20..]).sent, 20);
            let mut batch = RecvBatch::new(BATCH_MAX, 64);
            let mut got = Vec::new();
            while got.len() < 40 {
                let n = batch.recv(&rx).unwrap();
                assert!((1..=BATCH_MAX).contains(&n));
                for i in 0..n {
                    let (d, from) = batch.get_mut(i);
                    got.push((d.to_vec(), from.unwrap()));
                }
            }
            let (from_a, from_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
            for (i, m) in msgs.iter().enumerate() {
                let want = if i < 20 { from_a } else { from_b };
                assert!(got.contains(&(m.clone(), want)), "datagram {i} from {want}");
            }
        }
    }

    #[test]
    fn long_datagrams_are_cut_to_the_buffer_and_overflow_is_reported() {
        let rx = udp("127.0.0.1:0");
        enable_overflow_count(&rx).unwrap();
        socket2::SockRef::from(&rx).set_recv_buffer_size(4096).unwrap();
        let to = rx.local_addr().unwrap();
        let tx = udp("127.0.0.1:0");
        // Far more than a 4 KiB receive buffer holds: the kernel drops most.
        let big = vec![7u8; 1000];
        for _ in 0..200 {
            let _ = tx.send_to(&big, to);
        }
        let mut batch = RecvBatch::new(4, 100);
        let n = batch.recv(&rx).unwrap();
        assert!(n >= 1);
        assert_eq!(batch.get_mut(0).0.len(), 100, "cut to the buffer");
        // The count rides on datagrams queued after the drops: drain, then one more.
        rx.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        while batch.recv(&rx).is_ok() {}
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        tx.send_to(&big, to).unwrap();
        batch.recv(&rx).unwrap();
        #[cfg(target_os = "linux")]
        assert!(batch.overflow().is_some_and(|c| c > 100), "{:?}", batch.overflow());
        // And with timestamps on, each datagram says when it came.
        enable_rx_timestamps(&rx).unwrap();
        let before = std::time::SystemTime::now();
        tx.send_to(&big, to).unwrap();
        batch.recv(&rx).unwrap();
        #[cfg(target_os = "linux")]
        {
            let at = batch.received_at().expect("a receive timestamp");
            assert!(at >= before - Duration::from_millis(5) && at <= std::time::SystemTime::now(), "{at:?}");
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn requests_grow_with_a_queue_and_shrink_when_it_drains() {
        let (rx, tx) = (udp("127.0.0.1:0"), udp("127.0.0.1:0"));
        let to = rx.local_addr().unwrap();
        // Over loopback each datagram is queued at the receiver before send_to returns.
        for i in 0..40u8 {
            tx.send_to(&[i], to).unwrap();
        }
        let mut batch = RecvBatch::new(BATCH_MAX, 16);
        let mut sizes = Vec::new();
        while sizes.iter().sum::<usize>() < 40 {
            sizes.push(batch.recv(&rx).unwrap());
            assert!(batch.drained(), "none of these is a full batch");
        }
        assert_eq!(sizes, [1, 2, 4, 8, 16, 9], "doubling while each request fills");
        // One at a time, as voice arrives: asks for what came last, then for one.
        tx.send_to(&[0], to).unwrap();
        assert_eq!(batch.recv(&rx).unwrap(), 1);
        assert_eq!(batch.asked, 9);
        tx.send_to(&[0], to).unwrap();
        assert_eq!(batch.recv(&rx).unwrap(), 1);
        assert_eq!(batch.asked, 1);
        // A full batch is not drained: more is likely queued.
        for i in 0..40u8 {
            tx.send_to(&[i], to).unwrap();
        }
        let mut full = RecvBatch::new(4, 16);
        while full.recv(&rx).unwrap() < 4 {}
        assert!(!full.drained());
        while full.recv(&rx).unwrap() == 4 {}
        // A reader of sockets it drains asks for the capacity every time.
        let mut all = RecvBatch::new(BATCH_MAX, 16).full_requests();
        for i in 0..3u8 {
            tx.send_to(&[i], to).unwrap();
        }
        assert_eq!((all.recv(&rx).unwrap(), all.drained()), (3, true));
    }

    #[test]
    fn a_refused_datagram_is_skipped_and_the_rest_still_go() {
        let tx = udp("127.0.0.1:0");
        let rx = udp("127.0.0.1:0");
        let ok = rx.local_addr().unwrap();
        // An IPv6 destination from an IPv4 socket is refused at once.
        let bad: SocketAddr = "[::1]:9".parse().unwrap();
        let d = [1u8; 8];
        let s = send(&tx, &[(&d, ok), (&d, bad), (&d, ok), (&d, bad)]);
        assert_eq!((s.sent, s.failed, s.bytes), (2, 2, 16));
        let mut batch = RecvBatch::new(4, 64);
        let mut got = 0;
        while got < 2 {
            got += batch.recv(&rx).unwrap();
        }
        // Forwarding what came in, in place, to chosen targets.
        let back = udp("127.0.0.1:0");
        let s = batch.send(&tx, &[Some(back.local_addr().unwrap()), None]);
        assert_eq!(s.sent, 1);
        assert_eq!(back.recv(&mut [0u8; 16]).unwrap(), 8);
    }
}
