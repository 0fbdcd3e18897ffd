//! Finding a media path, as plain logic. Each side probes every candidate of the other
//! (its own address, and the address its super node sees through its NAT) every probe
//! interval; a probe is answered on the path it came by, and the first answer picks the
//! path. Probes that cross in flight open both NATs' mappings, which is UDP hole
//! punching. If no answer comes within the punch time (symmetric NATs, or UDP
//! filtered), the caller asks its super node for a relay and both sides probe through it
//! — at once when either side has no address to try (relay only, or UDP blocked). A
//! host whose UDP is blocked reaches the relay over TCP; each side says in its probes
//! and answers whether it does, so both name the path `relayed_tcp`.
//!
//! Probes and answers are media packets (`call::media`), sealed under the call's keys,
//! so only the other host can answer one: nobody can steer a call's media elsewhere.

use super::invite::{Candidate, CandidateKind};
use super::signal::{Path, Role};
use std::net::SocketAddr;

/// A relay leg: where to send, and what to put in the relay header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLeg {
    /// The relay's UDP address.
    pub addr: SocketAddr,
    /// The relay session.
    pub session: u32,
    /// This side's token.
    pub token: [u8; 16],
    /// We reach the relay over TCP (our UDP is blocked).
    pub tcp: bool,
}

/// Where media goes once a path is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Straight to the other host's address.
    To(SocketAddr),
    /// Through a relay leg.
    Relay(RelayLeg),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathAction {
    /// Send a probe on this route.
    Probe(Route),
    /// Answer a probe on the route it came by.
    Answer(Route),
    /// Ask our super node for a relay session (the caller, once, after the punch time).
    AllocateRelay,
    /// Media goes this way from now on.
    Chosen(Route, Path),
}

/// Timing of the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathTiming {
    /// Between rounds of probes.
    pub probe_interval_ms: u64,
    /// How long direct and punched paths are tried before a relay is asked for.
    pub punch_ms: u64,
}

impl Default for PathTiming {
    fn default() -> Self {
        Self { probe_interval_ms: 100, punch_ms: 3000 }
    }
}

/// The search for one call's path.
#[derive(Debug, Clone)]
pub struct PathFinder {
    role: Role,
    peer: Vec<Candidate>,
    timing: PathTiming,
    started_ms: u64,
    next_probe_ms: u64,
    relay: Option<RelayLeg>,
    relay_asked: bool,
    chosen: Option<(Route, Path)>,
    public: bool,
}

impl PathFinder {
    /// A search by `role` towards the other side's `candidates`, from `now_ms`.
    pub fn new(role: Role, candidates: &[Candidate], timing: PathTiming, now_ms: u64) -> Self {
        Self {
            role,
            peer: candidates.iter().filter(|c| c.kind != CandidateKind::Relay).copied().collect(),
            timing,
            started_ms: now_ms,
            next_probe_ms: now_ms,
            relay: None,
            relay_asked: false,
            chosen: None,
            public: false,
        }
    }

    /// We have a public address (no NAT between us and the internet): any path that does
    /// not go through a relay is direct for us, whatever the other side's NAT did.
    pub fn set_public(&mut self, public: bool) {
        self.public = public;
    }

    /// Our relay leg, once we have one.
    pub fn relay(&self) -> Option<RelayLeg> {
        self.relay
    }

    /// The path chosen, once there is one.
    pub fn chosen(&self) -> Option<(Route, Path)> {
        self.chosen
    }

    /// The clock: probes due, and the caller's relay request once punching had its time.
    pub fn tick(&mut self, now_ms: u64) -> Vec<PathAction> {
        let mut out = Vec::new();
        if self.chosen.is_some() {
            return out;
        }
        if now_ms >= self.next_probe_ms {
            self.next_probe_ms = now_ms + self.timing.probe_interval_ms;
            let mut seen = Vec::new();
            for c in &self.peer {
                if !seen.contains(&c.addr) {
                    seen.push(c.addr);
                    out.push(PathAction::Probe(Route::To(c.addr)));
                }
            }
            if let Some(r) = self.relay {
                out.push(PathAction::Probe(Route::Relay(r)));
            }
        }
        // With no address of the other side to try, there is nothing to punch.
        if self.role == Role::Caller
            && !self.relay_asked
            && self.relay.is_none()
            && (self.peer.is_empty() || now_ms >= self.started_ms + self.timing.punch_ms)
        {
            self.relay_asked = true;
            out.push(PathAction::AllocateRelay);
        }
        out
    }

    /// Our relay leg is ready (the caller's grant, or the leg the caller sent us). A new
    /// leg while media goes through an old one means the old relay failed (the caller
    /// replaced it): the search starts again on the new one.
    pub fn relay_ready(&mut self, leg: RelayLeg, now_ms: u64) -> Vec<PathAction> {
        if matches!(self.chosen, Some((Route::Relay(old), _)) if old != leg) {
            self.chosen = None;
        }
        self.relay = Some(leg);
        self.next_probe_ms = now_ms;
        self.tick(now_ms)
    }

