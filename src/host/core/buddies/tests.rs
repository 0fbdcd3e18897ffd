//! The buddies machine on virtual time, against a fake login server run by the test.

use super::*;
use crate::crypto::credential::Claims;
use crate::crypto::keys::tests::test_key;
use crate::crypto::revocation::{Revocation, RevocationList};
use crate::index::entry::tests::entry;
use crate::wire::message::{ErrorMsg, PublishAck};
use rand::SeedableRng;

/// Wall clock at the start of every test.
const T0_UNIX_MS: u64 = 1_700_000_000_000;
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// `LOGIN_TIMEOUT × 2 servers + slack`.
const LOGIN_DEADLINE: Duration = Duration::from_secs(25);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn list_key() -> ListKey {
    ListKey([7; 32])
}

fn trusted() -> TrustedKeys {
    TrustedKeys::new(vec![test_key(0).public().clone()])
}

fn config(trusted: TrustedKeys, presence_refresh: Duration) -> BuddiesConfig {
    config_for("Me", trusted, presence_refresh)
}

fn config_for(user: &str, trusted: TrustedKeys, presence_refresh: Duration) -> BuddiesConfig {
    let key = test_key(2);
    let credential = Credential::issue(
        Claims {
            kind: CredentialKind::Host,
            subject: user.into(),
            public_key: key.public().clone(),
            issued_at: T0_UNIX_MS / 1000 - 60,
            expires_at: T0_UNIX_MS / 1000 + 86_400,
            serial: 9,
        },
        &test_key(0),
    );
    BuddiesConfig {
        credential,
        key,
        list_key: list_key(),
        trusted,
        login_timeout: LOGIN_TIMEOUT,
        login_servers: 2,
        presence_refresh,
        status: Status::Online,
        profile: Profile::default(),
    }
}

fn link(name: &str) -> LinkInfo {
    LinkInfo {
        supernode: name.into(),
        supernode_key: test_key(1).public().id(),
        public_addr: "198.18.0.9:40000".parse().unwrap(),
        nat: NatKind::Cone,
    }
}

/// The login server's side of the list: `me`'s contacts, in tag order, and the
/// requests to `me`. Answers as `login::` does.
struct FakeLogin {
    owner: String,
    contacts: Vec<(u32, String, Relation)>,
    requests: Vec<Incoming>,
}

impl FakeLogin {
    fn with(authorized: usize) -> Self {
        let contacts =
            (0..authorized).map(|i| (7 * i as u32 + 3, format!("buddy{i:03}"), Relation::Authorized)).collect();
        Self { owner: "me".into(), contacts, requests: Vec::new() }
    }

    fn set(&mut self, user: &str, relation: Relation) {
        match self.contacts.iter_mut().find(|c| c.1 == user) {
            Some(c) => c.2 = relation,
            None => {
                let tag = self.contacts.iter().map(|c| c.0).max().unwrap_or(0) + 1;
                self.contacts.push((tag, user.into(), relation));
            }
        }
    }

    fn row(&self, tag: u32, user: &str, relation: Relation) -> Row {
        let mut nonce = [0; 12];
        nonce[..4].copy_from_slice(&tag.to_be_bytes());
        let contact = Contact { user: user.into(), added_at: 1 };
        let sealed = record::seal_with_nonce(&list_key(), &self.owner, &contact, nonce);
        Row { tag, relation, sealed, changed_at: 1 }
    }

    fn answer(&mut self, call: &LoginCall) -> Result<LoginAnswer, AccountError> {
        let LoginCall::Buddy(op) = call else { return Ok(LoginAnswer::Revocations(None)) };
        let a = match op {
            BuddyOp::List { after } => {
                let from: Vec<_> = self.contacts.iter().filter(|c| Some(c.0) > *after).collect();
                let rows = from.iter().take(PAGE_ROWS).map(|c| self.row(c.0, &c.1, c.2)).collect();
                BuddyAnswer::Page { rows, more: from.len() > PAGE_ROWS }
            }
            BuddyOp::Requests => BuddyAnswer::Requests { items: self.requests.clone() },
            BuddyOp::Add { contact, .. } => {
                let asked = self.requests.iter().any(|r| r.from.eq_ignore_ascii_case(contact));
                let relation = if asked { Relation::Authorized } else { Relation::Requested };
                self.requests.retain(|r| !r.from.eq_ignore_ascii_case(contact));
                self.set(contact, relation);
                BuddyAnswer::Relation(relation)
            }
            BuddyOp::Answer { from, accept, .. } => {
                if !self.requests.iter().any(|r| r.from.eq_ignore_ascii_case(from)) {
                    return Err(AccountError::Refused(ErrorMsg::new(ErrorCode::NotPending, "no such request")));
                }
                self.requests.retain(|r| !r.from.eq_ignore_ascii_case(from));
                if *accept {
                    self.set(from, Relation::Authorized);
                    BuddyAnswer::Relation(Relation::Authorized)
                } else {
                    BuddyAnswer::Relation(Relation::Declined)
                }
            }
            BuddyOp::Remove { contact } => {
                self.contacts.retain(|c| c.1 != *contact);
                BuddyAnswer::Done
            }
            BuddyOp::Block { contact, .. } => {
                self.set(contact, Relation::Blocked);
                BuddyAnswer::Done
            }
        };
        Ok(LoginAnswer::Buddy(a))
    }
}

