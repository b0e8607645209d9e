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

/// The keyword hint may only make a query more careful (see `sql`): whatever SQL a client
/// sends and whatever DuckDB says of it, a query that may only read always runs gated, and on
/// an ordered connection a query runs ungated only alone or when DuckDB already called its
/// text a read, while one the hint took for a read is classified by DuckDB before any later
/// query of its connection starts.
mod the_hint_only_turns_reads_into_writes {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::json;

    use crate::tests::harness::Harness;
    use crate::{
        Config, ConnId, ConnectionInfo, Dialect, Effect, Frame, Gate, HttpRequest, QueryHandle,
        QueryOutcome, Verdict,
    };

    #[derive(Debug, Clone, Copy)]
    enum Door {
        UnprovenGet,
        ReadTokenSocket,
        FullSocket,
    }

    fn door() -> impl Strategy<Value = Door> {
        prop_oneof![
            Just(Door::UnprovenGet),
            Just(Door::ReadTokenSocket),
            Just(Door::FullSocket)
        ]
    }

    /// Text that often starts like a read (so the hint calls it one) and may be anything.
    fn sql() -> impl Strategy<Value = String> {
        let start = prop_oneof![
            Just("select "),
            Just("with a as (select 1) "),
            Just("from "),
            Just("explain "),
            Just("")
        ];
        (start, "(?s)[a-zA-Z0-9 ;()'\"*/-]{0,40}")
            .prop_map(|(start, rest)| format!("{start}{rest}"))
    }

    fn send(h: &mut Harness, door: Door, sql: &str) {
        let message = json!({"type":"json","sql":sql});
        match door {
            Door::UnprovenGet => {
                let request = HttpRequest {
                    method: "GET".into(),
                    path: "/".into(),
                    url_token: Some("full".into()),
                    params: vec![("query".into(), message.to_string())],
                    ..Default::default()
                };
                h.server
                    .handle_http_request(ConnId(1), request, h.now())
                    .unwrap();
            }
            Door::ReadTokenSocket | Door::FullSocket => {
                let frame = Frame::Text(message.to_string());
                h.server.handle_frame(ConnId(1), frame, h.now()).unwrap();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn whatever_the_sql_and_the_verdicts(
            sqls in proptest::collection::vec(sql(), 1..6),
            reads in proptest::collection::vec(any::<bool>(), 6),
            door in door(),
        ) {
            let mut h = Harness::new(Config {
                auth_token: Some("full".into()),
                read_token: Some("read".into()),
                ..Config::default()
            });
            let (dialect, token) = match door {
                Door::UnprovenGet => (Dialect::Http, None),
                Door::ReadTokenSocket => (Dialect::MosaicSocket, Some("read")),
                Door::FullSocket => (Dialect::MosaicSocket, Some("full")),
            };
            h.open_with(1, ConnectionInfo {
                dialect,
                url_token: token.map(str::to_string),
                ..Default::default()
            });
            for sql in &sqls {
                send(&mut h, door, sql);
            }
            // Running queries: whether DuckDB's verdict is still to come.
            let mut running: BTreeMap<QueryHandle, (Gate, bool, String)> = BTreeMap::new();
            // Texts the fake DuckDB called reads.
            let mut called_reads = std::collections::BTreeSet::new();
            let mut verdicts = reads.iter().cycle();
            loop {
                for effect in h.drain() {
                    let Effect::RunQuery(run) = effect else { continue };
                    match door {
                        Door::UnprovenGet | Door::ReadTokenSocket => {
                            prop_assert_eq!(run.gate, Gate::ReadsOnly, "{}", run.sql);
                        }
                        Door::FullSocket => {
                            prop_assert!(
                                running.values().all(|(_, unclassified, _)| !unclassified),
                                "{} started before an earlier query was classified", run.sql
                            );
                            prop_assert!(
                                run.gate == Gate::ClassifyFirst
                                    || running.is_empty()
                                    || called_reads.contains(&run.sql),
                                "{} ran ungated beside others", run.sql
                            );
                        }
                    }
                    let unclassified = run.gate == Gate::ClassifyFirst;
                    running.insert(run.query, (run.gate, unclassified, run.sql));
                }
                let Some((&query, (gate, unclassified, sql))) = running.iter().next() else {
                    break;
                };
                let (gate, unclassified, sql) = (*gate, *unclassified, sql.clone());
                // The fake DuckDB is consistent: a text it called a read stays one.
                let read = called_reads.contains(&sql) || *verdicts.next().unwrap();
                let now = h.now();
                if unclassified && read {
                    h.server.handle_query_classified(query, Verdict::Read, now).unwrap();
                    called_reads.insert(sql.clone());
                    running.insert(query, (gate, false, sql));
                    continue;
                }
                running.remove(&query);
                let outcome = if gate != Gate::Any && !read {
                    QueryOutcome::NotARead("INSERT".into())
                } else {
                    QueryOutcome::Json("[]".into())
                };
                let wrote = gate == Gate::Any && !read;
                h.server.handle_query_done(query, outcome, wrote, now).unwrap();
            }
        }
    }
}
