//! The WAL: copied back into the database on a thread of its own, and started over there
//! too, so that no commit of the store thread waits for a checkpoint's fsyncs.
//!
//! Only a writer can start the WAL over, at a moment when every frame has been copied
//! back, and under steady writes that moment never comes by itself. SQLite's automatic
//! checkpoint then runs inside a commit of the store thread, and its fsyncs cover up to a
//! second of writes: 30-60 ms on this kind of disk, with every task in flight waiting
//! (fsync time grows with what is unwritten: 1 MB takes 1 ms here, 32 MB 19 ms). So the
//! checkpoint thread copies the WAL back without blocking anyone (`PASSIVE`), and once the
//! WAL is long, copies again what was written meanwhile (still without blocking), then
//! the little written during that second pass with the writer held off (`RESTART`). The
//! next commit then starts the WAL over.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tracing::{debug, warn};

use herd::error::Error;

use super::fault::Result;

/// When the checkpoint thread runs and when it starts the WAL over.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoints {
    /// Between two passes.
    pub every: Duration,
    /// Frames in the WAL from which a pass ends by starting it over.
    pub restart_at: i64,
}

impl Checkpoints {
    /// About a second of writes at 10,000 tasks a second (8,000 frames, 32 MB). The
    /// writer's own automatic checkpoint (`wal_autocheckpoint`, 20,000 frames) is only the
    /// safety net for a checkpoint thread that falls behind.
    pub const EVERY_SECOND: Checkpoints = Checkpoints {
        every: Duration::from_secs(1),
        restart_at: 8_000,
    };

    /// Starts the checkpoint thread on a connection of its own.
    pub fn start(self, path: &Path) -> Result<()> {
        let mut conn = Connection::open(path)?;
        conn.busy_handler(Some(retry_every_100us::<CHECKPOINT_TRIES>))?;
        thread::Builder::new()
            .name("herd-checkpoint".into())
            .spawn(move || {
                loop {
                    thread::sleep(self.every);
                    self.pass(&conn);
                }
            })
            .map_err(|e| Error::Storage(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(())
    }

    fn pass(&self, conn: &Connection) {
        let frames = match checkpoint(conn, "PASSIVE") {
            Ok((_, frames)) => frames,
            Err(err) => {
                warn!(%err, "WAL checkpoint failed; retrying");
                return;
            }
        };
        if frames < self.restart_at {
            return;
        }
        // What the pass above left (written during its fsyncs, tens of ms) is copied
        // again without blocking, so that what the writer waits for is only what came
        // during this short second pass.
        if let Err(err) = checkpoint(conn, "PASSIVE") {
            warn!(%err, "WAL checkpoint failed; retrying");
            return;
        }
        let started = Instant::now();
        match checkpoint(conn, "RESTART") {
            Ok((0, _)) => debug!(frames, took = ?started.elapsed(), "WAL to start over"),
            // A reader kept an older snapshot, or the writer held on: next pass.
            Ok(_) => debug!(frames, "WAL not started over (busy); next pass"),
            Err(err) => warn!(%err, "WAL checkpoint failed; retrying"),
        }
    }
}

/// `PRAGMA wal_checkpoint(mode)`: whether it was blocked, and the frames in the WAL.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
}

/// A busy handler that retries every 100 µs, `TRIES` times at most. SQLite's own
/// (`busy_timeout`) sleeps 1, 2, 5, 10 ms and more between tries, far longer than the
/// checkpoint thread holds the writer off. The store thread waits up to 5 s
/// ([`STORE_TRIES`]); the checkpoint thread gives up after 50 ms and tries again at its
/// next pass, rather than keep the writer waiting behind a long read.
pub fn retry_every_100us<const TRIES: i32>(tries: i32) -> bool {
    thread::sleep(Duration::from_micros(100));
    tries < TRIES
}

/// The store thread's tries: 5 s.
pub const STORE_TRIES: i32 = 50_000;

/// The checkpoint thread's: 50 ms.
const CHECKPOINT_TRIES: i32 = 500;

/// Starts on an empty WAL. A master killed under load leaves one of up to
/// `wal_autocheckpoint` frames or more (80 MB at 20,000); copied back here, before the
/// first answer, it is not copied inside the first commits of a tick, which held the
/// flush of 10,000 rows after a restart at 10-50 ms instead of 2-5.
pub fn copy_back_the_wal(conn: &Connection, path: &Path) {
    let started = Instant::now();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let bytes = std::fs::metadata(&wal).map_or(0, |m| m.len());
    match checkpoint(conn, "TRUNCATE") {
        Ok((0, _)) => debug!(bytes, took = ?started.elapsed(), "WAL copied back"),
        Ok(_) => warn!(bytes, "the WAL could not be copied back at start (busy)"),
        Err(err) => warn!(%err, "the WAL could not be copied back at start"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The WAL's longest run in frames of 4 KiB pages: its file keeps that size (starting
    /// over writes it again from the top).
    fn wal_frames(path: &Path) -> u64 {
        let wal = path.with_file_name("herd.db-wal");
        std::fs::metadata(wal).map_or(0, |m| m.len()) / (4096 + 24)
    }

    /// A writer that never pauses (commits back to back, no checkpoint of its own): the
    /// WAL still starts over each time it reaches its length, and every commit lands.
    #[test]
    fn the_wal_starts_over_under_a_writer_that_never_pauses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herd.db");
        let mut writer = Connection::open(&path).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        writer.pragma_update(None, "synchronous", "NORMAL").unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer
            .busy_handler(Some(retry_every_100us::<STORE_TRIES>))
            .unwrap();
        writer
            .execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        Checkpoints {
            every: Duration::from_millis(20),
            restart_at: 200,
        }
        .start(&path)
        .unwrap();
        // At least 8 pages a commit: 48,000 frames or more without starting over.
        let commits = 6_000i64;
        for commit in 0..commits {
            let tx = writer.transaction().unwrap();
            for k in 0..8 {
                tx.execute(
                    "INSERT OR REPLACE INTO t (k, v) VALUES (?1, zeroblob(3000))",
                    [commit * 8 % 4_000 + k],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let frames = wal_frames(&path);
        assert!(
            frames < 12_000,
            "{commits} commits grew the WAL to {frames} frames (it starts over at 200)"
        );
        let rows: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 4_000);
    }
}
