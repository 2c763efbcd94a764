//! Task output as the master keeps it: on disk under `<data-dir>/output/<task>/`, never
//! whole in memory. Each attempt's output is a run of 1 MiB segment files
//! (`<attempt>.<k>` holds bytes `[k MiB, (k+1) MiB)` of that attempt's whole output); the
//! last two are kept, so at least the last 1 MiB survives anything, and an offset into the
//! whole output stays exact. Written by the store thread (in order with the task's rows),
//! read by `task logs`.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use herd::domain::MAX_LOG_BYTES;

/// Size of one segment file.
pub const SEGMENT: u64 = MAX_LOG_BYTES as u64;

/// The output folder of a master.
#[derive(Debug, Clone)]
pub struct OutputDir {
    root: PathBuf,
}

impl OutputDir {
    pub fn new(root: PathBuf) -> OutputDir {
        OutputDir { root }
    }

    fn segment(&self, task: &str, attempt: u32, k: u64) -> PathBuf {
        self.root.join(task).join(format!("{attempt}.{k}"))
    }

    /// Appends `data`, which starts at byte `offset` of the attempt's whole output (the
    /// caller keeps offsets contiguous). Drops segments older than the last two.
    pub fn append(&self, task: &str, attempt: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        fs::create_dir_all(self.root.join(task))?;
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let k = at / SEGMENT;
            let room = (SEGMENT - at % SEGMENT) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            // Written at its place, not appended: a write that failed halfway (a full
            // disk) and is tried again leaves each byte once.
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(self.segment(task, attempt, k))?;
            file.write_all_at(now, at % SEGMENT)?;
            if at.is_multiple_of(SEGMENT) && k >= 2 {
                let _ = fs::remove_file(self.segment(task, attempt, k - 2));
            }
            at += now.len() as u64;
            rest = later;
        }
        Ok(())
    }

    /// Up to `max` bytes from offset `from` of an attempt's output, as `(start, bytes)`:
    /// `start` is later than `from` when the bytes there are no longer kept.
    pub fn read(
        &self,
        task: &str,
        attempt: u32,
        from: u64,
        max: usize,
    ) -> io::Result<(u64, Vec<u8>)> {
        let mut start = from;
        let mut out = Vec::new();
        loop {
            let k = start / SEGMENT;
            let mut file = match fs::File::open(self.segment(task, attempt, k)) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Older than what is kept: begin at the oldest kept segment.
                    if out.is_empty()
                        && let Some(first) = self.first_kept(task, attempt)?
                        && first > k
                    {
                        start = first * SEGMENT;
                        continue;
                    }
                    return Ok((start - out.len() as u64, out));
                }
                Err(e) => return Err(e),
            };
            file.seek(SeekFrom::Start(start % SEGMENT))?;
            let want = max - out.len();
            let got = file.take(want as u64).read_to_end(&mut out)?;
            start += got as u64;
            if got == 0 || out.len() >= max || !start.is_multiple_of(SEGMENT) {
                return Ok((start - out.len() as u64, out));
            }
        }
    }

    /// How many bytes of an attempt's output are on disk (its whole length).
    pub fn len(&self, task: &str, attempt: u32) -> io::Result<u64> {
        let Some(last) = self.segments(task, attempt)?.into_iter().max() else {
            return Ok(0);
        };
        Ok(last * SEGMENT + fs::metadata(self.segment(task, attempt, last))?.len())
    }

    /// Whether any output of the task is on disk.
    pub fn exists(&self, task: &str) -> bool {
        self.root.join(task).is_dir()
    }

    fn first_kept(&self, task: &str, attempt: u32) -> io::Result<Option<u64>> {
        Ok(self.segments(task, attempt)?.into_iter().min())
    }

    fn segments(&self, task: &str, attempt: u32) -> io::Result<Vec<u64>> {
        let dir = self.root.join(task);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let prefix = format!("{attempt}.");
        Ok(entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix(&prefix)?.parse().ok()
            })
            .collect())
    }

    /// Removes the output of tasks whose files were last written more than `retention`
    /// ago; returns how many task folders went.
    pub fn sweep(&self, retention: Duration) -> usize {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return 0;
        };
        let cutoff = SystemTime::now() - retention;
        entries
            .flatten()
            .filter(|e| newest_write(&e.path()).is_some_and(|t| t < cutoff))
            .filter(|e| fs::remove_dir_all(e.path()).is_ok())
            .count()
    }
}

fn newest_write(dir: &Path) -> Option<SystemTime> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_stay_exact_and_the_last_two_segments_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::new(dir.path().to_path_buf());
        let mut whole = Vec::new();
        let mut at = 0u64;
        for i in 0..40u32 {
            let chunk: Vec<u8> = (0..100_000u32).map(|j| ((i + j) % 251) as u8).collect();
            out.append("t-1", 1, at, &chunk).unwrap();
            at += chunk.len() as u64;
            whole.extend(chunk);
        }
        assert_eq!(out.len("t-1", 1).unwrap(), at);
        let segs = out.segments("t-1", 1).unwrap();
        assert_eq!(segs.len(), 2, "{segs:?}");
        // A range inside what is kept comes back exactly.
        let from = at - 1_500_000;
        let (start, data) = out.read("t-1", 1, from, 300_000).unwrap();
        assert_eq!(start, from);
        assert_eq!(data, &whole[from as usize..from as usize + 300_000]);
        // From 0: starts where the kept output starts, and it is at least the last MiB.
        let (start, data) = out.read("t-1", 1, 0, usize::MAX).unwrap();
        assert!(at - start >= SEGMENT);
        assert_eq!(data, &whole[start as usize..]);
        assert_eq!(
            out.read("t-1", 2, 0, 10).unwrap(),
            (0, Vec::new()),
            "no such attempt"
        );
        assert_eq!(out.sweep(Duration::from_secs(3600)), 0);
        assert_eq!(out.sweep(Duration::ZERO), 1);
        assert!(!out.exists("t-1"));
    }
}
