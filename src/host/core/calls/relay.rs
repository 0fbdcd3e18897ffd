//! Relay legs: our leg of a session, over UDP or over a TCP connection to the relay
//! that the shell makes, handed to the call's path search once reachable.

use super::*;
use crate::wire::message::RelayGrant;

/// A relay leg over TCP.
#[derive(Debug, Clone, Copy)]
pub(super) struct RelayConn {
    /// The connection.
    pub conn: ConnId,
    /// The call whose leg it carries.
    pub call: [u8; 16],
    /// The leg.
    pub leg: RelayLeg,
    /// Until connected: when to give up.
    pub connecting: Option<Instant>,
}

impl CallsCore {
    /// The super node granted the relay session call `id` asked for: our leg goes to the
    /// call's path search, the other leg's token to the other side, sealed end to end.
    pub(super) fn on_relay_granted(&mut self, now: Now, id: [u8; 16], g: RelayGrant) {
        let relay = match (g.code, g.relay) {
            (0, Some(relay)) => relay,
            (code, _) => {
                let code = crate::wire::ErrorCode::from_code(code);
                tracing::warn!(code = code.label(), "no relay for the call; it ends if no other path comes up");
                return;
            }
        };
        let tcp = self.relay_over_tcp();
        let ms = self.ms(now);
        let Some(c) = self.active.get_mut(&id).filter(|c| c.media.is_some()) else {
            self.release_relay(g.session);
            return;
        };
        // A relay session we opened before, now failed: free it, if its node lives.
        let old = c.relay_session.replace(g.session);
        let theirs = Signal::Relay { relay, session: g.session, leg: g.leg_b };
        c.relay_offer = Some((theirs.clone(), ms));
        let sealed = CallMessage::Signal(c.channel.seal(theirs));
        let (peer, via) = (c.peer.clone(), c.peer_supernode.clone());
        self.send_call(&peer, via, &sealed);
        let ours = RelayLeg { addr: relay, session: g.session, token: g.token_a, tcp };
        self.relay_leg_ready(now, id, ours);
        if let Some(old) = old {
            self.release_relay(old);
        }
        self.service();
    }

    /// Something happened on a TCP connection; false if it is not one of ours.
    pub fn handle_tcp(&mut self, now: Now, conn: ConnId, event: TcpEvent) -> bool {
        let Some((&session, &r)) = self.relay_conns.iter().find(|(_, r)| r.conn == conn) else { return false };
        match event {
            TcpEvent::Connected { .. } => {
                if r.connecting.is_some() {
                    if let Some(rc) = self.relay_conns.get_mut(&session) {
                        rc.connecting = None;
                    }
                    self.leg_up(now, r.call, r.leg);
                    self.service();
                }
            }
            TcpEvent::ConnectFailed(why) => {
                tracing::warn!(relay = %r.leg.addr, %why, "could not reach the relay over TCP");
                self.relay_conns.remove(&session);
            }
            TcpEvent::Closed => {
                tracing::debug!(relay = %r.leg.addr, "the relay closed our TCP leg");
                self.relay_conns.remove(&session);
            }
            // What a relay sends on our leg is a datagram from it, as over UDP.
            TcpEvent::Frame(bytes) if r.connecting.is_none() => {
                self.on_media(now, r.leg.addr, &bytes, None);
            }
            TcpEvent::Frame(_) => {}
        }
        true
    }

    /// Our leg of a relay session for call `id` is known: connect to the relay if we
    /// reach it over TCP, then hand the leg to the call's path search (or keep it until
    /// media starts).
    pub(super) fn relay_leg_ready(&mut self, now: Now, id: [u8; 16], leg: RelayLeg) {
        let Some(c) = self.active.get_mut(&id) else { return };
        let Some(m) = c.media.as_ref() else {
            // Not accepted yet: keep the latest leg and connect nowhere. A ringing phone
            // reaches out to no address a caller chose.
            c.pending_relay = Some(leg);
            return;
        };
        // The same leg offered again (the caller repeats its offer until a path is up):
        // keep the connection we have. The relay latches a leg to its first TCP
        // connection for good, so a second one would cut the leg off.
        let same = m.relay_leg() == Some(leg);
        let have = self.relay_conns.get(&leg.session).is_some_and(|r| r.leg == leg);
        if leg.tcp && !(same && have) {
            match self.relay_conns.get(&leg.session) {
                // Already connecting on it: the leg goes to the search once connected.
                Some(r) if r.leg == leg && r.connecting.is_some() => return,
                Some(r) if r.leg == leg => return self.leg_up(now, id, leg),
                _ => {}
            }
            self.close_relay_conn(leg.session);
            // One connect at a time per call: a newer leg supersedes one still connecting,
            // so a peer sending leg after leg cannot make us dial in parallel, and an
            // older leg that connects late cannot replace the newer one.
            let stale: Vec<u32> = self
                .relay_conns
                .iter()
                .filter(|(_, r)| r.call == id && r.connecting.is_some())
                .map(|(s, _)| *s)
                .collect();
            for s in stale {
                self.close_relay_conn(s);
            }
            let conn = ConnId(self.next_conn);
            self.next_conn = self.next_conn.wrapping_add(1).max(CONN_BASE);
            let connecting = Some(now.mono + RELAY_CONNECT_TIMEOUT);
            self.relay_conns.insert(leg.session, RelayConn { conn, call: id, leg, connecting });
            self.effect(Effect::TcpConnect { conn, addr: leg.addr, framing: Framing::Relay });
            return;
        }
        self.leg_up(now, id, leg);
    }

    /// Our leg is reachable: the path search probes through it.
    pub(super) fn leg_up(&mut self, now: Now, id: [u8; 16], leg: RelayLeg) {
        let ms = self.ms(now);
        let Some(m) = self.active.get_mut(&id).and_then(|c| c.media.as_mut()) else {
            self.close_relay_conn(leg.session);
            return;
        };
        // A replaced leg's connection goes with it.
        let old = m.relay_leg().filter(|old| old.session != leg.session).map(|old| old.session);
        let mut out = Vec::new();
        let chosen = m.relay_ready(leg, ms, &mut out);
        let actions = match (chosen, self.active.get_mut(&id)) {
            (Some(p), Some(c)) => c.call.on_media_up(p, ms),
            _ => Vec::new(),
        };
        if let Some(old) = old {
            self.close_relay_conn(old);
        }
        self.send_media(out);
        if !actions.is_empty() {
            self.apply_call(now, id, actions, Vec::new());
        }
    }

    pub(super) fn close_relay_conn(&mut self, session: u32) {
        if let Some(r) = self.relay_conns.remove(&session) {
            self.effect(Effect::TcpClose { conn: r.conn });
        }
    }

    pub(super) fn ask_relay(&mut self, id: [u8; 16]) {
        let Some(c) = self.active.get_mut(&id) else { return };
        if self.link.is_none() || self.link_down {
            c.relay_waiting = true;
            return;
        }
        let callee = c.peer_credential.encode();
        self.request(Asked::Relay(id), Request::RelayAllocate { callee });
    }
}
