//! herd's contract library: the generated wire contract and everything master, worker and
//! herdctl must agree on (domain types, their limits and validation, durations, the
//! error-to-status mapping, the client, and the JSON views `--json` and the HTTP API
//! share). The operator console (grammar, REPL, text rendering) is `herd_console`.

pub mod auth;
pub mod client;
pub mod codec;
pub mod config;
pub mod constraint;
pub mod domain;
pub mod error;
pub mod paths;
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

pub use error::Error;

/// Sets up `tracing` for a herd program: `HERD_LOG` filters (default `info`), colour only
/// on a terminal without `NO_COLOR`, lines through `writer`.
pub fn init_logging<W>(writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("HERD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(writer)
        .init();
}

/// Sets up `tracing` for a program with an operator at its terminal (the master's REPL):
/// everything `HERD_LOG` lets through (default `info`) goes to `file`, without colour;
/// only warnings and errors also reach the `screen`, so task events do not scroll the
/// operator's work away.
pub fn init_logging_split<F, W>(file: F, screen: W)
where
    F: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let everything = EnvFilter::try_from_env("HERD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(file)
                .with_filter(everything),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(colour)
                .with_writer(screen)
                .with_filter(LevelFilter::WARN),
        )
        .init();
}

/// The version every herd program reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
