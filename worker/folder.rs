//! The task folder, `<work-dir>/<task>-<attempt>/`: everything a supervisor and the agent
//! (the one that started it, or a later one after a restart) share, on disk so that it
//! outlives either of them.
//!
//! ```text
//! task.json        what to run (agent, before starting the supervisor)
//! supervisor.json  supervisor pid + start time, then the task's pid (supervisor)
//! output.log       the task's output, stdout and stderr in the order they arrived
//! output.streams   one record per chunk of output.log: u8 stream, u32 LE length
//! cancel           why to stop (agent, then SIGTERM to the supervisor)
//! exit.json        how the task ended (supervisor, or an agent that found it dead)
//! reported         the master acknowledged the result (agent)
//! supervisor.log   the supervisor's own messages
//! work/            the task's working directory
//! ```
//! Files other than the output are written atomically (temporary file + rename).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use herd::pb;

/// Bytes of one output.streams record.
const RECORD: u64 = 5;

/// What to run: the assignment plus this worker's settings for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub task_id: String,
    pub attempt: u32,
    pub image: String,
    pub command: String,
    pub cpu: f64,
    pub memory_gb: f64,
    /// Container CLI for image tasks ("docker", "podman").
    pub runtime: Option<String>,
    /// `Isolation::label` of what the worker uses.
    pub isolation: String,
    pub kill_grace_ms: u64,
    /// GPU indices the master gave this attempt.
    #[serde(default)]
    pub gpu_ids: Vec<u32>,
    /// Given no GPU on a machine with GPUs: CUDA and the NVIDIA runtime see none.
    #[serde(default)]
    pub hide_gpus: bool,
    /// Kill the task this long after it started (0: never).
    #[serde(default)]
    pub timeout_ms: u64,
    /// Set in the task's environment.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// The task's working directory; empty: `work/` here.
    #[serde(default)]
    pub workdir: String,
    /// The container's name, unique on the host: task ids are only unique per master, so
    /// it carries a hash of this worker's work dir. Empty in specs of older workers.
    #[serde(default)]
    pub container_name: String,
    /// Left running when the worker is cut off from the master past its fencing deadline
    /// (`--on-disconnect keep`); otherwise the supervisor stops it then (see `lease`).
    #[serde(default)]
    pub keep_on_disconnect: bool,
}

impl Spec {
    /// The container's name, by which a later agent finds it again.
    pub fn container(&self) -> String {
        if self.container_name.is_empty() {
            format!("herd-{}-{}", self.task_id, self.attempt)
        } else {
            self.container_name.clone()
        }
    }

    /// A container name for `attempt` of `task_id` that no other worker on this host
    /// (of another master, with its own work dir) gives out.
    pub fn container_name_for(work_dir: &Path, task_id: &str, attempt: u32) -> String {
        use std::hash::{Hash, Hasher};
        // Computed once and kept in task.json: it need not be stable across builds.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        work_dir.hash(&mut hasher);
        format!("herd-{task_id}-{attempt}-{:08x}", hasher.finish() as u32)
    }
}

/// Who supervises the task, guarded against pid reuse by the start time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub pid: i32,
    pub start_time: u64,
    /// The task's main process, also its process group; None until spawned.
    pub task_pid: Option<i32>,
    /// Name of the task's cgroup under `herd/` (unique on the host: task ids are only
    /// unique per master), None without one.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// When the task is killed for its time limit (unix ms), None without one.
    #[serde(default)]
    pub deadline_ms: Option<i64>,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    /// "succeeded", "failed", "cancelled", or "lost" (stopped by the supervisor when the
    /// worker was cut off from the master past its fencing deadline).
    pub outcome: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: String,
}

impl Exit {
    pub fn failed(reason: impl Into<String>) -> Exit {
        Exit {
            outcome: "failed".into(),
            exit_code: None,
            signal: None,
            reason: reason.into(),
        }
    }

    pub fn update(&self, task_id: &str, attempt: u32) -> pb::TaskUpdate {
        let event = match self.outcome.as_str() {
            "succeeded" => pb::TaskEvent::Succeeded,
            "cancelled" => pb::TaskEvent::Cancelled,
            "lost" => pb::TaskEvent::Lost,
            _ => pb::TaskEvent::Failed,
        };
        pb::TaskUpdate {
            task_id: task_id.into(),
            attempt,
            event: event as i32,
            exit_code: self.exit_code,
            message: self.reason.clone(),
        }
    }
}

