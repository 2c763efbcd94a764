//! Amounts of machine resources (CPU, memory, GPUs, disk) and the checks of a worker's
//! advertised capacity.

use crate::error::Error;
use crate::pb;

/// Largest CPU count a worker may advertise; more is a typo, not a machine.
pub const MAX_CPU: f64 = 16_384.0;
/// Largest memory a worker may advertise, in GB (64 TB).
pub const MAX_MEMORY_GB: f64 = 65_536.0;
/// Largest GPU count a worker may advertise.
pub const MAX_GPU: u32 = 1_024;
/// Largest disk a worker may advertise or a task ask for, in GB (1 EB).
pub const MAX_DISK_GB: f64 = 1e9;

/// An amount of CPU, memory, GPU and disk.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub cpu: f64,
    pub memory_gb: f64,
    pub gpu: u32,
    /// Disk in the worker's work dir, GB.
    pub disk_gb: f64,
}

impl From<Resources> for pb::Resources {
    fn from(r: Resources) -> Self {
        pb::Resources {
            cpu: r.cpu,
            memory_gb: r.memory_gb,
            gpu: r.gpu,
            disk_gb: r.disk_gb,
        }
    }
}

/// Checks a worker's advertised capacity.
pub(super) fn check_capacity(r: &pb::Resources) -> Result<Resources, Error> {
    if !r.cpu.is_finite() || r.cpu <= 0.0 || r.cpu > MAX_CPU {
        return Err(Error::invalid(format!(
            "capacity cpu must be a number above 0 and at most {MAX_CPU}, got {}",
            r.cpu
        )));
    }
    if !r.memory_gb.is_finite() || r.memory_gb <= 0.0 || r.memory_gb > MAX_MEMORY_GB {
        return Err(Error::invalid(format!(
            "capacity memory_gb must be a number above 0 and at most {MAX_MEMORY_GB}, got {}",
            r.memory_gb
        )));
    }
    if r.gpu > MAX_GPU {
        return Err(Error::invalid(format!(
            "capacity gpu must be at most {MAX_GPU}, got {}",
            r.gpu
        )));
    }
    if !r.disk_gb.is_finite() || r.disk_gb < 0.0 || r.disk_gb > MAX_DISK_GB {
        return Err(Error::invalid(format!(
            "capacity disk_gb must be a number from 0 to {MAX_DISK_GB}, got {}",
            r.disk_gb
        )));
    }
    Ok(Resources {
        cpu: r.cpu,
        memory_gb: r.memory_gb,
        gpu: r.gpu,
        disk_gb: r.disk_gb,
    })
}
