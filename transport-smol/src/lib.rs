#![doc = include_str!("../README.md")]

pub mod cache;
pub mod config;
mod driver;
pub mod executor;
mod http;
pub mod meta;
pub mod metrics;
mod server;
mod ws;

pub use config::ServerConfig;
/// The DuckDB crate this driver is built on (for embedders and the benchmark's floor).
pub use duckdb;
pub use server::{open_database, run, StartError};
