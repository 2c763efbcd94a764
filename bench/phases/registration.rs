//! Registration throughput: N workers register over the shared connections, 256 calls in
//! flight.

use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use tokio::sync::mpsc;

use herd::pb;
use herd::pb::registry_client::RegistryClient;

use super::Bench;
use crate::cluster::bearer;
use crate::report::Figure;
use crate::sim::description;

/// Registers every worker; returns their ids.
pub async fn run(b: &mut Bench) -> anyhow::Result<Vec<String>> {
    let n = b.n;
    let started = Instant::now();
    let mut ids = vec![String::new(); n];
    let (done_tx, mut done_rx) = mpsc::channel::<(usize, String)>(1024);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    for i in 0..n {
        let mut registry =
            RegistryClient::with_interceptor(b.conns[i % b.conns.len()].clone(), bearer());
        let done = done_tx.clone();
        let permit = in_flight.clone().acquire_owned().await?;
        tokio::spawn(async move {
            let r = registry
                .register(pb::RegisterRequest {
                    worker: Some(description(i)),
                })
                .await;
            drop(permit);
            if let Ok(r) = r {
                let _ = done.send((i, r.into_inner().worker_id)).await;
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
