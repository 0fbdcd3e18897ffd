//! Media in and out: datagrams on port P and on a call's extra sockets, the media
//! clock (every due frame first), and what the path searches ask for beside it.

use super::*;

impl CallsCore {
    /// A datagram on port P (IPv4 or IPv6); false if it was no call's media.
    pub fn handle_datagram(&mut self, now: Now, from: SocketAddr, datagram: &[u8]) -> bool {
        self.on_media(now, from, datagram, None)
    }

    /// A datagram that came to extra socket `socket` of call `call`.
    pub fn handle_probe_datagram(
        &mut self,
        now: Now,
        call: [u8; 16],
        socket: u16,
        from: SocketAddr,
        datagram: &[u8],
    ) -> bool {
        self.on_media(now, from, datagram, Some((call, socket)))
    }

    pub(super) fn on_media(
        &mut self,
        now: Now,
        from: SocketAddr,
        datagram: &[u8],
        local: Option<([u8; 16], u16)>,
    ) -> bool {
        if let Some(taken) = self.on_file_datagram(from, datagram, local) {
            return taken;
        }
        let Some((tag, packet, relay_session)) = demux(datagram) else {
            self.stats.foreign += 1;
            return false;
        };
        let ms = self.ms(now);
        let found = match local {
            // Extra sockets take no relayed packets.
            Some((call, _)) if relay_session.is_none() && crate::call::media::call_tag(&call) == tag => Some(call),
            Some(_) => None,
            None => self
                .active
                .iter()
                .find(|(id, c)| crate::call::media::call_tag(id) == tag && c.media.is_some())
                .map(|(id, _)| *id),
        };
        let Some(id) = found else {
            self.stats.foreign += 1;
            return false;
        };
        let Some(c) = self.active.get_mut(&id) else { return false };
        let Some(m) = c.media.as_mut() else { return false };
        // A relayed packet counts only through our own leg of this call's relay session.
        let via = match relay_session {
            None => None,
            Some(s) => match m.relay_leg() {
                Some(leg) if leg.session == s && leg.addr == from => Some(leg),
                _ => return false,
            },
        };
        let mut out = Vec::new();
        let (heard, chosen) = m.on_datagram(from, packet, via, local.map(|(_, s)| s), ms, &mut out);
        if heard {
            c.call.on_heard(ms);
        }
        let actions = chosen.map(|p| c.call.on_media_up(p, ms)).unwrap_or_default();
        self.send_media(out);
        self.apply_call(now, id, actions, Vec::new());
        true
    }

    /// A file transfer's datagram (behind [`FILE_DEMUX`], directly or inside a relay
    /// header): kept for the host under the file call whose route it came on. None if it
    /// is not one; Some(false) if it is one for no call of ours.
    fn on_file_datagram(&mut self, from: SocketAddr, datagram: &[u8], local: Option<([u8; 16], u16)>) -> Option<bool> {
        let (inner, session) = match datagram.first() {
            Some(&FILE_DEMUX) => (datagram, None),
            Some(&crate::relay::packet::MAGIC) => {
                let (session, _, inner) = crate::relay::packet::parse(datagram).ok()?;
                (inner, Some(session.0))
            }
            _ => return None,
        };
        let payload = inner.strip_prefix(&[FILE_DEMUX])?;
        let found = self.active.iter().find(|(id, c)| {
            let socket = match local {
                Some((call, s)) if call == **id => Some(Some(s)),
                Some(_) => None,
                None => Some(None),
            };
            c.transfer.is_some()
                && socket.is_some_and(|s| c.media.as_ref().is_some_and(|m| m.is_route_of(from, session, s)))
        });
        let Some((id, _)) = found else {
            tracing::debug!(%from, ?session, ?local, "a file transfer datagram on no file call's route");
            self.stats.foreign += 1;
            return Some(false);
        };
        let id = *id;
        tracing::trace!(%from, len = payload.len(), "a file transfer datagram in");
        if self.file_in.len() >= FILE_IN_MAX {
            self.stats.dropped += 1;
        } else {
            self.file_in.push_back((id, payload.to_vec()));
        }
        Some(true)
    }

    /// The outcome of an effect we asked for.
    pub fn on_effect_result(&mut self, now: Now, result: EffectResult) {
        match result {
            EffectResult::ProbeSocketsOpened { call, opened } => {
                let ms = self.ms(now);
                // Sockets opened for a call that ended meanwhile are closed at once: the
                // shell holds them until told.
                let Some(c) = self.active.get_mut(&call) else {
                    self.effect(Effect::CloseProbeSockets { call, keep: Vec::new() });
                    return;
                };
                c.probe_opening = 0;
                let Some(m) = c.media.as_mut() else {
                    self.effect(Effect::CloseProbeSockets { call, keep: Vec::new() });
                    return;
                };
                c.probe_sockets = opened;
                tracing::debug!(opened, "probe sockets open for the birthday technique");
                let mut out = Vec::new();
                let chosen = m.sockets_opened(opened, ms, &mut out);
                let actions = chosen.map(|p| c.call.on_media_up(p, ms)).unwrap_or_default();
                self.send_media(out);
                self.apply_call(now, call, actions, Vec::new());
            }
            EffectResult::LocalIp(_) | EffectResult::Login(_) | EffectResult::Chat(_) | EffectResult::File(_) => {}
        }
    }

