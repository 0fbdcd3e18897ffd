//! Groups end to end: members writing, partitions, forged entries, keys, sync rounds.

use super::dag::{Inserted, Refused};
use super::log::{ENTRY_BYTES_MAX, Entry, Op};
use super::member::{Group, HistoryItem};
use super::state::Exclusion;
use super::sync;
use crate::crypto::password::ListKey;
use crate::crypto::user::UserKeys;
use proptest::prelude::*;
use rand::RngExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

fn keys(name: &str) -> UserKeys {
    let mut k = [0u8; 32];
    k[..name.len()].copy_from_slice(name.as_bytes());
    UserKeys::derive(&ListKey(k))
}

/// Runs sync between two members until neither has anything to send; the number of
/// batches delivered (one direction each).
fn sync_pair(a: &mut Group, b: &mut Group) -> usize {
    let mut batch = vec![sync::hello(a)];
    let mut to_b = true;
    let mut batches = 0;
    while !batch.is_empty() {
        batches += 1;
        assert!(batches < 40, "sync does not settle");
        let to = if to_b { &mut *b } else { &mut *a };
        let mut replies = Vec::new();
        for p in &batch {
            replies.extend(sync::handle(to, p).unwrap_or_default());
        }
        batch = replies;
        to_b = !to_b;
    }
    batches
}

fn deliver(to: &mut Group, entries: &[Vec<u8>]) {
    for e in entries {
        to.receive(e).expect("a valid entry is taken in");
    }
}

fn summary(h: &[HistoryItem]) -> Vec<([u8; 32], String, u64)> {
    h.iter().map(|i| (i.id, i.author.clone(), i.at_ms)).collect()
}

/// alice creates "team" and invites bob and carol; all three hold every entry.
fn trio(rng: &mut StdRng) -> (Group, Group, Group) {
    let (mut a, mut out) = Group::create("alice", keys("alice"), "team", 1_000, rng).unwrap();
    out.extend(a.invite("bob", keys("bob").public(), 1_001, rng).unwrap());
    out.extend(a.invite("carol", keys("carol").public(), 1_002, rng).unwrap());
    let mut b = Group::join("bob", keys("bob"), a.id());
    let mut c = Group::join("carol", keys("carol"), a.id());
    deliver(&mut b, &out);
    deliver(&mut c, &out);
    (a, b, c)
}

#[test]
fn members_read_each_others_messages_in_one_order() {
    let mut rng = StdRng::seed_from_u64(1);
    let (mut a, mut b, mut c) = trio(&mut rng);
    assert_eq!(a.state().members.len(), 3);
    assert_eq!(a.state().admins.iter().collect::<Vec<_>>(), ["alice"]);
    assert!(b.history().is_empty());
    let m1 = a.send("hello", 2_000, &mut rng).unwrap();
    let m2 = b.send("hi alice", 2_001, &mut rng).unwrap();
    deliver(&mut c, &[m2.clone(), m1.clone()]);
    deliver(&mut b, &[m1]);
    deliver(&mut a, &[m2]);
    let h = c.history();
    assert_eq!(h.len(), 2);
    assert_eq!(h, a.history());
    assert_eq!(h, b.history());
    let mut texts: Vec<_> = h.iter().map(|i| i.text.clone().unwrap()).collect();
    texts.sort();
    assert_eq!(texts, ["hello", "hi alice"]);
    assert_eq!(a.state(), c.state());
}

#[test]
fn only_admins_invite_remove_and_promote() {
    let mut rng = StdRng::seed_from_u64(2);
    let (mut a, mut b, _) = trio(&mut rng);
    assert!(b.invite("dave", keys("dave").public(), 3_000, &mut rng).is_err());
    assert!(b.remove("carol", 3_000, &mut rng).is_err());
    // A non-admin's Invite written anyway (as a modified client would) is kept out.
    let parents: Vec<_> = b.dag().heads().iter().copied().collect();
    let rogue = Entry::sign(
        b.id(),
        "bob",
        parents,
        1,
        3_000,
        Op::Invite { member: "dave".into(), keys: keys("dave").public() },
        &keys("bob"),
    )
    .unwrap();
    let h = rogue.hash();
    assert!(matches!(a.receive(&rogue.encode()), Ok(Inserted::Accepted { .. })));
    assert!(a.state().excluded.contains(&(h, Exclusion::NotAdmin)));
    assert!(matches!(b.receive(&rogue.encode()), Ok(Inserted::Accepted { .. })));
    assert!(!a.state().members.contains_key("dave"));
    let p = a.promote("bob", 3_001).unwrap();
    deliver(&mut b, &[p]);
    assert!(b.state().admins.contains("bob"));
    let out = b.invite("dave", keys("dave").public(), 3_002, &mut rng).unwrap();
    deliver(&mut a, &out);
    assert!(a.state().members.contains_key("dave"));
}

