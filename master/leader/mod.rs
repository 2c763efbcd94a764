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
use crate::start::{self, tls};
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
    let mut listeners = bind(&config).await?;
    config.listen = listeners.grpc.local_addr()?;
    if let Some(http) = &listeners.http {
        config.http_listen = Listen::On(http.local_addr()?);
    }
    let me = address(&config);
    info!(grpc = %me.grpc, http = %me.http, store = %redact(&url), "herd-master standby: waiting to lead");
    let mut candidate = Candidate::connect(&url, me.clone()).await?;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let (tell, leader) = watch::channel(Leader::default());
        let standby = Standby::serve(listeners, leader).await?;
        herd::service::ready(&format!("standby on {}", me.grpc));
        let leadership = tokio::select! {
            led = candidate.campaign(&tell) => led?,
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
        match start::start_leading(config.clone(), fence).await {
            Ok(running) => {
                info!(term, grpc = %me.grpc, "herd-master leads");
                herd::service::status(&format!("leader of term {term} on {}", me.grpc));
                backoff = FIRST_BACKOFF;
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
                // The lock is held by the candidate's session: it ends with it.
                drop(leadership);
                drop(candidate);
                listeners = bind(&config).await?;
                let (_tell, leader) = watch::channel(Leader::default());
                let standby = Standby::serve(listeners, leader).await?;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => standby.stop().await,
                    _ = &mut stop => {
                        standby.stop().await;
                        return Ok(());
                    }
                }
                backoff = (backoff * 2).min(LAST_BACKOFF);
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
        listeners = bind(&config).await?;
    }
}

/// How long a master that was elected but could not lead waits before it campaigns
/// again: doubled at each failure in a row, up to [`LAST_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const LAST_BACKOFF: Duration = Duration::from_secs(30);

/// Binds the gRPC and HTTP listeners of `config`.
async fn bind(config: &MasterConfig) -> anyhow::Result<Listeners> {
    let tls = tls(config)?;
    let grpc = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let http = match config.http_listen {
        Listen::Off => None,
        Listen::On(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve HTTP on {addr}"))?,
        ),
    };
    Ok(Listeners {
        grpc,
        grpc_tls: tls.grpc,
        http,
        http_tls: tls.http,
    })
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
