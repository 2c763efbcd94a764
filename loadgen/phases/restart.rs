//! Restart: kill -9 of the master, a new one on the same data dir and port; how fast it
//! answers with every worker listed, how fast all are Active again, the SQLite flush of
//! the N rows that changed (Inactive at load, Active again; each commit of it, and how
//! long SQLite lags behind the master).

use std::time::{Duration, Instant};

use crate::cluster::{CHECK_INTERVAL, MasterProcess, histogram_max, scrape, summary, wait_active};
use crate::report::Figure;

use super::Bench;

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let launch = b.master.launch.clone();
    b.master.kill9();
    let started = Instant::now();
    b.master = MasterProcess::start(&launch)?;
    b.admin = b.master.admin().await?;
    let reload = started.elapsed();
    let listed: u32 = summary(&mut b.admin).await.values().sum();
    let back_goal = b.cli.heartbeat_interval + Duration::from_secs(1);
    let within = back_goal + Duration::from_secs(60);
    wait_active(&mut b.admin, b.live, "the master's restart", within).await?;
    let back = started.elapsed();
    let lag = sqlite_lag(&launch.data.join("herd.db"), b.live as usize).await?;
    tokio::time::sleep(CHECK_INTERVAL * 2).await;
    let flush_max_ms = histogram_max(
        &scrape(b.master.metrics_port()),
        "herd_store_liveness_commit_seconds",
    ) * 1000.0;
    b.figures.push(Figure::goal(
        "SQLite flush of N rows (max commit)",
        flush_max_ms,
        "ms <=",
        "< 10 ms".into(),
        flush_max_ms <= 10.0,
    ));
    b.figures.push(Figure::goal(
        "  SQLite all Active, after the master",
        lag.as_secs_f64() * 1000.0,
        "ms",
        "<= 2000 ms".into(),
        lag <= Duration::from_secs(2),
    ));
    b.figures.push(Figure::goal(
        "restart: reload (to first answer)",
        reload.as_secs_f64() * 1000.0,
        "ms",
        "< 1000 ms, every worker listed".into(),
        reload < Duration::from_secs(1) && listed as usize == b.n,
    ));
    b.figures.push(Figure::goal(
        "restart: all Active again",
        back.as_secs_f64() * 1000.0,
        "ms",
        format!("< {} ms (interval + 1 s)", back_goal.as_millis()),
        back <= back_goal,
    ));
    b.progress(&format!(
        "restart: answering after {reload:.2?} with {listed} workers listed; all back after {back:.2?}"
    ));
    Ok(())
}

/// How long after the master shows `live` workers Active SQLite does too (read from its
/// own connection to herd.db, as an operator's query would).
async fn sqlite_lag(db: &std::path::Path, live: usize) -> anyhow::Result<Duration> {
    let since = Instant::now();
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(1))?;
    loop {
        let active: i64 = conn.query_row(
            "SELECT count(*) FROM workers WHERE is_active = 1",
            [],
            |r| r.get(0),
        )?;
        if active as usize >= live {
            return Ok(since.elapsed());
        }
        if since.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("SQLite showed {active} of {live} workers Active 30 s after the master");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
