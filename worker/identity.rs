//! The worker's secret: issued by the master at the first registration of its name, kept
//! in the work dir (`worker-secret`, mode 0600, beside the task folders it belongs with),
//! and presented at every later registration and heartbeat stream. Another process with
//! the same name but without it is refused, so two machines cannot take turns as one
//! worker.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use herd::error::Error;

/// File name of the secret inside the work dir.
pub const SECRET_FILE: &str = "worker-secret";

/// Where this worker keeps its secret, and for which name.
#[derive(Debug, Clone)]
pub struct SecretFile {
    path: PathBuf,
    name: String,
}

impl SecretFile {
    pub fn new(work_dir: &Path, name: &str) -> SecretFile {
        SecretFile {
            path: work_dir.join(SECRET_FILE),
            name: name.to_string(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The secret kept for this name (`None`: none yet, or one kept for another name).
    pub fn load(&self) -> Result<Option<String>, Error> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::setup(format!(
                    "cannot read {}: {e}",
                    self.path.display()
                )));
            }
        };
        let mut lines = text.lines();
        match (lines.next(), lines.next()) {
            (Some(name), Some(secret)) if name == self.name && !secret.trim().is_empty() => {
                Ok(Some(secret.trim().to_string()))
            }
            (Some(name), Some(_)) => {
                tracing::warn!(file = %self.path.display(), kept_for = name, worker = %self.name,
                    "the secret in the work dir belongs to another worker name; registering as a new identity");
                Ok(None)
            }
            _ => Err(Error::setup(format!(
                "{} is not a worker secret file (the worker name, then the secret); \
                 remove it to register as a new identity",
                self.path.display()
            ))),
        }
    }

    /// Keeps `secret` (replacing the file at once, readable by its owner only).
    pub fn save(&self, secret: &str) -> Result<(), Error> {
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            writeln!(file, "{}\n{secret}", self.name)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| {
            Error::setup(format!(
                "cannot keep the worker secret in {}: {e}",
                self.path.display()
            ))
        })
    }
}

/// The secret this worker presents (once it has one), and where it keeps it.
#[derive(Debug)]
pub struct Secret {
    file: SecretFile,
    current: Option<String>,
    /// `current` came from `--worker-secret` and is not in the work dir yet.
    provisioned: bool,
}

impl Secret {
    /// The secret kept in `work_dir` for `name`, else the one a machine was provisioned
    /// with (`--worker-secret`, printed by `worker add`), else none yet.
    pub fn open(work_dir: &Path, name: &str, provisioned: Option<&str>) -> Result<Secret, Error> {
        let file = SecretFile::new(work_dir, name);
        let kept = file.load()?;
        let given = provisioned
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        Ok(Secret {
            provisioned: kept.is_none() && given.is_some(),
            current: kept.or(given),
            file,
        })
    }

    /// The master accepted the secret presented: one that came from provisioning is kept
    /// in the work dir from now on, so the flag or variable can go.
    pub fn accepted(&mut self) -> Result<(), Error> {
        if self.provisioned
            && let Some(secret) = self.current.take()
        {
            self.keep(secret)?;
            self.provisioned = false;
        }
        Ok(())
    }

    /// What to present ("" before the first registration).
    pub fn current(&self) -> &str {
        self.current.as_deref().unwrap_or_default()
    }

    /// Keeps a secret the master issued (on disk first: a worker that lost it could not
    /// be this worker again).
    pub fn keep(&mut self, issued: String) -> Result<(), Error> {
        self.file.save(&issued)?;
        tracing::info!(file = %self.file.path().display(),
                       "the master issued this worker's secret; kept (mode 0600)");
        self.current = Some(issued);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_kept_private_and_only_for_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = SecretFile::new(dir.path(), "w1");
        assert_eq!(file.load().unwrap(), None);
        file.save("s3cret").unwrap();
        assert_eq!(file.load().unwrap().as_deref(), Some("s3cret"));
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(SecretFile::new(dir.path(), "w2").load().unwrap(), None);
        std::fs::write(file.path(), "garbage").unwrap();
        assert!(file.load().is_err());
    }

    #[test]
    fn a_kept_secret_wins_over_a_provisioned_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut fresh = Secret::open(dir.path(), "w1", Some(" given ")).unwrap();
        assert_eq!(fresh.current(), "given");
        assert_eq!(SecretFile::new(dir.path(), "w1").load().unwrap(), None);
        fresh.accepted().unwrap();
        assert_eq!(
            SecretFile::new(dir.path(), "w1").load().unwrap().as_deref(),
            Some("given"),
            "kept once the master took it"
        );
        std::fs::remove_file(dir.path().join(SECRET_FILE)).unwrap();
        let mut secret = Secret::open(dir.path(), "w1", None).unwrap();
        assert_eq!(secret.current(), "");
        secret.keep("issued".into()).unwrap();
        let again = Secret::open(dir.path(), "w1", Some("given")).unwrap();
        assert_eq!(again.current(), "issued");
    }
}