    /// An authenticated probe arrived by `route`: answer it there. (It says nothing yet
    /// about whether our packets reach the other side; its answer to ours will.) While
    /// searching, also probe back at once on that route if it is one we probe anyway (a
    /// triggered check, as ICE has, RFC 8445 §7.3.1.4): the side that started first need
    /// not wait for its next round to be answered.
    pub fn on_probe(&mut self, route: Route) -> Vec<PathAction> {
        let ours = match route {
            Route::Relay(leg) => Some(leg) == self.relay,
            Route::To(addr) => self.peer.iter().any(|c| c.addr == addr),
        };
        let mut out = vec![PathAction::Answer(route)];
        if self.chosen.is_none() && ours {
            out.push(PathAction::Probe(route));
        }
        out
    }

    /// An authenticated answer to one of our probes arrived by `route` (`peer_tcp`: the
    /// other side said it reaches the relay over TCP): the first picks the path. A
    /// relayed path is replaced by a direct one if one answers later (a relay is the
    /// last resort), never the other way round.
    pub fn on_answer(&mut self, route: Route, peer_tcp: bool) -> Vec<PathAction> {
        let path = match route {
            Route::Relay(leg) if Some(leg) != self.relay => return Vec::new(),
            Route::Relay(leg) if leg.tcp || peer_tcp => Path::RelayedTcp,
            Route::Relay(_) => Path::RelayedUdp,
            // Only an address we probed can pick the path: a captured answer replayed
            // from elsewhere cannot steer the media away (as ICE checks address pairs).
            Route::To(addr) if !self.peer.iter().any(|c| c.addr == addr) => return Vec::new(),
            Route::To(addr) => {
                let own = self.peer.iter().any(|c| c.kind == CandidateKind::Host && c.addr == addr);
                if own || self.public { Path::Direct } else { Path::Punched }
            }
        };
        let better = match self.chosen {
            None => true,
            Some((_, Path::RelayedUdp | Path::RelayedTcp)) => !matches!(path, Path::RelayedUdp | Path::RelayedTcp),
            Some(_) => false,
        };
        if !better {
            return Vec::new();
        }
        self.chosen = Some((route, path));
        vec![PathAction::Chosen(route, path)]
    }

