//! Tests of the validation at the edge.
use super::*;

fn description() -> pb::WorkerDescription {
    pb::WorkerDescription {
        name: "node-1".into(),
        host: "node-1.lan".into(),
        address: "10.0.0.1".into(),
        version: "0.1.0".into(),
        capacity: Some(pb::Resources {
            cpu: 8.0,
            memory_gb: 16.0,
            gpu: 1,
        }),
        labels: [("zone".to_string(), "a".to_string())].into(),
        container_runtime: "podman".into(),
        ..Default::default()
    }
}

#[test]
fn a_good_description_is_accepted() {
    let spec = WorkerSpec::try_from(description()).unwrap();
    assert_eq!(spec.name, "node-1");
    assert_eq!(spec.runtime, Some(Runtime::Podman));
    assert_eq!(spec.capacity.gpu, 1);
}

#[test]
fn bad_descriptions_are_refused_with_a_reason() {
    type Mutation = fn(&mut pb::WorkerDescription);
    let cases: Vec<(Mutation, &str)> = vec![
        (|d| d.name.clear(), "empty"),
        (|d| d.name = "a b".into(), "contains"),
        (|d| d.name = "-x".into(), "start with"),
        (|d| d.name = "x".repeat(500), "at most"),
        (|d| d.capacity = None, "no capacity"),
        (|d| d.capacity.as_mut().unwrap().cpu = -1.0, "cpu"),
        (|d| d.capacity.as_mut().unwrap().cpu = f64::NAN, "cpu"),
        (
            |d| d.capacity.as_mut().unwrap().memory_gb = 1e12,
            "memory_gb",
        ),
        (|d| d.capacity.as_mut().unwrap().gpu = 1_000_000, "gpu"),
        (|d| d.container_runtime = "lxc".into(), "runtime"),
        (
            |d| {
                d.labels.insert(String::new(), "v".into());
            },
            "empty key",
        ),
    ];
    for (mutate, expected) in cases {
        let mut d = description();
        mutate(&mut d);
        let err = WorkerSpec::try_from(d).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains(expected)),
            "{err:?} should mention {expected:?}"
        );
    }
}
}

/// Longest shell command accepted for a task.
pub const MAX_COMMAND_LEN: usize = 64 * 1024;
/// Longest container image reference accepted.
pub const MAX_IMAGE_LEN: usize = 512;
/// Largest gRPC message accepted by any herd program.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Largest piece of task output in one message.
pub const MAX_OUTPUT_CHUNK: usize = 64 * 1024;

/// Output kept per task (the most recent bytes); older output is dropped.
pub const MAX_LOG_BYTES: usize = 1024 * 1024;

/// A validated task: what to run and what it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
pub name: String,
/// Container image; `None` for a plain process.
pub image: Option<String>,
/// Shell command; for an image task `None` runs the image's default command.
pub command: Option<String>,
pub resources: Resources,
}

impl From<&TaskSpec> for pb::TaskSpec {
fn from(t: &TaskSpec) -> Self {
    pb::TaskSpec {
        name: t.name.clone(),
        image: t.image.clone().unwrap_or_default(),
        command: t.command.clone().unwrap_or_default(),
        resources: Some(t.resources.into()),
    }
}
}

impl TryFrom<pb::TaskSpec> for TaskSpec {
type Error = Error;

fn try_from(t: pb::TaskSpec) -> Result<Self, Error> {
    let image = Some(t.image).filter(|s| !s.is_empty());
    let command = Some(t.command).filter(|s| !s.trim().is_empty());
    if image.is_none() && command.is_none() {
        return Err(Error::invalid(
            "a task needs --command, --docker-image, or both",
        ));
    }
    check_text("task name", &t.name, MAX_NAME_LEN)?;
    if let Some(image) = &image {
        check_text("image", image, MAX_IMAGE_LEN)?;
        if image.chars().any(char::is_whitespace) || image.starts_with('-') {
            return Err(Error::invalid(format!(
                "'{}' is not an image reference (e.g. localhost/busybox:test)",
                crate::text::clip(image)
            )));
        }
    }
    if let Some(command) = &command
        && command.len() > MAX_COMMAND_LEN
    {
        return Err(Error::invalid(format!(
            "the command is {} bytes long; at most {MAX_COMMAND_LEN} are allowed",
            command.len()
        )));
    }
    let r = t
        .resources
        .ok_or_else(|| Error::invalid("the task has no resource request"))?;
    if !r.cpu.is_finite() || r.cpu <= 0.0 || r.cpu > MAX_CPU {
        return Err(Error::invalid(format!(
            "--cpu must be above 0 and at most {MAX_CPU}, got {}",
            r.cpu
        )));
    }
    if !r.memory_gb.is_finite() || r.memory_gb < 0.0 || r.memory_gb > MAX_MEMORY_GB {
        return Err(Error::invalid(format!(
            "--memory must be at least 0 and at most {MAX_MEMORY_GB} GB, got {}",
            r.memory_gb
        )));
    }
    if r.gpu > MAX_GPU {
        return Err(Error::invalid(format!(
            "--gpu must be at most {MAX_GPU}, got {}",
            r.gpu
        )));
    }
    Ok(TaskSpec {
        name: t.name,
        image,
        command,
        resources: Resources {
            cpu: r.cpu,
            memory_gb: r.memory_gb,
            gpu: r.gpu,
        },
    })
}
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
Queued,
Assigned,
Running,
Succeeded,
Failed,
Cancelled,
}

