//! Lookups: a [`Lookup`] per request, asked of members by `Fetch`, driven by answers and
//! stage deadlines to an end.

use super::{FindResult, GetFor, Node, Output, Running, Timer, Verify, VerifyFor};
use crate::index::Entry;
use crate::index::NodeId;
use crate::index::lookup::{Action, Lookup, Outcome};
use crate::index::rpc::IndexRpc;
use metrics::{counter, histogram};

impl Node {
    /// Starts a lookup of `user`; its end comes out as [`Output::Found`] with the id
    /// returned.
    pub fn find(&mut self, now_ms: u64, user: &str) -> u64 {
        let id = self.start_lookup(now_ms, user, None);
        self.drive(now_ms, id);
        id
    }

    /// A lookup of `user`, not yet driven; `search` is the search it serves, if any.
    pub(super) fn start_lookup(&mut self, now_ms: u64, user: &str, search: Option<u64>) -> u64 {
        let key = user.to_ascii_lowercase();
        let slot = self.slot_of(&key);
        let id = self.req();
        let lookup = Lookup::with_map(key, slot, self.map.clone(), self.cfg.lookup.clone());
        self.lookups.insert(
            id,
            Running { lookup, started_ms: now_ms, timer_at: None, directory: false, search, reqs: Vec::new() },
        );
        id
    }

    pub(super) fn on_fetch_reply(&mut self, now_ms: u64, from: NodeId, req: u64, entry: Option<Vec<u8>>) {
        let Some((id, asked)) = self.fetches.remove(&req) else { return };
        if asked != from {
            // Only the member asked may answer its request.
            self.fetches.insert(req, (id, asked));
            return;
        }
        let Some(bytes) = entry else {
            if let Some(r) = self.lookups.get_mut(&id) {
                r.lookup.on_answer(from, None);
            }
            return self.drive(now_ms, id);
        };
        match Entry::decode(&bytes) {
            Ok(e) => {
                let job = Verify { entry: e, bytes, purpose: VerifyFor::Answer { id, from } };
                self.out.push_back(Output::Verify(Box::new(job)));
            }
            Err(why) => {
                counter!("confab_index_bad_answers_total", "node" => self.name.clone()).increment(1);
                tracing::warn!(node = %self.name, from = %from, %why, "a super node answered a lookup with an entry that does not decode");
                if let Some(r) = self.lookups.get_mut(&id) {
                    r.lookup.on_answer(from, None);
                }
                self.drive(now_ms, id);
            }
        }
    }

    pub(super) fn drive(&mut self, now_ms: u64, id: u64) {
        loop {
            let Some(r) = self.lookups.get_mut(&id) else { return };
            if r.directory {
                return;
            }
            match r.lookup.poll(now_ms) {
                Action::Ask(nodes) => {
                    let key = r.lookup.key().to_owned();
                    for n in nodes {
                        self.ask(id, n, key.clone());
                    }
                }
                Action::Wait => {
                    let at = r.lookup.deadline().max(now_ms + 1);
                    if r.timer_at != Some(at) {
                        r.timer_at = Some(at);
                        self.schedule(at, Timer::Lookup(id));
                    }
                    return;
                }
                Action::AskDirectory => {
                    r.directory = true;
                    let user = r.lookup.key().to_owned();
                    if self.cfg.directory.is_empty() {
                        let outcome = r.lookup.not_in_index();
                        return self.finish(now_ms, id, outcome, None);
                    }
                    self.out.push_back(Output::AskDirectory { id, user });
                    return;
                }
                Action::Done(outcome) => return self.finish(now_ms, id, outcome, None),
            }
        }
    }

    fn ask(&mut self, id: u64, node: NodeId, key: String) {
        if node == self.me {
            let slot = self.slot_of(&key);
            self.out.push_back(Output::Get { slot, key, purpose: GetFor::Lookup { id } });
            return;
        }
        let req = self.req();
        self.fetches.insert(req, (id, node));
        if let Some(r) = self.lookups.get_mut(&id) {
            r.reqs.push(req);
        }
        self.send(node, IndexRpc::Fetch { req, key });
    }

    /// The directory's answer to a lookup that found nothing in the index (None: no
    /// record, or no answer).
    pub fn directory_answer(&mut self, now_ms: u64, id: u64, record: Option<Vec<u8>>) {
        let Some(r) = self.lookups.get(&id) else { return };
        let outcome = r.lookup.not_in_index();
        self.finish(now_ms, id, outcome, record);
    }

    fn finish(&mut self, now_ms: u64, id: u64, outcome: Outcome, directory: Option<Vec<u8>>) {
        let Some(r) = self.lookups.remove(&id) else { return };
        for req in &r.reqs {
            self.fetches.remove(req);
        }
        let result = match outcome {
            Outcome::Found { entry, stage, asked } => {
                FindResult { entry: Some(*entry), asked, stage: stage.label(), directory: None }
            }
            Outcome::NotInIndex { asked } if directory.is_some() => {
                FindResult { entry: None, asked, stage: "directory", directory }
            }
            Outcome::NotInIndex { asked } => FindResult { entry: None, asked, stage: "not_found", directory: None },
        };
        let found = if result.entry.is_some() { "found" } else { "not_found" };
        counter!("confab_index_lookups_total", "node" => self.name.clone(), "outcome" => found, "stage" => result.stage)
            .increment(1);
        histogram!("confab_index_lookup_asked", "node" => self.name.clone()).record(result.asked as f64);
        histogram!("confab_index_lookup_duration_seconds", "node" => self.name.clone())
            .record(now_ms.saturating_sub(r.started_ms) as f64 / 1000.0);
        match r.search {
            Some(search) => self.search_found(now_ms, search, id, result.entry),
            None => self.out.push_back(Output::Found { id, result }),
        }
    }
}
