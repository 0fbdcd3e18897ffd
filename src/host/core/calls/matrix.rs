//! The NAT matrix on whole calls: every caller × callee pair of {public, cone, symmetric,
//! UDP-blocked}, two hosts behind one cone and behind one symmetric router, and a
//! symmetric NAT that hands out ports in sequence against a cone both ways, each a call
//! between two [`super::CallsCore`]s from the invite to the hang-up. The paths are those
//! of the namespace testbed (`tests/nat_matrix.rs`) and of the media-only matrix
//! (`sim::matrix`).

use super::tests::{connected_path, hang_up_and_check_tones, key, paths, place, router};
use crate::host::core::calls::CallsConfig;
use crate::host::core::sim::calls::{CallsWorld, Seat, Signalling};
use std::net::IpAddr;

/// Longest a case may take, from the accept, to settle on its paths: the birthday
/// technique's hard side probes for `HARD_FOR_MS`.
const SETTLE_MS_MAX: u64 = crate::call::birthday::HARD_FOR_MS + 1_000;
/// Once settled, what was on its way on the first path has arrived, and a side whose
/// first punched route differs from the other's has followed the other's voice there…
const WARM_MS: u64 = crate::call::path::LATCH_QUIET_MS + 300;
/// …then talk on the final path before the hang-up.
const TALK_MS: u64 = 1_000;

/// The world of one case: the caller on router 0, the callee on router 1, or on router 0
/// too (`same`), on its own LAN address, both offering it to the other as buddies.
fn world(seed: u64, caller: &str, callee: &str) -> CallsWorld {
    let (r0, k0, ip0) = router(caller, 1);
    let mut routers = vec![r0];
    let b = if callee == "same" {
        Seat { router: 0, ip: IpAddr::from([10, 1, 2, 2]), nat: k0 }
    } else {
        let (r1, k1, ip1) = router(callee, 2);
        routers.push(r1);
        Seat { router: 1, ip: ip1, nat: k1 }
    };
    let mut w = CallsWorld::new(seed, routers, Signalling::default());
    w.add_host("alice", key(0), Seat { router: 0, ip: ip0, nat: k0 }, "sn-a", CallsConfig::default());
    w.add_host("bob", key(1), b, "sn-a", CallsConfig::default());
    if callee == "same" {
        w.befriend(0, 1);
        w.hosts[0].env.interfaces = vec![ip0];
        w.hosts[1].env.interfaces = vec![b.ip];
    }
    w
}

fn run(caller: &str, callee: &str, want: [&str; 2]) {
    let mut w = world(1, caller, callee);
    let id = place(&mut w, 0, 1, true);
    let deadline = w.now_ms + SETTLE_MS_MAX;
    let settled = w.run_while_not(deadline, |w| [connected_path(w, 0, id), connected_path(w, 1, id)] == want.map(Some));
    let got = [connected_path(&w, 0, id), connected_path(&w, 1, id)];
    assert!(settled, "{caller} → {callee}: paths {got:?}, drops {:?}", w.drops);
    w.run_until(w.now_ms + WARM_MS);
    let relayed_before = w.relayed();
    w.run_until(w.now_ms + TALK_MS);
    assert_eq!(paths(&w, 0, &id).last().map(String::as_str), Some(want[0]), "the path holds");
    // The relay carries the talk exactly when the path says so.
    let relayed = w.relayed() - relayed_before;
    if want[0].starts_with("relayed") {
        assert!(relayed >= 2 * 40, "{caller} → {callee}: the relay forwarded {relayed}");
    } else {
        assert_eq!(relayed, 0, "{caller} → {callee}: the relay forwarded {relayed} on a {} path", want[0]);
    }
    hang_up_and_check_tones(&mut w, 0, 1, id);
    assert_eq!(w.released, w.granted, "every relay session released");
}

macro_rules! cases {
    ($($name:ident: $a:literal -> $b:literal => $pa:literal, $pb:literal;)*) => {
        $(
            #[test]
            fn $name() {
                run($a, $b, [$pa, $pb]);
            }
        )*
    };
}

cases! {
    public_to_public: "public" -> "public" => "direct", "direct";
    public_to_cone: "public" -> "cone" => "direct", "direct";
    public_to_symmetric: "public" -> "symmetric" => "direct", "direct";
    public_to_udp_blocked: "public" -> "udp-blocked" => "relayed_tcp", "relayed_tcp";
    cone_to_public: "cone" -> "public" => "direct", "direct";
    cone_to_cone: "cone" -> "cone" => "punched", "punched";
    cone_to_symmetric: "cone" -> "symmetric" => "punched", "punched";
    cone_to_udp_blocked: "cone" -> "udp-blocked" => "relayed_tcp", "relayed_tcp";
    symmetric_to_public: "symmetric" -> "public" => "direct", "direct";
    symmetric_to_cone: "symmetric" -> "cone" => "punched", "punched";
    symmetric_to_symmetric: "symmetric" -> "symmetric" => "relayed_udp", "relayed_udp";
    symmetric_to_udp_blocked: "symmetric" -> "udp-blocked" => "relayed_tcp", "relayed_tcp";
    udp_blocked_to_public: "udp-blocked" -> "public" => "relayed_tcp", "relayed_tcp";
    udp_blocked_to_cone: "udp-blocked" -> "cone" => "relayed_tcp", "relayed_tcp";
    udp_blocked_to_symmetric: "udp-blocked" -> "symmetric" => "relayed_tcp", "relayed_tcp";
    udp_blocked_to_udp_blocked: "udp-blocked" -> "udp-blocked" => "relayed_tcp", "relayed_tcp";
    cone_to_cone_same_router: "cone" -> "same" => "direct", "direct";
    symmetric_to_symmetric_same_router: "symmetric" -> "same" => "direct", "direct";
    sequential_to_cone: "sequential" -> "cone" => "punched", "punched";
    cone_to_sequential: "cone" -> "sequential" => "punched", "punched";
}
