//! The master's two bootstrap credentials, how clients find them and present them.
//!
//! Every Registry and Admin call carries `authorization: Bearer <token>`. The master
//! generates both on first start, mode 0600: `<data-dir>/token`, the bootstrap admin token
//! (herdctl and the dashboard), and `<data-dir>/join-token`, which lets workers register
//! and heartbeat and nothing else. Programs on the master's machine find the one they need
//! there by themselves. Named operator tokens with roles are made by `token create`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::error::Error;

/// File name of the bootstrap admin token inside the data dir.
pub const TOKEN_FILE: &str = "token";
/// File name of the join token (workers only) inside the data dir.
pub const JOIN_TOKEN_FILE: &str = "join-token";

/// Adds the bearer token to every outgoing call (no header when there is no token).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Result<Bearer, Error> {
        token
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| Error::setup("the token has characters a header cannot carry"))
            })
            .transpose()
            .map(Bearer)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Finds the token a client should present: `--token`/`HERD_TOKEN`, else `--token-file`,
/// else the master's own file `local` ([`TOKEN_FILE`] for herdctl, [`JOIN_TOKEN_FILE`]
/// for a worker) when this machine runs the master (in `$HERD_DATA_DIR`, else the default
/// data dir). `None` when there is none.
pub fn resolve_token(
    token: Option<String>,
    file: Option<PathBuf>,
    local: &str,
) -> Result<Option<String>, Error> {
    if let Some(token) = token.filter(|t| !t.trim().is_empty()) {
        return Ok(Some(token.trim().to_string()));
    }
    if let Some(file) = file {
        return read_token(&file).map(Some);
    }
    let local = crate::paths::local_data_dir().join(local);
    if local.exists() {
        return read_token(&local).map(Some);
    }
    Ok(None)
}

/// Reads a token (or secret) file: its first line, trimmed; an empty one is an error.
pub fn read_token(path: &Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Setup(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(Error::Setup(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

/// 32 random bytes from the kernel, as 64 hex digits: tokens and worker secrets.
pub fn random_secret() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| Error::Setup(format!("cannot read random bytes: {e}")))?;
    Ok(hex(&bytes))
}

/// `bytes` as lowercase hex digits, two per byte (one string, no `format!` per byte: the
/// master makes a secret at every registration).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The master's bootstrap admin token: the one given, else the one in `<data-dir>/token`,
/// else a new random one written there with mode 0600. Returns the token and whether it
/// was made now.
pub fn master_token(given: Option<String>, data_dir: &Path) -> Result<(String, bool), Error> {
    load_or_make(given, &data_dir.join(TOKEN_FILE))
}

/// The join token, found or made like [`master_token`] in `<data-dir>/join-token`.
pub fn join_token(given: Option<String>, data_dir: &Path) -> Result<(String, bool), Error> {
    load_or_make(given, &data_dir.join(JOIN_TOKEN_FILE))
}

fn load_or_make(given: Option<String>, path: &Path) -> Result<(String, bool), Error> {
    if let Some(token) = given.filter(|t| !t.trim().is_empty()) {
        return Ok((token.trim().to_string(), false));
    }
    if path.exists() {
        return read_token(path).map(|t| (t, false));
    }
    let token = random_secret()?;
    write_private(path, &token)?;
    Ok((token, true))
}

/// Writes `text` to a new file only its owner can read (mode 0600 from the start, so it
/// is never readable by others, not even for a moment); an existing file is an error. The
/// file appears whole: it is written beside, then linked into place, so a reader (herdctl
/// or a worker on the same machine finding the token) never sees it empty.
pub fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    let failed = |e: std::io::Error| Error::Setup(format!("cannot write {}: {e}", path.display()));
    let mut beside = path.as_os_str().to_owned();
    beside.push(format!(".new-{}", std::process::id()));
    let beside = std::path::PathBuf::from(beside);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&beside)
        .and_then(|mut file| {
            writeln!(file, "{text}")?;
            file.sync_all()
        })
        // A hard link fails if the file exists: never replaces one.
        .and_then(|()| std::fs::hard_link(&beside, path));
    let _ = std::fs::remove_file(&beside);
    written.map_err(failed)
}

/// Compares in time that depends only on the lengths, not on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lowercase_digits_per_byte_in_order() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn tokens_are_generated_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (token, made) = master_token(None, dir.path()).unwrap();
        assert!(made);
        assert_eq!(token.len(), 64);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(
            master_token(None, dir.path()).unwrap(),
            (token.clone(), false)
        );
        assert_eq!(
            resolve_token(None, Some(dir.path().join(TOKEN_FILE)), TOKEN_FILE).unwrap(),
            Some(token.clone())
        );
        let (join, made) = join_token(None, dir.path()).unwrap();
        assert!(made && join != token && join.len() == 64);
        assert_eq!(join_token(None, dir.path()).unwrap(), (join, false));
    }

    #[test]
    fn comparisons_need_the_same_bytes() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cres", b"s3cret"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(Bearer::new(Some("fine")).is_ok());
    }
}
