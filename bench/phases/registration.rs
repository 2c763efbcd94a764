//! Registration throughput: N workers register over the shared connections, 256 calls in
//! flight.

use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use tokio::sync::mpsc;

use herd::pb;
use herd::pb::registry_client::RegistryClient;

use super::Bench;
use crate::cluster::join_bearer;
use crate::report::Figure;
use crate::sim::description;

/// Registers every worker; returns their ids and the secrets the master issued them.
pub async fn run(b: &mut Bench) -> anyhow::Result<Vec<(String, String)>> {
    let n = b.n;
    let started = Instant::now();
    let mut ids = vec![(String::new(), String::new()); n];
    let (done_tx, mut done_rx) = mpsc::channel::<(usize, (String, String))>(1024);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    for i in 0..n {
        let mut registry =
            RegistryClient::with_interceptor(b.conns[i % b.conns.len()].clone(), join_bearer());
        let done = done_tx.clone();
        let permit = in_flight.clone().acquire_owned().await?;
        tokio::spawn(async move {
            let r = registry
                .register(pb::RegisterRequest {
                    worker: Some(description(i)),
                    worker_secret: String::new(),
                })
                .await;
            drop(permit);
            if let Ok(r) = r {
                let r = r.into_inner();
                let _ = done.send((i, (r.worker_id, r.worker_secret))).await;
            }
        });
    }
    drop(done_tx);
    let mut registered = 0;
    while let Some((i, id)) = done_rx.recv().await {
        ids[i] = id;
        registered += 1;
    }
    let took = started.elapsed();
    if registered != n {
        b.master.check_alive()?;
        bail!("only {registered} of {n} registrations succeeded");
    }
    let rate = n as f64 / took.as_secs_f64();
    b.figures.push(Figure::goal(
        "registrations",
        rate,
        "/s",
        ">= 50000/s".into(),
        rate >= 50_000.0,
    ));
    b.progress(&format!(
        "{n} registered in {took:.2?} ({rate:.0}/s); opening streams"
    ));
    Ok(ids)
}
