//! Files people make today (DuckDB 2.0) and files made by DuckDB 1.5 are both served; a 1.5
//! file stays readable by DuckDB 1.5 after duckwire served and wrote to it. The files are
//! written and read back by the official Python `duckdb` packages (1.5.6 and 2.0.1, in the
//! venvs `.ci/run` makes under `~/.cache/duckwire/py-duckdb-<version>`, or where
//! `DUCKWIRE_PY_DUCKDB_<1_5|2_0>` points).

use std::path::PathBuf;
use std::process::Command;

use duckwire_tests::*;
use serde_json::json;

/// The Python of the venv holding `duckdb==version`.
fn python_with_duckdb(version: &str, env: &str) -> Option<PathBuf> {
    python_in_venv(
        env,
        &format!("py-duckdb-{version}"),
        &format!("duckdb {version}"),
    )
}

fn python(python: &PathBuf, script: &str) -> String {
    let output = Command::new(python).arg("-c").arg(script).output().unwrap();
    assert!(
        output.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn a_file_written_by_duckdb_2_0_is_served() {
    let Some(py20) = python_with_duckdb("2.0.1", "DUCKWIRE_PY_DUCKDB_2_0") else {
        return;
    };
    let db = temp_dir("duckdb-2-0-file").join("app.duckdb");
    python(
        &py20,
        &format!(
            "import duckdb; c = duckdb.connect({:?}); c.execute(\"create table t as select 1 as a, 'made by 2.0' as s\"); c.close()",
            db.to_str().unwrap()
        ),
    );
    let server = ServerProcess::start(&["--db-path", db.to_str().unwrap()]);
    assert_eq!(
        post_rows(&server, "from t"),
        json!([{"a": 1, "s": "made by 2.0"}])
    );
    let version = post_rows(&server, "select version() as v");
    assert!(
        version[0]["v"].as_str().unwrap().starts_with("v2.0"),
        "{version}"
    );
}

#[test]
fn a_file_written_by_duckdb_1_5_stays_readable_by_1_5_after_duckwire_wrote_to_it() {
    let (Some(py15), Some(py20)) = (
        python_with_duckdb("1.5.6", "DUCKWIRE_PY_DUCKDB_1_5"),
        python_with_duckdb("2.0.1", "DUCKWIRE_PY_DUCKDB_2_0"),
    ) else {
        return;
    };
    let db = temp_dir("duckdb-1-5-file").join("app.duckdb");
    let path = db.to_str().unwrap();
    python(
        &py15,
        &format!("import duckdb; c = duckdb.connect({path:?}); c.execute('create table t as select 1 as a'); c.close()"),
    );
    let server = ServerProcess::start(&["--db-path", path, "--sync"]);
    post_rows(&server, "insert into t values (2)");
    post_rows(&server, "create table u as select 3 as b");
    let mut client = server.connect();
    join_room(&mut client, "r"); // meta storage and a room live in the file too
    client.send_binary(loro_update("k", 1));
    assert_eq!(client.recv_json()["type"], "crdt-update-ack");
    drop(client);
    assert!(
        server.terminate().success(),
        "stopped cleanly (FORCE CHECKPOINT)"
    );

    let read_back = python(
        &py15,
        &format!("import duckdb; c = duckdb.connect({path:?}); print(c.execute('select sum(a) from t').fetchone()[0], c.execute('select b from u').fetchone()[0])"),
    );
    assert_eq!(read_back, "3 3", "DuckDB 1.5.6 reads what duckwire wrote");
    // And DuckDB 2.0 agrees the file kept its 1.x storage version.
    let storage = python(
        &py20,
        &format!("import duckdb; c = duckdb.connect({path:?}); print(c.execute(\"select tags['storage_version'] from duckdb_databases() where database_name = 'app'\").fetchone()[0])"),
    );
    assert!(storage.starts_with("v1."), "{storage}");
}

/// Lambdas written for DuckDB 1.x (`x -> x + 1`) keep working unless the operator chose 2.0's
/// syntax; the Python-style `lambda x: …` works either way.
#[test]
fn single_arrow_lambdas_follow_lambda_syntax() {
    let server = ServerProcess::start(&[]);
    let sql = "select list_transform([1, 2], x -> x + 1) as old, list_transform([1, 2], lambda x: x * 2) as new";
    assert_eq!(
        post_rows(&server, sql),
        json!([{"old": [2, 3], "new": [2, 4]}])
    );

    let strict = ServerProcess::start(&["--lambda-syntax", "default"]);
    let new_only = "select list_transform([1, 2], lambda x: x * 2) as new";
    assert_eq!(post_rows(&strict, new_only), json!([{"new": [2, 4]}]));
    let (status, _, body) = post_json(&strict.addr, &json!({"type":"json","sql":sql}), "");
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("lambda_syntax"));
    let error = refused_start(&["--lambda-syntax", "sideways"]);
    assert!(error.contains("lambda_syntax"), "{error}");
}

#[test]
fn the_version_names_duckdb_2_0() {
    let output = Command::new(binary()).arg("--version").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("DuckDB v2.0."), "{text}");
}
