//! Property tests over the shared fuzzing harnesses (`duckwire_fuzzing`): random sessions of
//! several connections keep invariants (a)–(f) (see `fuzzing::session`), random CRDT traffic
//! keeps rooms equal to the merge of their accepted updates, and decoding never panics.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::json;

use duckwire_core::Frame;
use duckwire_fuzzing::session::loro_update;
use duckwire_fuzzing::{self as fuzzing, crdt, session};

/// Frames shaped like the official clients' (the recorded traffic itself is replayed by
/// `tests/tests/fuzz_replay.rs`: the core reads no files, not even in its tests).
fn recorded_traffic() -> Vec<Frame> {
    let text = |value: serde_json::Value| Frame::Text(value.to_string());
    vec![
        text(json!({"type":"auth","token":session::TOKEN})),
        text(
            json!({"type":"arrow","sql":"select 42 as x","queryId":"3f1c9a2e-0d6b-4c1e-9a57-2b8e4d0c7f10"}),
        ),
        text(json!({"type":"cancel","queryId":"3f1c9a2e-0d6b-4c1e-9a57-2b8e4d0c7f10"})),
        text(json!({"type":"crdt-join","roomId":"room-1","clientId":"client-a"})),
        Frame::Binary(Bytes::from(loro_update(11, "a1", 1))),
        Frame::Binary(Bytes::from(loro_update(12, "b1", 2))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn sessions_keep_every_invariant(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
        let traffic = recorded_traffic();
        if let Err(violation) = session::run(&data, &traffic) {
            prop_assert!(false, "{}", violation);
        }
    }

    #[test]
    fn crdt_rooms_equal_the_merge_of_accepted_updates(
        data in proptest::collection::vec(any::<u8>(), 0..600)
    ) {
        let updates = fuzzing::crdt_updates(&recorded_traffic());
        if let Err(violation) = crdt::run(&data, &updates) {
            prop_assert!(false, "{}", violation);
        }
    }

    /// Mosaic sockets and HTTP connections: the k-th answer belongs to the k-th request.
    #[test]
    fn ordered_dialects_answer_in_request_order(data in proptest::collection::vec(any::<u8>(), 0..900)) {
        if let Err(violation) = duckwire_fuzzing::ordered::run(&data) {
            prop_assert!(false, "{}", violation);
        }
    }

    #[test]
    fn decoding_any_bytes_is_clean(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Err(violation) = fuzzing::decode(&data) {
            prop_assert!(false, "{}", violation);
        }
    }

    /// The seed encoders are exact inverses of the readers, so seeds mean what they say.
    #[test]
    fn op_encodings_round_trip(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let ops = session::decode_ops(&data);
        prop_assert_eq!(session::decode_ops(&fuzzing::encode(&ops)), ops);
    }
}