#[test]
fn forged_entries_are_refused_or_kept_out() {
    let mut rng = StdRng::seed_from_u64(3);
    let (mut a, mut b, mut c) = trio(&mut rng);
    let heads: Vec<_> = a.dag().heads().iter().copied().collect();
    let text = Op::Message { nonce: [0; 12], ciphertext: vec![0; 32] };
    // Claims to be bob, signed by someone else.
    let forged = Entry::sign(a.id(), "bob", heads.clone(), 1, 5, text.clone(), &keys("mallory")).unwrap();
    assert_eq!(a.receive(&forged.encode()), Err(Refused::BadSignature("bob".into())));
    // Never invited: held (its keys unknown), never in state.
    let stranger = Entry::sign(a.id(), "mallory", heads.clone(), 1, 5, text.clone(), &keys("mallory")).unwrap();
    assert_eq!(a.receive(&stranger.encode()), Ok(Inserted::UnknownAuthor));
    assert!(!a.dag().contains(&stranger.hash()));
    // Another group's entry, and one past the size bound.
    let other = Entry::sign([9; 16], "bob", heads, 1, 5, text, &keys("bob")).unwrap();
    assert_eq!(a.receive(&other.encode()), Err(Refused::OtherGroup));
    assert!(matches!(a.receive(&vec![1; ENTRY_BYTES_MAX + 1]), Err(Refused::Decode(_))));
    // A removed member's later entries are kept out of state and history.
    let out = a.remove("bob", 6_000, &mut rng).unwrap();
    deliver(&mut b, &out);
    deliver(&mut c, &out);
    let before = c.history().len();
    let late = b.dag().heads().iter().copied().collect();
    let late = Entry::sign(
        b.id(),
        "bob",
        late,
        1,
        7_000,
        Op::Message { nonce: [1; 12], ciphertext: vec![0; 32] },
        &keys("bob"),
    )
    .unwrap();
    assert!(matches!(c.receive(&late.encode()), Ok(Inserted::Accepted { .. })));
    assert!(c.state().excluded.contains(&(late.hash(), Exclusion::NotMember)));
    assert_eq!(c.history().len(), before);
    assert!(!c.state().members.contains_key("bob"));
}

#[test]
fn a_removed_or_departed_member_cannot_read_later_epochs() {
    let mut rng = StdRng::seed_from_u64(4);
    let (mut a, mut b, mut c) = trio(&mut rng);
    let epoch = a.state().epoch;
    let out = a.remove("bob", 5_000, &mut rng).unwrap();
    assert_eq!(a.state().epoch, epoch + 1);
    assert!(!a.state().rekey_due());
    let m = a.send("after bob", 5_001, &mut rng).unwrap();
    deliver(&mut b, &out);
    deliver(&mut b, std::slice::from_ref(&m));
    deliver(&mut c, &out);
    deliver(&mut c, &[m]);
    assert_eq!(c.history().last().unwrap().text.as_deref(), Some("after bob"));
    assert_eq!(b.history().last().unwrap().text, None, "bob holds no key of the new epoch");
    assert_eq!(summary(&b.history()), summary(&c.history()));
    assert!(b.send("still here?", 5_002, &mut rng).is_err());

    let left = c.leave(6_000).unwrap();
    deliver(&mut a, &[left]);
    assert!(a.state().rekey_due());
    let rekey = a.maintain(6_001, &mut rng).unwrap();
    assert!(!rekey.is_empty());
    assert!(!a.state().rekey_due());
    assert_eq!(a.state().epoch, epoch + 2);
    let m = a.send("after carol", 6_002, &mut rng).unwrap();
    deliver(&mut c, &rekey);
    deliver(&mut c, &[m]);
    assert_eq!(c.history().last().unwrap().text, None);
    assert_eq!(a.history().last().unwrap().text.as_deref(), Some("after carol"));
}