/// The machine and everything it put out, on virtual time.
struct H {
    core: BuddiesCore,
    t0: Instant,
    at: Duration,
    /// Login effects not answered yet, in the order they came.
    out: Vec<(u64, LoginCall)>,
    /// Every login effect, with when.
    effects: Vec<(Duration, LoginCall)>,
    requests: Vec<(Duration, u64, Request)>,
    events: Vec<(Duration, Event)>,
    done: Vec<(Duration, u64, BuddyResult)>,
    signals: Vec<Signal>,
    /// Most notices one `handle_timeout` step put out.
    most_forwards_per_step: usize,
}

impl H {
    fn new(cfg: BuddiesConfig) -> Self {
        let t0 = Instant::now();
        let now = Now { mono: t0, unix_ms: T0_UNIX_MS };
        let core = BuddiesCore::new(cfg, now, StdRng::seed_from_u64(5));
        Self {
            core,
            t0,
            at: Duration::ZERO,
            out: Vec::new(),
            effects: Vec::new(),
            requests: Vec::new(),
            events: Vec::new(),
            done: Vec::new(),
            signals: Vec::new(),
            most_forwards_per_step: 0,
        }
    }

    fn now(&self) -> Now {
        Now { mono: self.t0 + self.at, unix_ms: T0_UNIX_MS + self.at.as_millis() as u64 }
    }

    /// Drains every output; returns how many notices came out.
    fn drain(&mut self) -> usize {
        let mut forwards = 0;
        while let Some((tag, r)) = self.core.poll_request() {
            forwards += usize::from(matches!(r, Request::Forward { .. }));
            self.requests.push((self.at, tag, r));
        }
        while let Some((tag, e)) = self.core.poll_effect() {
            let Effect::Login(call) = e else { panic!("only login effects expected: {e:?}") };
            self.effects.push((self.at, call.clone()));
            self.out.push((tag, call));
        }
        while let Some(e) = self.core.poll_event() {
            self.events.push((self.at, e));
        }
        while let Some((tag, r)) = self.core.poll_completion() {
            self.done.push((self.at, tag, r));
        }
        while let Some(s) = self.core.poll_signal() {
            self.signals.push(s);
        }
        forwards
    }

    /// Runs the timers up to `t`, each step at its due time, asserting that none is
    /// left overdue after its step.
    fn run_to(&mut self, t: Duration) {
        for _ in 0..100_000 {
            let Some(due) = self.core.poll_timeout().filter(|d| *d <= self.t0 + t) else { break };
            self.at = self.at.max(due - self.t0);
            self.tick();
        }
        self.at = t;
    }

    /// One `handle_timeout` step now.
    fn tick(&mut self) {
        let now = self.now();
        self.core.handle_timeout(now);
        assert!(self.core.poll_timeout().is_none_or(|d| d > now.mono), "a timer left overdue at {:?}", self.at);
        let n = self.drain();
        self.most_forwards_per_step = self.most_forwards_per_step.max(n);
    }

    fn link_up(&mut self, name: &str) {
        let now = self.now();
        self.core.on_link_up(now, link(name));
        self.drain();
    }

    /// Answers the login effect at `i` of those out.
    fn answer_at(&mut self, i: usize, r: Result<LoginAnswer, AccountError>) {
        let (tag, _) = self.out.remove(i);
        let now = self.now();
        self.core.on_login_result(now, tag, r);
        self.drain();
    }

    /// Answers every login effect out (and those they lead to) from `login`.
    fn serve(&mut self, login: &mut FakeLogin) {
        while !self.out.is_empty() {
            let r = login.answer(&self.out[0].1);
            self.answer_at(0, r);
        }
    }

    fn notice(&mut self, n: Notice) {
        let now = self.now();
        self.core.on_notice(now, &n);
        self.drain();
    }

    fn presence(&mut self, user: &str, status: Status) {
        let e = entry(user, 1, T0_UNIX_MS + self.at.as_millis() as u64, status);
        self.notice(Notice::Presence { entry: e.encode() });
    }

    fn position(&self, f: impl Fn(&LoginCall) -> bool) -> Option<usize> {
        self.out.iter().position(|(_, c)| f(c))
    }

    fn result(&self, tag: u64) -> Option<&BuddyResult> {
        self.done.iter().find(|(_, t, _)| *t == tag).map(|(_, _, r)| r)
    }

    fn lists(&self) -> usize {
        self.effects.iter().filter(|(_, c)| matches!(c, LoginCall::Buddy(BuddyOp::List { .. }))).count()
    }

    /// Notices sent to `to`, with when and the notice.
    fn forwards(&self) -> Vec<(Duration, String, String, Notice)> {
        self.requests
            .iter()
            .filter_map(|(at, _, r)| match r {
                Request::Forward { to, via, body, .. } => {
                    Some((*at, to.clone(), via.clone(), Notice::decode(body).expect("our notices decode")))
                }
                _ => None,
            })
            .collect()
    }

    fn publishes(&self) -> usize {
        self.requests.iter().filter(|(_, _, r)| matches!(r, Request::Publish { .. })).count()
    }
}

fn is_list(c: &LoginCall) -> bool {
    matches!(c, LoginCall::Buddy(BuddyOp::List { .. }))
}

fn is_requests(c: &LoginCall) -> bool {
    matches!(c, LoginCall::Buddy(BuddyOp::Requests))
}

