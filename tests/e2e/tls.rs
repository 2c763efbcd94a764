//! TLS as a new user sets it up: `herd-master tls init` and `tls worker` make a cluster
//! that works with client certificates, and each usual mistake (a CA used as the server's
//! certificate, the wrong CA, a name not in the certificate, the wrong scheme) is named
//! with its fix; a worker stops with the message instead of retrying for ever.

use herd_testkit as common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

/// `herd-master ARGS` to its end: success, stdout, stderr.
fn master_tool(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(MASTER.path()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_init_and_tls_worker_make_a_cluster_that_works_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let tls_dir = tls.display().to_string();
    let (ok, out, err) = master_tool(&["tls", "init", "--dir", &tls_dir, "--name", "localhost"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("tls-cert = \"{}\"", path(&tls, "master.crt"))),
        "{out}"
    );
    let (ok, out, err) = master_tool(&["tls", "worker", "edge-1", "--dir", &tls_dir]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("client-cert = \"{}\"", path(&tls, "edge-1.crt"))),
        "{out}"
    );
    // Run again, nothing is overwritten.
    let (ok, _out, err) = master_tool(&["tls", "init", "--dir", &tls_dir]);
    assert!(!ok && err.contains("exists; nothing was written"), "{err}");

    let port = free_port();
    let _master = Master::start_on(
        dir.path(),
        &dir.path().join("data"),
        port,
        &[
            FAST,
            &[
                "--tls-cert",
                &path(&tls, "master.crt"),
                "--tls-key",
                &path(&tls, "master.key"),
                "--tls-client-ca",
                &path(&tls, "ca.crt"),
            ],
        ]
        .concat(),
    );
    let url = format!("https://localhost:{port}");
    let ca = path(&tls, "ca.crt");
    let _worker = Worker::start(
        dir.path(),
        &url,
        "edge-1",
        &[
            "--ca",
            &ca,
            "--client-cert",
            &path(&tls, "edge-1.crt"),
            "--client-key",
            &path(&tls, "edge-1.key"),
        ],
    );
    let deadline = Deadline::new(T, "the worker with its certificate is Active");
    loop {
        let (ok, out, _) = herdctl(&url, &["--ca", &ca, "workers"]);
        if ok && out.contains("edge-1") && out.contains("Active") {
            break;
        }
        deadline.wait().await;
    }
    // Plain http:// to this master is told to use https://.
    let (ok, _out, err) = herdctl(&format!("http://localhost:{port}"), &["status"]);
    assert!(!ok);
    assert!(err.contains("use https://localhost:PORT"), "{err}");
    // Another cluster's CA: named.
    let other = dir.path().join("other");
    let other_dir = other.display().to_string();
    assert!(master_tool(&["tls", "init", "--dir", &other_dir, "--name", "localhost"]).0);
    let (ok, _out, err) = herdctl(&url, &["--ca", &path(&other, "ca.crt"), "status"]);
    assert!(!ok);
    assert!(
        err.contains("is not signed by the CA given with --ca"),
        "{err}"
    );
    let (ok, err) = run_refused_worker(
        dir.path(),
        &url,
        "edge-2",
        &["--ca", &path(&other, "ca.crt")],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("is not signed by the CA given with --ca"),
        "{err}"
    );
    // An address the certificate does not name.
    let by_ip = format!("https://127.0.0.1:{port}");
    let (ok, _out, err) = herdctl(&by_ip, &["--ca", &ca, "status"]);
    assert!(!ok);
    assert!(err.contains("does not name 127.0.0.1"), "{err}");
    assert!(
        err.contains("herd-master tls init --name 127.0.0.1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_certificate_as_the_servers_and_https_to_a_plain_master_are_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    // What `openssl req -x509 -subj /CN=localhost` makes: a self-signed CA certificate.
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (crt, pem) = (path(dir.path(), "self.crt"), path(dir.path(), "self.key"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&pem, key.serialize_pem()).unwrap();
    let port = free_port();
    let _master = Master::start_on(
        dir.path(),
        &dir.path().join("data"),
        port,
        &[FAST, &["--tls-cert", &crt, "--tls-key", &pem]].concat(),
    );
    let url = format!("https://localhost:{port}");
    // The worker stops, saying what to do, instead of retrying for ever.
    let (ok, err) = run_refused_worker(dir.path(), &url, "w", &["--ca", &crt]).await;
    assert!(!ok);
    assert!(err.contains("presents a CA certificate"), "{err}");
    assert!(
        err.contains("herd-master tls init --name localhost"),
        "{err}"
    );
    let deadline = Deadline::new(T, "herdctl names the CA certificate");
    loop {
        let (ok, _out, err) = herdctl(&url, &["--ca", &crt, "status"]);
        assert!(!ok);
        if err.contains("presents a CA certificate") {
            break;
        }
        deadline.wait().await;
    }

    let plain = Master::start_on(dir.path(), &dir.path().join("plain"), free_port(), FAST);
    plain.admin().await;
    let url = format!("https://localhost:{}", plain.addr.port());
    let (ok, _out, err) = herdctl(&url, &["--ca", &crt, "status"]);
    assert!(!ok);
    assert!(
        err.contains("does not speak TLS: use http://localhost:PORT"),
        "{err}"
    );
}
