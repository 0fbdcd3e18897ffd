//! Whole transfers between a sender and a receiver on an in-memory path, virtual time.

use super::conn::TlsIdentity;
use super::link::Link;
use super::manifest::Manifest;
use super::receiver::Receiver;
use super::sender::Sender;
use super::state::{ReceiveOffer, ReceiveState, SendState, StateError, TransferId};
use super::{TransferError, close_code};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TEN_MB: usize = 10_000_000;
/// No run may take longer than this on the virtual clock.
const VIRTUAL_LIMIT: Duration = Duration::from_secs(300);
/// Nor this on the real one.
const REAL_LIMIT: Duration = Duration::from_secs(120);

/// The two sides, either of which may be absent (killed).
struct World {
    now: Instant,
    start: Instant,
    real_start: Instant,
    link: Link,
    sender: Option<Sender>,
    receiver: Option<Receiver>,
    steps: u64,
}

impl World {
    fn new(link: Link, now: Instant) -> World {
        World { now, start: now, real_start: Instant::now(), link, sender: None, receiver: None, steps: 0 }
    }

    /// Steps the world until `done` holds; panics past the virtual or real limit.
    fn run_until(&mut self, mut done: impl FnMut(&World) -> bool) {
        loop {
            // Drain every output of both sides after each input.
            if let Some(s) = self.sender.as_mut() {
                while let Some(d) = s.poll_transmit(self.now) {
                    self.link.send(0, self.now, &d);
                }
            }
            if let Some(r) = self.receiver.as_mut() {
                while let Some(d) = r.poll_transmit(self.now) {
                    self.link.send(1, self.now, &d);
                }
            }
            if done(self) {
                return;
            }
            self.steps += 1;
            assert!(self.now - self.start < VIRTUAL_LIMIT, "still running after {VIRTUAL_LIMIT:?} of virtual time");
            assert!(self.real_start.elapsed() < REAL_LIMIT, "still running after {REAL_LIMIT:?} of real time");
            let next = [
                self.link.next_arrival(),
                self.sender.as_mut().and_then(|s| s.poll_timeout()),
                self.receiver.as_mut().and_then(|r| r.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("something is always pending while a transfer runs");
            self.now = self.now.max(next);
            while let Some(d) = self.link.arrive(0, self.now) {
                if let Some(r) = self.receiver.as_mut() {
                    r.handle_datagram(self.now, &d);
                }
            }
            while let Some(d) = self.link.arrive(1, self.now) {
                if let Some(s) = self.sender.as_mut() {
                    s.handle_datagram(self.now, &d);
                }
            }
            if let Some(s) = self.sender.as_mut()
                && s.poll_timeout().is_some_and(|t| t <= self.now)
            {
                s.handle_timeout(self.now);
            }
            if let Some(r) = self.receiver.as_mut()
                && r.poll_timeout().is_some_and(|t| t <= self.now)
            {
                r.handle_timeout(self.now);
            }
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }
}

/// A file of `len` bytes drawn from `seed`, and where each side keeps its transfer.
struct Setup {
    _home: tempfile::TempDir,
    source: PathBuf,
    send_dir: PathBuf,
    recv_dir: PathBuf,
    dest: PathBuf,
    sha256: [u8; 32],
    len: usize,
    fingerprint: [u8; 32],
    manifest: Manifest,
}

fn setup(len: usize, rng: &mut StdRng) -> Setup {
    let home = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    let source = home.path().join("alice/outbox/file.bin");
    std::fs::create_dir_all(source.parent().unwrap()).unwrap();
    std::fs::write(&source, &data).unwrap();
    let id = TransferId::random(rng);
    let identity = TlsIdentity::generate(rng).unwrap();
    let send_dir = home.path().join("alice/home/transfers").join(id.hex());
    let sent = SendState::create(&send_dir, id, &source, identity.cert_der.clone(), identity.key_der.clone()).unwrap();
    let recv_dir = home.path().join("bob/home/transfers").join(id.hex());
    let dest = home.path().join("bob/files/file.bin");
    let offer = ReceiveOffer {
        id,
        manifest_hash: sent.manifest().hash(),
        cert_fingerprint: identity.fingerprint(),
        destination: dest.clone(),
    };
    ReceiveState::create(&recv_dir, offer).unwrap();
    Setup {
        sha256: Sha256::digest(&data).into(),
        len,
        source,
        send_dir,
        recv_dir,
        dest,
        fingerprint: identity.fingerprint(),
        manifest: sent.manifest().clone(),
        _home: home,
    }
}

fn shaped_link(seed: u64) -> Link {
    Link::new(Duration::from_millis(40), 0.01, Some(20_000_000), seed)
}

fn start_sender(s: &Setup, rng: &mut StdRng) -> Sender {
    Sender::new(SendState::open(&s.send_dir).unwrap(), rng).unwrap()
}

fn start_receiver(s: &Setup, now: Instant, rng: &mut StdRng) -> Receiver {
    Receiver::new(ReceiveState::open(&s.recv_dir).unwrap(), now, rng).unwrap()
}

fn both_done(w: &World) -> bool {
    let s = w.sender.as_ref().is_none_or(|s| s.outcome().is_some() && s.is_drained());
    let r = w.receiver.as_ref().is_none_or(|r| r.outcome().is_some() && r.is_drained());
    s && r
}

fn assert_intact(s: &Setup, placed: &Path) {
    assert_eq!(placed, s.dest);
    let got = std::fs::read(placed).unwrap();
    assert_eq!(got.len(), s.len);
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&got)), s.sha256, "the file arrived intact");
    assert!(!s.recv_dir.exists(), "the receiver's transfer folder is gone once the file is placed");
}

