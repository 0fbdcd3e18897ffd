//! The Global Index in the simulator: one [`confab::index::node::Node`] per super node —
//! the very state machine a super node's `IndexRouter` drives — with its slot stores in
//! memory ([`LocalStores`]). What differs from production, and why:
//!
//! - signatures are a stand-in: entries carry a real credential's bytes and a 256-byte
//!   signature (RSA-2048's size) that nobody checks, so every message has its real size;
//! - a message reaches its receiver as the decoded request (its bytes are counted, not
//!   parsed again);
//! - the replicas of one process share each entry (`Arc`) instead of a copy each;
//! - the login servers' directory is the simulator's own record of who was seen when.

use super::clock::Ms;
use super::index::{Index, Out, Outbox, Publish, Sn};
use super::view::View;
use confab::crypto::credential::{Claims, Credential, CredentialKind};
use confab::crypto::keys::PrivateKey;
use confab::index::node::{Checked, LocalStores, Members, Node, Output, Timer};
use confab::index::rpc::IndexRpc;
use confab::index::{Entry, EntryBody, IndexConfig, NodeId, Profile, Slot, SlotMap, SlotSpace, Status, fold};
use confab::nat::NatKind;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Unix milliseconds of the simulation's time 0 (entries carry wall-clock times).
const EPOCH_MS: u64 = 1_800_000_000_000;
/// RSA-2048's signature size.
const SIGNATURE_LEN: usize = 256;
/// What a directory record (`SeenRecord`) weighs on the wire, about.
const DIRECTORY_RECORD_LEN: usize = 400;

impl Members for View {
    fn ids(&self) -> &[NodeId] {
        View::ids(self)
    }

    fn slot_map(&self, prev: &SlotMap) -> Arc<SlotMap> {
        // The world builds each view's map once (and times it); a view it did not is built
        // here from the node's last.
        self.slot_map_or(|| prev.update(View::ids(self)))
    }
}

struct SimNode {
    node: Node,
    stores: LocalStores,
    /// Whether its stores got the warm start.
    warmed: bool,
}

/// Every super node's index.
pub struct Global {
    cfg: IndexConfig,
    space: SlotSpace,
    nodes: BTreeMap<Sn, SimNode>,
    /// Each device's newest entry, by its origin (credential serial), shared by the
    /// replicas that hold it.
    latest: HashMap<u64, Arc<Entry>>,
    /// The warm start, by slot (the slot's key and posting entries).
    warm: BTreeMap<Slot, Vec<(String, Arc<Entry>)>>,
    /// The entries of the users online at the start, by their super node: it wrote their
    /// postings at their login.
    warm_online: HashMap<Sn, Vec<Arc<Entry>>>,
    /// A real credential's encoding (its size is what matters).
    credential: Vec<u8>,
    /// The cluster channel's sealing overhead per packet.
    overhead: usize,
    /// From the warm start until the first event of the run: nodes started now hold it.
    warm_open: bool,
    /// Requests and bytes sent, by kind.
    by_kind: BTreeMap<&'static str, (u64, u64)>,
}

impl Global {
    /// The index with `cfg` for every super node.
    pub fn new(cfg: IndexConfig) -> anyhow::Result<Self> {
        let space = SlotSpace::new(cfg.slots).map_err(|e| anyhow::anyhow!("index.slots: {e}"))?;
        // One real credential, issued once: every entry carries bytes of its size.
        let key = PrivateKey::generate(2048)?;
        let claims = Claims {
            kind: CredentialKind::Host,
            subject: "a-typical-username".into(),
            public_key: key.public().clone(),
            issued_at: EPOCH_MS / 1000,
            expires_at: EPOCH_MS / 1000 + 86_400,
            serial: 1,
        };
        let credential = Credential::issue(claims, &key).encode();
        Ok(Self {
            cfg,
            space,
            nodes: BTreeMap::new(),
            latest: HashMap::new(),
            warm: BTreeMap::new(),
            warm_online: HashMap::new(),
            credential,
            overhead: confab::cluster::gossip::OVERHEAD,
            warm_open: false,
            by_kind: BTreeMap::new(),
        })
    }

