//! Fail-over (PostgreSQL only): a standby master waits on the same store, and the leader is
//! killed (kill -9) while every worker heartbeats and tasks are being submitted. How long
//! until the standby leads, until every worker has an acknowledged stream on it, how many
//! workers it showed Inactive meanwhile, and whether an acknowledged task was lost or a
//! task reached a worker twice. The workers behave as herd-worker does here: a final
//! result is repeated in each heartbeat until the master says it is committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use tonic::transport::Endpoint;

use herd::pb;
use herd::pb::admin_client::AdminClient;

use super::Bench;
use crate::cluster::{Admin, MasterProcess, bearer, channels, free_port, summary};
use crate::report::Figure;

/// Tasks submitted per batch, and the pause between batches (1,000 tasks a second).
const BATCH: usize = 10;
const EVERY: Duration = Duration::from_millis(10);

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let mut launch = b.master.launch.clone();
    launch.port = free_port();
    launch.metrics_port = free_port();
    launch.data = launch.data.with_file_name("standby");
    std::fs::create_dir_all(&launch.data)?;
    let mut standby = MasterProcess::start(&launch)?;
    let standby_admin = wait_standby(&mut standby).await?;
    let inactive_before = summary(&mut b.admin).await.get("Inactive").copied();
    let inactive_before = inactive_before.unwrap_or(0);

    b.shared.repeat_results.store(true, Ordering::SeqCst);
    *b.shared.starts.lock().unwrap() = Some(HashMap::new());
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let submitter = tokio::spawn(submit(
        [b.admin.clone(), standby_admin.clone()],
        acked.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The workers' next streams go to the standby, as herd-worker's would once told of
    // the new leader (`--master a,b`); then the leader dies.
    b.shared
        .move_to(channels(&standby.url(), b.cli.connections).await?);
    let killed = Instant::now();
    b.master.kill9();
    let mut admin = standby_admin;
    let leads = loop {
        if admin.summary(pb::SummaryRequest {}).await.is_ok() {
            break killed.elapsed();
        }
        standby.check_alive()?;
        if killed.elapsed() > Duration::from_secs(30) {
            bail!("the standby did not lead within 30 s of the leader's kill -9");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let live = b.live as u64;
    let mut most_inactive = 0u32;
    let back = loop {
        let counts = summary(&mut admin).await;
        let inactive = counts.get("Inactive").copied().unwrap_or(0);
        most_inactive = most_inactive.max(inactive.saturating_sub(inactive_before));
        if b.shared.rejoined.load(Ordering::SeqCst) >= live
            && counts.get("Active").copied().unwrap_or(0) as u64 >= live
        {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(60) {
            bail!(
                "{} of {live} workers had a stream on the new leader 60 s after the kill",
                b.shared.rejoined.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    submitter.await??;

    // Every acknowledged task must reach a worker; none may reach one twice.
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let (lost, twice) = loop {
        let (lost, twice) = {
            let starts = b.shared.starts.lock().unwrap();
            let starts = starts.as_ref().expect("counting");
            let lost = acked.iter().filter(|id| !starts.contains_key(*id)).count();
            (lost, starts.values().filter(|&&n| n > 1).count())
        };
        if lost == 0 || Instant::now() > deadline {
            break (lost, twice);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    *b.shared.starts.lock().unwrap() = None;
    b.shared.repeat_results.store(false, Ordering::SeqCst);
    b.master = standby;
    b.admin = admin;

    let figures = [
        (
            "fail-over: a standby leads",
            ms(leads),
            "<= 2000 ms",
            leads <= secs(2),
        ),
        (
            "fail-over: every worker back on it",
            ms(back),
            "<= 5000 ms",
            back <= secs(5),
        ),
    ];
    for (name, value, goal, ok) in figures {
        b.figures
            .push(Figure::goal(name, value, "ms", goal.into(), ok));
    }
    let counts = [
        ("  false Inactive meanwhile", most_inactive as usize),
        ("  acknowledged tasks lost", lost),
        ("  tasks that reached a worker twice", twice),
    ];
    for (name, value) in counts {
        b.figures
            .push(Figure::goal(name, value as f64, "", "0".into(), value == 0));
    }
    b.progress(&format!(
        "fail-over: the standby led {leads:.2?} after kill -9, every worker back after \
         {back:.2?}; {} tasks acknowledged around it, {lost} lost, {twice} reached a \
         worker twice, {most_inactive} shown Inactive",
        acked.len()
    ));
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// An Admin client of `standby` once it answers as a standby: UNAVAILABLE, naming the
/// leader (30 s at most).
async fn wait_standby(standby: &mut MasterProcess) -> anyhow::Result<Admin> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        standby.check_alive()?;
        if let Ok(channel) = Endpoint::from_shared(standby.url())?.connect().await {
            let mut admin = AdminClient::with_interceptor(channel, bearer());
            if let Err(status) = admin.summary(pb::SummaryRequest {}).await
                && status.metadata().get("herd-leader").is_some()
            {
                return Ok(admin);
            }
        }
        if Instant::now() > deadline {
            bail!("the standby master did not answer as a standby within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits a batch every [`EVERY`] until `stop`: to the first master that takes it (the
/// leader, then the standby once it leads). Only batches the master acknowledged count.
async fn submit(
    mut masters: [Admin; 2],
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut at = 0;
    while !stop.load(Ordering::SeqCst) {
        let request = pb::SubmitTasksRequest {
            specs: vec![super::tasks::task_spec()],
            count: BATCH as u32,
        };
        let call = masters[at].submit_tasks(request);
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(reply)) => {
                acked.lock().unwrap().extend(reply.into_inner().task_ids);
            }
            // Not acknowledged: the other master may lead (or will soon).
            _ => at = 1,
        }
        tokio::time::sleep(EVERY).await;
    }
    Ok(())
}
