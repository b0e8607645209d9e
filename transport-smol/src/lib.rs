#![doc = include_str!("../README.md")]

mod broker;
pub mod cache;
pub mod compress;
pub mod config;
mod connection;
mod driver;
pub mod executor;
mod http;
pub mod meta;
pub mod metrics;
pub mod pace;
mod room_follower;
mod server;
mod startup;
mod tls;
mod writer;
mod ws;

pub use config::ServerConfig;

/// The one executor every connection task and the driver run on. `run` drives it on the
/// thread that also waits for socket readiness, so a readable socket, the core's reaction
/// and the reply all happen on one thread without waking another (on a small machine each
/// cross-thread wake-up costs about as much as a small query).
static EXECUTOR: smol::Executor<'static> = smol::Executor::new();

fn spawn<T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> smol::Task<T> {
    EXECUTOR.spawn(future)
}
/// The DuckDB crate this driver is built on (for embedders and the benchmark's floor).
pub use duckdb;
pub use server::{run, StartError};
pub use startup::{duckdb_library_version, open_database};
