//! Standby masters (a PostgreSQL store): a master serves as a standby until it is elected
//! (`election.rs`), then leads as a master on SQLite does, until it is deposed or stopped;
//! deposed, it closes its workers' streams, stops placing, and is a standby again. Its
//! in-memory state goes with each term: a new term starts from what the store holds.

pub mod election;
pub mod standby;

use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use herd::config::{Listen, MasterConfig};

use self::election::{Address, Candidate, Leader};
use self::standby::{Listeners, Standby, reachable_host};
use crate::start::{self, Bound, tls};
use crate::store::postgres::{self, Fence, redact};

/// Runs a master on the PostgreSQL store of `config.store` until `stop` ends: standby,
/// leader, standby again when deposed, and so on.
pub async fn run(mut config: MasterConfig, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let url = config
        .store
        .clone()
        .context("run needs --store postgres://...")?;
    postgres::prepare(&url)
        .await
        .with_context(|| format!("cannot open the store {}", redact(&url)))?;
    tokio::pin!(stop);
    // Bound once: a port 0 becomes the port every term of this master serves on.
    let sockets = Sockets::bind(&config).await?;
    config.listen = sockets.grpc.local_addr()?;
    if let Some(http) = &sockets.http {
        config.http_listen = Listen::On(http.local_addr()?);
    }
    let me = address(&config);
    info!(grpc = %me.grpc, http = %me.http, store = %redact(&url), "herd-master standby: waiting to lead");
    let mut candidate = Candidate::connect(&url, me.clone()).await?;
    // How long to serve as a standby before campaigning: nothing at first, a backoff after
    // an election this master won but could not lead.
    let (mut pause, mut backoff) = (Duration::ZERO, FIRST_BACKOFF);
    loop {
        let (tell, leader) = watch::channel(Leader::default());
        let standby = Standby::serve(sockets.standby(&config)?, leader).await?;
        herd::service::ready(&format!("standby on {}", me.grpc));
        let campaign = async {
            tokio::time::sleep(pause).await;
            candidate.campaign(&tell).await
        };
        let leadership = tokio::select! {
            led = campaign => led?,
            _ = &mut stop => {
                standby.stop().await;
                return Ok(());
            }
        };
        standby.stop().await;
        let term = leadership.term;
        let fence = Fence {
            term,
            deposed: leadership.deposed.clone(),
        };
        let mut deposed = leadership.deposed.subscribe();
        match start::start_leading(config.clone(), fence, sockets.copy()?).await {
            Ok(running) => {
                info!(term, grpc = %me.grpc, "herd-master leads");
                herd::service::status(&format!("leader of term {term} on {}", me.grpc));
                (pause, backoff) = (Duration::ZERO, FIRST_BACKOFF);
                // The guard `wait_for` returns holds the channel's lock: dropped here, not
                // kept through the shutdown below (a write that finds a newer term sets it).
                let deposed_now = async {
                    let _ = deposed.wait_for(|d| *d).await;
                };
                tokio::select! {
                    _ = deposed_now => {
                        warn!(term, "no longer the leader: closing worker streams, going back to standby");
                        running.shutdown().await;
                    }
                    _ = &mut stop => {
                        running.shutdown().await;
                        return Ok(());
                    }
                }
                // A fresh session: the old one, and any lock it still held, go with it.
                drop(leadership);
            }
            // Elected but unable to lead (the store failed while loading it, the data dir
            // is held): the lead goes back at once, for another master to take, and this
            // one is a standby again, to try later, instead of exiting.
            Err(err) => {
                error!(
                    term,
                    "cannot lead: {err:#}; giving the lead back and waiting {backoff:?} as a standby"
                );
                // The lock is held by the candidate's session: it ends with it, now.
                drop(leadership);
                drop(candidate);
                (pause, backoff) = (backoff, (backoff * 2).min(LAST_BACKOFF));
            }
        }
        candidate = loop {
            match Candidate::connect(&url, me.clone()).await {
                Ok(candidate) => break candidate,
                Err(err) => warn!(%err, "cannot reach the store; trying again"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = &mut stop => return Ok(()),
            }
        };
    }
}

/// How long a master that was elected but could not lead waits before it campaigns
/// again: doubled at each failure in a row, up to [`LAST_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const LAST_BACKOFF: Duration = Duration::from_secs(30);

/// The listening sockets of this master, bound once for its whole life. The standby and
/// each term's leader serve on copies of them (the same sockets), one after the other, so
/// a take-over never closes the port: a client that connects between the standby's last
/// answer and the leader's first waits in the socket's backlog instead of being refused.
struct Sockets {
    grpc: std::net::TcpListener,
    http: Option<std::net::TcpListener>,
}

impl Sockets {
    async fn bind(config: &MasterConfig) -> anyhow::Result<Sockets> {
        let grpc = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let http = match config.http_listen {
            Listen::Off => None,
            Listen::On(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot serve HTTP on {addr}"))?
                    .into_std()?,
            ),
        };
        Ok(Sockets {
            grpc: grpc.into_std()?,
            http,
        })
    }

    /// Another handle on the same sockets, for a leader.
    fn copy(&self) -> anyhow::Result<Bound> {
        let copy = |l: &std::net::TcpListener| -> std::io::Result<TcpListener> {
            TcpListener::from_std(l.try_clone()?)
        };
        Ok(Bound {
            grpc: copy(&self.grpc)?,
            http: self.http.as_ref().map(copy).transpose()?,
        })
    }

    /// Another handle on the same sockets, with the TLS of `config`, for a standby.
    fn standby(&self, config: &MasterConfig) -> anyhow::Result<Listeners> {
        let tls = tls(config)?;
        let Bound { grpc, http } = self.copy()?;
        Ok(Listeners {
            grpc,
            grpc_tls: tls.grpc,
            http,
            http_tls: tls.http,
        })
    }
}

/// How clients reach this master: `--advertise`, or the listen addresses.
fn address(config: &MasterConfig) -> Address {
    let scheme = match config.tls_cert.is_some() {
        true => "https",
        false => "http",
    };
    let grpc = config.advertise.clone().unwrap_or_else(|| {
        let host = reachable_host(config.listen);
        format!("{scheme}://{host}:{}", config.listen.port())
    });
    let http = match config.http_listen {
        Listen::Off => String::new(),
        Listen::On(addr) => format!("{scheme}://{}:{}", reachable_host(addr), addr.port()),
    };
    Address { grpc, http }
}