fn receiver_ok(w: &World) -> PathBuf {
    match w.receiver.as_ref().unwrap().outcome() {
        Some(Ok(p)) => p.clone(),
        other => panic!("receiver did not finish: {other:?}"),
    }
}

fn sender_ok(w: &World) {
    match w.sender.as_ref().unwrap().outcome() {
        Some(Ok(())) => {}
        other => panic!("sender did not finish: {other:?}"),
    }
}

#[test]
fn ten_megabytes_arrive_intact_over_a_lossy_shaped_path() {
    let mut rng = StdRng::seed_from_u64(1);
    let s = setup(TEN_MB, &mut rng);
    let now = Instant::now();
    let mut w = World::new(shaped_link(2), now);
    w.sender = Some(start_sender(&s, &mut rng));
    w.receiver = Some(start_receiver(&s, now, &mut rng));
    w.run_until(both_done);
    let placed = receiver_ok(&w);
    sender_ok(&w);
    assert_intact(&s, &placed);
    let sender = w.sender.as_ref().unwrap();
    let stats = sender.wire_stats();
    let p = sender.progress();
    assert_eq!((p.chunks, p.bytes), (s.manifest.chunks(), s.len as u64));
    assert_eq!(w.receiver.as_ref().unwrap().progress().chunks, s.manifest.chunks());
    assert!(w.link.lost > 0 && stats.lost_packets > 0, "the path lost datagrams and quinn saw it");
    let ratio = stats.udp_tx_bytes as f64 / s.len as f64;
    eprintln!(
        "10 MB in {:?} virtual ({:.1} Mbit/s), {} steps, sender sent {} datagrams, {} bytes ({ratio:.3}× the file), {} lost, {} tail-dropped",
        w.elapsed(),
        s.len as f64 * 8.0 / w.elapsed().as_secs_f64() / 1e6,
        w.steps,
        stats.udp_tx_datagrams,
        stats.udp_tx_bytes,
        w.link.lost,
        w.link.tail_dropped,
    );
    assert!(ratio <= 1.1, "sender's datagrams are {ratio:.3}× the file");
    assert!(w.elapsed() >= Duration::from_secs(4), "20 Mbit/s cannot carry 10 MB in less than 4 s");
}

