//! herd-worker's command line: its settings (`herd::config::WorkerConfig`), logging, the
//! config file flags and the hidden `supervise` mode. The program parses it;
//! `herd-assets` makes its man page.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use herd::config::WorkerConfig;
use herd::logging::LogOptions;

#[derive(Parser)]
#[command(name = "herd-worker", version, about = "The herd worker agent")]
pub struct Cli {
    #[command(flatten)]
    pub config: WorkerConfig,
    #[command(flatten)]
    pub log: LogOptions,
    #[command(flatten)]
    pub file: herd::config_file::FileFlags,
    #[command(subcommand)]
    pub mode: Option<Mode>,
}

#[derive(Subcommand)]
pub enum Mode {
    /// Supervise one task (started by herd-worker itself, once per task).
    #[command(hide = true)]
    Supervise { folder: PathBuf },
}
