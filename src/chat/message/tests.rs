use super::*;
use crate::buddy::notice::{NOTICE_LEN_MAX, Notice};
use crate::crypto::password::ListKey;
use proptest::prelude::*;

fn keys(b: u8) -> UserKeys {
    UserKeys::derive(&ListKey([b; 32]))
}

const DEV: DeviceId = KeyId([7; 8]);

fn text(from: &str, conversation: &str, seq: u64, text: &str) -> Inner {
    Inner {
        from: from.into(),
        from_device: DEV,
        conversation: Conversation::User(conversation.into()),
        seq,
        sent_at_ms: 1_700_000_000_000,
        body: Body::Text { text: text.into() },
    }
}

/// alice → bob, sealed to bob.
fn alice_to_bob() -> (Inner, Sealed) {
    let inner = text("alice", "alice", 1, "hello bob");
    let s = seal(&inner, [1; 16], "bob", &keys(2).public(), &keys(1)).unwrap();
    (inner, s)
}

#[test]
fn a_message_opens_and_verifies_for_its_recipient() {
    let (inner, s) = alice_to_bob();
    assert_eq!((s.to.as_str(), s.from.as_str(), s.sent_at_ms, s.id), ("bob", "alice", inner.sent_at_ms, [1; 16]));
    let s = Sealed::decode(&s.encode()).unwrap();
    let u = open(&s, "bob", &keys(2)).unwrap();
    assert_eq!((u.from(), u.id()), ("alice", [1; 16]));
    let m = u.verify(&keys(1).public()).unwrap();
    assert_eq!(m, Message { id: [1; 16], to: "bob".into(), inner });
}

#[test]
fn the_text_is_not_in_what_a_super_node_sees() {
    let (_, s) = alice_to_bob();
    let enc = s.encode();
    assert!(!enc.windows(9).any(|w| w == b"hello bob"));
}

#[test]
fn a_message_sealed_to_bob_is_refused_by_carol() {
    let (_, s) = alice_to_bob();
    assert_eq!(open(&s, "carol", &keys(3)).unwrap_err(), ChatError::NotForMe);
    // Carol claiming to be bob still lacks bob's keys.
    assert_eq!(open(&s, "bob", &keys(3)).unwrap_err(), ChatError::BadSeal);
    // A super node re-addressing it to carol: carol cannot open it either.
    let mut t = s.clone();
    t.to = "carol".into();
    assert_eq!(open(&t, "carol", &keys(3)).unwrap_err(), ChatError::BadSeal);
}

#[test]
fn every_altered_outer_field_is_refused() {
    let (_, s) = alice_to_bob();
    let bob = keys(2);
    let mut altered = Vec::new();
    let mut t = s.clone();
    t.id[0] ^= 1;
    altered.push(("id", t));
    let mut t = s.clone();
    t.from = "mallory".into();
    altered.push(("from", t));
    let mut t = s.clone();
    t.sent_at_ms += 1;
    altered.push(("sent_at_ms", t));
    let mut t = s.clone();
    t.to = "bob2".into();
    altered.push(("to", t));
    for (what, t) in altered {
        let me = t.to.clone();
        let err = open(&t, &me, &bob).unwrap_err();
        assert_eq!(err, ChatError::BadSeal, "altered {what}");
    }
    // Every single bit of the encoding matters: no flip decodes, opens and verifies.
    let enc = s.encode();
    for i in 0..enc.len() {
        for bit in [0x01, 0x80] {
            let mut b = enc.clone();
            b[i] ^= bit;
            let accepted = Sealed::decode(&b)
                .and_then(|t| open(&t, "bob", &bob))
                .and_then(|u| u.verify(&keys(1).public()))
                .is_ok();
            assert!(!accepted, "byte {i} bit {bit:#x} flipped is still accepted");
        }
    }
}

#[test]
fn a_forged_signature_is_refused_after_opening() {
    // Carol knows bob's public key and seals a message that claims to be alice's.
    let inner = text("alice", "alice", 1, "it is me, alice");
    let s = seal(&inner, [2; 16], "bob", &keys(2).public(), &keys(3)).unwrap();
    let u = open(&s, "bob", &keys(2)).unwrap();
    assert_eq!(u.from(), "alice");
    assert_eq!(u.clone().verify(&keys(1).public()).unwrap_err(), ChatError::BadSignature);
    assert!(u.verify(&keys(3).public()).is_ok(), "the control: carol's signature is carol's");
}

#[test]
fn inner_fields_must_agree_with_outer_ones() {
    let (alice, bob) = (keys(1), keys(2));
    let inner = text("alice", "alice", 1, "x");
    let outer = |from: &str, sent_at_ms| Sealed {
        id: [3; 16],
        to: "bob".into(),
        from: from.into(),
        sent_at_ms,
        ciphertext: Vec::new(),
    };
    let s = seal_raw(&inner, outer("mallory", inner.sent_at_ms), &bob.public(), &alice).unwrap();
    assert_eq!(open(&s, "bob", &bob).unwrap_err(), ChatError::SenderMismatch);
    let s = seal_raw(&inner, outer("alice", inner.sent_at_ms + 1), &bob.public(), &alice).unwrap();
    assert_eq!(open(&s, "bob", &bob).unwrap_err(), ChatError::TimeMismatch);
    let s = seal_raw(&inner, outer("alice", inner.sent_at_ms), &bob.public(), &alice).unwrap();
    assert!(open(&s, "bob", &bob).is_ok(), "the control: agreeing fields open");
}

