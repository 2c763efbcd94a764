//! The phases of a run, in order, over one [`Bench`]: registration, streams and the steady
//! state with a saturation, failure detection, tasks, and a restart of the master (on
//! PostgreSQL: a fail-over to a standby).

use std::sync::Arc;

use tonic::transport::Channel;

use crate::Cli;
use crate::cluster::{Admin, MasterProcess};
use crate::report::Figure;
use crate::sim::{Shared, Sim};

pub mod detection;
pub mod failover;
pub mod registration;
pub mod restart;
pub mod steady;
pub mod tasks;

/// Everything the phases share.
pub struct Bench {
    pub cli: Cli,
    /// Simulated workers.
    pub n: usize,
    pub master: MasterProcess,
    pub admin: Admin,
    /// The HTTP/2 connections the workers' streams are spread over.
    pub conns: Vec<Channel>,
    pub shared: Arc<Shared>,
    pub sims: Vec<Sim>,
    pub figures: Vec<Figure>,
    /// The master's RSS before any worker registered, KiB.
    pub baseline_rss: u64,
    /// Workers that should be Active (detection closes some for good).
    pub live: u32,
}

impl Bench {
    pub fn progress(&self, text: &str) {
        crate::report::progress(self.cli.json, text);
    }
}
