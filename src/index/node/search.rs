//! Search by profile words: the postings of each name word give candidate usernames (from
//! the first replicas of the word's slot, at most 200 each), those named by more of the
//! words first; each candidate is looked up like a find, and only verified entries whose
//! current profile has every word, city, country and language words too, are returned.
//! Those are not posted ([`fold::name_tokens`]): they narrow a search by name, and alone
//! find nobody.

use super::{Node, Output, Timer};
use crate::index::rpc::IndexRpc;
use crate::index::{Entry, NodeId, fold};
use metrics::counter;
use std::collections::{BTreeMap, BTreeSet};

/// Most postings read per token in one search.
pub const SEARCH_POSTINGS_MAX: usize = 200;
/// Replicas of a token's slot asked for its postings.
const SEARCH_FANOUT: usize = 3;
/// Most search tokens used.
const SEARCH_TOKENS_MAX: usize = 4;

/// Where the postings a store read go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostedFor {
    /// A member's `PrefixQuery`: answer it.
    Query {
        /// The member.
        to: NodeId,
        /// Its request id.
        req: u64,
    },
    /// One of our searches, for its `token`-th word.
    Search {
        /// The search.
        id: u64,
        /// The word's place.
        token: usize,
    },
}

pub(super) struct Searching {
    tokens: Vec<String>,
    limit: usize,
    /// Per word, the usernames its postings gave so far.
    sets: Vec<BTreeSet<String>>,
    /// Posting reads not answered yet.
    waiting: usize,
    /// Whether the candidates are being looked up.
    finding: bool,
    /// Lookups of candidates not ended yet.
    looking: BTreeSet<u64>,
    /// Candidates found.
    found: Vec<Entry>,
}

impl Node {
    /// Starts a search for users whose profile has every word (at most `limit` results);
    /// its end comes out as [`Output::Searched`] with the id returned.
    pub fn search(&mut self, now_ms: u64, words: &str, limit: usize) -> u64 {
        let id = self.req();
        let mut tokens = fold::tokens(words);
        tokens.truncate(SEARCH_TOKENS_MAX);
        counter!("confab_index_searches_total", "node" => self.name.clone()).increment(1);
        if tokens.is_empty() {
            self.out.push_back(Output::Searched { id, entries: Vec::new() });
            return id;
        }
        let mut s = Searching {
            sets: vec![BTreeSet::new(); tokens.len()],
            tokens: tokens.clone(),
            limit,
            waiting: 0,
            finding: false,
            looking: BTreeSet::new(),
            found: Vec::new(),
        };
        for (i, token) in tokens.iter().enumerate() {
            let prefix = fold::token_slot_key(token);
            let slot = self.slot_of(&prefix);
            let replicas: Vec<NodeId> = self.map.replicas(slot).iter().take(SEARCH_FANOUT).copied().collect();
            for r in replicas {
                s.waiting += 1;
                if r == self.me {
                    let purpose = PostedFor::Search { id, token: i };
                    let prefix = prefix.clone();
                    self.out.push_back(Output::Posted { slot, prefix, limit: SEARCH_POSTINGS_MAX, purpose });
                } else {
                    let req = self.req();
                    self.prefix_reqs.insert(req, (id, i, r));
                    let rpc = IndexRpc::PrefixQuery { req, prefix: prefix.clone(), limit: SEARCH_POSTINGS_MAX as u16 };
                    self.send(r, rpc);
                }
            }
        }
        self.searches.insert(id, s);
        let wait = self.cfg.lookup.step_timeout_ms.max(100) * 2;
        self.schedule(now_ms + wait, Timer::Search(id));
        self.search_step(now_ms, id);
        id
    }

    /// A member asks for the postings under a prefix.
    pub(super) fn on_prefix_query(&mut self, from: NodeId, req: u64, prefix: String, limit: u16) {
        let slot = self.slot_of(&prefix);
        let limit = usize::from(limit).min(SEARCH_POSTINGS_MAX);
        self.out.push_back(Output::Posted { slot, prefix, limit, purpose: PostedFor::Query { to: from, req } });
    }