#[test]
fn admins_removing_each_other_concurrently_resolve_the_same_everywhere() {
    let mut rng = StdRng::seed_from_u64(5);
    let (mut a, mut b, mut c) = trio(&mut rng);
    let mut out = a.invite("dave", keys("dave").public(), 1_500, &mut rng).unwrap();
    out.push(a.promote("bob", 1_501).unwrap());
    out.push(a.promote("carol", 1_502).unwrap());
    deliver(&mut b, &out);
    deliver(&mut c, &out);
    let mut d = Group::join("dave", keys("dave"), a.id());
    sync_pair(&mut d, &mut a);
    // Partition: bob removes carol while carol removes bob.
    let by_b = b.remove("carol", 2_000, &mut rng).unwrap();
    let by_c = c.remove("bob", 2_000, &mut rng).unwrap();
    deliver(&mut d, &by_c);
    deliver(&mut d, &by_b);
    deliver(&mut a, &by_b);
    deliver(&mut a, &by_c);
    sync_pair(&mut b, &mut a);
    sync_pair(&mut c, &mut a);
    let s = a.state().clone();
    assert_eq!(&s, d.state());
    assert_eq!(&s, b.state());
    assert_eq!(&s, c.state());
    let gone = ["bob", "carol"].iter().filter(|m| !s.members.contains_key(**m)).count();
    assert_eq!(gone, 1, "the first removal in the agreed order wins, the second's author is gone");
    // The loser's Remove and its Rekey page.
    assert_eq!(s.excluded.iter().filter(|(_, why)| *why == Exclusion::NotMember).count(), 2);
}

#[test]
fn disjoint_halves_of_a_thousand_entries_converge_in_three_batches() {
    let mut rng = StdRng::seed_from_u64(6);
    let (mut a, mut b, _) = trio(&mut rng);
    let common = a.dag().len();
    for i in 0..500u64 {
        a.send(&format!("a{i}"), 10_000 + i, &mut rng).unwrap();
        b.send(&format!("b{i}"), 10_000 + i, &mut rng).unwrap();
    }
    assert_eq!(a.dag().len(), common + 500);
    let batches = sync_pair(&mut a, &mut b);
    assert_eq!(batches, 3, "hello, entries and hello, entries");
    assert_eq!(a.dag().len(), common + 1000);
    assert_eq!(b.dag().len(), common + 1000);
    assert_eq!(a.history(), b.history());
    assert_eq!(a.history().len(), 1000);
    // Once converged, a hello is answered with nothing.
    assert_eq!(sync_pair(&mut a, &mut b), 1);
}

#[test]
fn an_absent_member_catches_up_from_a_far_older_head() {
    let mut rng = StdRng::seed_from_u64(7);
    let (mut a, mut b, mut c) = trio(&mut rng);
    for i in 0..300u64 {
        let m = a.send(&format!("m{i}"), 20_000 + i, &mut rng).unwrap();
        deliver(&mut b, &[m]);
    }
    // carol was away for all 300; bob has them, and she asks bob.
    let before = c.dag().len();
    assert!(sync_pair(&mut c, &mut b) <= 3);
    assert_eq!(c.dag().len(), before + 300);
    assert_eq!(c.history(), a.history());
}

#[test]
fn entries_delivered_out_of_order_are_held_then_taken_in() {
    let mut rng = StdRng::seed_from_u64(8);
    let (mut a, _, _) = trio(&mut rng);
    let mut out = Vec::new();
    for i in 0..20u64 {
        out.push(a.send(&format!("{i}"), 30_000 + i, &mut rng).unwrap());
    }
    let mut late = Group::join("bob", keys("bob"), a.id());
    // Everything, newest first: each entry waits for its parent, then all are released.
    let mut all = a.export();
    all.reverse();
    for e in &all[..all.len() - 1] {
        assert!(matches!(late.receive(e), Ok(Inserted::MissingParents(_))));
    }
    assert_eq!(late.dag().held(), all.len() - 1);
    assert_eq!(late.receive(all.last().unwrap()), Ok(Inserted::Accepted { released: all.len() - 1 }));
    assert_eq!(late.dag().held(), 0);
    assert_eq!(late.history(), a.history());
    // What a member saves and reloads is the same group.
    let mut reloaded = Group::join("bob", keys("bob"), a.id());
    deliver(&mut reloaded, &late.export());
    assert_eq!(reloaded.state(), late.state());
    assert_eq!(reloaded.history(), late.history());
}

