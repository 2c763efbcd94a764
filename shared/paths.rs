//! Where herd's state lives on a machine: the data dir of a master, and the one programs
//! on the master's machine look in for its tokens.

use std::path::PathBuf;

/// Where a master keeps its state unless told otherwise: one per-user folder, so the
/// cluster does not depend on the folder the master was started from.
pub fn default_data_dir() -> PathBuf {
    let nonempty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(state) = nonempty("XDG_STATE_HOME") {
        return PathBuf::from(state).join("herd");
    }
    match nonempty("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/herd"),
        None => PathBuf::from("./herd-data"),
    }
}

/// The data dir programs on the master's machine look in: `HERD_DATA_DIR`, else the
/// default.
pub fn local_data_dir() -> PathBuf {
    std::env::var_os("HERD_DATA_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(default_data_dir)
}
