//! What a worker advertises besides CPU and memory: its GPU devices (from `nvidia-smi`,
//! else the NVIDIA device nodes, else none; `--gpu N` / `--gpu-ids` override) and the free
//! disk of its work dir (statvfs; `--disk` overrides).

use std::path::Path;
use std::process::{Command, Stdio};

use herd::pb;

/// The query whose output [`parse_nvidia_smi`] reads.
const QUERY: [&str; 2] = [
    "--query-gpu=index,name,memory.total",
    "--format=csv,noheader,nounits",
];

/// The GPUs to advertise: `--gpu-ids`, else `--gpu N` (indices 0..N-1), else detected.
/// Given ones have no model: the operator said which, not what.
pub fn gpus(ids: Option<&[u32]>, count: Option<u32>) -> Vec<pb::GpuDevice> {
    let unknown = |index| pb::GpuDevice {
        index,
        model: String::new(),
        memory_gb: 0.0,
    };
    match (ids, count) {
        (Some(ids), _) => {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids.dedup();
            ids.into_iter().map(unknown).collect()
        }
        (None, Some(n)) => (0..n).map(unknown).collect(),
        (None, None) => detect(),
    }
}

/// `nvidia-smi` when it is installed and answers; else one device per `/dev/nvidiaN`
/// node (model unknown); else none. Never an error: most machines have no GPU.
fn detect() -> Vec<pb::GpuDevice> {
    let answer = Command::new("nvidia-smi")
        .args(QUERY)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    if let Ok(out) = answer
        && out.status.success()
    {
        let found = parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout));
        if !found.is_empty() {
            return found;
        }
    }
    device_nodes(Path::new("/dev"))
}

/// Reads `nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits`:
/// one line per GPU, `0, NVIDIA A100-SXM4-80GB, 81920` (memory in MiB). Lines that do not
/// parse are skipped.
pub fn parse_nvidia_smi(text: &str) -> Vec<pb::GpuDevice> {
    let mut out: Vec<pb::GpuDevice> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(',').map(str::trim);
            let index = fields.next()?.parse().ok()?;
            let model: String = fields.next()?.chars().take(128).collect();
            let mib: f64 = fields.next()?.parse().unwrap_or(0.0);
            Some(pb::GpuDevice {
                index,
                model,
                memory_gb: (mib * 1_048_576.0 / 1e9 * 10.0).round() / 10.0,
            })
        })
        .collect();
    out.sort_by_key(|g| g.index);
    out.dedup_by_key(|g| g.index);
    out
}

/// `/dev/nvidia0`, `/dev/nvidia1`, ...: a driver without nvidia-smi.
fn device_nodes(dev: &Path) -> Vec<pb::GpuDevice> {
    let mut indices: Vec<u32> = std::fs::read_dir(dev)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("nvidia")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    indices.sort_unstable();
    gpus(Some(&indices), None)
}

/// Free space for unprivileged users of the file system holding `dir`, in GB (0 when it
/// cannot be read).
pub fn free_disk_gb(dir: &Path) -> f64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return 0.0;
    };
    // SAFETY: statvfs writes into the struct we hand it; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return 0.0;
    }
    let bytes = stat.f_bavail as f64 * stat.f_frsize as f64;
    (bytes / 1e9 * 10.0).floor() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from a DGX node (`nvidia-smi --query-gpu=index,name,memory.total
    /// --format=csv,noheader,nounits`), plus a line of noise.
    const SAMPLE: &str = "\
0, NVIDIA A100-SXM4-80GB, 81920
1, NVIDIA A100-SXM4-80GB, 81920
3, NVIDIA A100-SXM4-80GB, 81920
No devices were found on the bus
";

    #[test]
    fn nvidia_smi_output_is_read() {
        let gpus = parse_nvidia_smi(SAMPLE);
        assert_eq!(gpus.iter().map(|g| g.index).collect::<Vec<_>>(), [0, 1, 3]);
        assert_eq!(gpus[0].model, "NVIDIA A100-SXM4-80GB");
        assert_eq!(gpus[0].memory_gb, 85.9);
        assert!(parse_nvidia_smi("").is_empty());
    }

    #[test]
    fn given_gpus_win_and_have_no_model() {
        let ids = gpus(Some(&[2, 0, 2]), None);
        assert_eq!(ids.iter().map(|g| g.index).collect::<Vec<_>>(), [0, 2]);
        assert!(ids.iter().all(|g| g.model.is_empty()));
        assert_eq!(gpus(None, Some(3)).len(), 3);
        assert!(gpus(None, Some(0)).is_empty());
    }

    #[test]
    fn without_a_gpu_detection_is_quietly_empty() {
        // This machine has no nvidia-smi and no /dev/nvidiaN: nothing, and no error.
        let dir = tempfile::tempdir().unwrap();
        assert!(device_nodes(dir.path()).is_empty());
        std::fs::write(dir.path().join("nvidia1"), "").unwrap();
        std::fs::write(dir.path().join("nvidiactl"), "").unwrap();
        assert_eq!(device_nodes(dir.path())[0].index, 1);
        assert_eq!(device_nodes(dir.path()).len(), 1);
    }

    #[test]
    fn free_disk_is_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_disk_gb(dir.path()) > 0.0);
        assert_eq!(free_disk_gb(Path::new("/no/such/dir")), 0.0);
    }
}
