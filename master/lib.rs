//! herd-master as a library. [`start`] assembles a whole master from its configuration
//! (store, cluster, ticker, gRPC, HTTP, metrics, local worker) and hands back a
//! [`Running`] master: its addresses, an in-process channel for the REPL and tests, and
//! [`Running::shutdown`]. `main.rs` only parses flags, sets up the runtime and signals.
//!
//! Where things are:
//! - a heartbeat arrives in `grpc/session.rs` (one `WorkerSession` per stream) and is
//!   taken in by `cluster/`;
//! - liveness is decided in `liveness.rs`, applied to every worker by `ticker.rs`;
//! - a task is placed by `tasks/` (queue, attempts, fencing) over `scheduler/` (pure);
//! - operators' operations live in `ops/`, one file per resource, over the one handle
//!   `app.rs`; `grpc/` and `http/` only adapt to them;
//! - state is written by `store/` (SQLite), and nothing else opens the database.

pub mod app;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod events;
pub mod grpc;
#[cfg(test)]
mod harness;
pub mod history;
pub mod http;
pub mod identity;
pub mod leader;
pub mod liveness;
pub mod local_worker;
pub mod lock;
pub mod logfile;
pub mod metrics;
pub mod ops;
pub mod output;
pub mod records;
pub mod retention;
pub mod scheduler;
mod start;
pub mod store;
pub mod tasks;
pub mod ticker;
pub mod workers;

pub use start::{Running, start};
