//! Registration throughput: N workers register over the shared connections, 256 calls in
//! flight. Before them, the same number of calls in flight of the cheapest unary call the
//! master answers (a gRPC health check: no credential, no state, no commit) gives the
//! floor this transport sets on the master's core, which registrations are read against.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use herd::pb;
use herd::pb::registry_client::RegistryClient;

use super::Bench;
use crate::cluster::{cpu_time, join_bearer};
use crate::report::Figure;
use crate::sim::description;

/// Unary calls in flight at once, spread over the connections.
const IN_FLIGHT: usize = 256;

/// Health checks of the floor: enough to take about half a second, so that the master's
/// CPU time (counted in 10 ms ticks) is read to a few per cent.
const FLOOR_CALLS: usize = 20_000;

/// Registers every worker; returns their ids and the secrets the master issued them.
pub async fn run(b: &mut Bench) -> anyhow::Result<Vec<(String, String)>> {
    let (n, pid) = (b.n, b.master.pid());

    let cpu_before = cpu_time(pid);
    let (checks, took) = calls(&b.conns, FLOOR_CALLS, |_, conn| async move {
        HealthClient::new(conn)
            .check(HealthCheckRequest::default())
            .await
            .ok()
    })
    .await?;
    let floor_cpu = cpu_time(pid) - cpu_before;
    let answered = checks.iter().flatten().count();
    if answered != FLOOR_CALLS {
        b.master.check_alive()?;
        bail!("only {answered} of {FLOOR_CALLS} health checks were answered");
    }
    let floor = FLOOR_CALLS as f64 / took.as_secs_f64();
    b.figures.push(Figure::info(
        "unary call floor (health checks)",
        floor,
        "/s",
    ));
    b.figures.push(Figure::info(
        "  master CPU per health check",
        micros_each(floor_cpu, FLOOR_CALLS),
        "µs",
    ));

    let cpu_before = cpu_time(pid);
    let (answers, took) = calls(&b.conns, n, |i, conn| async move {
        let mut registry = RegistryClient::with_interceptor(conn, join_bearer());
        let r = registry
            .register(pb::RegisterRequest {
                worker: Some(description(i)),
                worker_secret: String::new(),
            })
            .await
            .ok()?
            .into_inner();
        Some((r.worker_id, r.worker_secret))
    })
    .await?;
    let cpu = cpu_time(pid) - cpu_before;
    let registered = answers.iter().flatten().count();
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
    b.figures.push(Figure::info(
        "  master CPU per registration",
        micros_each(cpu, n),
        "µs",
    ));
    b.progress(&format!(
        "{n} registered in {took:.2?} ({rate:.0}/s; the unary call floor is {floor:.0}/s); \
         opening streams"
    ));
    Ok(answers.into_iter().map(Option::unwrap_or_default).collect())
}

/// Makes `call(i, connection)` for every i below `n`, [`IN_FLIGHT`] at a time over the
/// shared connections; returns each call's answer by i (None: it failed) and how long
/// they all took.
async fn calls<T, F, Fut>(
    conns: &[Channel],
    n: usize,
    call: F,
) -> anyhow::Result<(Vec<Option<T>>, Duration)>
where
    T: Send + 'static,
    F: Fn(usize, Channel) -> Fut,
    Fut: Future<Output = Option<T>> + Send + 'static,
{
    let started = Instant::now();
    let (done_tx, mut done_rx) = mpsc::channel::<(usize, T)>(1024);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let collect = async {
        let mut answers: Vec<Option<T>> = (0..n).map(|_| None).collect();
        while let Some((i, answer)) = done_rx.recv().await {
            answers[i] = Some(answer);
        }
        answers
    };
    let send = async {
        for i in 0..n {
            let permit = in_flight.clone().acquire_owned().await?;
            let answer = call(i, conns[i % conns.len()].clone());
            let done = done_tx.clone();
            tokio::spawn(async move {
                let answer = answer.await;
                drop(permit);
                if let Some(answer) = answer {
                    let _ = done.send((i, answer)).await;
                }
            });
        }
        drop(done_tx);
        anyhow::Ok(())
    };
    let (sent, answers) = tokio::join!(send, collect);
    sent?;
    Ok((answers, started.elapsed()))
}

/// Microseconds of `cpu` per one of `count`.
fn micros_each(cpu: Duration, count: usize) -> f64 {
    cpu.as_secs_f64() * 1e6 / count.max(1) as f64
}