/// A host logged in with `login`'s list read and its first fan-out done.
fn logged_in(login: &mut FakeLogin) -> H {
    let mut h = H::new(config(trusted(), Duration::from_secs(3600)));
    h.link_up("sn-a");
    h.serve(login);
    let end = h.at + FANOUT_GAP * (login.contacts.len() as u32 + 1);
    h.run_to(end);
    assert_eq!(h.core.fanout_left(), 0);
    h
}

#[test]
fn a_list_of_200_read_page_by_page_out_of_order_with_a_failed_page_read_again() {
    let mut login = FakeLogin::with(200);
    login.requests.push(Incoming { from: "Zed".into(), message: "hi".into(), at: 1 });
    let mut h = H::new(config(trusted(), Duration::from_secs(3600)));
    h.link_up("sn-a");
    assert_eq!(h.publishes(), 1, "the login sequence publishes first");
    assert_eq!(h.out.len(), 2, "the first page and the requests go out at once");
    // The requests come back first, before any page.
    let i = h.position(is_requests).unwrap();
    let r = login.answer(&h.out[i].1);
    h.answer_at(i, r);
    assert!(h.events.is_empty(), "nothing is applied before the list is read");
    // Two refreshes asked for meanwhile: one more read after this one, for both.
    let now = h.now();
    let (w1, w2) = (h.core.refresh(now), h.core.refresh(now));
    let mut pages = 0;
    let mut failed_once = false;
    while let Some(i) = h.position(is_list) {
        assert_eq!(h.out.iter().filter(|(_, c)| is_list(c)).count(), 1, "one page in flight at a time");
        pages += 1;
        if pages == 5 && !failed_once {
            failed_once = true;
            h.answer_at(i, Err(AccountError::Unreachable("198.18.0.1:443: connection refused".into())));
            assert!(h.position(is_list).is_none(), "the failed page waits before it is read again");
            let before = h.lists();
            h.run_to(h.at + READ_RETRIES[0] - ms(1));
            assert_eq!(h.lists(), before, "not before its retry time");
            h.run_to(h.at + ms(1));
            assert_eq!(h.lists(), before + 1, "read again after {:?}", READ_RETRIES[0]);
            let LoginCall::Buddy(BuddyOp::List { after }) = &h.out[h.position(is_list).unwrap()].1 else {
                unreachable!()
            };
            assert_eq!(*after, Some(7 * 63 + 3), "the same page again: after the 64th row");
            pages -= 1;
            continue;
        }
        let r = login.answer(&h.out[i].1);
        h.answer_at(i, r);
        if pages == 13 {
            break;
        }
    }
    assert_eq!(pages, 13, "200 rows are 13 pages of {PAGE_ROWS}");
    assert_eq!(h.lists(), 15, "13 pages, one read again, and the coalesced read's first page");
    assert_eq!(h.core.stats().reads_retried, 1);
    let contacts = h.core.buddies();
    assert_eq!(contacts.len(), 200);
    assert!(contacts.iter().all(|b| b.relation == Relation::Authorized));
    assert_eq!(h.core.buddy_requests().len(), 1);
    assert!(matches!(&h.events[..], [(_, Event::Request { from, .. })] if from == "Zed"));
    // The waiters complete with the second read, which has begun.
    assert!(h.result(w1).is_none() && h.result(w2).is_none());
    assert!(h.core.refreshing());
    assert_eq!(h.out.len(), 2, "the coalesced refresh: one page and the requests");
    // Its page first this time, then the requests.
    h.serve(&mut login);
    assert_eq!(h.lists(), 27, "the second read: 13 pages");
    assert!(matches!(h.result(w1), Some(Ok(BuddyDone::Done))));
    assert!(matches!(h.result(w2), Some(Ok(BuddyDone::Done))));
    assert!(!h.core.refreshing());
    assert_eq!(h.events.len(), 1, "the second read changed nothing");
    // The login sequence ends by telling every buddy: paced, one notice now.
    assert_eq!(h.core.fanout_left(), 199);
}

#[test]
fn presence_from_someone_not_yet_listed_waits_for_the_list_and_is_applied_after_it() {
    let mut login = FakeLogin::with(1);
    login.set("carol", Relation::Requested);
    let mut h = logged_in(&mut login);
    assert_eq!(h.core.buddies().len(), 2);
    h.events.clear();
    let lists = h.lists();

    // Carol accepts us, and her presence comes before our list says so.
    login.set("carol", Relation::Authorized);
    h.presence("carol", Status::Online);
    assert!(h.events.is_empty(), "not applied yet");
    assert_eq!(h.core.presence_waiting(), 1);
    assert_eq!(h.core.poll_timeout(), Some(h.now().mono), "a presence from someone we asked reads the list");
    h.tick();
    assert_eq!(h.lists(), lists + 1);
    // Again at once: the same entry is kept once, the read is not repeated.
    h.presence("carol", Status::Online);
    h.tick();
    assert_eq!((h.core.presence_waiting(), h.lists()), (1, lists + 1));
    // Someone not on the list at all, while the list is read: waits too, then dropped.
    h.presence("dave", Status::Online);
    assert_eq!(h.core.presence_waiting(), 2);
    let forwards = h.forwards().len();
    h.serve(&mut login);
    assert_eq!(h.core.presence_waiting(), 0);
    let events: Vec<_> = h.events.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(
        events,
        vec![
            Event::Answered { user: "carol".into(), relation: Relation::Authorized },
            Event::Presence {
                user: "carol".into(),
                status: Status::Online,
                last_seen: T0_UNIX_MS / 1000 + h.at.as_secs()
            },
        ]
    );
    // Carol gets our presence: once as a new buddy, once as one that came online
    // (through her super node).
    let to_carol: Vec<_> = h.forwards().into_iter().skip(forwards).filter(|f| f.1 == "carol").collect();
    assert_eq!(to_carol.len(), 2);
    assert!(to_carol.iter().all(|f| matches!(f.3, Notice::Presence { .. })));
    assert_eq!(to_carol[1].2, "sn1", "the answer to her presence goes through her super node");

    // The waiting list is bounded: the oldest go first.
    let now = h.now();
    h.core.refresh(now);
    h.drain();
    for i in 0..(PRESENCE_WAITING_MAX + 6) {
        h.presence(&format!("stranger{i}"), Status::Online);
    }
    assert_eq!(h.core.presence_waiting(), PRESENCE_WAITING_MAX);
    assert_eq!(h.core.stats().presence_waiting_dropped, 6);
    let n = h.events.len();
    h.serve(&mut login);
    assert_eq!(h.events.len(), n, "strangers stay strangers");
    assert_eq!(h.core.presence_waiting(), 0);
    // Outside a read, a stranger's presence is dropped at once.
    h.presence("stranger0", Status::Online);
    assert_eq!(h.core.presence_waiting(), 0);
    assert!(!h.core.refreshing());
}