#[test]
fn a_conversation_the_recipient_is_not_in_with_the_sender_is_refused() {
    let (alice, bob) = (keys(1), keys(2));
    // alice → bob naming a conversation with dave: seal refuses, and so does bob.
    let inner = text("alice", "dave", 1, "x");
    assert_eq!(seal(&inner, [4; 16], "bob", &bob.public(), &alice).unwrap_err(), ChatError::NotForMe);
    let outer = Sealed {
        id: [4; 16],
        to: "bob".into(),
        from: "alice".into(),
        sent_at_ms: inner.sent_at_ms,
        ciphertext: vec![],
    };
    let s = seal_raw(&inner, outer, &bob.public(), &alice).unwrap();
    assert_eq!(open(&s, "bob", &bob).unwrap_err(), ChatError::NotForMe);
    // alice's own copy names bob, the peer; a group message names the group.
    let own = text("alice", "bob", 1, "x");
    let s = seal(&own, [5; 16], "alice", &alice.public(), &alice).unwrap();
    assert_eq!(open(&s, "alice", &alice).unwrap().verify(&alice.public()).unwrap().inner, own);
    let group = Inner {
        conversation: Conversation::Group([9; 16]),
        body: Body::Group(vec![1, 2, 3]),
        ..text("alice", "x", 2, "")
    };
    let s = seal(&group, [6; 16], "bob", &bob.public(), &alice).unwrap();
    assert_eq!(open(&s, "bob", &bob).unwrap().verify(&alice.public()).unwrap().inner, group);
}

#[test]
fn a_low_order_recipient_key_is_refused() {
    let bad = UserPublicKeys { x25519: [0; 32], ed25519: [0; 32] };
    let inner = text("alice", "alice", 1, "x");
    assert_eq!(seal(&inner, [1; 16], "bob", &bad, &keys(1)).unwrap_err(), ChatError::BadRecipientKey);
}

#[test]
fn limits_are_enforced_when_sealing_and_decoding() {
    let (alice, bob) = (keys(1), keys(2));
    let at_max = text("alice", "alice", 1, &"é".repeat(TEXT_LEN_MAX / 2));
    assert!(seal(&at_max, [1; 16], "bob", &bob.public(), &alice).is_ok());
    let over = text("alice", "alice", 1, &"x".repeat(TEXT_LEN_MAX + 1));
    let err = seal(&over, [1; 16], "bob", &bob.public(), &alice).unwrap_err();
    assert!(matches!(err, ChatError::TooLarge { what: "text", .. }), "{err:?}");
    assert_eq!(err.label(), "too_large");
    let long_name = "a".repeat(USERNAME_WIRE_MAX + 1);
    assert!(matches!(seal(&at_max, [1; 16], &long_name, &bob.public(), &alice), Err(ChatError::TooLarge { .. })));
    for seq in [0, SEQ_MAX + 1] {
        let bad_seq = text("alice", "alice", seq, "x");
        assert_eq!(seal(&bad_seq, [1; 16], "bob", &bob.public(), &alice).unwrap_err().label(), "malformed");
    }
    let mut late = text("alice", "alice", 1, "x");
    late.sent_at_ms = TIME_MS_MAX + 1;
    assert_eq!(seal(&late, [1; 16], "bob", &bob.public(), &alice).unwrap_err().label(), "malformed");
    let mut big = vec![0u8; SEALED_LEN_MAX + 1];
    big[0] = VERSION;
    assert_eq!(Sealed::decode(&big).unwrap_err().label(), "too_large");
    let (_, s) = alice_to_bob();
    let mut enc = s.encode();
    enc[0] = 2;
    assert_eq!(Sealed::decode(&enc).unwrap_err(), ChatError::Version(2));
    let mut receipt = text("alice", "alice", 1, "");
    receipt.body = Body::Receipt { kind: ReceiptKind::Read, ids: vec![[0; 16]; RECEIPT_IDS_MAX + 1] };
    assert!(matches!(receipt.encode(), Err(ChatError::TooLarge { what: "receipt.ids", .. })));
    receipt.body = Body::Receipt { kind: ReceiptKind::Read, ids: vec![] };
    assert!(receipt.encode().is_err());
    for name in ["", ".", "..", "a/b", "..\\x", "nul\0"] {
        let mut offer = text("alice", "alice", 1, "");
        offer.body = file_offer(name);
        assert!(offer.encode().is_err(), "{name:?} accepted as a file name");
    }
}

fn file_offer(name: &str) -> Body {
    Body::FileOffer {
        transfer: [1; 16],
        name: name.into(),
        bytes: 10 << 20,
        sha256: [2; 32],
        manifest: [3; 32],
        cert_fingerprint: [4; 32],
    }
}