impl TaskState {
pub const ALL: [TaskState; 6] = [
    TaskState::Queued,
    TaskState::Assigned,
    TaskState::Running,
    TaskState::Succeeded,
    TaskState::Failed,
    TaskState::Cancelled,
];

/// The word used in tables, the grammar and SQLite.
pub fn as_str(self) -> &'static str {
    match self {
        TaskState::Queued => "queued",
        TaskState::Assigned => "assigned",
        TaskState::Running => "running",
        TaskState::Succeeded => "succeeded",
        TaskState::Failed => "failed",
        TaskState::Cancelled => "cancelled",
    }
}

pub fn parse(text: &str) -> Option<TaskState> {
    TaskState::ALL.into_iter().find(|s| s.as_str() == text)
}

/// Finished for good.
pub fn is_final(self) -> bool {
    matches!(
        self,
        TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
    )
}

/// Holds resources on a worker.
pub fn is_placed(self) -> bool {
    matches!(self, TaskState::Assigned | TaskState::Running)
}
}

impl fmt::Display for TaskState {
fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str(self.as_str())
}
}

impl From<TaskState> for pb::TaskState {
fn from(s: TaskState) -> Self {
    match s {
        TaskState::Queued => pb::TaskState::Queued,
        TaskState::Assigned => pb::TaskState::Assigned,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Cancelled => pb::TaskState::Cancelled,
    }
}
}

impl TryFrom<pb::TaskState> for TaskState {
type Error = Error;

fn try_from(s: pb::TaskState) -> Result<Self, Error> {
    Ok(match s {
        pb::TaskState::Queued => TaskState::Queued,
        pb::TaskState::Assigned => TaskState::Assigned,
        pb::TaskState::Running => TaskState::Running,
        pb::TaskState::Succeeded => TaskState::Succeeded,
        pb::TaskState::Failed => TaskState::Failed,
        pb::TaskState::Cancelled => TaskState::Cancelled,
        pb::TaskState::Unspecified => {
            return Err(Error::invalid("task state is unspecified"));
        }
    })
}
}

#[cfg(test)]
mod task_tests {
use super::*;

fn spec() -> pb::TaskSpec {
    pb::TaskSpec {
        name: "t".into(),
        image: String::new(),
        command: "echo hi".into(),
        resources: Some(pb::Resources {
            cpu: 1.0,
            memory_gb: 0.0,
            gpu: 0,
        }),
    }
}

#[test]
fn task_specs_are_checked_once() {
    assert!(TaskSpec::try_from(spec()).is_ok());
    type Mutation = fn(&mut pb::TaskSpec);
    let cases: Vec<(Mutation, &str)> = vec![
        (|t| t.command.clear(), "--command"),
        (|t| t.resources.as_mut().unwrap().cpu = 0.0, "--cpu"),
        (
            |t| t.resources.as_mut().unwrap().cpu = f64::INFINITY,
            "--cpu",
        ),
        (
            |t| t.resources.as_mut().unwrap().memory_gb = -1.0,
            "--memory",
        ),
        (|t| t.image = "a b".into(), "image reference"),
        (|t| t.command = "x".repeat(MAX_COMMAND_LEN + 1), "at most"),
    ];
    for (mutate, expected) in cases {
        let mut t = spec();
        mutate(&mut t);
        let err = TaskSpec::try_from(t).unwrap_err().to_string();
        assert!(err.contains(expected), "{err} should mention {expected}");
    }
}

#[test]
fn states_round_trip_through_their_words() {
    for s in TaskState::ALL {
        assert_eq!(TaskState::parse(s.as_str()), Some(s));
    }
}

#[test]
fn names_shaped_like_ids_are_refused_and_bad_usage_too() {
    assert!(looks_like_worker_id("w-0123abcd"));
    assert!(!looks_like_worker_id("w-0123abcde"));
    assert!(!looks_like_worker_id("web-1"));
    let err = validate_worker_name("w-5c1e0a9f").unwrap_err().to_string();
    assert!(err.contains("shape of a worker id"), "{err}");
    validate_worker_name("w-5c1e0a9f-gpu").unwrap();

    let mut hb = pb::Heartbeat {
        usage: Some(pb::Usage {
            cpu_percent: f64::NAN,
            memory_used_gb: 1.0,
        }),
        ..Default::default()
    };
    let err = check_heartbeat(&hb).unwrap_err().to_string();
    assert!(err.contains("cpu_percent"), "{err}");
    hb.usage = Some(pb::Usage {
        cpu_percent: 5.0,
        memory_used_gb: -1.0,
    });
    assert!(
        check_heartbeat(&hb)
            .unwrap_err()
            .to_string()
            .contains("memory_used_gb")
    );
    hb.usage = None;
    hb.running_task_ids = vec!["t".repeat(65)];
    assert!(
        check_heartbeat(&hb)
            .unwrap_err()
            .to_string()
            .contains("at most 64")
    );
}

#[test]
fn reasons_are_cut_with_a_marker() {
    assert_eq!(bounded_reason("short"), "short");
    let long = "é".repeat(5000);
    let cut = bounded_reason(&long);
    assert!(cut.len() < MAX_REASON_LEN + 64, "{}", cut.len());
    assert!(cut.ends_with("[cut: 10000 bytes in all]"), "{cut}");
}
