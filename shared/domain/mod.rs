//! Domain types checked once at the edge: every `TryFrom<pb::X>` here is the single place
//! where the corresponding wire message is validated.

pub mod limits;
pub use limits::*;

use std::collections::BTreeMap;
use std::fmt;

use crate::error::Error;
use crate::pb;

pub mod body;
pub mod identity;
pub mod run;
pub use identity::Role;

mod gpu;
mod resources;
pub use gpu::{GpuDevice, check_gpus};
use resources::check_capacity;
pub use resources::{MAX_CPU, MAX_DISK_GB, MAX_GPU, MAX_MEMORY_GB, Resources};

/// Container runtimes a worker can drive for image tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Podman,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }

    /// Parses a runtime name; the empty string and `none` mean no runtime.
    pub fn parse_optional(text: &str) -> Result<Option<Runtime>, Error> {
        match text {
            "" | "none" => Ok(None),
            "docker" => Ok(Some(Runtime::Docker)),
            "podman" => Ok(Some(Runtime::Podman)),
            other => Err(Error::invalid(format!(
                "unknown container runtime '{other}': use docker, podman or none"
            ))),
        }
    }
}

/// A validated worker description, as registered.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    pub name: String,
    pub host: String,
    pub address: String,
    pub version: String,
    pub capacity: Resources,
    pub labels: BTreeMap<String, String>,
    pub runtime: Option<Runtime>,
    /// How the worker contains tasks ("cgroup v1", "cgroup v2", "process group"); empty
    /// for a worker too old to say.
    pub isolation: String,
    /// GPU devices by index (as many as `capacity.gpu`).
    pub gpus: Vec<GpuDevice>,
}

impl WorkerSpec {
    /// The GPU indices tasks may be given: the devices reported, or `0..gpu` for a worker
    /// (or a row of an older master) that gave only a count.
    pub fn gpu_indices(&self) -> Vec<u32> {
        if self.gpus.is_empty() {
            (0..self.capacity.gpu).collect()
        } else {
            self.gpus.iter().map(|g| g.index).collect()
        }
    }
}

impl From<&WorkerSpec> for pb::WorkerDescription {
    fn from(spec: &WorkerSpec) -> Self {
        pb::WorkerDescription {
            name: spec.name.clone(),
            host: spec.host.clone(),
            address: spec.address.clone(),
            version: spec.version.clone(),
            capacity: Some(spec.capacity.into()),
            labels: spec.labels.clone().into_iter().collect(),
            container_runtime: spec.runtime.map(Runtime::as_str).unwrap_or("").into(),
            isolation: spec.isolation.clone(),
            gpus: spec.gpus.iter().map(pb::GpuDevice::from).collect(),
        }
    }
}

/// Checks a worker name: 1..=128 characters of letters, digits, `.`, `_`, `-`, starting
/// with a letter or digit. Names end up in tables, logs and shell commands.
pub fn validate_worker_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::invalid(
            "worker name is empty: give --name or HERD_WORKER_NAME",
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "worker name is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        )));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if let Some(bad) = name.chars().find(|c| !ok_char(*c)) {
        return Err(Error::invalid(format!(
            "worker name '{}' contains {bad:?}: use letters, digits, '.', '_' and '-'",
            crate::text::clip(&name.escape_debug().to_string())
        )));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(Error::invalid(format!(
            "worker name '{}' must start with a letter or a digit",
            crate::text::clip(name)
        )));
    }
    if looks_like_worker_id(name) {
        return Err(Error::invalid(format!(
            "worker name '{name}' has the shape of a worker id (w- and 8 hex digits), which \
             the master gives out; choose another name"
        )));
    }
    Ok(())
}

