//! herd-master's command line: its settings (`herd::config::MasterConfig`), logging, and
//! the config file flags. The program parses it; `herd-assets` makes its man page.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use herd::config::MasterConfig;
use herd::logging::LogOptions;

#[derive(Parser)]
#[command(
    name = "herd-master",
    version,
    about = "The herd master: cluster, liveness, scheduler"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: MasterConfig,
    #[command(flatten)]
    pub log: LogOptions,
    #[command(flatten)]
    pub file: herd::config_file::FileFlags,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What herd-master does instead of running a master.
#[derive(Subcommand)]
pub enum Command {
    /// Make the certificates TLS needs: the cluster's CA, the master's, and workers'
    #[command(subcommand)]
    Tls(Tls),
}

#[derive(Subcommand)]
pub enum Tls {
    /// Make a CA and this master's server certificate: DIR/ca.crt, ca.key, master.crt,
    /// master.key (keys 0600); prints the settings that use them
    Init {
        /// Where the files go [default: <data-dir>/tls]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// A DNS name or IP address clients reach the master by; repeatable [default: this
        /// host's name, localhost, 127.0.0.1 and ::1]
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
    },
    /// Sign a client certificate naming worker NAME with the CA of `tls init`: DIR/NAME.crt
    /// and NAME.key, for a master with --tls-client-ca
    Worker {
        /// The worker's name (its --name)
        name: String,
        /// Where the CA is, and the files go [default: <data-dir>/tls]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}
