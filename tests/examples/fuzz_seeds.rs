//! Writes the fuzz seed corpora (`fuzz/seeds/{decode,state_machine,crdt,ordered,upload,websocket}`) from the client
//! traffic recorded in `fuzz/traffic` (see `scripts/js-compat/record.mjs`):
//!
//! cargo run -p duckwire-tests --example fuzz_seeds

use duckwire_fuzzing::{self as fuzzing, crdt, session};
use duckwire_tests::{files_in, fuzz_dir};

fn main() -> std::io::Result<()> {
    let fuzz = fuzz_dir();
    let traffic = fuzzing::traffic_frames(files_in(&fuzz.join("traffic")));
    let seeds = fuzz.join("seeds");
    let write = |target: &str, name: String, bytes: Vec<u8>| -> std::io::Result<()> {
        let dir = seeds.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)
    };

    // decode: every recorded frame as it was sent.
    for (i, frame) in traffic.iter().enumerate() {
        write(
            "decode",
            format!("traffic-{i:03}"),
            fuzzing::encode_decode_input(frame),
        )?;
    }

    // state_machine: the recorded sessions replayed by one and by two connections, with
    // the executor finishing queries and time passing in between.
    use session::Op;
    let recorded = |conn: u8| -> Vec<Op> {
        (0..traffic.len())
            .flat_map(|i| {
                [
                    Op::Recorded {
                        conn,
                        index: i as u8,
                    },
                    Op::Finish {
                        nth: 0,
                        outcome: (i % 6) as u8,
                    },
                    Op::Written { conn },
                ]
            })
            .collect()
    };
    let mut one = vec![Op::Open {
        conn: 0,
        credential: 0,
    }];
    one.extend(recorded(0));
    one.push(Op::Tick { ms: 6000 });
    write(
        "state_machine",
        "recorded-one-connection".into(),
        fuzzing::encode(&one),
    )?;

    let mut two = vec![
        Op::Open {
            conn: 0,
            credential: 1,
        },
        Op::Open {
            conn: 1,
            credential: 3,
        },
        Op::Join { conn: 1, room: 0 },
        Op::Loaded {
            room: 0,
            content: 0,
        },
    ];
    two.extend(recorded(0));
    two.extend([
        Op::Tick { ms: 600 },
        Op::Close { conn: 1 },
        Op::Tick { ms: 40000 },
    ]);
    write(
        "state_machine",
        "recorded-two-connections".into(),
        fuzzing::encode(&two),
    )?;

    let structured = vec![
        Op::Open {
            conn: 0,
            credential: 0,
        },
        Op::Auth {
            conn: 0,
            right: false,
        },
        Op::Auth {
            conn: 0,
            right: true,
        },
        Op::Open {
            conn: 1,
            credential: 2,
        },
        Op::Open {
            conn: 2,
            credential: 3,
        },
        Op::Open {
            conn: 3,
            credential: 1,
        },
        Op::Query {
            conn: 0,
            kind: 0,
            with_id: true,
        },
        Op::Query {
            conn: 0,
            kind: 1,
            with_id: false,
        },
        Op::Upload { conn: 0 },
        Op::Cancel { conn: 0, nth: 0 },
        Op::Finish { nth: 0, outcome: 3 },
        Op::Subscribe {
            conn: 0,
            channel: 1,
        },
        Op::Subscribe {
            conn: 2,
            channel: 1,
        },
        Op::Notify {
            conn: 2,
            channel: 1,
        },
        Op::Join { conn: 0, room: 1 },
        Op::Join { conn: 2, room: 1 },
        Op::Loaded {
            room: 1,
            content: 3,
        },
        Op::Update {
            conn: 0,
            key: 1,
            value: 7,
            corrupt: false,
        },
        Op::Update {
            conn: 2,
            key: 1,
            value: 9,
            corrupt: true,
        },
        Op::PersistMode { fail: true },
        Op::Tick { ms: 5000 },
        Op::PersistMode { fail: false },
        Op::Tick { ms: 5000 },
        Op::Finish { nth: 0, outcome: 5 },
        Op::Shutdown,
    ];
    write(
        "state_machine",
        "structured-tour".into(),
        fuzzing::encode(&structured),
    )?;

    // state_machine in cluster mode (a first byte ≥ 128 turns it on; 156 + tag keeps the
    // first op's tag): subscriptions waiting for the broker, confirmations on time, stale
    // and repeated, deliveries of every kind, rooms with appends and remote changes.
    let cluster = vec![
        Op::Open {
            conn: 0,
            credential: 1,
        },
        Op::Open {
            conn: 1,
            credential: 3,
        },
        Op::Subscribe {
            conn: 0,
            channel: 0,
        },
        Op::Subscribe {
            conn: 1,
            channel: 0,
        },
        Op::RemoteNotify {
            channel: 0,
            kind: 0,
        },
        Op::BrokerConfirm {
            channel: 0,
            stale: true,
        },
        Op::BrokerConfirm {
            channel: 0,
            stale: false,
        },
        Op::Notify {
            conn: 0,
            channel: 0,
        },
        Op::RemoteNotify {
            channel: 0,
            kind: 0,
        },
        Op::RemoteNotify {
            channel: 0,
            kind: 1,
        },
        Op::RemoteNotify {
            channel: 0,
            kind: 2,
        },
        Op::RemoteNotify {
            channel: 0,
            kind: 3,
        },
        Op::BrokerConfirm {
            channel: 0,
            stale: false,
        },
        Op::Unsubscribe {
            conn: 1,
            channel: 0,
        },
        Op::Close { conn: 0 },
        Op::Subscribe {
            conn: 1,
            channel: 0,
        },
        Op::Notify {
            conn: 1,
            channel: 2,
        },
        // Rooms: appends before acks, other replicas' changes, a reconnection.
        Op::Join { conn: 1, room: 0 },
        Op::RemoteRoomUpdate {
            room: 0,
            key: 0,
            value: 1,
            corrupt: false,
        },
        Op::Loaded {
            room: 0,
            content: 0,
        },
        Op::Update {
            conn: 1,
            key: 1,
            value: 2,
            corrupt: false,
        },
        Op::RemoteRoomUpdate {
            room: 0,
            key: 2,
            value: 3,
            corrupt: false,
        },
        Op::RemoteRoomUpdate {
            room: 0,
            key: 2,
            value: 4,
            corrupt: true,
        },
        Op::PersistMode { fail: true },
        Op::Update {
            conn: 1,
            key: 0,
            value: 5,
            corrupt: false,
        },
        Op::PersistMode { fail: false },
        Op::SharedLogPosition { room: 0, entry: 7 },
        Op::Tick { ms: 1000 },
        Op::BrokerReconnected,
        Op::Close { conn: 1 },
        Op::Tick { ms: 40000 },
        Op::Tick { ms: 40000 },
    ];
    let mut bytes = fuzzing::encode(&cluster);
    bytes[0] += 156;
    write("state_machine", "cluster-channels".into(), bytes)?;

    // crdt: members editing every kind of container, recorded updates, and damaged ones.
    let mut ops = Vec::new();
    for i in 0..24u8 {
        ops.push(crdt::Op::Edit {
            conn: i % 3,
            target: i % 4,
            value: i.wrapping_mul(37),
        });
    }
    for index in 0..fuzzing::crdt_updates(&traffic).len() as u8 {
        ops.push(crdt::Op::Recorded {
            conn: index % 3,
            index,
        });
    }
    ops.extend([
        crdt::Op::Corrupt {
            conn: 1,
            nth: 3,
            at: 20,
            xor: 0x40,
        },
        crdt::Op::Truncate {
            conn: 2,
            nth: 5,
            keep: 9,
        },
        crdt::Op::Splice {
            conn: 0,
            first: 1,
            second: 2,
        },
        crdt::Op::ClientSnapshot { conn: 2 },
        crdt::Op::Rejoin { conn: 1 },
    ]);
    write("crdt", "members-edit".into(), fuzzing::encode(&ops))?;
    write(
        "crdt",
        "snapshot-first".into(),
        fuzzing::encode(&[
            crdt::Op::Edit {
                conn: 0,
                target: 1,
                value: 3,
            },
            crdt::Op::ClientSnapshot { conn: 1 },
            crdt::Op::ClientSnapshot { conn: 0 },
            crdt::Op::Rejoin { conn: 2 },
        ]),
    )?;
    // Ordered dialects: a Mosaic socket and an HTTP connection, queries of every kind
    // (shared persisted reads included) finishing out of order, refusals, a close.
    use duckwire_fuzzing::ordered::Op as O;
    let ordered = [
        O::Open {
            conn: 0,
            http: false,
        },
        O::Open {
            conn: 1,
            http: true,
        },
        O::Request { conn: 0, what: 0 },
        O::Request { conn: 0, what: 1 },
        O::Request { conn: 1, what: 1 },
        O::Request { conn: 0, what: 3 },
        O::Request { conn: 1, what: 3 },
        O::Request { conn: 0, what: 4 },
        O::Request { conn: 0, what: 5 },
        O::Request { conn: 1, what: 2 },
        O::Finish { nth: 2, outcome: 0 },
        O::Finish { nth: 0, outcome: 1 },
        O::Finish { nth: 1, outcome: 0 },
        O::Finish { nth: 0, outcome: 2 },
        O::Finish { nth: 0, outcome: 0 },
        O::Tick { ms: 8000 },
        O::Close { conn: 0 },
    ];
    write(
        "ordered",
        "mosaic-and-http".into(),
        fuzzing::encode(&ordered),
    )?;
    // A persisted read three connections ask for at once, whose result streams: the
    // waiters read the leader's stream, one goes mid-stream, then it ends whole.
    let shared_stream = [
        O::Open {
            conn: 0,
            http: false,
        },
        O::Open {
            conn: 1,
            http: true,
        },
        O::Open {
            conn: 2,
            http: true,
        },
        O::Request { conn: 0, what: 3 },
        O::Request { conn: 1, what: 3 },
        O::Request { conn: 2, what: 3 },
        O::Finish { nth: 0, outcome: 4 },
        O::Finish { nth: 0, outcome: 6 },
        O::Request { conn: 1, what: 0 },
        O::Close { conn: 2 },
        O::Finish { nth: 0, outcome: 0 },
        O::Finish { nth: 0, outcome: 4 },
        O::Finish { nth: 0, outcome: 0 },
    ];
    write(
        "ordered",
        "shared-stream".into(),
        fuzzing::encode(&shared_stream),
    )?;

    // upload: real Arrow IPC streams of the column types clients upload.
    for (i, stream) in fuzzing::upload::seed_streams().into_iter().enumerate() {
        write("upload", format!("stream-{i}"), stream)?;
    }
    // websocket: a browser's frames, compressed and not, and round-trip descriptions.
    for (i, seed) in fuzzing::websocket::seeds().into_iter().enumerate() {
        write("websocket", format!("frames-{i}"), seed)?;
    }
    println!("seeds written under {}", seeds.display());
    Ok(())
}
