//! GPU devices a worker reports: checked once here (bounded, unique indices), and filled
//! in for a worker that gives only a count.

use crate::error::Error;
use crate::pb;

/// Longest GPU model name kept.
pub const MAX_GPU_MODEL_LEN: usize = 128;
/// Largest GPU index accepted (indices are small integers on any real machine).
pub const MAX_GPU_INDEX: u32 = 65_535;

/// One GPU of a worker.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GpuDevice {
    /// What tasks see in CUDA_VISIBLE_DEVICES.
    pub index: u32,
    /// Empty when unknown (`--gpu N`, `--gpu-ids`).
    #[serde(default)]
    pub model: String,
    /// Device memory in GB; 0 when unknown.
    #[serde(default)]
    pub memory_gb: f64,
}

impl From<&GpuDevice> for pb::GpuDevice {
    fn from(g: &GpuDevice) -> Self {
        pb::GpuDevice {
            index: g.index,
            model: g.model.clone(),
            memory_gb: g.memory_gb,
        }
    }
}

/// Checks the devices a worker reports against its GPU count: as many, unique indices,
/// bounded text. A worker that sends only the count gets devices `0..count` of unknown
/// model. The result is sorted by index.
pub fn check_gpus(gpus: Vec<pb::GpuDevice>, count: u32) -> Result<Vec<GpuDevice>, Error> {
    if gpus.is_empty() {
        return Ok((0..count)
            .map(|index| GpuDevice {
                index,
                model: String::new(),
                memory_gb: 0.0,
            })
            .collect());
    }
    if gpus.len() != count as usize {
        return Err(Error::invalid(format!(
            "the worker lists {} GPU devices but capacity gpu is {count}; they must agree",
            gpus.len()
        )));
    }
    let mut out = Vec::with_capacity(gpus.len());
    for g in gpus {
        if g.index > MAX_GPU_INDEX {
            return Err(Error::invalid(format!(
                "GPU index {} is above {MAX_GPU_INDEX}",
                g.index
            )));
        }
        let chars = g.model.chars().count();
        if chars > MAX_GPU_MODEL_LEN || g.model.chars().any(char::is_control) {
            return Err(Error::invalid(format!(
                "GPU {} model must be at most {MAX_GPU_MODEL_LEN} characters without control \
                 characters",
                g.index
            )));
        }
        if !g.memory_gb.is_finite() || !(0.0..=super::MAX_MEMORY_GB).contains(&g.memory_gb) {
            return Err(Error::invalid(format!(
                "GPU {} memory_gb must be a number from 0 to {}",
                g.index,
                super::MAX_MEMORY_GB
            )));
        }
        out.push(GpuDevice {
            index: g.index,
            model: g.model,
            memory_gb: g.memory_gb,
        });
    }
    out.sort_by_key(|g| g.index);
    if let Some(w) = out.windows(2).find(|w| w[0].index == w[1].index) {
        return Err(Error::invalid(format!(
            "GPU index {} is listed twice",
            w[0].index
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(index: u32, model: &str) -> pb::GpuDevice {
        pb::GpuDevice {
            index,
            model: model.into(),
            memory_gb: 80.0,
        }
    }

    #[test]
    fn a_count_alone_becomes_devices_0_to_n() {
        let gpus = check_gpus(Vec::new(), 3).unwrap();
        assert_eq!(gpus.iter().map(|g| g.index).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(gpus.iter().all(|g| g.model.is_empty()));
    }

    #[test]
    fn devices_must_match_the_count_and_be_unique() {
        let err = check_gpus(vec![dev(0, "A")], 2).unwrap_err().to_string();
        assert!(err.contains("capacity gpu is 2"), "{err}");
        let err = check_gpus(vec![dev(1, "A"), dev(1, "A")], 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("listed twice"), "{err}");
        let long = "x".repeat(500);
        let err = check_gpus(vec![dev(0, &long)], 1).unwrap_err().to_string();
        assert!(
            !err.contains(&long[..120]),
            "the model is not echoed: {err}"
        );
        let ok = check_gpus(vec![dev(2, "A"), dev(0, "A")], 2).unwrap();
        assert_eq!(ok[0].index, 0);
    }
}