    /// The chosen path failed (the relay died, the NAT mapping went): search again,
    /// straight to the relay step when punching failed before. Nothing to do while no
    /// path is chosen (a new relay leg may have just restarted the search).
    pub fn restart(&mut self, now_ms: u64) -> Vec<PathAction> {
        let Some((route, _)) = self.chosen.take() else { return Vec::new() };
        let relayed = matches!(route, Route::Relay(_));
        self.next_probe_ms = now_ms;
        if relayed {
            // Ask for a fresh relay at once (its node may be the one that died).
            self.relay = None;
            self.relay_asked = false;
            self.started_ms = now_ms.saturating_sub(self.timing.punch_ms);
        } else {
            self.started_ms = now_ms;
        }
        self.tick(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(kind: CandidateKind, a: &str) -> Candidate {
        Candidate { kind, addr: a.parse().unwrap() }
    }

    fn leg() -> RelayLeg {
        RelayLeg { addr: "198.18.0.1:33036".parse().unwrap(), session: 7, token: [1; 16], tcp: false }
    }

    #[test]
    fn probes_every_candidate_and_the_first_answer_picks_direct_or_punched() {
        let peer = [cand(CandidateKind::Host, "10.0.0.2:5000"), cand(CandidateKind::Public, "198.18.1.2:6000")];
        let mut p = PathFinder::new(Role::Callee, &peer, PathTiming::default(), 0);
        assert_eq!(p.tick(0).len(), 2);
        assert!(p.tick(50).is_empty(), "one round per probe interval");
        assert_eq!(p.tick(100).len(), 2);
        let to = Route::To("198.18.1.2:6000".parse().unwrap());
        assert_eq!(p.on_probe(to), vec![PathAction::Answer(to), PathAction::Probe(to)], "a triggered probe");
        let stranger = Route::To("198.18.9.9:1".parse().unwrap());
        assert_eq!(p.on_probe(stranger), vec![PathAction::Answer(stranger)], "never probe an address not offered");
        assert_eq!(p.on_answer(to, false), vec![PathAction::Chosen(to, Path::Punched)]);
        assert!(p.tick(200).is_empty(), "no more probes once chosen");
        assert!(p.on_answer(Route::To("10.0.0.2:5000".parse().unwrap()), false).is_empty(), "the first answer stands");
        let mut q = PathFinder::new(Role::Callee, &peer, PathTiming::default(), 0);
        assert!(q.on_answer(Route::To("203.0.113.9:1".parse().unwrap()), false).is_empty(), "not an address we probed");
        assert!(q.on_answer(Route::Relay(leg()), false).is_empty(), "not our relay leg");

        let public = [cand(CandidateKind::Host, "198.18.1.9:7000"), cand(CandidateKind::Public, "198.18.1.9:7000")];
        let mut p = PathFinder::new(Role::Caller, &public, PathTiming::default(), 0);
        assert_eq!(p.tick(0).len(), 1, "the same address is probed once");
        let r = Route::To("198.18.1.9:7000".parse().unwrap());
        assert_eq!(p.on_answer(r, false), vec![PathAction::Chosen(r, Path::Direct)]);
    }

    #[test]
    fn the_caller_asks_for_a_relay_after_the_punch_time_and_a_direct_path_still_wins() {
        let peer = [cand(CandidateKind::Public, "198.18.1.2:6000")];
        let t = PathTiming { probe_interval_ms: 100, punch_ms: 1000 };
        let mut caller = PathFinder::new(Role::Caller, &peer, t, 0);
        let mut callee = PathFinder::new(Role::Callee, &peer, t, 0);
        assert!(!caller.tick(900).contains(&PathAction::AllocateRelay));
        assert!(caller.tick(1000).contains(&PathAction::AllocateRelay));
        assert!(!caller.tick(1100).contains(&PathAction::AllocateRelay), "asked once");
        assert!(!callee.tick(5000).contains(&PathAction::AllocateRelay), "the callee waits for the caller's relay");
        let out = caller.relay_ready(leg(), 1200);
        assert!(out.contains(&PathAction::Probe(Route::Relay(leg()))));
        assert_eq!(
            caller.on_answer(Route::Relay(leg()), false),
            vec![PathAction::Chosen(Route::Relay(leg()), Path::RelayedUdp)]
        );
        // A late answer on the punched path replaces the relay.
        let to = Route::To("198.18.1.2:6000".parse().unwrap());
        assert_eq!(caller.on_answer(to, false), vec![PathAction::Chosen(to, Path::Punched)]);
        assert!(caller.on_answer(Route::Relay(leg()), false).is_empty());
    }

    #[test]
    fn a_failed_relay_is_replaced_at_once() {
        let peer = [cand(CandidateKind::Public, "198.18.1.2:6000")];
        let t = PathTiming { probe_interval_ms: 100, punch_ms: 1000 };
        let mut caller = PathFinder::new(Role::Caller, &peer, t, 0);
        caller.tick(1000);
        caller.relay_ready(leg(), 1000);
        caller.on_answer(Route::Relay(leg()), false);
        let out = caller.restart(20_000);
        assert!(out.contains(&PathAction::AllocateRelay), "{out:?}");
        assert!(caller.chosen().is_none());
    }

    #[test]
    fn no_address_to_try_means_a_relay_at_once_and_tcp_on_either_side_names_the_path() {
        let t = PathTiming { probe_interval_ms: 100, punch_ms: 3000 };
        let mut caller = PathFinder::new(Role::Caller, &[], t, 0);
        assert!(caller.tick(0).contains(&PathAction::AllocateRelay), "nothing to punch");
        let udp = leg();
        caller.relay_ready(udp, 10);
        let r = Route::Relay(udp);
        assert_eq!(caller.on_answer(r, true), vec![PathAction::Chosen(r, Path::RelayedTcp)], "the callee's leg is TCP");
        let tcp = RelayLeg { tcp: true, ..leg() };
        let mut callee = PathFinder::new(Role::Callee, &[], t, 0);
        assert!(!callee.tick(0).contains(&PathAction::AllocateRelay));
        callee.relay_ready(tcp, 10);
        let r = Route::Relay(tcp);
        assert_eq!(callee.on_answer(r, false), vec![PathAction::Chosen(r, Path::RelayedTcp)], "our own leg is TCP");
    }

    #[test]
    fn a_new_relay_leg_replaces_a_failed_one_on_both_sides() {
        let t = PathTiming { probe_interval_ms: 100, punch_ms: 0 };
        let old = leg();
        let new = RelayLeg { session: 8, token: [2; 16], ..leg() };
        let mut callee = PathFinder::new(Role::Callee, &[], t, 0);
        callee.relay_ready(old, 0);
        callee.on_answer(Route::Relay(old), false);
        // The caller's new leg arrives before the callee noticed the silence itself…
        let out = callee.relay_ready(new, 5_000);
        assert!(out.contains(&PathAction::Probe(Route::Relay(new))), "{out:?}");
        assert!(callee.chosen().is_none());
        // …so its own restart, a moment later, leaves the new leg alone.
        assert!(callee.restart(5_100).is_empty());
        assert_eq!(callee.relay(), Some(new));
        assert_eq!(
            callee.on_answer(Route::Relay(new), false),
            vec![PathAction::Chosen(Route::Relay(new), Path::RelayedUdp)]
        );
        // The other order: the callee restarts first and waits for the caller's new leg.
        let mut callee = PathFinder::new(Role::Callee, &[], t, 0);
        callee.relay_ready(old, 0);
        callee.on_answer(Route::Relay(old), false);
        assert!(!callee.restart(5_000).contains(&PathAction::AllocateRelay), "only the caller opens relays");
        assert_eq!(callee.relay(), None, "the failed leg is forgotten");
        assert!(callee.relay_ready(new, 5_100).contains(&PathAction::Probe(Route::Relay(new))));
    }
}
