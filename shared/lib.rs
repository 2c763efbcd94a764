//! herd's shared library: the generated wire contract and everything master, worker and
//! herdctl must agree on (domain types and their validation, durations, the error-to-status
//! mapping, the command grammar and how its answers are rendered).

pub mod auth;
pub mod client;
pub mod command;
pub mod complete;
pub mod config;
pub mod console;
pub mod domain;
pub mod error;
pub mod render;
pub mod repl;
pub mod terminal;
pub mod time;

/// The generated types of `proto/herd.proto` (package `herd.v1`): the only contract between
/// the programs.
pub mod pb {
    tonic::include_proto!("herd.v1");

    /// The encoded descriptors of the contract, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/herd_descriptor.bin"));
}

pub use error::Error;

/// The version every herd program reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