    /// A member's postings for one of our searches.
    pub(super) fn on_prefix_reply(&mut self, now_ms: u64, from: NodeId, req: u64, users: Vec<String>) {
        match self.prefix_reqs.get(&req) {
            Some(&(id, token, asked)) if asked == from => {
                self.prefix_reqs.remove(&req);
                self.add_postings(now_ms, id, token, users);
            }
            _ => {}
        }
    }

    /// A store read the node asked for ended: the usernames posted under the prefix (no
    /// store here: none).
    pub fn posted(&mut self, now_ms: u64, purpose: PostedFor, users: Vec<String>) {
        match purpose {
            PostedFor::Query { to, req } => self.send(to, IndexRpc::PrefixReply { req, users }),
            PostedFor::Search { id, token } => self.add_postings(now_ms, id, token, users),
        }
    }

    fn add_postings(&mut self, now_ms: u64, id: u64, token: usize, users: Vec<String>) {
        let Some(s) = self.searches.get_mut(&id) else { return };
        if s.finding {
            return;
        }
        s.waiting = s.waiting.saturating_sub(1);
        if let Some(set) = s.sets.get_mut(token) {
            set.extend(users.into_iter().take(SEARCH_POSTINGS_MAX));
        }
        self.search_step(now_ms, id);
    }

    /// The search's deadline for postings came.
    pub(super) fn search_timer(&mut self, now_ms: u64, id: u64) {
        if let Some(s) = self.searches.get_mut(&id) {
            s.waiting = 0;
        }
        self.search_step(now_ms, id);
    }

    /// A lookup a search started ended.
    pub(super) fn search_found(&mut self, now_ms: u64, search: u64, lookup: u64, entry: Option<Entry>) {
        if let Some(s) = self.searches.get_mut(&search) {
            s.looking.remove(&lookup);
            s.found.extend(entry);
        }
        self.search_step(now_ms, search);
    }

    fn search_step(&mut self, now_ms: u64, id: u64) {
        let Some(s) = self.searches.get_mut(&id) else { return };
        if !s.finding {
            if s.waiting > 0 {
                return;
            }
            s.finding = true;
            // Postings are of name words only, and a common word's read is a part of
            // them (its first 200): intersecting the words' sets would drop a user whose
            // other word is a city (not posted) or past a common word's part. So every
            // user the postings name is a candidate, those named by more of the words
            // first, then those named by rarer words; the lookups' profiles are checked
            // against every word at the end.
            let mut named: BTreeMap<&String, (usize, usize)> = BTreeMap::new();
            for set in &s.sets {
                for u in set {
                    let e = named.entry(u).or_insert((0, usize::MAX));
                    e.0 += 1;
                    e.1 = e.1.min(set.len());
                }
            }
            let mut ranked: Vec<(&String, (usize, usize))> = named.into_iter().collect();
            ranked.sort_by(|(a, (na, ra)), (b, (nb, rb))| nb.cmp(na).then(ra.cmp(rb)).then(a.cmp(b)));
            let mut candidates: Vec<String> = ranked.into_iter().map(|(u, _)| u.clone()).collect();
            // Candidates beyond twice the limit are not worth a lookup each.
            candidates.truncate(s.limit.saturating_mul(2));
            self.prefix_reqs.retain(|_, (search, _, _)| *search != id);
            // Every lookup is counted before any runs, so one that ends at once cannot end
            // the search early.
            let lookups: Vec<u64> = candidates.iter().map(|u| self.start_lookup(now_ms, u, Some(id))).collect();
            if let Some(s) = self.searches.get_mut(&id) {
                s.looking.extend(lookups.iter().copied());
            }
            for l in lookups {
                self.drive(now_ms, l);
            }
        }
        let Some(s) = self.searches.get(&id) else { return };
        if !s.looking.is_empty() {
            return;
        }
        let Some(s) = self.searches.remove(&id) else { return };
        let mut entries: Vec<Entry> = s
            .found
            .into_iter()
            .filter(|e| {
                let have = fold::profile_tokens(&e.user, &e.profile);
                s.tokens.iter().all(|t| have.contains(t))
            })
            .collect();
        entries.sort_by(|a, b| a.user.cmp(&b.user));
        entries.truncate(s.limit);
        self.out.push_back(Output::Searched { id, entries });
    }
}
