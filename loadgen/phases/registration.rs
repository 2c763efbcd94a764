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
    let floor = calls(b, FLOOR_CALLS, "health checks", |_, conn| async move {
        HealthClient::new(conn)
            .check(HealthCheckRequest::default())
            .await
            .ok()
    })
    .await?;
    b.figures.push(Figure::info(
        "unary call floor (health checks)",
        floor.rate,
        "/s",
    ));
    b.figures.push(Figure::info(
        "  master CPU per health check",
        floor.cpu_each_us,
        "µs",
    ));

    let n = b.n;
    let registered = calls(b, n, "registrations", |i, conn| async move {
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
    let rate = registered.rate;
    b.figures.push(Figure::goal(
        "registrations",
        rate,
        "/s",
        ">= 50000/s".into(),
        rate >= 50_000.0,
    ));
    b.figures.push(Figure::info(
        "  master CPU per registration",
        registered.cpu_each_us,
        "µs",
    ));
    b.progress(&format!(
        "{} registered in {:.2?} ({rate:.0}/s; the unary call floor is {:.0}/s); \
         opening streams",
        n, registered.took, floor.rate
    ));
    Ok(registered.answers)
}

/// Every call of a run of [`calls`] answered.
struct Answered<T> {
    /// By call number.
    answers: Vec<T>,
    took: Duration,
    /// Calls a second.
    rate: f64,
    /// Microseconds of the master's CPU per call.
    cpu_each_us: f64,
}

/// Makes `call(i, connection)` for every i below `n`, [`IN_FLIGHT`] at a time over the
/// shared connections, and reads the master's CPU time around them. Every call must be
/// answered (`what` names them in the error).
async fn calls<T, F, Fut>(
    b: &mut Bench,
    n: usize,
    what: &str,
    call: F,
) -> anyhow::Result<Answered<T>>
where
    T: Send + 'static,
    F: Fn(usize, Channel) -> Fut,
    Fut: Future<Output = Option<T>> + Send + 'static,
{
    let pid = b.master.pid();
    let cpu_before = cpu_time(pid);
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
            let answer = call(i, b.conns[i % b.conns.len()].clone());
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
    let took = started.elapsed();
    let cpu = cpu_time(pid) - cpu_before;
    let answered = answers.iter().flatten().count();
    if answered != n {
        b.master.check_alive()?;
        bail!("only {answered} of {n} {what} were answered");
    }
    let answers = answers.into_iter().flatten().collect();
    Ok(Answered {
        answers,
        took,
        rate: n as f64 / took.as_secs_f64(),
        cpu_each_us: cpu.as_secs_f64() * 1e6 / n.max(1) as f64,
    })
}
