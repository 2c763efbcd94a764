//! `<data-dir>/master.log`: where the master's log goes while an operator works at its
//! REPL. Bounded: once past [`MAX_BYTES`] the file is renamed `master.log.1` (replacing the
//! older one) and a new one begun, so a long-lived master never fills its disk with logs.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Largest size of `master.log` before it is rotated.
pub const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// The log file; a `tracing` writer.
pub struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    open: Mutex<(File, u64)>,
}

impl LogFile {
    /// Opens (appending) `master.log` in `dir`, creating the folder if needed; an error
    /// names the file.
    pub fn open(dir: &Path) -> io::Result<LogFile> {
        let path = dir.join("master.log");
        std::fs::create_dir_all(dir)
            .and_then(|()| LogFile::with_limit(&path, MAX_BYTES))
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    pub fn with_limit(path: &Path, max_bytes: u64) -> io::Result<LogFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_path_buf(),
            max_bytes,
            open: Mutex::new((file, len)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, (File, u64)> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One event's writes, under the file's lock.
pub struct LogEvent<'a> {
    open: MutexGuard<'a, (File, u64)>,
}

impl Write for LogEvent<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let written = self.open.0.write(data)?;
        self.open.1 += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.open.0.flush()
    }
}

impl LogFile {
    /// Past the limit, begins a new file (the current one becomes `master.log.1`): at the
    /// start of an event, so that no line is cut in two.
    fn rotate_if_full(&self, open: &mut (File, u64)) -> io::Result<()> {
        if open.1 < self.max_bytes {
            return Ok(());
        }
        std::fs::rename(&self.path, self.path.with_extension("log.1"))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        *open = (file, 0);
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogFile {
    type Writer = LogEvent<'a>;

    fn make_writer(&'a self) -> LogEvent<'a> {
        let mut open = self.lock();
        // A log that cannot be rotated goes on growing rather than losing lines.
        let _ = self.rotate_if_full(&mut open);
        LogEvent { open }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_rotated_past_its_limit_and_keeps_one_older_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.log");
        let log = LogFile::with_limit(&path, 100).unwrap();
        for i in 0..30 {
            let mut entry = tracing_subscriber::fmt::MakeWriter::make_writer(&log);
            writeln!(entry, "line {i:02} of the log").unwrap();
        }
        let now = std::fs::read_to_string(&path).unwrap();
        let older = std::fs::read_to_string(dir.path().join("master.log.1")).unwrap();
        // Rotated between lines: each file holds whole lines, at most one past the limit.
        assert!(now.len() <= 120 && older.len() <= 120, "{now:?} {older:?}");
        assert!(now.starts_with("line ") && now.lines().all(|l| l.ends_with(" of the log")));
        assert!(now.ends_with("line 29 of the log\n"), "{now:?}");
        assert!(
            older.starts_with("line ") && older.ends_with(" of the log\n"),
            "{older:?}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
