//! `herd-master tls init` and `herd-master tls worker NAME`: a cluster's certificates
//! without a PKI course (rcgen). `init` makes a CA (`ca.crt`, `ca.key`) and the master's
//! server certificate (`master.crt`, `master.key`) for the names and addresses clients
//! reach it by; `worker NAME` signs a worker's client certificate (`NAME.crt`,
//! `NAME.key`) naming it, for `--tls-client-ca`. Keys are written 0600, and nothing that
//! exists is overwritten (workers that trust a CA stop connecting when it changes).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use herd::domain::validate_worker_name;
use herd::error::Error;

/// The files `init` writes in its folder.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const MASTER_CERT: &str = "master.crt";
pub const MASTER_KEY: &str = "master.key";

/// What `init` made.
#[derive(Debug)]
pub struct Made {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub names: Vec<String>,
}

/// Makes a CA and a server certificate for `names` (DNS names or IP addresses) in `dir`.
pub fn init(dir: &Path, names: &[String]) -> Result<Made, Error> {
    if names.is_empty() {
        return Err(Error::invalid(
            "give at least one --name the master is reached by",
        ));
    }
    let paths = [CA_CERT, CA_KEY, MASTER_CERT, MASTER_KEY].map(|f| dir.join(f));
    refuse_existing(&paths)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("herd cluster CA {:08x}", fastrand::u32(..)),
    );
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(bad)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(bad)?;
    let issuer = Issuer::new(ca, &ca_key);

    let mut server = CertificateParams::new(names.to_vec())
        .map_err(|e| Error::invalid(format!("{e}: each --name is a DNS name or an IP address")))?;
    server
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let server_key = KeyPair::generate().map_err(bad)?;
    let server_cert = server.signed_by(&server_key, &issuer).map_err(bad)?;

    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Setup(format!("cannot create {}: {e}", dir.display())))?;
    let [ca_path, ca_key_path, cert_path, key_path] = paths;
    write(&ca_path, &ca_cert.pem(), 0o644)?;
    write(&ca_key_path, &ca_key.serialize_pem(), 0o600)?;
    write(&cert_path, &server_cert.pem(), 0o644)?;
    write(&key_path, &server_key.serialize_pem(), 0o600)?;
    Ok(Made {
        ca: ca_path,
        cert: cert_path,
        key: key_path,
        names: names.to_vec(),
    })
}

/// Signs a client certificate naming worker `name` with the CA `init` made in `dir`;
/// returns the certificate's and the key's paths.
pub fn worker(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), Error> {
    validate_worker_name(name)?;
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|e| {
            Error::Setup(format!(
                "cannot read {}: {e} (make the cluster's CA first: herd-master tls init)",
                path.display()
            ))
        })
    };
    let ca_key = KeyPair::from_pem(&read(CA_KEY)?).map_err(bad)?;
    let issuer = Issuer::from_ca_cert_pem(&read(CA_CERT)?, &ca_key).map_err(bad)?;
    let paths = [format!("{name}.crt"), format!("{name}.key")].map(|f| dir.join(f));
    refuse_existing(&paths)?;
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(bad)?;
    params
        .distinguished_name
        .push(DnType::CommonName, name.to_string());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().map_err(bad)?;
    let cert = params.signed_by(&key, &issuer).map_err(bad)?;
    let [cert_path, key_path] = paths;
    write(&cert_path, &cert.pem(), 0o644)?;
    write(&key_path, &key.serialize_pem(), 0o600)?;
    Ok((cert_path, key_path))
}

/// The names a master is reached by when none are given: this host's name, localhost
/// and the loopback addresses.
pub fn default_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(host) = sysinfo::System::host_name() {
        names.push(host);
    }
    for name in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

fn refuse_existing(paths: &[PathBuf]) -> Result<(), Error> {
    match paths.iter().find(|p| p.exists()) {
        Some(path) => Err(Error::invalid(format!(
            "{} exists; nothing was written. Remove it to make a new one (clients that \
             trust the old CA stop connecting), or pick another --dir",
            path.display()
        ))),
        None => Ok(()),
    }
}

fn write(path: &Path, pem: &str, mode: u32) -> Result<(), Error> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::Setup(format!("cannot write {}: {e}", path.display())))?;
    file.write_all(pem.as_bytes())
        .map_err(|e| Error::Setup(format!("cannot write {}: {e}", path.display())))
}

fn bad(err: rcgen::Error) -> Error {
    Error::Setup(format!("cannot make the certificate: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_makes_a_ca_and_a_server_certificate_and_refuses_to_overwrite_them() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["master.example.com".to_string(), "10.0.0.7".to_string()];
        let made = init(dir.path(), &names).unwrap();
        let mode = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode(&made.key), 0o600);
        assert_eq!(mode(&dir.path().join(CA_KEY)), 0o600);
        assert_eq!(mode(&made.ca), 0o644);
        let err = init(dir.path(), &names).unwrap_err().to_string();
        assert!(err.contains("ca.crt exists; nothing was written"), "{err}");

        let (cert, key) = worker(dir.path(), "gpu-01").unwrap();
        assert!(
            std::fs::read_to_string(cert)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        assert_eq!(mode(&key), 0o600);
        let err = worker(dir.path(), "gpu-01").unwrap_err().to_string();
        assert!(err.contains("gpu-01.crt exists"), "{err}");
        let err = worker(dir.path(), "no spaces").unwrap_err().to_string();
        assert!(err.contains("no spaces"), "{err}");
    }

    #[test]
    fn a_worker_certificate_needs_the_ca_first() {
        let dir = tempfile::tempdir().unwrap();
        let err = worker(dir.path(), "w1").unwrap_err().to_string();
        assert!(err.contains("herd-master tls init"), "{err}");
    }
}
