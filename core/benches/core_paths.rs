//! Per-message cost of the protocol core, without IO or DuckDB:
//! `cargo bench -p duckwire-core` (see the README for measured figures).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use duckwire_core::{
    decode_client_frame, Config, ConnId, ConnectionInfo, Effect, Frame, Limits, Millis,
    QueryOutcome, Server,
};

fn decode(c: &mut Criterion) {
    let limits = Limits::default();
    let text = Frame::Text(r#"{"type":"arrow","sql":"select * from flights where delay > 10","queryId":"q_1700000000000_abc"}"#.into());
    c.bench_function("decode arrow query text frame", |b| {
        b.iter(|| decode_client_frame(std::hint::black_box(&text), &limits).unwrap())
    });
    let header = r#"{"type":"uploadArrow","queryId":"u1","tableName":"t"}"#;
    let mut upload = (header.len() as u32).to_be_bytes().to_vec();
    upload.extend_from_slice(header.as_bytes());
    upload.extend(std::iter::repeat_n(0u8, 1 << 20));
    let upload = Frame::Binary(Bytes::from(upload));
    c.bench_function("decode 1 MiB uploadArrow frame (zero-copy payload)", |b| {
        b.iter(|| decode_client_frame(std::hint::black_box(&upload), &limits).unwrap())
    });
}

fn query_roundtrip(c: &mut Criterion) {
    let mut server = Server::new(Config::default(), [1; 16]);
    server
        .handle_open(ConnId(1), ConnectionInfo::default(), Millis(0))
        .unwrap();
    let mut n = 0u64;
    c.bench_function("query roundtrip: frame -> RunQuery -> done -> Send", |b| {
        b.iter(|| {
            n += 1;
            let frame = Frame::Text(format!(
                r#"{{"type":"json","sql":"select 1","queryId":{n}}}"#
            ));
            server.handle_frame(ConnId(1), frame, Millis(n)).unwrap();
            let Some(Effect::RunQuery(run)) = server.poll_effect() else {
                panic!("expected RunQuery")
            };
            server
                .handle_query_done(
                    run.query,
                    QueryOutcome::Json("[{\"x\":1}]".into()),
                    false,
                    Millis(n),
                )
                .unwrap();
            while let Some(effect) = server.poll_effect() {
                if let Effect::Send { frame, .. } = effect {
                    server.handle_sent(ConnId(1), frame.len()).unwrap();
                }
            }
        })
    });
}

fn crdt_broadcast(c: &mut Criterion) {
    let config = Config {
        sync_enabled: true,
        ..Config::default()
    };
    c.bench_function("CRDT update imported and relayed to 10 members", |b| {
        b.iter_batched(
            || {
                let mut server = Server::new(config.clone(), [2; 16]);
                for conn in 0..10 {
                    server
                        .handle_open(ConnId(conn), ConnectionInfo::default(), Millis(0))
                        .unwrap();
                    let join = Frame::Text(r#"{"type":"crdt-join","roomId":"r"}"#.into());
                    server.handle_frame(ConnId(conn), join, Millis(0)).unwrap();
                }
                server
                    .handle_snapshot_loaded("r", Ok(None), Millis(0))
                    .unwrap();
                while server.poll_effect().is_some() {}
                let doc = loro::LoroDoc::new();
                doc.get_map("m").insert("k", 1).unwrap();
                doc.commit();
                let update = doc.export(loro::ExportMode::all_updates()).unwrap();
                (server, Frame::Binary(Bytes::from(update)))
            },
            |(mut server, update)| {
                server.handle_frame(ConnId(0), update, Millis(1)).unwrap();
                while server.poll_effect().is_some() {}
                server
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, decode, query_roundtrip, crdt_broadcast);
criterion_main!(benches);