fn big_group(seed: u64, n: usize) -> (Vec<Group>, StdRng) {
    let mut rng = StdRng::seed_from_u64(seed);
    let names: Vec<String> = (0..n).map(|i| format!("user{i:03}")).collect();
    let (mut first, mut out) = Group::create(&names[0], keys(&names[0]), "hundred", 1, &mut rng).unwrap();
    for (i, m) in names.iter().enumerate().skip(1) {
        out.extend(first.invite(m, keys(m).public(), 1 + i as u64, &mut rng).unwrap());
    }
    out.push(first.promote(&names[1], 500).unwrap());
    out.push(first.promote(&names[2], 501).unwrap());
    let gid = first.id();
    let mut members = vec![first];
    for m in &names[1..] {
        let mut g = Group::join(m, keys(m), gid);
        // Each member gets the entries in its own random order.
        let mut shuffled = out.clone();
        shuffled.shuffle(&mut rng);
        for e in &shuffled {
            g.receive(e).unwrap();
        }
        assert_eq!(g.dag().held(), 0);
        members.push(g);
    }
    (members, rng)
}

/// One random operation by `g`; its entries, if it could write any. Targets are drawn
/// mostly from the first few names (the admins and their likely successors), so removals
/// of admins by admins in different parts of a partition do happen.
fn random_op(g: &mut Group, names: &[String], now: u64, rng: &mut StdRng) -> Vec<Vec<u8>> {
    let target =
        if rng.random_bool(0.5) { &names[rng.random_range(0..6)] } else { &names[rng.random_range(0..names.len())] };
    let r = match rng.random_range(0..100) {
        0..55 => g.send(&format!("{} at {now}", g.me()), now, rng).map(|e| vec![e]),
        55..80 => g.remove(target, now, rng),
        80..85 => g.leave(now).map(|e| vec![e]),
        _ => g.promote(target, now).map(|e| vec![e]),
    };
    let mut out = r.unwrap_or_default();
    // Whoever is the rekeyer in its own view writes what its view calls for.
    out.extend(g.maintain(now, rng).unwrap_or_default());
    out
}