#[test]
fn a_receiver_killed_half_way_resumes_without_the_chunks_it_had() {
    let mut rng = StdRng::seed_from_u64(3);
    let s = setup(TEN_MB, &mut rng);
    let now = Instant::now();
    let mut w = World::new(shaped_link(4), now);
    w.sender = Some(start_sender(&s, &mut rng));
    w.receiver = Some(start_receiver(&s, now, &mut rng));
    let half = s.manifest.chunks() / 2;
    w.run_until(|w| w.receiver.as_ref().unwrap().progress().chunks >= half);
    // kill -9: no flush, no close. The bitmap file names the flushed chunks; those written
    // since are in the partial file all the same (the kernel has them) and verify.
    let before = w.receiver.take().unwrap();
    let flushed = before.state().flushed().clone();
    let on_disk = before.state().held().clone();
    assert!(on_disk.count() >= half && flushed.count() < on_disk.count(), "some chunks were not flushed yet");
    drop(before);
    w.link.clear();
    let first = w.sender.take().unwrap();
    let first_bytes = first.wire_stats().udp_tx_bytes;
    assert!(first.outcome().is_none(), "the sender has not heard anything yet");
    drop(first);
    let reopened = ReceiveState::open(&s.recv_dir).unwrap();
    assert_eq!(reopened.held(), &on_disk, "the folder holds every chunk written, flushed or not");
    drop(reopened);

    // The receiver comes back and calls the sender again.
    w.sender = Some(start_sender(&s, &mut rng));
    w.receiver = Some(start_receiver(&s, w.now, &mut rng));
    w.run_until(both_done);
    let placed = receiver_ok(&w);
    sender_ok(&w);
    assert_intact(&s, &placed);
    let second = w.sender.as_ref().unwrap();
    let resent: Vec<u32> =
        (0..s.manifest.chunks()).filter(|&i| second.sent_chunks().get(i) && on_disk.get(i)).collect();
    assert!(resent.is_empty(), "chunks the receiver held were sent again: {resent:?}");
    assert_eq!(second.sent_chunks().count(), s.manifest.chunks() - on_disk.count());
    let total = first_bytes + second.wire_stats().udp_tx_bytes;
    let ratio = total as f64 / s.len as f64;
    eprintln!(
        "receiver killed at {half} chunks, {} on disk; the sender sent {total} bytes in all ({ratio:.3}× the file)",
        on_disk.count()
    );
    assert!(ratio <= 1.1, "sender's datagrams over both connections are {ratio:.3}× the file");
}