/// One task folder.
#[derive(Debug, Clone)]
pub struct Folder {
    pub root: PathBuf,
}

impl Folder {
    pub fn new(work_dir: &Path, task_id: &str, attempt: u32) -> Folder {
        Folder {
            root: work_dir.join(format!("{task_id}-{attempt}")),
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.root.join(file)
    }

    /// `<task>-<attempt>`.
    pub fn name(&self) -> String {
        self.root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn work(&self) -> PathBuf {
        self.path("work")
    }

    pub fn read_spec(&self) -> io::Result<Spec> {
        read_json(&self.path("task.json"))
    }

    pub fn write_spec(&self, spec: &Spec) -> io::Result<()> {
        write_json(&self.path("task.json"), spec)
    }

    pub fn read_state(&self) -> Option<State> {
        read_json(&self.path("supervisor.json")).ok()
    }

    pub fn write_state(&self, state: &State) -> io::Result<()> {
        write_json(&self.path("supervisor.json"), state)
    }

    pub fn read_exit(&self) -> Option<Exit> {
        read_json(&self.path("exit.json")).ok()
    }

    pub fn write_exit(&self, exit: &Exit) -> io::Result<()> {
        write_json(&self.path("exit.json"), exit)
    }

    pub fn cancel_reason(&self) -> Option<String> {
        std::fs::read_to_string(self.path("cancel")).ok()
    }

    pub fn write_cancel(&self, reason: &str) -> io::Result<()> {
        write_atomic(&self.path("cancel"), reason.as_bytes())
    }

    pub fn is_reported(&self) -> bool {
        self.path("reported").exists()
    }

    pub fn mark_reported(&self) -> io::Result<()> {
        write_atomic(&self.path("reported"), b"")
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<T> {
    let text = std::fs::read(path)?;
    serde_json::from_slice(&text).map_err(io::Error::other)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_atomic(path, &serde_json::to_vec(value).map_err(io::Error::other)?)
}

/// Writes the whole file or nothing: a reader never sees half of it.
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(tmp, path)
}

/// Appends output as the supervisor reads it. The data goes first and its record after, so
/// whatever a record describes is already in output.log.
pub struct OutputWriter {
    log: File,
    streams: File,
}

impl OutputWriter {
    pub fn create(folder: &Folder) -> io::Result<OutputWriter> {
        let open = |name| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(folder.path(name))
        };
        Ok(OutputWriter {
            log: open("output.log")?,
            streams: open("output.streams")?,
        })
    }

    pub fn append(&mut self, stream: pb::OutputStream, data: &[u8]) -> io::Result<()> {
        for piece in data.chunks(u32::MAX as usize) {
            self.log.write_all(piece)?;
            let mut record = [0u8; RECORD as usize];
            record[0] = stream as u8;
            record[1..].copy_from_slice(&(piece.len() as u32).to_le_bytes());
            self.streams.write_all(&record)?;
        }
        Ok(())
    }
}

/// A piece of output read back: where it starts in the whole output, and its stream.
#[derive(Debug, PartialEq)]
pub struct Chunk {
    pub offset: u64,
    pub stream: pb::OutputStream,
    pub data: Vec<u8>,
}

/// Reads a task's output from any byte offset, in chunks that never span two streams.
pub struct Tail {
    folder: Folder,
    /// output.streams and output.log, once they exist.
    files: Option<(File, File)>,
    /// Index of the output.streams record that starts at `record_start`.
    record: u64,
    record_start: u64,
    /// The next byte to hand out.
    pub position: u64,
}

impl Tail {
    pub fn new(folder: Folder) -> Tail {
        Tail {
            folder,
            files: None,
            record: 0,
            record_start: 0,
            position: 0,
        }
    }

    /// Continues from `offset` of the whole output (backwards too).
    pub fn seek(&mut self, offset: u64) {
        if offset < self.record_start {
            self.record = 0;
            self.record_start = 0;
        }
        self.position = offset;
    }

    /// The next chunk of at most `max` bytes, or None when nothing more is written yet.
    pub fn next(&mut self, max: usize) -> io::Result<Option<Chunk>> {
        if self.files.is_none() {
            self.files = match (
                File::open(self.folder.path("output.streams")),
                File::open(self.folder.path("output.log")),
            ) {
                (Ok(s), Ok(l)) => Some((s, l)),
                (Err(e), _) | (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => {
                    return Ok(None);
                }
                (Err(e), _) | (_, Err(e)) => return Err(e),
            };
        }
        let Some((streams, log)) = &self.files else {
            return Ok(None);
        };
        let mut stream = None;
        let mut data = Vec::new();
        let offset = self.position;
        while data.len() < max {
            let mut record = [0u8; RECORD as usize];
            match streams.read_exact_at(&mut record, self.record * RECORD) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            let kind =
                pb::OutputStream::try_from(record[0] as i32).unwrap_or(pb::OutputStream::Stdout);
            let len = u32::from_le_bytes(record[1..].try_into().expect("4 bytes")) as u64;
            let end = self.record_start + len;
            if end <= self.position {
                // Wholly before where we are: skip it.
                self.record += 1;
                self.record_start = end;
                continue;
            }
            if stream.is_some_and(|s| s != kind) {
                break;
            }
            stream = Some(kind);
            let take = (end - self.position).min((max - data.len()) as u64) as usize;
            let at = data.len();
            data.resize(at + take, 0);
            log.read_exact_at(&mut data[at..], self.position)?;
            self.position += take as u64;
            if self.position == end {
                self.record += 1;
                self.record_start = end;
            }
        }
        Ok(stream.map(|stream| Chunk {
            offset,
            stream,
            data,
        }))
    }
}

/// The live supervisor of a task folder: from its state file (checked against pid reuse by
/// its start time), or our own child that has not written it yet.
pub fn supervisor_pid(folder: &Folder, child_pid: Option<i32>) -> Option<i32> {
    match folder.read_state() {
        Some(state) => crate::procs::is_same_live(state.pid, state.start_time).then_some(state.pid),
        None => child_pid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, stream: pb::OutputStream, data: &str) -> Chunk {
        Chunk {
            offset,
            stream,
            data: data.as_bytes().to_vec(),
        }
    }

    #[test]
    fn output_reads_back_in_write_order_split_at_streams_and_size() {
        use pb::OutputStream::{Stderr, Stdout};
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::new(dir.path(), "t", 1);
        std::fs::create_dir_all(&folder.root).unwrap();
        let mut tail = Tail::new(folder.clone());
        assert_eq!(tail.next(4).unwrap(), None, "nothing written yet");
        let mut out = OutputWriter::create(&folder).unwrap();
        out.append(Stdout, b"ab").unwrap();
        out.append(Stdout, b"cdef").unwrap();
        out.append(Stderr, b"XY").unwrap();
        out.append(Stdout, b"g").unwrap();
        assert_eq!(tail.next(4).unwrap(), Some(chunk(0, Stdout, "abcd")));
        assert_eq!(tail.next(4).unwrap(), Some(chunk(4, Stdout, "ef")));
        assert_eq!(tail.next(4).unwrap(), Some(chunk(6, Stderr, "XY")));
        assert_eq!(tail.next(4).unwrap(), Some(chunk(8, Stdout, "g")));
        assert_eq!(tail.next(4).unwrap(), None);
        // Resuming where the master says: backwards and into the middle of a record.
        tail.seek(3);
        assert_eq!(tail.next(100).unwrap(), Some(chunk(3, Stdout, "def")));
        assert_eq!(tail.next(100).unwrap(), Some(chunk(6, Stderr, "XY")));
        tail.seek(7);
        assert_eq!(tail.next(100).unwrap(), Some(chunk(7, Stderr, "Y")));
        out.append(Stdout, b"h").unwrap();
        assert_eq!(tail.next(100).unwrap(), Some(chunk(8, Stdout, "gh")));
    }

    #[test]
    fn exit_files_turn_into_the_final_update() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::new(dir.path(), "t", 2);
        std::fs::create_dir_all(&folder.root).unwrap();
        assert_eq!(folder.read_exit(), None);
        let exit = Exit::failed("killed: out of memory (limit 0.05 GB)");
        folder.write_exit(&exit).unwrap();
        assert_eq!(folder.read_exit(), Some(exit));
        let update = folder.read_exit().unwrap().update("t", 2);
        assert_eq!(update.event(), pb::TaskEvent::Failed);
        assert_eq!(update.attempt, 2);
    }
}
