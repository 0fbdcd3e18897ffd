//! One call in progress, as the calls' machine keeps it: the signalling state machine,
//! the end-to-end channel, the negotiated media and what waits for it.

use crate::call::invite::{Candidate, Codec, Invite, MediaKey, Offer, Reply, SealedSignal, SignalChannel};
use crate::call::path::RelayLeg;
use crate::call::signal::{Call, Path, Role, Signal};
use crate::crypto::Credential;
use crate::host::media::CallMedia;
use std::time::Instant;

/// One call in progress.
pub(super) struct ActiveCall {
    pub peer: String,
    /// The other side's verified credential: a relay's leg B is sealed to its key.
    pub peer_credential: Credential,
    /// The super node the other side's signals go through (empty: found by lookup).
    pub peer_supernode: String,
    pub call: Call,
    pub channel: SignalChannel,
    /// Caller: the invite and our secrets, to check the reply against and key the call.
    pub invite: Option<(Invite, Offer)>,
    /// Callee: the signed reply, sent with the ringing (or as the busy answer).
    pub reply: Option<Reply>,
    /// The call's key (the caller's, once the reply came).
    pub key: Option<MediaKey>,
    pub codec: Option<Codec>,
    /// Where the other side receives media.
    pub peer_candidates: Vec<Candidate>,
    /// Callee: our reply told a caller who is not an authorized buddy nothing of where
    /// we are; our candidates go with the user's Accept.
    pub withheld: bool,
    /// What we play into the call (then silence).
    pub source: Vec<i16>,
    /// Whether to keep what we hear.
    pub record: bool,
    pub media: Option<CallMedia>,
    /// The media clock's next tick, while media runs.
    pub next_tick: Option<Instant>,
    /// Caller: signals that overtook the reply, opened once the reply brought the key.
    pub early: Vec<SealedSignal>,
    /// Our relay leg, when it arrived before media started (the callee's, from the caller).
    pub pending_relay: Option<RelayLeg>,
    /// The relay session we opened (the caller), released when media stops.
    pub relay_session: Option<u32>,
    /// The caller: the callee's leg of that session, as last offered, and when (ms).
    pub relay_offer: Option<(Signal, u64)>,
    /// The path search asked for a relay that no super node could give yet (the link was
    /// down, or the request went unanswered): asked again when a link is up.
    pub relay_waiting: bool,
    /// When the call began here (the invite sent or received), ms.
    pub began_ms: u64,
    /// The first path media flowed on, and after how long.
    pub connected: Option<(Path, u64)>,
    /// The other side's NAT kind, if it said before our media started.
    pub peer_nat: Option<crate::nat::NatKind>,
    /// The extra sockets open for the call (their indices are `0..n`, less those closed).
    pub probe_sockets: u16,
    /// How many extra sockets were asked of the shell and not yet answered for: they
    /// count against the host's cap, and a call that ends meanwhile still closes them.
    pub probe_opening: u16,
    /// A call of kind "file": the transfer it carries (no voice is played or heard).
    pub transfer: Option<[u8; 16]>,
}

impl ActiveCall {
    /// A call with the holder of `peer` (reached through `peer_supernode`), nothing
    /// negotiated yet, begun at `now_ms`.
    pub fn new(
        peer: Credential,
        peer_supernode: String,
        call: Call,
        channel: SignalChannel,
        key: Option<MediaKey>,
        now_ms: u64,
    ) -> Self {
        Self {
            peer: peer.subject.clone(),
            peer_credential: peer,
            peer_supernode,
            call,
            channel,
            invite: None,
            reply: None,
            key,
            codec: None,
            peer_candidates: Vec::new(),
            withheld: false,
            source: Vec::new(),
            record: false,
            media: None,
            next_tick: None,
            early: Vec::new(),
            pending_relay: None,
            relay_session: None,
            relay_offer: None,
            relay_waiting: false,
            began_ms: now_ms,
            connected: None,
            peer_nat: None,
            probe_sockets: 0,
            probe_opening: 0,
            transfer: None,
        }
    }

    /// The caller's relay offer, if it is due again at `now_ms`: media has no path, its
    /// search still holds our leg of the offered session, and the last offer is at least
    /// `repeat_ms` old. The first offer may have gone to a super node the callee lost.
    pub fn relay_offer_due(&mut self, now_ms: u64, repeat_ms: u64) -> Option<Signal> {
        let m = self.media.as_ref()?;
        let (offer, sent_ms) = self.relay_offer.as_mut()?;
        let Signal::Relay { session, .. } = offer else { return None };
        let waiting = !m.has_path() && m.relay_leg().is_some_and(|l| l.session == *session);
        if !waiting || now_ms.saturating_sub(*sent_ms) < repeat_ms {
            return None;
        }
        *sent_ms = now_ms;
        Some(offer.clone())
    }

    /// The callee's candidates that came with its Accept: kept, and the signal taken as
    /// a plain Accept by the state machine.
    pub fn take_candidates(&mut self, s: Signal) -> Signal {
        match s {
            Signal::AcceptAt { mut candidates } if self.call.role() == Role::Caller => {
                candidates.truncate(crate::call::invite::LIST_MAX);
                self.peer_candidates = candidates;
                Signal::Accept
            }
            s => s,
        }
    }
}