#[test]
fn the_largest_message_of_every_kind_fits_a_notice() {
    let (alice, bob) = (keys(1), keys(2));
    let long = "u".repeat(USERNAME_WIRE_MAX);
    let bodies = [
        Body::Text { text: "x".repeat(TEXT_LEN_MAX) },
        Body::Receipt { kind: ReceiptKind::Delivered, ids: vec![[5; 16]; RECEIPT_IDS_MAX] },
        Body::Group(vec![6; GROUP_BODY_LEN_MAX]),
        file_offer(&"f".repeat(FILE_NAME_LEN_MAX)),
        Body::FileAnswer { transfer: [1; 16], accept: true },
    ];
    for body in bodies {
        let inner = Inner {
            from: long.clone(),
            from_device: DEV,
            conversation: Conversation::User(long.clone()),
            seq: SEQ_MAX,
            sent_at_ms: TIME_MS_MAX,
            body,
        };
        let to = "v".repeat(USERNAME_WIRE_MAX);
        let s = seal(&inner, [0xff; 16], &to, &bob.public(), &alice).unwrap();
        let enc = s.encode();
        assert!(enc.len() <= SEALED_LEN_MAX, "{} bytes for {}", enc.len(), inner.body.label());
        assert_eq!(Sealed::decode(&enc).unwrap(), s);
        // A notice carrying it (the same postcard size as any one-field variant).
        let notice = Notice::Call { message: enc };
        assert!(notice.encode().len() <= NOTICE_LEN_MAX);
    }
}

#[test]
fn an_own_copy_id_is_derived_and_differs_from_the_id() {
    assert_eq!(own_copy_id(&[1; 16]), own_copy_id(&[1; 16]));
    assert_ne!(own_copy_id(&[1; 16]), [1; 16]);
    assert_ne!(own_copy_id(&[1; 16]), own_copy_id(&[2; 16]));
}

#[test]
fn the_sizes_docs_protocol_md_gives() {
    assert_eq!((SEALED_LEN_MAX, CIPHERTEXT_LEN_MAX, CIPHERTEXT_LEN_MIN), (2300, 2143, 112));
}

fn any_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        "\\PC{0,300}".prop_map(|text| Body::Text { text }),
        (any::<bool>(), proptest::collection::vec(any::<[u8; 16]>(), 1..=RECEIPT_IDS_MAX)).prop_map(|(read, ids)| {
            Body::Receipt { kind: if read { ReceiptKind::Read } else { ReceiptKind::Delivered }, ids }
        }),
        proptest::collection::vec(any::<u8>(), 0..=GROUP_BODY_LEN_MAX).prop_map(Body::Group),
        (any::<[u8; 16]>(), "[a-z0-9._ -]{0,40}[a-z]", any::<u64>(), any::<[u8; 32]>()).prop_map(
            |(transfer, name, bytes, h)| Body::FileOffer {
                transfer,
                name,
                bytes,
                sha256: h,
                manifest: h,
                cert_fingerprint: h
            }
        ),
        (any::<[u8; 16]>(), any::<bool>()).prop_map(|(transfer, accept)| Body::FileAnswer { transfer, accept }),
    ]
}

fn any_inner() -> impl Strategy<Value = Inner> {
    (
        "[a-z]{1,64}",
        any::<[u8; 8]>(),
        prop_oneof!["[a-z]{1,64}".prop_map(Conversation::User), any::<[u8; 16]>().prop_map(Conversation::Group)],
        1..=SEQ_MAX,
        0..=TIME_MS_MAX,
        any_body(),
    )
        .prop_map(|(from, d, conversation, seq, sent_at_ms, body)| Inner {
            from,
            from_device: KeyId(d),
            conversation,
            seq,
            sent_at_ms,
            body,
        })
}

proptest! {
    #[test]
    fn decoders_are_total(b in proptest::collection::vec(any::<u8>(), 0..2600)) {
        let _ = Sealed::decode(&b);
        let _ = Inner::decode(&b);
        let _ = Body::decode(&b);
    }

    #[test]
    fn what_decodes_encodes_back_to_the_same_bytes(b in proptest::collection::vec(any::<u8>(), 0..400)) {
        // Canonical: the signature covers the bytes the recipient re-derives.
        if let Ok(i) = Inner::decode(&b) {
            prop_assert_eq!(i.encode().unwrap(), b.clone());
        }
        let mut sealed = vec![VERSION];
        sealed.extend_from_slice(&b);
        if let Ok(s) = Sealed::decode(&sealed) {
            prop_assert_eq!(s.encode(), sealed);
        }
    }

    #[test]
    fn inner_round_trips(inner in any_inner()) {
        let b = inner.encode().unwrap();
        prop_assert_eq!(Inner::decode(&b).unwrap(), inner.clone());
        let body = inner.body.encode().unwrap();
        prop_assert_eq!(Body::decode(&body).unwrap(), inner.body);
    }

    #[test]
    fn truncated_inner_never_decodes(inner in any_inner(), cut in any::<prop::sample::Index>()) {
        let b = inner.encode().unwrap();
        let n = cut.index(b.len());
        prop_assert!(Inner::decode(&b[..n]).is_err());
    }
}
