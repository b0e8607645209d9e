//! Runs the `in_memory_session` example as a test: a whole session through the core with
//! an in-memory transport and a fake executor, no sockets, no DuckDB.

mod session {
    include!("../examples/in_memory_session.rs");
}

#[test]
fn a_whole_session_runs_through_the_core_without_io() {
    session::main();
}
