//! Call messages from the other host: invites (checked, replayed ones refused, the
//! privacy rules applied), replies and sealed signals; and the candidates we offer.

use super::*;

impl CallsCore {
    /// A notice from another host through our super node: true if it was a call's
    /// (taken here), false if it is someone else's business (presence, list changes).
    pub fn on_notice(&mut self, now: Now, body: &[u8], env: &impl Surroundings) -> bool {
        match Notice::decode(body) {
            Some(Notice::Call { message }) => {
                self.on_call_message(now, &message, env);
                true
            }
            _ => false,
        }
    }

    /// A call message (the inside of a call notice).
    pub fn on_call_message(&mut self, now: Now, bytes: &[u8], env: &impl Surroundings) {
        let m = match CallMessage::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "dropped a malformed call message");
                return;
            }
        };
        let ms = self.ms(now);
        let id = m.call_id();
        match m {
            CallMessage::Invite(invite) => self.on_invite(now, invite, None, env),
            CallMessage::FileInvite(f) => {
                let (invite, transfer, signature) = (f.invite, f.transfer, f.signature);
                self.on_invite(now, invite, Some((transfer, signature)), env)
            }
            CallMessage::Reply(reply) => {
                let Some(c) = self.active.get_mut(&id) else { return };
                let Some((invite, offer)) = c.invite.as_ref() else { return };
                let key = reply.verify(invite, &self.trusted, now.unix_ms).and_then(|_| offer.key(invite, &reply));
                match key {
                    Ok(key) => {
                        c.channel.set_key(&key);
                        c.key = Some(key);
                        c.codec = Some(reply.body.codec);
                        c.peer_candidates = reply.body.candidates.clone();
                        c.invite = None;
                        let answer = if reply.body.busy { Signal::Busy } else { Signal::Ringing };
                        let mut actions = c.call.on_signal(answer, ms);
                        for s in std::mem::take(&mut c.early) {
                            match c.channel.open(&s) {
                                // The callee's NAT kind, overtaking its reply: kept for
                                // when our media starts.
                                Some(Signal::Nat { kind }) => c.peer_nat = Some(kind),
                                // Where the callee went, overtaking its reply.
                                Some(Signal::Moved { supernode })
                                    if !supernode.is_empty() && supernode.len() <= SUPERNODE_NAME_LEN_MAX =>
                                {
                                    c.peer_supernode = supernode;
                                }
                                Some(signal) => {
                                    let signal = c.take_candidates(signal);
                                    actions.extend(c.call.on_signal(signal, ms));
                                }
                                None => {}
                            }
                        }
                        self.apply_call(now, id, actions, Vec::new());
                    }
                    Err(e) => tracing::info!(error = %e, "dropped a call reply that does not verify"),
                }
            }
            CallMessage::Signal(s) => {
                let tcp = self.relay_over_tcp();
                let Some(c) = self.active.get_mut(&id) else { return };
                // Before the reply, a caller cannot open the callee's signals (the key
                // needs the callee's share): keep a few until it comes.
                if !c.channel.can_open() {
                    if c.early.len() < EARLY_SIGNALS_MAX {
                        c.early.push(s);
                    }
                    return;
                }
                match c.channel.open(&s) {
                    // Only the caller opens relays: a callee's "leg" would only make us
                    // probe an address of its choosing.
                    Some(Signal::Relay { .. }) if c.call.role() == Role::Caller => {
                        tracing::debug!("dropped a relay leg sent by the callee");
                    }
                    // Our leg's token, sealed to our key by the caller's super node.
                    Some(Signal::Relay { relay, session, leg }) => {
                        match crate::relay::handoff::open(&self.key, session, &leg) {
                            Ok(token) => {
                                self.relay_leg_ready(now, id, RelayLeg { addr: relay, session, token, tcp });
                                self.service();
                            }
                            // Anyone can seal a leg to our key: not worth more than debug.
                            Err(e) => tracing::debug!(error = %e, "dropped a relay leg that does not open"),
                        }
                    }
                    Some(Signal::Moved { supernode }) => {
                        if supernode.is_empty() || supernode.len() > SUPERNODE_NAME_LEN_MAX {
                            tracing::debug!("dropped a Moved signal naming no super node");
                            return;
                        }
                        // Only a change counts: a peer repeating Moved would otherwise
                        // spend our request budget on relay offers.
                        if supernode == c.peer_supernode {
                            return;
                        }
                        tracing::info!(peer = %c.peer, %supernode, "the other side of a call moved to another super node");
                        c.peer_supernode = supernode;
                        c.call.on_heard(ms);
                        // Our relay offer may have gone to the super node it lost: again
                        // at once, unless one went out in the last half of the repeat time.
                        if let Some(offer) = c.relay_offer_due(ms, RELAY_OFFER_REPEAT_MS / 2) {
                            let m = CallMessage::Signal(c.channel.seal(offer));
                            let (peer, via) = (c.peer.clone(), c.peer_supernode.clone());
                            self.send_call(&peer, via, &m);
                        }
                    }
                    Some(Signal::Nat { kind }) => {
                        let mut out = Vec::new();
                        match c.media.as_mut() {
                            Some(m) => {
                                let ran = m.birthday_ran();
                                m.on_peer_nat(kind, self.birthday.allowed(ms), ms, &mut out);
                                if !ran && m.birthday_ran() {
                                    self.birthday.spend(ms);
                                }
                            }
                            None => c.peer_nat = Some(kind),
                        }
                        self.send_media(out);
                        self.service();
                    }
                    Some(signal) => {
                        let signal = c.take_candidates(signal);
                        let actions = c.call.on_signal(signal, ms);
                        self.apply_call(now, id, actions, Vec::new());
                    }
                    None => tracing::debug!("dropped a call signal that does not open"),
                }
            }
        }
    }

    pub(super) fn remember(&mut self, id: [u8; 16]) -> bool {
        if self.seen.contains(&id) {
            return false;
        }
        if self.seen.len() >= SEEN_INVITES_MAX {
            self.seen.pop_front();
        }
        self.seen.push_back(id);
        true
    }

    pub(super) fn on_invite(
        &mut self,
        now: Now,
        invite: Invite,
        file: Option<([u8; 16], Vec<u8>)>,
        env: &impl Surroundings,
    ) {
        let ms = self.ms(now);
        let me = self.me.subject.clone();
        let opened = match invite.open(&self.trusted, &me, &self.key, now.unix_ms, INVITE_WINDOW_MS) {
            Ok(o) => o,
            Err(e) => {
                tracing::info!(error = %e, caller = %invite.body.caller, "refused an invite");
                return;
            }
        };
        if let Some((transfer, signature)) = &file {
            let f = FileInvite { invite: invite.clone(), transfer: *transfer, signature: signature.clone() };
            if let Err(e) = f.verify(&opened.caller) {
                tracing::info!(error = %e, caller = %invite.body.caller, "refused a file invite");
                return;
            }
        }
        if !self.remember(opened.call_id) {
            tracing::info!(caller = %invite.body.caller, "refused a replayed invite");
            return;
        }
        let relation = env.relation(&opened.caller.subject);
        if relation == Some(Relation::Blocked) {
            tracing::info!(caller = %opened.caller.subject, "ignored an invite from a blocked user");
            return;
        }
        let buddy = relation == Some(Relation::Authorized);
        // Invisible means offline to everyone but buddies: a stranger's invite gets no
        // answer at all (not even Busy), so it cannot tell we are there.
        if env.status() == Status::Invisible && !buddy {
            tracing::info!(caller = %opened.caller.subject, "invisible: ignored an invite from someone not a buddy");
            return;
        }
        // A busy callee says so in its signed reply, with no candidates. A caller who is
        // not an authorized buddy learns where we are only if the user accepts.
        let busy = file.is_none() && self.busy();
        let candidates = if buddy { self.candidates(&opened.caller.subject, env) } else { Vec::new() };
        let (reply, key) = match Reply::make(&opened, &self.me, &self.key, &CODECS, busy, candidates, now.unix_ms) {
            Ok(r) => r,
            Err(CallError::NoCodec) => {
                tracing::info!(caller = %opened.caller.subject, "no codec in common; call refused");
                return;
            }
            Err(e) => {
                tracing::info!(error = %e, "could not answer an invite");
                return;
            }
        };
        let id = opened.call_id;
        let (call, actions) = Call::incoming(ms, self.cfg.timeouts.clone(), busy);
        let channel = SignalChannel::callee(&opened, &key);
        let mut c = ActiveCall::new(opened.caller.clone(), invite.body.supernode.clone(), call, channel, Some(key), ms);
        c.codec = Some(reply.body.codec);
        c.reply = Some(reply);
        c.withheld = !buddy;
        c.peer_candidates = opened.candidates;
        c.transfer = file.as_ref().map(|(t, _)| *t);
        let peer = c.peer.clone();
        self.active.insert(id, c);
        self.apply_call(now, id, actions, Vec::new());
        if let Some((transfer, _)) = file
            && self.active.contains_key(&id)
        {
            if self.file_calls.len() < QUEUED_MAX {
                self.file_calls.push_back(FileCall { call: id, transfer, peer });
            } else {
                self.stats.dropped += 1;
            }
        }
    }

    /// Where `peer` may send us media: the address our super node sees, our own when
    /// there is no NAT between us and the internet, and our interface addresses if
    /// `local_candidates` lets `peer` see them.
    pub(super) fn candidates(&self, peer: &str, env: &impl Surroundings) -> Vec<Candidate> {
        let Some(link) = self.link.as_ref() else { return Vec::new() };
        if self.cfg.relay_only || self.relay_over_tcp() {
            return Vec::new();
        }
        let public = link.public_addr;
        let mut v = vec![Candidate { kind: CandidateKind::Public, addr: public }];
        if link.nat == NatKind::None {
            v.push(Candidate { kind: CandidateKind::Host, addr: public });
        }
        let buddy = env.relation(peer) == Some(Relation::Authorized);
        if self.cfg.local_candidates.offer_to(buddy) {
            let ips = env.interface_addresses();
            for addr in crate::host::interfaces::offerable(ips, link.local_port, link.v6, public) {
                v.push(Candidate { kind: CandidateKind::Host, addr });
            }
        }
        v
    }
}
