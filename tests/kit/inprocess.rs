//! A master in the test's own process: the same `herd_master::start` as the program, on
//! 127.0.0.1 port 0, real gRPC and real SQLite in a temp dir, on a runtime of its own (so
//! a test that blocks its thread, running herdctl, does not stall the master). For every
//! test where no master process is killed, paused or read from its log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use herd::config::MasterConfig;
use herd_master::Running;

use crate::{Admin, JOIN_TOKEN, Registry, TOKEN};

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    config: MasterConfig,
}

/// A running in-process master; dropped, it shuts down as on SIGTERM (streams closed,
/// state flushed).
pub struct InProcess {
    pub addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    running: Option<Running>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl InProcess {
    /// Starts a master with `dir/data` as data dir and the test tokens; `args` are
    /// herd-master's flags (`--http-listen 127.0.0.1:0` for the HTTP API).
    pub fn start(dir: &Path, args: &[&str]) -> InProcess {
        InProcess::start_on(&dir.join("data"), args)
    }

    /// Starts a master on `data_dir`.
    pub fn start_on(data_dir: &Path, args: &[&str]) -> InProcess {
        let data = data_dir.to_string_lossy().into_owned();
        let mut argv = vec![
            "herd-master",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--no-repl",
            "--token",
            TOKEN,
            "--join-token",
            JOIN_TOKEN,
        ];
        // Tests run side by side: no HTTP listener unless a test asks for one.
        if !args.contains(&"--http-listen") {
            argv.extend_from_slice(&["--http-listen", "off"]);
        }
        argv.extend_from_slice(args);
        let config = Flags::try_parse_from(argv)
            .unwrap_or_else(|err| panic!("bad herd-master flags {args:?}: {err}"))
            .config;
        config.validate().expect("valid herd-master flags");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("in-process-master")
            .enable_all()
            .build()
            .expect("a runtime for the master");
        // On a thread of its own: the caller may itself be inside a runtime.
        let running = std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(herd_master::start(config)))
                .join()
                .expect("herd_master::start panicked")
        })
        .expect("the in-process master starts");
        InProcess {
            addr: running.grpc_addr,
            http_addr: running.http_addr,
            data_dir: data_dir.to_path_buf(),
            running: Some(running),
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An Admin client presenting the admin token.
    pub async fn admin(&self) -> Admin {
        crate::clients(&self.url()).await.expect("connect").0
    }

    /// A Registry client presenting the join token.
    pub async fn registry(&self) -> Registry {
        crate::clients(&self.url()).await.expect("connect").1
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.data_dir.join("herd.db")).unwrap()
    }

    /// Shuts the master down as SIGTERM would, and waits until it has.
    pub fn stop(&mut self) {
        let (Some(running), Some(runtime)) = (self.running.take(), self.runtime.take()) else {
            return;
        };
        std::thread::scope(|s| {
            s.spawn(move || {
                runtime.block_on(running.shutdown());
                runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            });
        });
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