    /// The entry `user`'s device `device` publishes at super node `sn` at `now` (Unix ms).
    fn entry(&self, user: &str, device: u32, sn: Sn, online: bool, now: u64) -> Entry {
        let body = EntryBody {
            user: user.into(),
            credential: self.credential.clone(),
            status: if online { Status::Online } else { Status::Offline },
            supernode: format!("sn{sn}"),
            public_addr: online.then(|| std::net::SocketAddr::from(([198, 19, (sn >> 8) as u8, sn as u8], 40000))),
            nat: NatKind::Cone,
            profile: profile(user),
            last_seen: now / 1000,
            timestamp_ms: now,
            user_keys: Some(confab::crypto::user::UserPublicKeys { x25519: [1; 32], ed25519: [2; 32] }),
        };
        Entry::unsigned(body, origin(user, device), vec![0x5a; SIGNATURE_LEN])
    }

    /// Runs what `sn`'s node asked for, carrying the rest out through `out`.
    fn drive(&mut self, now: Ms, sn: Sn, out: &mut Outbox<Self>) {
        let Some(s) = self.nodes.get_mut(&sn) else { return };
        let latest = &self.latest;
        let share = |e: Entry| match latest.get(&e.origin) {
            Some(l) if l.order() == e.order() => l.clone(),
            _ => Arc::new(e),
        };
        let rest = s.stores.drive(EPOCH_MS + now, &mut s.node, |_| Checked::Valid, share);
        if !s.warmed && !self.warm.is_empty() {
            s.warmed = true;
            let held: Vec<Slot> = s.node.held().iter().copied().collect();
            for slot in held {
                for (key, e) in self.warm.get(&slot).into_iter().flatten() {
                    s.stores.seed(&mut s.node, slot, key, e.clone());
                }
            }
        }
        for o in rest {
            match o {
                Output::Send { to, rpc } => {
                    let bytes = rpc.encoded_len() + self.overhead;
                    let k = self.by_kind.entry(rpc.label()).or_default();
                    k.0 += 1;
                    k.1 += bytes as u64;
                    out.push(Out::Send { from: sn, to, msg: rpc, bytes });
                }
                Output::Schedule { at_ms, timer } => {
                    out.push(Out::Schedule { node: sn, at: at_ms.saturating_sub(EPOCH_MS), timer })
                }
                Output::AskDirectory { id, user } => out.push(Out::AskDirectory { node: sn, id, user }),
                Output::Found { id, result } => out.push(Out::Found {
                    node: sn,
                    id,
                    found: result.entry.is_some() || result.directory.is_some(),
                    asked: result.asked as u32,
                    by_directory: result.entry.is_none() && result.directory.is_some(),
                }),
                other => unreachable!("the local stores carry out {other:?}"),
            }
        }
    }
}

