//! A task as JSON, the way the HTTP API takes it (`POST /api/v1/tasks`, each item of a
//! batch) and `task submit --file` reads it, one per line: the field names of
//! `herdctl --json`. The one definition, so the API and the file format cannot drift.

use std::collections::BTreeMap;

use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::Error;
use crate::pb;

/// What to run and what it needs (the fields of `task submit`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    #[serde(default)]
    #[schema(max_length = 128, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub name: String,
    /// Container image; empty for a process task.
    #[serde(default)]
    #[schema(
        max_length = 512,
        pattern = "^([^\\s\\x00-\\x1f\\x7f-\\x9f-][^\\s\\x00-\\x1f\\x7f-\\x9f]*)?$"
    )]
    pub image: String,
    /// Shell command (`sh -c`).
    #[serde(default)]
    #[schema(max_length = 65536, pattern = "\\S")]
    pub command: String,
    /// CPUs (default 1).
    #[schema(exclusive_minimum = 0.0, maximum = 16384.0)]
    pub cpu: Option<f64>,
    /// Memory in GB (default 0).
    #[schema(minimum = 0.0, maximum = 65536.0)]
    pub memory_gb: Option<f64>,
    /// Higher first (default 0, from -1000 to 1000).
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: Option<i32>,
    /// `KEY=VALUE`, `KEY!=VALUE` or `KEY` on the worker's labels; all must hold.
    #[schema(max_items = 32)]
    pub constraints: Option<Vec<String>>,
    /// Whole GPUs (default 0).
    /// (JSON numbers: `2.0` is taken as `2`.)
    #[schema(value_type = Option<u32>, maximum = 1024)]
    pub gpu: Option<f64>,
    /// Disk in the worker's work dir, GB (default 0).
    #[schema(minimum = 0.0, maximum = 1e9)]
    pub disk_gb: Option<f64>,
    /// Kill the whole task this long after it started (ms), then fail it "timed out after
    /// D" (default 0: no limit; at most 30 days).
    #[schema(minimum = 0, maximum = 2592000000_u64)]
    pub timeout_ms: Option<u64>,
    /// Environment variables for the task (names: letters, digits and `_`, not starting
    /// with a digit; at most 128, 64 KiB in all).
    pub env: Option<BTreeMap<String, String>>,
    /// The task's working directory on the worker, an absolute path (default: a fresh
    /// folder of its own).
    #[schema(max_length = 4096, pattern = "^(/.*)?$")]
    pub workdir: Option<String>,
    /// Run the task again when it exits non-zero, up to this many times (default 0, at
    /// most 100).
    #[schema(minimum = 0, maximum = 100)]
    pub retries: Option<u32>,
    /// When the worker is cut off from the master past its fencing deadline: `stop` the
    /// task first, so it never runs on both sides of a partition (default), or `keep` it
    /// running (for a task that must not be interrupted and is safe to run twice).
    pub on_disconnect: Option<crate::domain::run::OnDisconnect>,
}

impl SubmitBody {
    /// The wire spec, with the defaults of `task submit` (checked by `TaskSpec::try_from`).
    pub fn into_spec(self) -> Result<pb::TaskSpec, Error> {
        Ok(pb::TaskSpec {
            resources: Some(pb::Resources {
                cpu: self.cpu.unwrap_or(1.0),
                memory_gb: self.memory_gb.unwrap_or(0.0),
                gpu: whole_gpus(self.gpu)?,
                disk_gb: self.disk_gb.unwrap_or(0.0),
            }),
            name: self.name,
            image: self.image,
            command: self.command,
            priority: self.priority.unwrap_or(0),
            constraints: self.constraints.unwrap_or_default(),
            timeout_ms: self.timeout_ms.unwrap_or(0),
            env: self.env.unwrap_or_default().into_iter().collect(),
            workdir: self.workdir.unwrap_or_default(),
            retries: self.retries.unwrap_or(0),
            keep_on_disconnect: self.on_disconnect.unwrap_or_default().keeps(),
        })
    }
}

/// A GPU count given as any JSON number with no fraction.
fn whole_gpus(gpu: Option<f64>) -> Result<u32, Error> {
    match gpu {
        None => Ok(0),
        Some(n) if n.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&n) => Ok(n as u32),
        Some(n) => Err(Error::invalid(format!(
            "gpu must be a whole number of GPUs, got {n}"
        ))),
    }
}
