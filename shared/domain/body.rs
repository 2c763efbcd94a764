//! A task as JSON, the way the HTTP API takes it (`POST /api/v1/tasks`, each item of a
//! batch) and `task submit --file` reads it, one per line: the field names of
//! `herdctl --json`. The one definition, so the API and the file format cannot drift.

use std::collections::BTreeMap;

use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::Error;
use crate::pb;

/// What to run and what it needs (the fields of `task submit`). The limits of each field
/// are stated in the API document from the constants the checks use (`master/http/openapi.rs`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    #[serde(default)]
    pub name: String,
    /// Container image; empty for a process task.
    #[serde(default)]
    pub image: String,
    /// Shell command (`sh -c`).
    #[serde(default)]
    pub command: String,
    /// CPUs (default 1).
    pub cpu: Option<f64>,
    /// Memory in GB (default 0).
    pub memory_gb: Option<f64>,
    /// Higher first (default 0, from -1000 to 1000).
    #[schema(value_type = Option<i32>)]
    pub priority: Option<f64>,
    /// `KEY=VALUE`, `KEY!=VALUE` or `KEY` on the worker's labels; all must hold.
    pub constraints: Option<Vec<String>>,
    /// Whole GPUs (default 0).
    /// (JSON numbers: `2.0` is taken as `2`.)
    #[schema(value_type = Option<u32>)]
    pub gpu: Option<f64>,
    /// Disk in the worker's work dir, GB (default 0).
    pub disk_gb: Option<f64>,
    /// Kill the whole task this long after it started (ms), then fail it "timed out after
    /// D" (default 0: no limit; at most 30 days).
    #[schema(value_type = Option<u64>)]
    pub timeout_ms: Option<f64>,
    /// Environment variables for the task (names: letters, digits and `_`, not starting
    /// with a digit; at most 128, 64 KiB in all).
    pub env: Option<BTreeMap<String, String>>,
    /// The task's working directory on the worker, an absolute path (default: a fresh
    /// folder of its own).
    pub workdir: Option<String>,
    /// Run the task again when it exits non-zero, up to this many times (default 0, at
    /// most 100).
    #[schema(value_type = Option<u32>)]
    pub retries: Option<f64>,
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
                gpu: whole("gpu", self.gpu)?.unwrap_or(0),
                disk_gb: self.disk_gb.unwrap_or(0.0),
            }),
            name: self.name,
            image: self.image,
            command: self.command,
            priority: whole("priority", self.priority)?.unwrap_or(0),
            constraints: self.constraints.unwrap_or_default(),
            timeout_ms: whole("timeout_ms", self.timeout_ms)?.unwrap_or(0),
            env: self.env.unwrap_or_default().into_iter().collect(),
            workdir: self.workdir.unwrap_or_default(),
            retries: whole("retries", self.retries)?.unwrap_or(0),
            keep_on_disconnect: self.on_disconnect.unwrap_or_default().keeps(),
        })
    }
}

/// A count or amount given as any JSON number with no fraction (JSON Schema's `integer`:
/// `2.0` is `2`), in the range of `T`.
pub fn whole<T: TryFrom<i64>>(field: &str, n: Option<f64>) -> Result<Option<T>, Error> {
    let Some(n) = n else { return Ok(None) };
    let fits = n.fract() == 0.0 && n >= i64::MIN as f64 && n < i64::MAX as f64;
    fits.then(|| T::try_from(n as i64).ok())
        .flatten()
        .map(Some)
        .ok_or_else(|| {
            Error::invalid(format!(
                "{field} must be a whole number in its range, got {n}"
            ))
        })
}