fn converge_all(members: &mut [Group]) {
    // Everyone with the first, twice: after the first pass the first holds everything.
    for _ in 0..2 {
        for i in 1..members.len() {
            let (head, rest) = members.split_at_mut(i);
            sync_pair(&mut rest[0], &mut head[0]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    #[test]
    fn a_hundred_members_agree_after_random_partitions(seed in any::<u64>()) {
        let (mut members, mut rng) = big_group(seed, 100);
        let names: Vec<String> = members.iter().map(|g| g.me().to_owned()).collect();
        let sides = rng.random_range(2..4usize);
        let side_of: Vec<usize> = (0..members.len()).map(|_| rng.random_range(0..sides)).collect();
        for step in 0..150u64 {
            // Admins act more often than the rest, so membership changes conflict.
            let i = if rng.random_bool(0.4) { rng.random_range(0..6) } else { rng.random_range(0..members.len()) };
            let out = random_op(&mut members[i], &names, 10_000 + step, &mut rng);
            // Delivered, in a random order later, to a random part of the author's side.
            for j in 0..members.len() {
                if j != i && side_of[j] == side_of[i] && rng.random_bool(0.5) {
                    let mut o = out.clone();
                    o.shuffle(&mut rng);
                    for e in &o {
                        let _ = sync::handle(&mut members[j], e);
                    }
                }
            }
        }
        converge_all(&mut members);
        // The rekeyer writes the epoch the partition's removals and departures call for.
        // All hold the same state, so one member at most is the rekeyer.
        let mut writers = 0;
        for g in members.iter_mut() {
            if !g.maintain(90_000, &mut rng).unwrap().is_empty() {
                writers += 1;
            }
        }
        prop_assert!(writers <= 1);
        converge_all(&mut members);
        let state = members[0].state().clone();
        prop_assert!(!state.rekey_due());
        prop_assert!(state.members_without_key().is_empty());
        // After the heal, a few members write under the new epoch's key.
        let current: Vec<usize> = (0..members.len()).filter(|i| state.members.contains_key(members[*i].me())).collect();
        let mut after = Vec::new();
        for &i in current.iter().take(3) {
            let m = members[i].send("after the heal", 95_000, &mut rng).unwrap();
            after.push(Entry::decode(&m).unwrap().hash());
        }
        converge_all(&mut members);
        let state = members[0].state().clone();
        let histories: Vec<Vec<HistoryItem>> = members.iter_mut().map(|g| g.history()).collect();
        let reference = &histories[current[0]];
        for (i, h) in histories.iter().enumerate() {
            prop_assert_eq!(members[i].state(), &state);
            prop_assert_eq!(summary(h), summary(reference));
            let current_member = state.members.contains_key(members[i].me());
            for (n, item) in h.iter().enumerate() {
                // Nobody reads a text another member reads differently.
                for other in &histories {
                    prop_assert!(item.text.is_none() || other[n].text.is_none() || item.text == other[n].text);
                }
                // Every author reads what it wrote (its key is in its keyring).
                if item.author == members[i].me() {
                    prop_assert!(item.text.is_some(), "{} cannot read its own message", item.author);
                }
                // What was written after the heal, every member reads and nobody else.
                if after.contains(&item.id) {
                    prop_assert_eq!(item.text.is_some(), current_member);
                }
            }
        }
    }
}

#[test]
fn a_new_epoch_for_a_hundred_members_fills_pages_up_to_the_bound() {
    let (mut members, mut rng) = big_group(9, 100);
    let out = members[0].remove("user099", 50_000, &mut rng).unwrap();
    let pages = &out[1..];
    assert!(out.iter().all(|e| e.len() <= ENTRY_BYTES_MAX));
    for p in &pages[..pages.len() - 1] {
        // Another member's sealed key (1 + 7 + 80 bytes) would not have fitted.
        assert!(p.len() + 88 > ENTRY_BYTES_MAX, "a page of {} bytes left room", p.len());
    }
    let named: usize = pages
        .iter()
        .map(|p| match Entry::decode(p).unwrap().op {
            Op::Rekey { sealed, .. } => sealed.len(),
            other => panic!("not a page: {other:?}"),
        })
        .sum();
    assert_eq!(named, 99);
    let m = members[0].send("to the 99", 50_001, &mut rng).unwrap();
    for g in [50, 99] {
        deliver(&mut members[g], &out);
        deliver(&mut members[g], std::slice::from_ref(&m));
    }
    assert_eq!(members[50].history().last().unwrap().text.as_deref(), Some("to the 99"));
    assert_eq!(members[99].history().last().unwrap().text, None);
}

#[test]
fn a_member_asks_by_hash_for_the_parents_it_lacks() {
    let mut rng = StdRng::seed_from_u64(10);
    let (mut a, mut b, _) = trio(&mut rng);
    let m1 = a.send("one", 40_000, &mut rng).unwrap();
    let m2 = a.send("two", 40_001, &mut rng).unwrap();
    let want = sync::handle(&mut b, &m2).unwrap();
    assert_eq!(want.len(), 1);
    let Ok(sync::Payload::Want { hashes, .. }) = sync::Payload::decode(&want[0]) else { panic!("not a Want") };
    assert_eq!(hashes, [Entry::decode(&m1).unwrap().hash()]);
    let answer = sync::handle(&mut a, &want[0]).unwrap();
    assert_eq!(answer, [m1]);
    assert!(sync::handle(&mut b, &answer[0]).unwrap().is_empty());
    assert_eq!(b.history(), a.history());
}

proptest! {
    #[test]
    fn sync_payloads_decode_totally_and_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        if let Ok(p) = sync::Payload::decode(&bytes) {
            prop_assert_eq!(p.encode(), bytes);
        }
    }

    #[test]
    fn hellos_of_every_size_decode(n_heads in 0usize..=sync::HELLO_HEADS_MAX, n_sample in 0usize..16, flags in 0u8..4) {
        let p = sync::Payload::Hello {
            group: [3; 16],
            complete: flags & 1 != 0,
            reply: flags & 2 != 0,
            heads: (0..n_heads).map(|i| [i as u8; 32]).collect(),
            sample: (0..n_sample).map(|i| [0x80 | i as u8; 32]).collect(),
        };
        let b = p.encode();
        prop_assert!(b.len() <= ENTRY_BYTES_MAX);
        prop_assert_eq!(sync::Payload::decode(&b).unwrap(), p);
    }
}

#[test]
fn a_joiner_behind_more_than_one_answer_catches_up_over_several() {
    let mut rng = StdRng::seed_from_u64(11);
    let (mut a, _, _) = trio(&mut rng);
    for i in 0..sync::ANSWER_ENTRIES_MAX as u64 + 100 {
        a.send(&format!("{i}"), 60_000 + i, &mut rng).unwrap();
    }
    let mut late = Group::join("bob", keys("bob"), a.id());
    let batches = sync_pair(&mut late, &mut a);
    assert!((4..=6).contains(&batches), "{batches} batches");
    assert_eq!(late.dag().len(), a.dag().len());
    assert_eq!(late.history(), a.history());
}

#[test]
fn forged_entries_cannot_crowd_out_entries_waiting_for_parents() {
    let mut rng = StdRng::seed_from_u64(12);
    let (mut a, mut b, _) = trio(&mut rng);
    let heads: Vec<_> = a.dag().heads().iter().copied().collect();
    for i in 0..super::dag::HELD_FOR_KEYS_MAX as u64 {
        let op = Op::Message { nonce: [0; 12], ciphertext: vec![0; 16] };
        let forged = Entry::sign(a.id(), "bob", heads.clone(), 1, i, op, &keys("mallory")).unwrap();
        assert_eq!(b.receive(&forged.encode()), Err(Refused::BadSignature("bob".into())));
    }
    let op = Op::Message { nonce: [0; 12], ciphertext: vec![0; 16] };
    let one_more = Entry::sign(a.id(), "bob", heads, 1, 9_999, op, &keys("mallory")).unwrap();
    assert_eq!(b.receive(&one_more.encode()), Err(Refused::HeldForKeysFull));
    let m1 = a.send("one", 70_000, &mut rng).unwrap();
    let m2 = a.send("two", 70_001, &mut rng).unwrap();
    assert!(matches!(b.receive(&m2), Ok(Inserted::MissingParents(_))));
    assert_eq!(b.receive(&m1), Ok(Inserted::Accepted { released: 1 }));
    assert_eq!(b.history(), a.history());
}

#[test]
fn a_rekey_far_ahead_is_kept_out_so_epochs_do_not_run_out() {
    let mut rng = StdRng::seed_from_u64(13);
    let (mut a, mut b, _) = trio(&mut rng);
    let heads: Vec<_> = b.dag().heads().iter().copied().collect();
    let sealed = keys("bob").public().seal(&super::log::key_seal_aad(&b.id(), u32::MAX, "bob"), &[5; 32]).unwrap();
    let op = Op::Rekey { epoch: u32::MAX, sealed: vec![("bob".into(), sealed)] };
    let far = Entry::sign(b.id(), "bob", heads, 1, 80_000, op, &keys("bob")).unwrap();
    assert!(matches!(a.receive(&far.encode()), Ok(Inserted::Accepted { .. })));
    assert!(a.state().excluded.contains(&(far.hash(), Exclusion::EpochJump)));
    assert_eq!(a.state().epoch, 1);
    let out = a.remove("carol", 80_001, &mut rng).unwrap();
    assert_eq!(a.state().epoch, 2);
    deliver(&mut b, &[far.encode()]);
    deliver(&mut b, &out);
    let m = a.send("still epoch two", 80_002, &mut rng).unwrap();
    deliver(&mut b, &[m]);
    assert_eq!(b.history().last().unwrap().text.as_deref(), Some("still epoch two"));
}
