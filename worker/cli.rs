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
    /// Read settings from this TOML file: each key is a flag's long name
    /// (`name = "gpu-01"`, `label = ["zone=a"]`). A flag, then its environment variable, win
    /// over it [default: /etc/herd/worker.toml, when it exists]
    #[arg(
        long = "config",
        id = "config_file",
        env = "HERD_CONFIG",
        value_name = "FILE"
    )]
    pub config_file: Option<PathBuf>,
    /// Print the effective configuration as TOML, with where each value came from
    /// (flag, environment, file, default; secrets masked), and exit
    #[arg(long)]
    pub print_config: bool,
    #[command(subcommand)]
    pub mode: Option<Mode>,
}

#[derive(Subcommand)]
pub enum Mode {
    /// Supervise one task (started by herd-worker itself, once per task).
    #[command(hide = true)]
    Supervise { folder: PathBuf },
}