#[test]
fn a_sender_restarted_half_way_serves_the_same_offer_again() {
    let mut rng = StdRng::seed_from_u64(5);
    let s = setup(TEN_MB, &mut rng);
    let now = Instant::now();
    let mut w = World::new(shaped_link(6), now);
    w.sender = Some(start_sender(&s, &mut rng));
    w.receiver = Some(start_receiver(&s, now, &mut rng));
    let half = s.manifest.chunks() / 2;
    w.run_until(|w| w.receiver.as_ref().unwrap().progress().chunks >= half);
    let first_bytes = w.sender.as_ref().unwrap().wire_stats().udp_tx_bytes;
    w.sender = None; // the sender's process dies
    // The receiver hears nothing more and gives the connection up; what it wrote is kept.
    w.run_until(|w| w.receiver.as_ref().unwrap().outcome().is_some());
    match w.receiver.as_ref().unwrap().outcome() {
        Some(Err(TransferError::Lost(quinn_proto::ConnectionError::TimedOut))) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    let held = w.receiver.as_ref().unwrap().state().held().clone();
    w.receiver = None;
    w.link.clear();
    assert_eq!(ReceiveState::open(&s.recv_dir).unwrap().held(), &held, "a lost connection flushes every written chunk");

    // The restarted sender presents the certificate the offer names.
    let restarted = SendState::open(&s.send_dir).unwrap();
    let (cert, _) = restarted.identity();
    assert_eq!(<[u8; 32]>::from(Sha256::digest(cert)), s.fingerprint);
    w.sender = Some(Sender::new(restarted, &mut rng).unwrap());
    w.receiver = Some(start_receiver(&s, w.now, &mut rng));
    w.run_until(both_done);
    let placed = receiver_ok(&w);
    sender_ok(&w);
    assert_intact(&s, &placed);
    let second = w.sender.as_ref().unwrap();
    assert_eq!(second.sent_chunks().count(), s.manifest.chunks() - held.count());
    assert!((0..s.manifest.chunks()).all(|i| !(held.get(i) && second.sent_chunks().get(i))));
    let ratio = (first_bytes + second.wire_stats().udp_tx_bytes) as f64 / s.len as f64;
    eprintln!("sender restarted after {} chunks; {ratio:.3}× the file sent in all", held.count());
    assert!(ratio <= 1.1);
}

#[test]
fn a_wrong_certificate_fails_the_handshake_and_nothing_is_sent() {
    let mut rng = StdRng::seed_from_u64(7);
    let s = setup(300_000, &mut rng);
    let now = Instant::now();
    let mut w = World::new(Link::new(Duration::from_millis(40), 0.0, None, 8), now);
    // Someone on the path answers with a certificate of its own for the same transfer.
    let impostor = TlsIdentity::generate(&mut rng).unwrap();
    let state = SendState::open(&s.send_dir).unwrap();
    let impostor_dir = s.send_dir.with_file_name("impostor");
    let source = s.source.clone();
    let impostor_state =
        SendState::create(&impostor_dir, state.id(), &source, impostor.cert_der, impostor.key_der).unwrap();
    w.sender = Some(Sender::new(impostor_state, &mut rng).unwrap());
    w.receiver = Some(start_receiver(&s, now, &mut rng));
    w.run_until(|w| w.receiver.as_ref().unwrap().outcome().is_some() && w.sender.as_ref().unwrap().outcome().is_some());
    match w.receiver.as_ref().unwrap().outcome() {
        Some(Err(TransferError::Lost(quinn_proto::ConnectionError::TransportError(e)))) => {
            assert!(e.to_string().contains("certificate"), "refused for its certificate: {e}")
        }
        other => panic!("expected a handshake failure, got {other:?}"),
    }
    assert!(w.sender.as_ref().unwrap().outcome().unwrap().is_err());
    assert_eq!(w.sender.as_ref().unwrap().sent_chunks().count(), 0, "not one chunk went out");
    let after = ReceiveState::open(&s.recv_dir).unwrap();
    assert!(after.manifest().is_none(), "no manifest was taken");
    assert!(w.elapsed() < Duration::from_secs(2), "the handshake fails at once, not by a timeout");
}

#[test]
fn a_sender_that_lies_about_a_chunk_is_refused_and_the_chunk_never_written() {
    let mut rng = StdRng::seed_from_u64(9);
    let s = setup(20 * 65_536 + 100, &mut rng);
    let now = Instant::now();
    let mut w = World::new(Link::new(Duration::from_millis(40), 0.01, None, 10), now);
    let mut liar = start_sender(&s, &mut rng);
    liar.lie_about(5);
    w.sender = Some(liar);
    w.receiver = Some(start_receiver(&s, now, &mut rng));
    w.run_until(both_done);
    match w.receiver.as_ref().unwrap().outcome() {
        Some(Err(TransferError::State(StateError::BadChunk(5)))) => {}
        other => panic!("expected chunk 5 refused, got {other:?}"),
    }
    match w.sender.as_ref().unwrap().outcome() {
        Some(Err(TransferError::Refused { code, reason })) => {
            assert_eq!(*code, u64::from(close_code::BAD_CHUNK));
            assert!(reason.contains("chunk 5"), "{reason}");
        }
        other => panic!("expected the sender told why, got {other:?}"),
    }
    let held = w.receiver.as_ref().unwrap().state().held().clone();
    assert!(!held.get(5));
    assert_eq!(held.count(), 5, "the chunks before the lie were taken, none after");
    assert!(!s.dest.exists());
    w.receiver = None;
    let part = std::fs::read(s.recv_dir.join("data.part")).unwrap();
    assert!(part[5 * 65_536..6 * 65_536].iter().all(|&b| b == 0), "the lie left no byte on disk");

    // An honest sender then completes it, sending only what is missing.
    w.link.clear();
    w.sender = Some(start_sender(&s, &mut rng));
    w.receiver = Some(start_receiver(&s, w.now, &mut rng));
    w.run_until(both_done);
    assert_intact(&s, &receiver_ok(&w));
    assert_eq!(w.sender.as_ref().unwrap().sent_chunks().count(), s.manifest.chunks() - 5);
}

#[test]
fn a_request_for_another_transfer_is_refused() {
    let mut rng = StdRng::seed_from_u64(11);
    let s = setup(1000, &mut rng);
    let other = setup(1000, &mut rng);
    let now = Instant::now();
    let mut w = World::new(Link::new(Duration::from_millis(5), 0.0, None, 12), now);
    // The sender serves `other`'s offer with `s`'s certificate: the TLS check passes, the id does not.
    let st = SendState::open(&s.send_dir).unwrap();
    let (cert, key) = st.identity();
    let wrong = SendState::create(
        &other.send_dir.with_file_name("x"),
        TransferId([0xee; 16]),
        &other.source,
        cert.to_vec(),
        key.to_vec(),
    )
    .unwrap();
    w.sender = Some(Sender::new(wrong, &mut rng).unwrap());
    w.receiver = Some(start_receiver(&s, now, &mut rng));
    w.run_until(both_done);
    match w.receiver.as_ref().unwrap().outcome() {
        Some(Err(TransferError::Refused { code, .. })) => assert_eq!(*code, u64::from(close_code::UNKNOWN_TRANSFER)),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(w.sender.as_ref().unwrap().sent_chunks().count(), 0);
    assert!(matches!(w.sender.as_ref().unwrap().outcome(), Some(Err(TransferError::BadRequest(_)))));
}

#[test]
fn an_empty_file_and_a_one_byte_file_arrive() {
    for len in [0, 1] {
        let mut rng = StdRng::seed_from_u64(13 + len as u64);
        let s = setup(len, &mut rng);
        let now = Instant::now();
        let mut w = World::new(Link::new(Duration::from_millis(40), 0.0, None, 14), now);
        w.sender = Some(start_sender(&s, &mut rng));
        w.receiver = Some(start_receiver(&s, now, &mut rng));
        w.run_until(both_done);
        sender_ok(&w);
        assert_intact(&s, &receiver_ok(&w));
    }
}

#[test]
fn one_seed_gives_one_certificate() {
    let a = TlsIdentity::generate(&mut StdRng::seed_from_u64(1)).unwrap();
    let b = TlsIdentity::generate(&mut StdRng::seed_from_u64(1)).unwrap();
    let c = TlsIdentity::generate(&mut StdRng::seed_from_u64(2)).unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.fingerprint(), c.fingerprint());
}

#[test]
fn over_a_relay_capped_path_it_fills_the_cap_without_flooding_it() {
    // A relay's default cap, 128 KiB/s (about 1 Mbit/s), with a 100 ms queue and no other loss.
    let rate = 1_048_576;
    let mut rng = StdRng::seed_from_u64(15);
    let s = setup(1_500_000, &mut rng);
    let now = Instant::now();
    let mut w = World::new(Link::new(Duration::from_millis(40), 0.0, Some(rate), 16), now);
    w.sender = Some(start_sender(&s, &mut rng));
    w.receiver = Some(start_receiver(&s, now, &mut rng));
    w.run_until(|w| w.receiver.as_ref().unwrap().outcome().is_some());
    assert_intact(&s, &receiver_ok(&w));
    let stats = w.sender.as_ref().unwrap().wire_stats();
    let goodput = s.len as f64 * 8.0 / w.elapsed().as_secs_f64();
    let dropped = w.link.tail_dropped as f64 / stats.udp_tx_datagrams as f64;
    eprintln!(
        "1.5 MB over {rate} bit/s: {:?}, goodput {:.0}% of the cap, {} of {} datagrams dropped at the queue",
        w.elapsed(),
        goodput * 100.0 / rate as f64,
        w.link.tail_dropped,
        stats.udp_tx_datagrams
    );
    assert!(goodput >= 0.7 * rate as f64, "the cap is used");
    assert!(dropped <= 0.05, "the queue overflows for {:.1}% of datagrams", dropped * 100.0);
}

/// Runs a sender against a bare QUIC client that writes `make(id)` on the stream, on a
/// lossless 5 ms path, until the sender has an outcome.
fn sender_against_raw_client(make: impl Fn(TransferId) -> Vec<u8>, seed: u64) -> (Sender, Duration) {
    let mut rng = StdRng::seed_from_u64(seed);
    let s = setup(200_000, &mut rng);
    let bytes = make(SendState::open(&s.send_dir).unwrap().id());
    let start = Instant::now();
    let mut now = start;
    let mut link = Link::new(Duration::from_millis(5), 0.0, None, seed);
    let mut sender = start_sender(&s, &mut rng);
    let mut client = super::conn::QuicConn::client(s.fingerprint, now, &mut rng).unwrap();
    let mut stream = None;
    let mut written = 0;
    while sender.outcome().is_none() {
        assert!(now - start < Duration::from_secs(60), "the sender never decided");
        while let Some(d) = sender.poll_transmit(now) {
            link.send(0, now, &d);
        }
        while let Some(ev) = client.poll_event() {
            if matches!(ev, quinn_proto::Event::Connected) {
                stream = client.connection().and_then(|c| c.streams().open(quinn_proto::Dir::Bi));
            }
        }
        if let (Some(id), Some(c)) = (stream, client.connection()) {
            while written < bytes.len() {
                match c.send_stream(id).write(&bytes[written..]) {
                    Ok(n) => written += n,
                    Err(_) => break,
                }
            }
        }
        while let Some(d) = client.poll_transmit(now) {
            link.send(1, now, &d);
        }
        let next =
            [link.next_arrival(), sender.poll_timeout(), client.poll_timeout()].into_iter().flatten().min().unwrap();
        now = now.max(next);
        while let Some(d) = link.arrive(0, now) {
            client.handle_datagram(now, &d);
        }
        while let Some(d) = link.arrive(1, now) {
            sender.handle_datagram(now, &d);
        }
        if sender.poll_timeout().is_some_and(|t| t <= now) {
            sender.handle_timeout(now);
        }
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_timeout(now);
        }
    }
    (sender, now - start)
}