    /// What the calls' path searches asked for outside the media clock: extra sockets
    /// to open or close, relays to ask for.
    pub(super) fn service(&mut self) {
        // Sockets asked for and not yet answered count as open: the cap holds across calls
        // whose requests are in flight together.
        let mut open: usize =
            self.active.values().map(|c| usize::from(c.probe_sockets) + usize::from(c.probe_opening)).sum();
        let mut effects = Vec::new();
        let mut relays = Vec::new();
        for (id, c) in self.active.iter_mut() {
            let Some(m) = c.media.as_mut() else { continue };
            if let Some(keep) = m.take_socket_close() {
                let keep: Vec<u16> = keep.into_iter().filter(|s| *s < c.probe_sockets).collect();
                open -= usize::from(c.probe_sockets);
                // The indices kept stay valid: the count is one past the highest kept.
                c.probe_sockets = keep.iter().max().map_or(0, |s| s + 1);
                open += usize::from(c.probe_sockets);
                effects.push(Effect::CloseProbeSockets { call: *id, keep });
            }
            if let Some((n, peer)) = m.take_socket_request() {
                open -= usize::from(c.probe_sockets) + usize::from(c.probe_opening);
                c.probe_sockets = 0;
                let room = OPEN_MAX.saturating_sub(open);
                let n = n.min(u16::try_from(room).unwrap_or(u16::MAX));
                c.probe_opening = n;
                open += usize::from(n);
                effects.push(Effect::OpenProbeSockets { call: *id, n, peer });
            }
            if m.take_relay_request() {
                relays.push(*id);
            }
        }
        for e in effects {
            self.effect(e);
        }
        for id in relays {
            self.ask_relay(id);
        }
    }

    /// Timers: first every due media frame of every call, then the rest (silence
    /// checks, call deadlines, relay offers, relay connections, the path searches'
    /// requests).
    pub fn handle_timeout(&mut self, now: Now) {
        let ms = self.ms(now);
        // (1) The media clock, before anything else.
        let mut ups = Vec::new();
        let mut silent = false;
        let mut out = Vec::new();
        for (id, c) in self.active.iter_mut() {
            let Some(m) = c.media.as_mut() else { continue };
            let Some(mut due) = c.next_tick else { continue };
            let mut ticks = 0;
            while due <= now.mono {
                if ticks == TICKS_PER_STEP_MAX {
                    // More than a second late: the rest of the gap is lost.
                    let behind = now.mono.saturating_duration_since(due).as_millis() / TICK.as_millis();
                    self.stats.ticks_skipped += behind as u64 + 1;
                    due += TICK * (behind as u32 + 1);
                    break;
                }
                let connected = matches!(c.call.state(), State::Connected(_));
                if let Some(p) = m.tick(connected, ms, &mut out) {
                    ups.push((*id, p));
                }
                silent |= m.take_silence();
                ticks += 1;
                due += TICK;
            }
            c.next_tick = Some(due);
        }
        self.send_media(out);
        // (2) Everything else.
        for (id, p) in ups {
            let Some(c) = self.active.get_mut(&id) else { continue };
            let actions = c.call.on_media_up(p, ms);
            self.apply_call(now, id, actions, Vec::new());
        }
        if silent {
            // The super node that failed may be ours: a relay there, or the way the
            // other side's signals reach us. Ask it now (a second to answer) rather than
            // wait for the link's own silence limit.
            self.request(Asked::Check, Request::Keepalive { timeout: SILENCE_CHECK_TIMEOUT });
        }
        let due: Vec<[u8; 16]> = self
            .active
            .iter()
            .filter(|(_, c)| c.call.deadline_ms().is_some_and(|d| d <= ms))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(c) = self.active.get_mut(&id) {
                let actions = c.call.tick(ms);
                self.apply_call(now, id, actions, Vec::new());
            }
        }
        let mut offers = Vec::new();
        for c in self.active.values_mut() {
            if let Some(offer) = c.relay_offer_due(ms, RELAY_OFFER_REPEAT_MS) {
                offers.push((c.peer.clone(), c.peer_supernode.clone(), CallMessage::Signal(c.channel.seal(offer))));
            }
        }
        for (peer, via, m) in offers {
            self.send_call(&peer, via, &m);
        }
        let late: Vec<u32> = self
            .relay_conns
            .iter()
            .filter(|(_, r)| r.connecting.is_some_and(|d| d <= now.mono))
            .map(|(s, _)| *s)
            .collect();
        for session in late {
            tracing::warn!(session, "the relay did not accept our TCP leg in time");
            self.close_relay_conn(session);
        }
        self.service();
    }
}
