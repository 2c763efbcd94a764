//! herd's contract library: the generated wire contract and everything master, worker and
//! herdctl must agree on (domain types, their limits and validation, durations, the
//! error-to-status mapping, the client, and the JSON views `--json` and the HTTP API
//! share). The operator console (grammar, REPL, text rendering) is `herd_console`.

pub mod auth;
pub mod client;
pub mod client_trouble;
pub mod codec;
pub mod config;
pub mod config_file;
pub mod constraint;
pub mod domain;
pub mod error;
pub mod logging;
pub mod paths;
pub mod service;
pub mod text;
pub mod time;
pub mod views;

/// The generated types of `proto/herd.proto` (package `herd.v1`): the only contract between
/// the programs.
pub mod pb {
    tonic::include_proto!("herd.v1");

    /// The encoded descriptors of the contract, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/herd_descriptor.bin"));
}

#[cfg(test)]
mod wire;

pub use error::Error;

/// The version every herd program reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
