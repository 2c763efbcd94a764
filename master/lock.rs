//! One master per data dir: an exclusive `flock` on `<data-dir>/lock`, held for the
//! master's whole life and released by the kernel when the process dies (so kill -9 leaves
//! no stale lock). The file names the holder's pid for the error a second master prints.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, bail};

/// Holds the lock while alive.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes the lock on `dir`, or says which process holds it.
pub fn lock(dir: &Path) -> anyhow::Result<DataDirLock> {
    let path = dir.join("lock");
    // Opened without truncating: the holder's pid must survive a refused attempt.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock {
            bail!("cannot lock {}: {err}", path.display());
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        bail!(
            "the data dir {} is in use by another herd-master (pid {}); one master per data \
             dir: stop it, or give this one another --data-dir",
            dir.display(),
            if holder.is_empty() { "unknown" } else { holder }
        );
    }
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "{}", std::process::id())?;
    file.flush()?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        drop(held);
        lock(dir.path()).unwrap();
    }
}
