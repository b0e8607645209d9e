//! Property tests of the codec: a `json` reply built in arbitrary pieces decodes to its text.
//! (The session, CRDT and decode properties over the fuzzing harnesses live in
//! `tests/fuzzing`, which drives the core through its public API only.)

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A `json` reply built in pieces, any text and any cut points, decodes to that text.
    #[test]
    fn json_replies_carry_any_text_cut_anywhere(text in "(?s).*", cuts in proptest::collection::vec(any::<usize>(), 0..4), id in "[a-z0-9\"\\\\]{0,8}") {
        let query_id = crate::QueryId::Str(id.clone());
        let mut writer = crate::JsonReplyWriter::new(&crate::JsonReplyHeader::new(&query_id), 0);
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).filter(|c| text.is_char_boundary(*c)).collect();
        bounds.push(0);
        bounds.push(text.len());
        bounds.sort_unstable();
        for pair in bounds.windows(2) {
            writer.push_rows(&text[pair[0]..pair[1]]);
        }
        let reply: serde_json::Value = serde_json::from_str(writer.finish().as_str()).unwrap();
        prop_assert_eq!(reply, serde_json::json!({"type":"json","queryId":id,"data":text}));
    }
}
