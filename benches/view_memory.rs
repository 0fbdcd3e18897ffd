//! What a super node holds in memory for its view of the cluster, by part, at 1,000,
//! 5,000 and 20,000 members (Skype's size): the membership (foca, every member learnt
//! from its own join packet), the view the agent publishes, the index's view and slot
//! map, and the authenticated peers (certificate, pairwise keys, replay window). Bytes
//! are the C allocator's bytes in use (glibc's `mallinfo2`, chunk overhead included), so
//! what the crypto library allocates itself counts too. Peers are measured over a sample of real handshakes (each peer needs its
//! own RSA key, too slow to make 20,000 of) and multiplied out; every other part is
//! built at full size. No packet leaves the process.
//!
//! ```text
//! cargo bench --bench view_memory            # 1,000, 5,000 and 20,000 members
//! cargo bench --bench view_memory -- 20000   # one size
//! ```

use confab::cluster::gossip::ClusterKey;
use confab::cluster::membership::{self, Output};
use confab::cluster::peers::Received;
use confab::cluster::{ClusterLimits, Member, Membership, Peers};
use confab::crypto::credential::{Claims, Credential, CredentialKind, TrustedKeys};
use confab::crypto::{KeyId, PrivateKey};
use confab::index::node::{Members, Node, SharedView};
use confab::index::{IndexConfig, SlotMap, SlotSpace};
use std::net::SocketAddr;
use std::time::Duration;

/// Bytes the C allocator holds in use, every arena: Rust's allocations and the crypto
/// library's (aws-lc allocates its key contexts itself, out of Rust's sight).
fn live() -> isize {
    // SAFETY: mallinfo2 reads the allocator's statistics and has no preconditions.
    let m = unsafe { libc::mallinfo2() };
    // Large blocks are mapped apart from the arenas.
    (m.uordblks + m.hblkhd) as isize
}

/// Peers shaken hands with to measure one peer's share.
const PEER_SAMPLE: usize = 16;
const NOW_MS: u64 = 1_800_000_000_000;

fn gossip_addr(i: usize) -> SocketAddr {
    // The simulated internet's range: addresses only, nothing is sent.
    SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 4000 + (i >> 16) as u16))
}

fn member(i: usize) -> Member {
    let a = gossip_addr(i);
    Member {
        gossip: a,
        bump: 1,
        node: Some(((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_be_bytes()),
        name: format!("sn{i}"),
        udp: Some(SocketAddr::new(a.ip(), 443)),
        tcp: Some(SocketAddr::new(a.ip(), 443)),
    }
}

fn mb(bytes: isize) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// A super node's membership after `n` others joined through it, each by its own join
/// packet; returns it with the bytes it grew by.
fn membership(n: usize) -> (Membership, isize) {
    let before = live();
    let mut me = Membership::new(member(n), membership::config(n as u32 + 1, Duration::from_secs(1)));
    for i in 0..n {
        let mut other = Membership::new(member(i), membership::config(n as u32 + 1, Duration::from_secs(1)));
        for o in other.join(member(n).gossip) {
            if let Output::Send(_, data) = o {
                drop(me.handle_data(&data));
            }
        }
    }
    let grew = live() - before;
    assert_eq!(me.alive().len(), n + 1, "every member joined");
    (me, grew)
}

/// One peer's share of the authenticated peers: `PEER_SAMPLE` real handshakes.
fn per_peer() -> isize {
    let login = PrivateKey::generate(2048).expect("a key");
    let trusted = TrustedKeys::new(vec![login.public().clone()]);
    let node = |i: usize| {
        let key = PrivateKey::generate(2048).expect("a key");
        let credential = Credential::issue(
            Claims {
                kind: CredentialKind::SuperNode,
                subject: format!("sn{i}"),
                public_key: key.public().clone(),
                issued_at: NOW_MS / 1000 - 10,
                expires_at: NOW_MS / 1000 + 86_400,
                serial: i as u64,
            },
            &login,
        );
        let a = gossip_addr(i);
        let addrs = (a, Some(SocketAddr::new(a.ip(), 443)), Some(SocketAddr::new(a.ip(), 443)));
        let cluster = ClusterKey::from_secret(&[7; 32]);
        (
            Peers::new(&key, credential, trusted.clone(), cluster, addrs, ClusterLimits::default(), NOW_MS)
                .expect("fits"),
            a,
        )
    };
    let (mut me, my_addr) = node(PEER_SAMPLE);
    let mut others: Vec<(Peers, SocketAddr)> = (0..PEER_SAMPLE).map(node).collect();
    let mut grew = 0;
    for (p, a) in &mut others {
        let hello = p.hello(my_addr, true, NOW_MS).expect("a hello");
        let before = live();
        let got = me.receive(*a, &hello, NOW_MS);
        // Less the answer it returns, which goes out and is dropped.
        let answer = match &got {
            Received::Hello { learned, send } => {
                assert!(learned.is_some(), "learnt");
                send.capacity() * std::mem::size_of::<(SocketAddr, Vec<u8>)>()
                    + send.iter().map(|(_, d)| d.capacity()).sum::<usize>()
            }
            other => panic!("the hello was not taken: {other:?}"),
        };
        grew += live() - before - answer as isize;
    }
    grew / PEER_SAMPLE as isize
}

fn ids(n: usize) -> Vec<KeyId> {
    (0..=n).map(|i| KeyId(member(i).node.expect("an id"))).collect()
}

fn main() {
    let only: Option<usize> = std::env::args().skip(1).find_map(|a| a.parse().ok());
    let sizes: Vec<usize> = only.map_or_else(|| vec![1_000, 5_000, 20_000], |n| vec![n]);
    eprintln!("measuring one peer's share over {PEER_SAMPLE} handshakes (RSA keys first) …");
    let peer = per_peer();
    println!(
        "{:>7}  {:>12}  {:>12}  {:>14}  {:>18}  {:>10}  {:>10}",
        "members", "membership", "agent view", "index view+map", "peers (measured×n)", "total", "per member"
    );
    for n in sizes {
        eprintln!("{n} members …");
        let (me, foca) = membership(n);
        let before = live();
        let view = me.alive();
        let agent_view = live() - before;

        let before = live();
        let cfg = IndexConfig::default();
        let empty = SlotMap::new(SlotSpace::new(cfg.slots).expect("slots"), cfg.replicas, &[]);
        let shared = SharedView::new(&ids(n));
        let map = shared.slot_map(&empty);
        let mut node = Node::new("sn".into(), KeyId(member(n).node.expect("an id")), cfg, 7);
        node.start(NOW_MS);
        node.view(NOW_MS, shared.clone());
        let index = live() - before;
        assert_eq!(map.members().len(), n + 1);

        let peers = peer * n as isize;
        let total = foca + agent_view + index + peers;
        println!(
            "{:>7}  {:>12}  {:>12}  {:>14}  {:>18}  {:>10}  {:>8} B",
            n,
            mb(foca),
            mb(agent_view),
            mb(index),
            format!("{} ({peer} B)", mb(peers)),
            mb(total),
            total / n as isize
        );
        drop((me, view, node, shared, map));
    }
}