/// Builds what a bare client writes, from the transfer's id.
type MakeRequest = Box<dyn Fn(TransferId) -> Vec<u8>>;

#[test]
fn a_malformed_request_is_refused_at_once_and_no_chunk_goes_out() {
    use super::frames::{FrameError, Request, encode_request};
    fn request(id: TransferId) -> Vec<u8> {
        encode_request(&Request { id, held: None })
    }
    let cases: [(MakeRequest, &str); 4] = [
        (Box::new(|_| b"GET / HTTP/1.1\r\n\r\n".to_vec()), "bad magic"),
        (Box::new(|_| request(TransferId([0; 16]))), "unknown transfer"),
        (Box::new(move |id| [request(id), vec![7; 100]].concat()), "junk after the request"),
        (
            Box::new(|id| {
                let mut held = super::bitmap::ChunkBitmap::new(1000);
                held.set(0);
                encode_request(&Request { id, held: Some(held) })
            }),
            "a bitmap for another file",
        ),
    ];
    for (seed, (make, what)) in cases.into_iter().enumerate() {
        let (sender, took) = sender_against_raw_client(make, 31 + seed as u64);
        match (what, sender.outcome()) {
            ("bad magic", Some(Err(TransferError::Protocol(FrameError::BadMagic))))
            | ("unknown transfer", Some(Err(TransferError::BadRequest(_))))
            | ("junk after the request", Some(Err(TransferError::Protocol(FrameError::Unexpected(7)))))
            | ("a bitmap for another file", Some(Err(TransferError::BadRequest(_)))) => {}
            (_, other) => panic!("{what}: got {other:?}"),
        }
        assert_eq!(sender.sent_chunks().count(), 0, "{what}");
        assert!(took < Duration::from_secs(2), "{what}: refused at once, not by a timeout ({took:?})");
    }
}