/// A user's profile: a display name, a city and a language, as most profiles had: search
/// postings are part of the load, and how they crowd into the slots of common words too.
/// The display name is the username and one of 5,000 surnames (about evenly spread): its
/// words are the ones posted. The city is one of 300, log-uniformly (the commonest about
/// one profile in eight, as a capital's share of a country), the language one of 4 (the
/// commonest, a quarter of all profiles): posted, they were the hottest slots; now they
/// only narrow a search by name (`fold::name_tokens`).
fn profile(user: &str) -> Profile {
    let n = user.bytes().fold(0xcbf2_9ce4_8422_2325u64, |a, b| (a ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let n = n ^ (n >> 29);
    let surname = (n % 5000) as u32;
    // Uniform in [0, 1) from other bits of the hash, then 300^u: rank k with probability
    // about ln((k+1)/k) / ln(300).
    let u = ((n >> 20) % 1_000_000) as f64 / 1_000_000.0;
    let city = (300f64.powf(u) as u32).clamp(1, 300);
    Profile {
        display_name: format!("{user} sn{surname}"),
        city: format!("city{city}"),
        country: String::new(),
        language: ["en", "et", "fr", "ja"][(n >> 40) as usize % 4].into(),
        about: String::new(),
    }
}

/// A device's credential serial: its user's hash and its number (each device has its
/// own credential, so its own session under the user's key).
fn origin(user: &str, device: u32) -> u64 {
    let h = user.bytes().fold(0xcbf2_9ce4_8422_2325u64, |a, b| (a ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    h.wrapping_add(u64::from(device).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

impl Index for Global {
    type Msg = IndexRpc;
    type Timer = Timer;

    fn wired(&self) -> bool {
        true
    }

    fn detail(&self) -> serde_json::Value {
        let kinds: serde_json::Map<String, serde_json::Value> = self
            .by_kind
            .iter()
            .map(|(k, (n, b))| ((*k).to_owned(), serde_json::json!({ "messages": n, "bytes": b })))
            .collect();
        let stores: usize = self.nodes.values().map(|n| n.stores.len()).sum();
        let keys: usize = self.nodes.values().map(|n| n.stores.keys()).sum();
        let sessions: usize = self.nodes.values().map(|n| n.stores.sessions()).sum();
        let largest = self.nodes.values().map(|n| n.stores.largest()).max().unwrap_or(0);
        serde_json::json!({
            "sent_by_kind": kinds,
            "nodes_up": self.nodes.len(),
            "devices_with_entries": self.latest.len(),
            "slot_stores_at_end": stores,
            "keys_held_at_end": keys,
            "sessions_held_at_end": sessions,
            "largest_slot_keys_at_end": largest,
        })
    }

    fn warm_start(&mut self, seen: &[(String, u32, i64, Option<Sn>)]) {
        for (user, device, at, sn) in seen {
            let now = (EPOCH_MS as i64 + at) as u64;
            // Online at its super node, or offline, seen at `at`: what the index holds for
            // a device that logged out then.
            let e = Arc::new(self.entry(user, *device, sn.unwrap_or(0), sn.is_some(), now));
            let key = e.key();
            self.warm.entry(self.space.slot_of(fold::slot_key(&key))).or_default().push((key, e.clone()));
            for token in fold::name_tokens(&e.user, &e.profile) {
                let k = fold::posting_key(&token, &e.user);
                self.warm.entry(self.space.slot_of(fold::slot_key(&k))).or_default().push((k, e.clone()));
            }
            if let Some(sn) = sn {
                self.warm_online.entry(*sn).or_default().push(e.clone());
            }
            self.latest.insert(e.origin, e);
        }
        self.warm_open = true;
    }

    fn node_up(&mut self, now: Ms, node: Sn, id: NodeId, seed: u64) {
        let mut n = Node::new(format!("sn{node}"), id, self.cfg.clone(), seed);
        n.start(EPOCH_MS + now);
        for e in self.warm_online.remove(&node).into_iter().flatten() {
            n.note_posted(EPOCH_MS + now, &e);
        }
        let stores = LocalStores::new(self.cfg.entries_per_slot_max, self.cfg.retention_secs);
        // Only the cluster that is there at the start holds the warm start.
        self.nodes.insert(node, SimNode { node: n, stores, warmed: !self.warm_open });
    }

    fn node_down(&mut self, _: Ms, node: Sn) {
        self.nodes.remove(&node);
    }

    fn view(&mut self, now: Ms, node: Sn, view: &Arc<View>, out: &mut Outbox<Self>) {
        if let Some(s) = self.nodes.get_mut(&node) {
            s.node.view(EPOCH_MS + now, view.clone());
        }
        self.drive(now, node, out);
    }

    fn publish(&mut self, now: Ms, node: Sn, p: Publish<'_>, out: &mut Outbox<Self>) {
        self.warm_open = false;
        let e = self.entry(p.user, p.device, node, p.online, EPOCH_MS + now);
        self.latest.insert(e.origin, Arc::new(e.clone()));
        if let Some(s) = self.nodes.get_mut(&node) {
            s.node.publish(EPOCH_MS + now, e);
        }
        self.drive(now, node, out);
    }

    fn lookup(&mut self, now: Ms, node: Sn, key: &str, out: &mut Outbox<Self>) -> Option<u64> {
        self.warm_open = false;
        let id = self.nodes.get_mut(&node)?.node.find(EPOCH_MS + now, key);
        self.drive(now, node, out);
        Some(id)
    }

    fn receive(&mut self, now: Ms, node: Sn, from: NodeId, msg: IndexRpc, out: &mut Outbox<Self>) {
        self.warm_open = false;
        if let Some(s) = self.nodes.get_mut(&node) {
            s.node.receive(EPOCH_MS + now, from, msg);
        }
        self.drive(now, node, out);
    }

    fn timer(&mut self, now: Ms, node: Sn, timer: Timer, out: &mut Outbox<Self>) {
        self.warm_open = false;
        if let Some(s) = self.nodes.get_mut(&node) {
            s.node.timer(EPOCH_MS + now, timer);
        }
        self.drive(now, node, out);
    }

    fn directory(&mut self, now: Ms, node: Sn, id: u64, seen: Option<i64>, out: &mut Outbox<Self>) {
        if let Some(s) = self.nodes.get_mut(&node) {
            s.node.directory_answer(EPOCH_MS + now, id, seen.map(|_| vec![0; DIRECTORY_RECORD_LEN]));
        }
        self.drive(now, node, out);
    }
}