#[test]
fn the_fan_out_to_200_buddies_is_paced_at_40_a_second_and_never_holds_up_an_input() {
    let mut login = FakeLogin::with(200);
    let mut h = H::new(config(trusted(), Duration::from_secs(3600)));
    h.link_up("sn-a");
    h.serve(&mut login);
    let start = h.at;
    // Steps every 20 ms (as a call's media clock drives them), and at each due time.
    let mut t = start;
    let mut presence_at = None;
    let mut add = None;
    while h.core.fanout_left() > 0 {
        assert!(t < start + Duration::from_secs(10), "the fan-out ends");
        t += ms(20);
        h.run_to(t);
        h.tick();
        if t == start + ms(2000) {
            // Inputs in the middle of the fan-out are handled at once.
            let (events, effects) = (h.events.len(), h.effects.len());
            h.presence("buddy150", Status::Away);
            assert_eq!(h.events.len(), events + 1, "a presence is applied at once");
            presence_at = Some(h.at);
            let now = h.now();
            add = Some(h.core.add_buddy(now, "newcomer", "hi"));
            h.drain();
            assert_eq!(h.effects.len(), effects + 1, "a user operation goes out at once");
        }
    }
    assert!(presence_at.is_some());
    assert_eq!(h.most_forwards_per_step, 1, "one notice per step at most");
    let fan: Vec<_> = h
        .forwards()
        .into_iter()
        .filter(|f| f.0 >= start && matches!(f.3, Notice::Presence { .. }) && f.1 != "buddy150")
        .collect();
    let mut users: Vec<_> = fan.iter().map(|f| f.1.clone()).collect();
    users.sort();
    users.dedup();
    assert_eq!((fan.len(), users.len()), (199, 199), "every other buddy once");
    let to_150: Vec<_> = h.forwards().into_iter().filter(|f| f.1 == "buddy150").map(|f| f.2).collect();
    assert_eq!(to_150, vec!["sn1".to_string(), String::new()], "in answer to its presence, then in its turn");
    // The fan-out's notices name no super node (nobody had told us theirs).
    let times: Vec<Duration> = h
        .requests
        .iter()
        .filter(|(at, _, r)| {
            *at >= start && matches!(r, Request::Forward { class: Class::Presence, via, .. } if via.is_empty())
        })
        .map(|(at, _, _)| *at)
        .collect();
    assert_eq!(times.len(), 200);
    for (i, t) in times.iter().enumerate() {
        let within = times[i..].iter().take_while(|u| **u < *t + Duration::from_secs(1)).count();
        assert!(within <= FORWARDS_PER_SECOND as usize, "{within} notices within a second from {t:?}");
    }
    let span = *times.last().unwrap() - start;
    assert!(span >= FANOUT_GAP * 198, "200 notices take about 5 s: {span:?}");
    assert!(span <= FANOUT_GAP * 199 + ms(200), "and not much more: {span:?}");
    // The login server answers the add in the meantime.
    let i = h.position(|c| matches!(c, LoginCall::Buddy(BuddyOp::Add { .. }))).unwrap();
    let r = login.answer(&h.out[i].1);
    h.answer_at(i, r);
    assert!(matches!(h.result(add.unwrap()), Some(Ok(BuddyDone::Relation(Relation::Requested)))));
}