/// Whether `text` has the shape of a worker id (`w-` and eight hex digits): names of that
/// shape are refused, so a lookup by id or by name can never reach the wrong worker.
pub fn looks_like_worker_id(text: &str) -> bool {
    text.strip_prefix("w-")
        .is_some_and(|hex| hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `text` cut to [`MAX_REASON_LEN`] bytes (at a character boundary) with a marker.
pub fn bounded_reason(text: &str) -> String {
    if text.len() <= MAX_REASON_LEN {
        return text.to_string();
    }
    let mut at = MAX_REASON_LEN;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}… [cut: {} bytes in all]", &text[..at], text.len())
}

/// Checks what a heartbeat says before anything is taken from it.
pub fn check_heartbeat(hb: &pb::Heartbeat) -> Result<(), Error> {
    check_secret("Heartbeat.worker_secret", &hb.worker_secret)?;
    if let Some(u) = &hb.usage {
        if !u.cpu_percent.is_finite() || !(0.0..=100.0).contains(&u.cpu_percent) {
            return Err(Error::invalid(format!(
                "Heartbeat.usage.cpu_percent must be a number from 0 to 100, got {}",
                u.cpu_percent
            )));
        }
        if !u.memory_used_gb.is_finite() || !(0.0..=MAX_MEMORY_GB).contains(&u.memory_used_gb) {
            return Err(Error::invalid(format!(
                "Heartbeat.usage.memory_used_gb must be a number from 0 to {MAX_MEMORY_GB}, got {}",
                u.memory_used_gb
            )));
        }
    }
    for (field, n) in [
        ("held", hb.held.len()),
        ("running_task_ids", hb.running_task_ids.len()),
        ("finished", hb.finished.len()),
    ] {
        if n > MAX_HELD {
            return Err(Error::invalid(format!(
                "Heartbeat.{field} lists {n} tasks; at most {MAX_HELD} are allowed"
            )));
        }
    }
    let ids = hb
        .held
        .iter()
        .map(|a| &a.task_id)
        .chain(&hb.running_task_ids)
        .chain(hb.finished.iter().map(|u| &u.task_id));
    for id in ids {
        check_task_id("Heartbeat", id)?;
    }
    Ok(())
}

/// A worker secret a worker presents must be short (`field` names it).
pub fn check_secret(field: &str, secret: &str) -> Result<(), Error> {
    if secret.len() > MAX_SECRET_LEN {
        return Err(Error::invalid(format!(
            "{field} is {} bytes long; at most {MAX_SECRET_LEN} are allowed",
            secret.len()
        )));
    }
    Ok(())
}

/// A task id a worker speaks of must be short (`field` names the message).
pub fn check_task_id(field: &str, id: &str) -> Result<(), Error> {
    if id.len() > MAX_TASK_ID_LEN {
        return Err(Error::invalid(format!(
            "{field} names a task id of {} bytes; at most {MAX_TASK_ID_LEN} are allowed",
            id.len()
        )));
    }
    Ok(())
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), Error> {
    let chars = value.chars().count();
    if chars > max {
        return Err(Error::invalid(format!(
            "{field} is {chars} characters long; at most {max} are allowed"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

impl TryFrom<pb::WorkerDescription> for WorkerSpec {
    type Error = Error;

    fn try_from(d: pb::WorkerDescription) -> Result<Self, Error> {
        validate_worker_name(&d.name)?;
        check_text("host", &d.host, 255)?;
        check_text("address", &d.address, 255)?;
        check_text("version", &d.version, 64)?;
        check_text("isolation", &d.isolation, 64)?;
        let capacity = check_capacity(
            d.capacity
                .as_ref()
                .ok_or_else(|| Error::invalid("worker description has no capacity"))?,
        )?;
        check_labels(&d.labels)?;
        let gpus = check_gpus(d.gpus, capacity.gpu)?;
        Ok(WorkerSpec {
            gpus,
            runtime: Runtime::parse_optional(&d.container_runtime)?,
            name: d.name,
            host: d.host,
            address: d.address,
            version: d.version,
            capacity,
            labels: d.labels.into_iter().collect(),
            isolation: d.isolation,
        })
    }
}

fn check_labels(labels: &std::collections::HashMap<String, String>) -> Result<(), Error> {
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid(format!(
            "{} labels given; at most {MAX_LABELS} are allowed",
            labels.len()
        )));
    }
    for (k, v) in labels {
        if k.is_empty() {
            return Err(Error::invalid("a label has an empty key"));
        }
        check_text("a label key", k, MAX_LABEL_LEN)?;
        if !limits::is_label_key(k) {
            return Err(Error::invalid(format!(
                "label key '{}' must be letters, digits, '.', '_', '/' and '-', starting with \
                 a letter or a digit",
                crate::text::clip(&k.escape_debug().to_string())
            )));
        }
        check_text(
            &format!("label '{}'", crate::text::clip(k)),
            v,
            MAX_LABEL_LEN,
        )?;
    }
    Ok(())
}

/// A worker pre-registered by an operator (`worker add`), before it first connects.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWorker {
    pub name: String,
    /// Merged over the labels the worker reports (these win).
    pub labels: BTreeMap<String, String>,
}

impl TryFrom<pb::AddWorkerRequest> for NewWorker {
    type Error = Error;

    fn try_from(r: pb::AddWorkerRequest) -> Result<Self, Error> {
        validate_worker_name(&r.name)?;
        check_labels(&r.labels)?;
        Ok(NewWorker {
            name: r.name,
            labels: r.labels.into_iter().collect(),
        })
    }
}

/// Where a worker stands, as every view shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerState {
    /// Pre-registered (`worker add`) and never connected; never scheduled.
    Pending,
    /// Heartbeating within the timeout; schedulable.
    Active,
    /// Stream closed or silent past the heartbeat timeout; never scheduled.
    Inactive,
    /// Silent past the worker timeout; its tasks were re-queued.
    Removed,
}

impl WorkerState {
    /// The word used in tables, logs and SQLite.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Pending => "Pending",
            WorkerState::Active => "Active",
            WorkerState::Inactive => "Inactive",
            WorkerState::Removed => "Removed",
        }
    }

    pub fn parse(text: &str) -> Option<WorkerState> {
        match text {
            "Pending" => Some(WorkerState::Pending),
            "Active" => Some(WorkerState::Active),
            "Inactive" => Some(WorkerState::Inactive),
            "Removed" => Some(WorkerState::Removed),
            _ => None,
        }
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<WorkerState> for pb::WorkerState {
    fn from(s: WorkerState) -> Self {
        match s {
            WorkerState::Pending => pb::WorkerState::Pending,
            WorkerState::Active => pb::WorkerState::Active,
            WorkerState::Inactive => pb::WorkerState::Inactive,
            WorkerState::Removed => pb::WorkerState::Removed,
        }
    }
}

/// A validated task: what to run and what it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub name: String,
    /// Container image; `None` for a plain process.
    pub image: Option<String>,
    /// Shell command; for an image task `None` runs the image's default command.
    pub command: Option<String>,
    pub resources: Resources,
    /// Higher first; FIFO within a priority.
    pub priority: i32,
    /// All must hold on the worker's labels.
    pub constraints: Vec<crate::constraint::Constraint>,
    /// Time limit, environment, working directory, retries.
    pub run: run::RunOptions,
}

impl From<&TaskSpec> for pb::TaskSpec {
    fn from(t: &TaskSpec) -> Self {
        pb::TaskSpec {
            name: t.name.clone(),
            image: t.image.clone().unwrap_or_default(),
            command: t.command.clone().unwrap_or_default(),
            resources: Some(t.resources.into()),
            priority: t.priority,
            constraints: t.constraints.iter().map(|c| c.to_string()).collect(),
            timeout_ms: t.run.timeout.map_or(0, |d| d.as_millis() as u64),
            env: t.run.env.clone().into_iter().collect(),
            workdir: t.run.workdir.clone().unwrap_or_default(),
            retries: t.run.retries,
            keep_on_disconnect: t.run.on_disconnect.keeps(),
        }
    }
}

impl TryFrom<pb::TaskSpec> for TaskSpec {
    type Error = Error;

    fn try_from(t: pb::TaskSpec) -> Result<Self, Error> {
        let run = run::check(&t)?;
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
            && command.chars().count() > MAX_COMMAND_LEN
        {
            return Err(Error::invalid(format!(
                "the command is {} characters long; at most {MAX_COMMAND_LEN} are allowed",
                command.chars().count()
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
        if !r.disk_gb.is_finite() || r.disk_gb < 0.0 || r.disk_gb > MAX_DISK_GB {
            return Err(Error::invalid(format!(
                "--disk must be at least 0 and at most {MAX_DISK_GB} GB, got {}",
                r.disk_gb
            )));
        }
        if !PRIORITIES.contains(&t.priority) {
            return Err(Error::invalid(format!(
                "--priority must be from {} to {}, got {}",
                PRIORITIES.start(),
                PRIORITIES.end(),
                t.priority
            )));
        }
        if t.constraints.len() > crate::constraint::MAX_CONSTRAINTS {
            return Err(Error::invalid(format!(
                "{} constraints given; at most {} are allowed",
                t.constraints.len(),
                crate::constraint::MAX_CONSTRAINTS
            )));
        }
        let constraints = t
            .constraints
            .iter()
            .map(|c| crate::constraint::Constraint::parse(c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TaskSpec {
            run,
            name: t.name,
            image,
            command,
            priority: t.priority,
            constraints,
            resources: Resources {
                cpu: r.cpu,
                memory_gb: r.memory_gb,
                gpu: r.gpu,
                disk_gb: r.disk_gb,
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
mod tests;
