//! The testbeds' link emulator: its scheduling rules as a pure function (no I/O), then
//! one real link between two namespaces this test creates (10.250.0.0/24 inside them),
//! timed with a UDP echo and a burst. The namespace test needs root, `ip`, `nft` and
//! `/dev/net/tun`: without them it skips, unless CI=true.

mod common;

use common::link::{Link, in_ns, prerequisites_missing};
use common::shape::{Scheduler, Shape, Verdict};
use common::testbed::Testbed;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// 12 Mbit/s: 1500 bytes take exactly 1 ms.
fn shape(queue_bytes: u64, loss: f64) -> Shape {
    Shape { delay: ms(20), rate_bps: 12_000_000, queue_bytes, loss }
}

#[test]
fn packets_arriving_together_leave_one_serialisation_apart_then_the_delay() {
    let mut s = Scheduler::new(shape(1_000_000, 0.0), 1);
    let out: Vec<Verdict> = (0..4).map(|_| s.admit(ms(5), 1500)).collect();
    let want: Vec<Verdict> = (1..=4).map(|k| Verdict::Deliver(ms(5) + ms(k) + ms(20))).collect();
    assert_eq!(out, want);
}

#[test]
fn a_packet_on_an_idle_link_waits_for_nothing_but_its_own_serialisation() {
    let mut s = Scheduler::new(shape(1_000_000, 0.0), 1);
    assert_eq!(s.admit(ms(0), 1500), Verdict::Deliver(ms(21)));
    // The serialiser was free again at 1 ms.
    assert_eq!(s.admit(ms(100), 750), Verdict::Deliver(ms(100) + Duration::from_micros(500) + ms(20)));
}

#[test]
fn the_queue_drops_its_tail_and_takes_packets_again_once_it_drains() {
    let mut s = Scheduler::new(shape(4500, 0.0), 1);
    let burst: Vec<Verdict> = (0..5).map(|_| s.admit(ms(0), 1500)).collect();
    assert_eq!(
        burst,
        [
            Verdict::Deliver(ms(21)),
            Verdict::Deliver(ms(22)),
            Verdict::Deliver(ms(23)),
            Verdict::QueueFull,
            Verdict::QueueFull
        ]
    );
    // At 2 ms one packet is left ahead (1500 bytes): two more fit, a third would not.
    assert_eq!(s.admit(ms(2), 1500), Verdict::Deliver(ms(24)));
    assert_eq!(s.admit(ms(2), 1500), Verdict::Deliver(ms(25)));
    assert_eq!(s.admit(ms(2), 1500), Verdict::QueueFull);
}

#[test]
fn losses_come_at_the_configured_rate_and_repeat_with_the_seed() {
    let verdicts = |seed: u64, loss: f64| {
        let mut s = Scheduler::new(shape(1_000_000, loss), seed);
        // Spaced out: only loss can drop them.
        (0..100_000u64).map(|i| s.admit(ms(2 * i), 1500)).collect::<Vec<_>>()
    };
    let lost = |v: &[Verdict]| v.iter().filter(|v| **v == Verdict::Lost).count();
    let one = verdicts(7, 0.01);
    assert!((900..=1100).contains(&lost(&one)), "{} of 100000 lost at 1%", lost(&one));
    assert_eq!(one, verdicts(7, 0.01), "the same seed, the same losses");
    assert_ne!(one, verdicts(8, 0.01), "another seed, other losses");
    assert_eq!(lost(&verdicts(7, 0.0)), 0);
    assert_eq!(lost(&verdicts(7, 1.0)), 100_000);
}

/// 20 ms each way, 20 Mbit/s, no loss, a queue that holds the whole burst.
fn measured() -> Shape {
    Shape { loss: 0.0, queue_bytes: 4_000_000, ..Shape::wan() }
}

#[test]
fn a_link_between_namespaces_has_the_configured_round_trip_and_rate() {
    if prerequisites_missing() {
        return;
    }
    let mut bed = Testbed::new(format!("lk{}", std::process::id() % 100_000));
    let (a, b) = (bed.add_ns("a"), bed.add_ns("b"));
    // Declared after the testbed: dropped (devices gone) before its namespaces are.
    let link = Link::new((&a, "lk0", "10.250.0.1/24"), (&b, "lk0", "10.250.0.2/24"), measured(), 1);
    let before = link.counters[0].get();

    // An echo in b, and a sink that timestamps a burst.
    let echo = in_ns(&b, || {
        let s = UdpSocket::bind("10.250.0.2:7000").unwrap();
        s.set_read_timeout(Some(ms(100))).unwrap();
        let (mut buf, t) = ([0u8; 64], Instant::now());
        let mut echoed = 0;
        while echoed < 20 && t.elapsed() < Duration::from_secs(30) {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                s.send_to(&buf[..n], from).unwrap();
                echoed += 1;
            }
        }
    });
    const BURST: usize = 1000;
    const LEN: usize = 1200;
    let sink = in_ns(&b, || {
        let s = UdpSocket::bind("10.250.0.2:7001").unwrap();
        s.set_read_timeout(Some(ms(500))).unwrap();
        let (mut buf, mut at, t) = ([0u8; 2048], vec![], Instant::now());
        // Until the burst is in, or half a second passes without a packet after the first.
        while at.len() < BURST && t.elapsed() < Duration::from_secs(20) {
            match s.recv(&mut buf) {
                Ok(_) => at.push(Instant::now()),
                Err(_) if !at.is_empty() => break,
                Err(_) => {}
            }
        }
        at
    });

    let rtts = in_ns(&a, || {
        let s = UdpSocket::bind("10.250.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut rtts = vec![];
        for i in 0..20u8 {
            let t = Instant::now();
            s.send_to(&[i; 32], "10.250.0.2:7000").unwrap();
            let mut buf = [0u8; 64];
            if s.recv(&mut buf).is_ok_and(|n| buf[..n] == [i; 32]) {
                rtts.push(t.elapsed());
            }
        }
        rtts
    })
    .join()
    .unwrap();
    echo.join().unwrap();
    let mut sorted = rtts.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    eprintln!("round trips over 20 ms each way: {sorted:?}");
    assert!(rtts.len() >= 19, "{} of 20 echoes came back", rtts.len());
    assert!(sorted[0] >= ms(40), "faster than the configured delay: {sorted:?}");
    // Room for a loaded machine waking the emulator late; the pure schedule is exact above.
    assert!(median <= ms(60), "median {median:?} for 40 ms configured");

    in_ns(&a, || {
        let s = UdpSocket::bind("10.250.0.1:0").unwrap();
        for _ in 0..BURST {
            s.send_to(&[7u8; LEN], "10.250.0.2:7001").unwrap();
        }
    })
    .join()
    .unwrap();
    let at = sink.join().unwrap();
    assert!(at.len() >= BURST * 95 / 100, "{} of {BURST} datagrams arrived", at.len());
    // IP and UDP headers are on the wire too.
    let bits = ((at.len() - 1) * (LEN + 28) * 8) as f64;
    let rate = bits / (at[at.len() - 1] - at[0]).as_secs_f64();
    eprintln!("{} datagrams at {:.2} Mbit/s for 20 configured", at.len(), rate / 1e6);
    assert!((15e6..=25e6).contains(&rate), "{:.2} Mbit/s for 20 configured", rate / 1e6);

    let after = link.counters[0].get();
    assert!(after.0 - before.0 >= (at.len() + 20) as u64, "forwarded {before:?} → {after:?}");
    assert_eq!((after.1, after.2, after.3), (0, 0, 0), "no loss configured, the queue holds the burst");
}