#[test]
fn user_operations_complete_with_the_relation_the_login_server_gives() {
    let mut login = FakeLogin::with(0);
    login.requests.push(Incoming { from: "Carol".into(), message: "hi".into(), at: 1 });
    login.requests.push(Incoming { from: "Dave".into(), message: "hello".into(), at: 1 });
    let mut h = logged_in(&mut login);
    assert_eq!(h.core.buddy_requests().len(), 2);
    let now = h.now();
    let add_bob = h.core.add_buddy(now, "bob", "hi bob");
    let add_carol = h.core.add_buddy(now, "carol", "yes");
    let accept_dave = h.core.answer_buddy(now, "dave", true);
    let accept_erin = h.core.answer_buddy(now, "erin", true);
    let block = h.core.block_buddy(now, "mallory");
    h.drain();
    assert_eq!(h.out.len(), USER_OPS_IN_FLIGHT_MAX, "the fifth waits its turn");
    let forwards = h.forwards().len();
    h.serve(&mut login);
    assert!(matches!(h.result(add_bob), Some(Ok(BuddyDone::Relation(Relation::Requested)))));
    assert!(matches!(h.result(add_carol), Some(Ok(BuddyDone::Relation(Relation::Authorized)))));
    assert!(matches!(h.result(accept_dave), Some(Ok(BuddyDone::Relation(Relation::Authorized)))));
    match h.result(accept_erin) {
        Some(Err(HostError::Account(e))) => assert_eq!(e.code(), Some(ErrorCode::NotPending), "{e}"),
        other => panic!("expected the login server's refusal, got {other:?}"),
    }
    assert!(matches!(h.result(block), Some(Ok(BuddyDone::Done))));
    let relation = |h: &H, u: &str| h.core.buddies().into_iter().find(|b| b.user == u).map(|b| b.relation);
    assert_eq!(relation(&h, "bob"), Some(Relation::Requested));
    assert_eq!(relation(&h, "carol"), Some(Relation::Authorized));
    assert_eq!(relation(&h, "dave"), Some(Relation::Authorized));
    assert_eq!(relation(&h, "mallory"), Some(Relation::Blocked));
    assert!(h.core.buddy_requests().is_empty());
    // Each added or answered contact hears the list changed; the authorized ones get
    // our presence too.
    let sent: Vec<_> = h.forwards().into_iter().skip(forwards).map(|f| (f.1, f.3.label())).collect();
    for (user, label) in [
        ("bob", "list_changed"),
        ("carol", "list_changed"),
        ("carol", "presence"),
        ("dave", "presence"),
        ("dave", "list_changed"),
    ] {
        assert!(sent.iter().any(|(u, l)| u == user && *l == label), "{user} {label}: {sent:?}");
    }
    assert!(!sent.iter().any(|(u, l)| u == "bob" && *l == "presence"), "bob has not accepted: {sent:?}");
    assert!(!sent.iter().any(|(u, _)| u == "mallory"), "a blocked user hears nothing: {sent:?}");

    let now = h.now();
    let remove = h.core.remove_buddy(now, "bob");
    let odd = h.core.add_buddy(now, "frank", "");
    h.drain();
    let r = login.answer(&h.out[0].1);
    h.answer_at(0, r);
    assert!(matches!(h.result(remove), Some(Ok(BuddyDone::Done))));
    assert_eq!(relation(&h, "bob"), None);
    h.answer_at(0, Ok(LoginAnswer::Buddy(BuddyAnswer::Done)));
    match h.result(odd) {
        Some(Err(HostError::Refused(m))) => assert!(m.starts_with("unexpected answer to Add"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // The publish made on the link's coming up is recorded for the login to wait on.
    assert_eq!(h.core.own_publish(), None, "not answered yet");
    let now = h.now();
    let (_, tag, _) = h.requests.iter().find(|(_, _, r)| matches!(r, Request::Publish { .. })).unwrap();
    let ack = PublishAck { code: 0, replicas: 2, detail: String::new() };
    h.core.on_request_result(now, *tag, Ok(Answer::Published(ack)));
    assert_eq!(h.core.own_publish(), Some(&Ok(2)));

    // A publish completes with the super node's answer.
    let now = h.now();
    let p = h.core.publish(now, Status::Away, Profile::default());
    h.drain();
    let (_, tag, _) = h.requests.iter().rev().find(|(_, _, r)| matches!(r, Request::Publish { .. })).unwrap();
    let ack = PublishAck { code: 0, replicas: 3, detail: String::new() };
    h.core.on_request_result(now, *tag, Ok(Answer::Published(ack)));
    h.drain();
    assert!(matches!(h.result(p), Some(Ok(BuddyDone::Published { replicas: 3 }))));
    assert_eq!(h.core.own_publish(), Some(&Ok(2)), "a user's publish is the user's, not the login's");
    assert_eq!(h.core.status(), Status::Away);
}

#[test]
fn a_login_server_that_never_answers_times_out_clearly_and_holds_up_nothing_else() {
    let mut login = FakeLogin::with(3);
    let mut h = logged_in(&mut login);
    let now = h.now();
    let start = h.at;
    let add = h.core.add_buddy(now, "bob", "hi");
    let refresh = h.core.refresh(now);
    h.drain();
    assert_eq!(h.out.len(), 3, "the add, a page and the requests");
    // Meanwhile: presence comes and goes, our own presence goes out.
    h.run_to(start + Duration::from_secs(1));
    h.presence("buddy001", Status::Away);
    assert!(matches!(h.events.last(), Some((_, Event::Presence { status: Status::Away, .. }))));
    let now = h.now();
    h.core.tell_buddies(now, true);
    h.drain();
    h.run_to(start + Duration::from_secs(2));
    assert_eq!(h.core.fanout_left(), 0, "the fan-out did not wait for the login server");
    // Nothing completes before the deadline, and both fail at it.
    h.run_to(start + LOGIN_DEADLINE - ms(1));
    assert!(h.result(add).is_none() && h.result(refresh).is_none());
    h.run_to(start + LOGIN_DEADLINE);
    let expect = format!("no login server answered: no answer to the add within {LOGIN_DEADLINE:?}");
    match h.result(add) {
        Some(Err(e)) => assert_eq!(e.to_string(), expect),
        other => panic!("expected a timeout, got {other:?}"),
    }
    match h.result(refresh) {
        Some(Err(HostError::Account(AccountError::Unreachable(m)))) => assert!(m.contains("within"), "{m}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The requests read went with its refresh, unanswered: two effects timed out.
    assert_eq!(h.core.stats().login_timed_out, 2);
    assert!(!h.core.refreshing());
    assert_eq!(h.core.buddies().len(), 3, "the book is kept as it was");
    // A late answer completes nothing, but the add may have been applied after all:
    // the list is read again.
    let (tag, call) = h.out.remove(0);
    assert!(matches!(call, LoginCall::Buddy(BuddyOp::Add { .. })), "{call:?}");
    let r = login.answer(&call);
    let (now, lists, done) = (h.now(), h.lists(), h.done.len());
    h.core.on_login_result(now, tag, r);
    h.drain();
    assert_eq!(h.done.len(), done);
    assert_eq!(h.core.stats().login_late, 1);
    h.run_to(h.at + Duration::from_secs(2));
    assert_eq!(h.lists(), lists + 1, "a list read follows a late answer");
}

#[test]
fn the_presence_refresh_reads_revocations_then_publishes_and_tells_everyone() {
    let trusted = trusted();
    let mut login = FakeLogin::with(3);
    let mut h = H::new(config(trusted.clone(), Duration::from_secs(60)));
    h.link_up("sn-a");
    h.serve(&mut login);
    h.run_to(Duration::from_secs(1));
    let (publishes, forwards) = (h.publishes(), h.forwards().len());
    h.run_to(Duration::from_secs(60));
    assert!(matches!(h.out[..], [(_, LoginCall::Revocations)]), "{:?}", h.out);
    assert_eq!(h.publishes(), publishes, "the publish waits for the revocations");
    h.answer_at(0, Ok(LoginAnswer::Revocations(None)));
    h.run_to(Duration::from_secs(61));
    assert_eq!(h.publishes(), publishes + 1);
    assert_eq!(h.forwards().len(), forwards + 3, "every buddy told");

    // Our super node's key is revoked: we leave it, and the next link gets the rest.
    let list = RevocationList::issue(
        1,
        vec![Revocation {
            key: test_key(1).public().id(),
            kind: CredentialKind::SuperNode,
            subject: "sn-a".into(),
            expires_at: T0_UNIX_MS / 1000 + 86_400,
        }],
        &test_key(0),
    );
    trusted.adopt_revocations(&list.encode()).unwrap();
    h.run_to(Duration::from_secs(120));
    h.answer_at(0, Ok(LoginAnswer::Revocations(Some(1))));
    assert_eq!(h.signals, vec![Signal::SupernodeRevoked]);
    h.run_to(Duration::from_secs(121));
    assert_eq!(h.publishes(), publishes + 1, "nothing published on a revoked super node");
    assert_eq!(h.forwards().len(), forwards + 3);
    h.core.on_link_down();
    h.run_to(Duration::from_secs(125));
    let mut other = link("sn-b");
    other.supernode_key = KeyId([9; 8]);
    let now = h.now();
    h.core.on_link_up(now, other);
    h.drain();
    h.run_to(Duration::from_secs(126));
    assert_eq!(h.publishes(), publishes + 2, "published on the new super node");
    assert_eq!(h.forwards().len(), forwards + 6, "every buddy told again");
    assert!(h.out.is_empty(), "the list is not read again on a rejoin");
}

#[test]
fn list_changes_read_the_list_at_most_once_a_second() {
    let mut login = FakeLogin::with(2);
    let mut h = logged_in(&mut login);
    let lists = h.lists();
    let start = h.at;
    h.notice(Notice::ListChanged { from: "x".into() });
    h.notice(Notice::ListChanged { from: "y".into() });
    h.tick();
    assert_eq!(h.lists(), lists + 1, "read at once, once");
    h.serve(&mut login);
    h.run_to(start + ms(100));
    h.notice(Notice::ListChanged { from: "x".into() });
    h.run_to(start + ms(999));
    assert_eq!(h.lists(), lists + 1, "not again within a second");
    h.run_to(start + ms(1000));
    assert_eq!(h.lists(), lists + 2);
}

#[test]
fn a_full_event_queue_drops_the_oldest_presence_first() {
    let mut h = H::new(config(trusted(), Duration::from_secs(3600)));
    let presence = |i: u64| Event::Presence { user: format!("u{i}"), status: Status::Online, last_seen: i };
    h.core.push_event(Event::Request { from: "a".into(), message: String::new() });
    for i in 0..(EVENTS_QUEUED_MAX as u64 - 1) {
        h.core.push_event(presence(i));
    }
    h.core.push_event(Event::Answered { user: "b".into(), relation: Relation::Declined });
    assert_eq!(h.core.stats().events_dropped, 1);
    let events: Vec<_> = std::iter::from_fn(|| h.core.poll_event()).collect();
    assert_eq!(events.len(), EVENTS_QUEUED_MAX);
    assert!(matches!(&events[0], Event::Request { .. }), "the request is kept");
    assert_eq!(events[1], presence(1), "the oldest presence went");
    assert!(matches!(events.last(), Some(Event::Answered { .. })));
}

#[test]
fn a_lost_link_stops_the_fan_out_and_the_next_link_tells_those_online() {
    let mut login = FakeLogin::with(100);
    let mut h = logged_in(&mut login);
    let now = h.now();
    h.core.tell_buddies(now, true);
    h.drain();
    let start = h.at;
    h.run_to(start + ms(500));
    let sent = h.forwards().len();
    assert!(h.core.fanout_left() > 70, "{} left", h.core.fanout_left());
    h.core.on_link_down();
    assert_eq!(h.core.fanout_left(), 0);
    h.run_to(start + ms(1500));
    assert_eq!(h.forwards().len(), sent, "nothing goes out without a link");
    // Presence still comes in; the answer to it waits for a link.
    h.presence("buddy005", Status::Online);
    assert!(matches!(h.events.last(), Some((_, Event::Presence { .. }))));
    assert_eq!(h.forwards().len(), sent);
    let publishes = h.publishes();
    let now = h.now();
    h.core.on_link_up(now, link("sn-b"));
    h.drain();
    h.run_to(start + ms(2000));
    assert_eq!(h.publishes(), publishes + 1, "published on the new super node");
    let told: Vec<_> = h.forwards().into_iter().skip(sent).map(|f| (f.1, f.2)).collect();
    assert_eq!(told, vec![("buddy005".to_string(), "sn1".to_string())], "only the buddy known online");
}

#[test]
fn two_fan_outs_in_a_row_keep_the_pace_and_merge_their_targets() {
    let mut login = FakeLogin::with(30);
    let mut h = logged_in(&mut login);
    let start = h.at;
    let now = h.now();
    h.core.tell_buddies(now, true);
    h.drain();
    h.run_to(start + ms(100));
    // Told again meanwhile: those not yet told are told once, those told already again.
    let now = h.now();
    h.core.tell_buddies(now, true);
    h.drain();
    h.run_to(start + Duration::from_secs(3));
    let times: Vec<_> = h.forwards().into_iter().filter(|f| f.0 >= start).map(|f| (f.0, f.1)).collect();
    assert_eq!(times.len(), 30 + 5, "30 buddies, and the 5 told before the second asked");
    for w in times.windows(2) {
        assert!(w[1].0 - w[0].0 >= FANOUT_GAP, "{:?} then {:?}", w[0], w[1]);
    }
    let mut users: Vec<_> = times.iter().map(|t| t.1.clone()).collect();
    users.sort();
    users.dedup();
    assert_eq!(users.len(), 30);
}

#[test]
fn entries_signed_within_one_millisecond_are_timestamped_in_order() {
    let mut login = FakeLogin::with(3);
    let mut h = logged_in(&mut login);
    let before = h.requests.len();
    // Away, then Busy, in the same millisecond: a buddy keeps only a newer entry, so
    // the second must not carry the first's timestamp.
    let now = h.now();
    h.core.publish(now, Status::Away, Profile::default());
    h.core.publish(now, Status::Busy, Profile::default());
    h.drain();
    let stamps: Vec<(Status, u64)> = h.requests[before..]
        .iter()
        .filter_map(|(_, _, r)| match r {
            Request::Publish { entry } => Some(crate::index::Entry::decode(entry).expect("an entry")),
            _ => None,
        })
        .map(|e| (e.status, e.timestamp_ms))
        .collect();
    assert_eq!(stamps.len(), 2, "{stamps:?}");
    assert_eq!((stamps[0].0, stamps[1].0), (Status::Away, Status::Busy));
    assert!(stamps[1].1 > stamps[0].1, "{stamps:?}");
    assert!(stamps[0].1 >= now.unix_ms);
}

/// What one run put out, as far as the seed decides it: the effects, with the sealed
/// records of the contacts we add, and the requests by kind, recipient and time.
fn trace(seed: u64) -> Vec<String> {
    let mut login = FakeLogin::with(40);
    login.requests.push(Incoming { from: "Carol".into(), message: "hi".into(), at: 1 });
    let mut h = H::new(config(trusted(), Duration::from_secs(30)));
    h.core.rng = StdRng::seed_from_u64(seed);
    h.link_up("sn-a");
    h.serve(&mut login);
    let now = h.now();
    h.core.add_buddy(now, "bob", "hi");
    h.core.answer_buddy(now, "carol", true);
    h.drain();
    h.serve(&mut login);
    h.presence("buddy007", Status::Away);
    h.run_to(Duration::from_secs(31));
    h.serve(&mut login);
    h.run_to(Duration::from_secs(40));
    let effects = h.effects.iter().map(|(at, c)| format!("{at:?} {c:?}"));
    let requests = h.requests.iter().map(|(at, tag, r)| match r {
        Request::Forward { to, via, class, .. } => format!("{at:?} {tag} forward {to} {via} {class:?}"),
        Request::Publish { .. } => format!("{at:?} {tag} publish"),
        other => format!("{at:?} {tag} {other:?}"),
    });
    effects.chain(requests).collect()
}

#[test]
fn a_run_is_a_function_of_its_inputs_and_seed() {
    let (a, b, c) = (trace(1), trace(1), trace(2));
    assert!(a.len() > 80, "{}", a.len());
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed seals the records with other nonces");
    let same_shape = |t: &[String]| t.iter().filter(|l| !l.contains("sealed")).cloned().collect::<Vec<_>>();
    assert_eq!(same_shape(&a), same_shape(&c), "and changes nothing else");
}

/// The machine beside a real `CoreLink` in the in-memory world, joined as the host core
/// will join them: requests submitted to the link and their completions routed back by
/// tag, notices from the link fed in, login effects answered by the user's login server.
mod in_world {
    use super::*;
    use crate::host::core::CoreEvent;
    use crate::host::core::pending::OpId;
    use crate::host::core::sim::nat::{Cone, Symmetric};
    use crate::host::core::sim::{NodeId, World};

    struct Joined {
        id: NodeId,
        buddies: BuddiesCore,
        login: FakeLogin,
        ops: BTreeMap<OpId, u64>,
        done_seen: usize,
        events_seen: usize,
        events: Vec<(Duration, Event)>,
    }

    impl Joined {
        fn new(w: &mut World, id: NodeId, user: &str, buddy: &str) -> Self {
            let now = w.command(id, |_, now| now).expect("linked");
            let cfg = config_for(user, trusted(), Duration::from_secs(3600));
            let mut login = FakeLogin::with(0);
            login.owner = user.into();
            login.set(buddy, Relation::Authorized);
            let buddies = BuddiesCore::new(cfg, now, StdRng::seed_from_u64(id.0.into()));
            Self { id, buddies, login, ops: BTreeMap::new(), done_seen: 0, events_seen: 0, events: Vec::new() }
        }

        fn link_up(&mut self, w: &mut World) {
            let now = w.command(self.id, |_, now| now).unwrap();
            self.buddies.on_link_up(now, link("sn-a"));
        }

        /// One step of the joining code: timers, then every output and every input
        /// until nothing moves.
        fn pump(&mut self, w: &mut World) {
            let now = w.command(self.id, |_, now| now).unwrap();
            if self.buddies.poll_timeout().is_some_and(|d| d <= now.mono) {
                self.buddies.handle_timeout(now);
            }
            loop {
                let mut moved = false;
                while let Some((tag, r)) = self.buddies.poll_request() {
                    let op = w.command(self.id, |c, now| match r {
                        Request::Forward { to, via, body, class } => c.forward(now, &to, &via, body, class),
                        Request::Publish { entry } => c.publish(now, entry),
                        other => panic!("not a buddies request: {other:?}"),
                    });
                    self.ops.insert(op.unwrap(), tag);
                    moved = true;
                }
                while let Some((tag, e)) = self.buddies.poll_effect() {
                    let Effect::Login(call) = e else { panic!("{e:?}") };
                    let r = self.login.answer(&call);
                    self.buddies.on_login_result(now, tag, r);
                    moved = true;
                }
                let host = w.host(self.id);
                let done: Vec<_> = host.done[self.done_seen..].to_vec();
                let notices: Vec<_> = host.events[self.events_seen..]
                    .iter()
                    .filter_map(|(_, e)| match e {
                        CoreEvent::Notice(body) => Notice::decode(body),
                        _ => None,
                    })
                    .collect();
                self.done_seen = host.done.len();
                self.events_seen = host.events.len();
                for (_, op, r) in done {
                    let tag = self.ops.remove(&op).expect("every completion is for a request of ours");
                    self.buddies.on_request_result(now, tag, r);
                    moved = true;
                }
                for n in notices {
                    self.buddies.on_notice(now, &n);
                    moved = true;
                }
                while let Some(e) = self.buddies.poll_event() {
                    self.events.push((w.now, e));
                }
                if !moved {
                    break;
                }
            }
        }

        fn saw_online(&self, user: &str) -> Option<Duration> {
            self.events.iter().find_map(|(t, e)| match e {
                Event::Presence { user: u, status: Status::Online, .. } if u == user => Some(*t),
                _ => None,
            })
        }
    }

    #[test]
    fn two_buddies_learn_each_others_presence_through_a_super_node() {
        let mut w = World::new(11);
        w.add_supernode("sn-a", "198.18.0.1:33033".parse().unwrap(), 15, 120);
        let ip = |n: u8| std::net::IpAddr::from([198, 18, 10, n]);
        let private: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let ttl = Duration::from_secs(30);
        let sn = "198.18.0.1:33033".parse().unwrap();
        let a = w.add_host("alice", private, Box::new(Cone::new(ip(1), ttl)), sn);
        let b = w.add_host("bob", private, Box::new(Symmetric::new(ip(2), ttl)), sn);
        w.run_until(Duration::from_secs(2));
        let (mut alice, mut bob) = (Joined::new(&mut w, a, "alice", "bob"), Joined::new(&mut w, b, "bob", "alice"));
        alice.link_up(&mut w);
        let mut t = w.now;
        let bob_at = t + Duration::from_secs(1);
        while t < Duration::from_secs(6) {
            if t == bob_at {
                // Bob logs in a second later: alice's presence reached him before he
                // had a list, and his login tells her, who answers.
                bob.link_up(&mut w);
            }
            alice.pump(&mut w);
            bob.pump(&mut w);
            t += ms(5);
            w.run_until(t);
        }
        let (alice_saw, bob_saw) =
            (alice.saw_online("bob").expect("alice saw bob"), bob.saw_online("alice").expect("bob saw alice"));
        assert!(alice_saw >= bob_at && alice_saw < bob_at + ms(200), "{alice_saw:?}");
        assert!(bob_saw > alice_saw && bob_saw < alice_saw + ms(200), "{bob_saw:?}");
        for j in [&alice, &bob] {
            assert_eq!(j.buddies.stats().forwards_failed, 0);
            assert_eq!(j.buddies.stats().presence_invalid, 0);
            assert!(j.ops.is_empty(), "every request was answered");
        }
        let seen =
            |j: &Joined, who: &str| j.buddies.buddies().into_iter().find(|x| x.user == who).and_then(|x| x.presence);
        assert_eq!(seen(&alice, "bob").map(|p| p.status), Some(Status::Online));
        assert_eq!(seen(&bob, "alice").map(|p| p.supernode), Some("sn-a".to_string()));
    }
}
