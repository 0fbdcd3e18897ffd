//! Spreading the revocation list between super nodes, as plain logic.
//!
//! Every gossip interval a node that holds a list tells one random member its version
//! (`Have`). A member with an older list answers with its own `Have`; a member with a
//! newer one pushes its `List`. So a list one node fetched from the login server reaches
//! every member in a number of intervals that grows with the logarithm of the cluster's
//! size, and a member that was away catches up at its first exchange. Each node verifies
//! a list's signature before adopting it and never adopts an older version
//! ([`crate::crypto::Revoked::adopt`]). These packets travel on their own channel, sealed
//! per pair like every other (see [`super::gossip`]): only authenticated members are
//! answered, and at most once per interval each.

use std::collections::HashMap;
use std::sync::Arc;

/// One revocation packet's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spread {
    /// "I hold this version" (0: none).
    Have(u64),
    /// The encoded, signed list.
    List(Vec<u8>),
}

const HAVE: u8 = 1;
const LIST: u8 = 2;

impl Spread {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Have(v) => {
                let mut b = vec![HAVE];
                b.extend_from_slice(&v.to_be_bytes());
                b
            }
            Self::List(l) => {
                let mut b = Vec::with_capacity(1 + l.len());
                b.push(LIST);
                b.extend_from_slice(l);
                b
            }
        }
    }

    /// Decodes; total (a list's own checks come when it is adopted).
    pub fn decode(b: &[u8]) -> Option<Self> {
        match b.split_first()? {
            (&HAVE, rest) => Some(Self::Have(u64::from_be_bytes(rest.try_into().ok()?))),
            (&LIST, rest) if !rest.is_empty() && rest.len() <= crate::crypto::revocation::LIST_LEN_MAX => {
                Some(Self::List(rest.to_vec()))
            }
            _ => None,
        }
    }

    /// Longest payload: a tag and the longest list.
    pub const LEN_MAX: usize = 1 + crate::crypto::revocation::LIST_LEN_MAX;
}

/// Members remembered per rate table, at most.
const ANSWERED_MAX: usize = 4096;

/// Which answers a node owes, rate limited per member.
#[derive(Debug)]
pub struct Spreader {
    interval_ms: u64,
    answered: HashMap<[u8; 8], u64>,
    checked: HashMap<[u8; 8], u64>,
}

/// Records `peer` at `now_ms` unless it was recorded within `interval_ms` (or the table is
/// full of recent ones).
fn admit(table: &mut HashMap<[u8; 8], u64>, peer: [u8; 8], now_ms: u64, interval_ms: u64) -> bool {
    if table.get(&peer).is_some_and(|t| now_ms.saturating_sub(*t) < interval_ms) {
        return false;
    }
    if table.len() >= ANSWERED_MAX {
        table.retain(|_, t| now_ms.saturating_sub(*t) < interval_ms);
        if table.len() >= ANSWERED_MAX {
            return false;
        }
    }
    table.insert(peer, now_ms);
    true
}

impl Spreader {
    /// Answers each member at most once per `interval_ms`.
    pub fn new(interval_ms: u64) -> Self {
        Self { interval_ms, answered: HashMap::new(), checked: HashMap::new() }
    }

    /// Whether a list `peer` pushed may have its signature checked now: at most one per
    /// member per interval, so a member cannot keep a node verifying.
    pub fn admit_list(&mut self, peer: [u8; 8], now_ms: u64) -> bool {
        admit(&mut self.checked, peer, now_ms, self.interval_ms)
    }

    /// The answer to member `peer`'s `Have(theirs)`, when this node holds version `mine`
    /// (`list`, encoded): its list if newer, its own `Have` if older, nothing if equal or
    /// if `peer` was answered within the interval.
    pub fn on_have(
        &mut self,
        peer: [u8; 8],
        theirs: u64,
        mine: u64,
        list: Option<Arc<[u8]>>,
        now_ms: u64,
    ) -> Option<Spread> {
        let answer = match list {
            Some(l) if mine > theirs => Spread::List(l.to_vec()),
            _ if theirs > mine => Spread::Have(mine),
            _ => return None,
        };
        admit(&mut self.answered, peer, now_ms, self.interval_ms).then_some(answer)
    }
}

/// Counts a list this node saw (from `source`: `login_server` or `gossip`) and what became
/// of it, and sets the version gauge when one was adopted.
pub fn record(node: &str, source: &'static str, outcome: &'static str, version: u64) {
    metrics::counter!("confab_revocation_lists_total", "node" => node.to_owned(), "source" => source, "outcome" => outcome)
        .increment(1);
    if outcome == "adopted" {
        metrics::gauge!("confab_revocation_list_version", "node" => node.to_owned()).set(version as f64);
        tracing::info!(node, source, version, "revocation list adopted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trip_and_totality() {
        for m in [Spread::Have(0), Spread::Have(u64::MAX), Spread::List(vec![1, 2, 3])] {
            assert_eq!(Spread::decode(&m.encode()), Some(m));
        }
        for bad in [&[][..], &[HAVE], &[HAVE, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[LIST], &[3, 1]] {
            assert_eq!(Spread::decode(bad), None, "{bad:?}");
        }
        let mut long = vec![LIST];
        long.resize(Spread::LEN_MAX + 1, 0);
        assert_eq!(Spread::decode(&long), None);
    }

    #[test]
    fn newer_pushes_older_asks_equal_is_quiet_and_answers_are_rate_limited() {
        let mut s = Spreader::new(1000);
        let list: Arc<[u8]> = Arc::from(&b"list"[..]);
        assert_eq!(s.on_have([1; 8], 5, 5, Some(list.clone()), 0), None);
        assert_eq!(s.on_have([1; 8], 4, 5, Some(list.clone()), 0), Some(Spread::List(b"list".to_vec())));
        assert_eq!(s.on_have([1; 8], 4, 5, Some(list.clone()), 999), None, "once per interval");
        assert_eq!(s.on_have([2; 8], 9, 5, Some(list.clone()), 999), Some(Spread::Have(5)), "behind: ask");
        assert_eq!(s.on_have([1; 8], 4, 5, Some(list), 1000), Some(Spread::List(b"list".to_vec())));
        assert_eq!(s.on_have([3; 8], 0, 5, None, 0), None, "nothing to send");
        assert!(s.admit_list([4; 8], 0));
        assert!(!s.admit_list([4; 8], 500), "one list check per member per interval");
        assert!(s.admit_list([5; 8], 500));
        assert!(s.admit_list([4; 8], 1000));
    }
}
