//! Two hosts on a real link: network namespaces joined by a veth pair, made by the test
//! and removed when it ends (`ip netns`, from iproute2). The master runs in one, a worker in
//! the other; the link can be cut (`link down` on the worker's side: no FIN, no RST, the
//! master sees silence) and mended. Addresses exist only inside the namespaces made here.
//! Needs root; without it (or without `ip`) a test is skipped, and fails under CI.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(1);

/// herd-master's timings scaled down for a link test: a heartbeat every 500 ms, the
/// given heartbeat timeout, checked every 100 ms, Removed after 60 s.
pub fn scaled_down(heartbeat_timeout: &'static str) -> [&'static str; 8] {
    [
        "--heartbeat-interval",
        "500ms",
        "--heartbeat-timeout",
        heartbeat_timeout,
        "--check-interval",
        "100ms",
        "--worker-timeout",
        "60s",
    ]
}

/// The two namespaces and their link.
pub struct Link {
    /// The master's namespace and address.
    pub master_ns: String,
    pub master_ip: String,
    /// The worker's namespace.
    pub worker_ns: String,
    worker_dev: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Link {
    /// Makes the two namespaces and their link, or says why it cannot (skipped).
    pub fn new() -> Option<Link> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root || !ip(&["netns", "list"]) {
            assert!(
                std::env::var_os("CI").is_none(),
                "the network namespace tests need root and iproute2 (`ip`) under CI"
            );
            println!("SKIPPED: network namespaces need root and iproute2");
            return None;
        }
        // Unique per process and test: tests run side by side.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id() % 100_000);
        let subnet = (std::process::id() % 200 + n * 7) % 250 + 1;
        let link = Link {
            master_ns: format!("herd-{tag}-m"),
            master_ip: format!("10.213.{subnet}.1"),
            worker_ns: format!("herd-{tag}-w"),
            worker_dev: format!("hw{tag}").chars().take(15).collect(),
        };
        let master_dev: String = format!("hm{tag}").chars().take(15).collect();
        let worker_ip = format!("10.213.{subnet}.2/24");
        must(&["netns", "add", &link.master_ns]);
        must(&["netns", "add", &link.worker_ns]);
        must(&[
            "link",
            "add",
            &master_dev,
            "type",
            "veth",
            "peer",
            "name",
            &link.worker_dev,
        ]);
        must(&["link", "set", &master_dev, "netns", &link.master_ns]);
        must(&["link", "set", &link.worker_dev, "netns", &link.worker_ns]);
        let master_cidr = format!("{}/24", link.master_ip);
        must(&[
            "-n",
            &link.master_ns,
            "addr",
            "add",
            &master_cidr,
            "dev",
            &master_dev,
        ]);
        must(&[
            "-n",
            &link.worker_ns,
            "addr",
            "add",
            &worker_ip,
            "dev",
            &link.worker_dev,
        ]);
        for (ns, dev) in [
            (&link.master_ns, &master_dev),
            (&link.worker_ns, &link.worker_dev),
        ] {
            must(&["-n", ns, "link", "set", dev, "up"]);
            must(&["-n", ns, "link", "set", "lo", "up"]);
        }
        Some(link)
    }

    /// `program args...` run inside namespace `ns`.
    pub fn command(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(program);
        command
    }

    /// Cuts the link on the worker's side: its packets go nowhere, and nothing tells
    /// the master.
    pub fn cut(&self) {
        must(&[
            "-n",
            &self.worker_ns,
            "link",
            "set",
            &self.worker_dev,
            "down",
        ]);
    }

    /// Mends the link.
    pub fn mend(&self) {
        must(&["-n", &self.worker_ns, "link", "set", &self.worker_dev, "up"]);
    }

    /// Drops `percent` of the packets each way at random on the link, on the worker's side
    /// (nftables; the worker's loopback is spared).
    pub fn lose(&self, percent: u32) {
        let dev = &self.worker_dev;
        let rules = format!(
            "table inet herdloss {{
               chain out {{ type filter hook output priority 0; oifname \"{dev}\" numgen random mod 100 < {percent} drop; }}
               chain in {{ type filter hook input priority 0; iifname \"{dev}\" numgen random mod 100 < {percent} drop; }}
             }}"
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &self.worker_ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run nft");
        use std::io::Write;
        nft.stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success(), "nft refused the loss rules");
    }

    /// Holds every byte that crosses the link `delay` ± `jitter` (uniformly) longer, in order,
    /// each way: a relay in the worker's namespace, listening on its loopback, in front of
    /// the master. Workers given the URL it returns reach the master through it. (This
    /// machine's kernel has no netem, which would delay packets instead of bytes.)
    pub fn delay(&self, delay: Duration, jitter: Duration) -> String {
        let ns = std::fs::File::open(format!("/var/run/netns/{}", self.worker_ns))
            .expect("the worker's namespace");
        let master = format!("{}:50051", self.master_ip);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns moves only this thread (and the threads it starts) into the
            // namespace; the file is a namespace handle.
            let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&master) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || hold_back(from, to, delay, jitter));
                }
            }
        });
        let port = rx.recv().expect("the relay listens");
        format!("http://127.0.0.1:{port}")
    }

    /// A master in the master's namespace, listening on its address; `args` are its
    /// flags. Returns the process, its URL and its log file.
    pub fn master(&self, dir: &std::path::Path, args: &[&str]) -> (Proc, String, PathBuf) {
        let log = dir.join("master.log");
        let listen = format!("{}:50051", self.master_ip);
        let child = self
            .command(&self.master_ns, crate::MASTER)
            .args(["--listen", &listen, "--data-dir"])
            .arg(dir.join("data"))
            .arg("--no-repl")
            .args(args)
            .env("HERD_LOG", "info,herd_master=debug")
            .env("HERD_TOKEN", crate::TOKEN)
            .env("HERD_JOIN_TOKEN", crate::JOIN_TOKEN)
            .env("HERD_HTTP_LISTEN", "off")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start herd-master in its namespace");
        (Proc(child), format!("http://{listen}"), log)
    }

    /// A worker named `name` in the worker's namespace.
    pub fn worker(&self, dir: &std::path::Path, url: &str, name: &str) -> (Proc, PathBuf) {
        self.worker_on(&self.worker_ns, dir, url, name, &[])
    }

    /// A worker named `name` in namespace `ns` (the master's: on the near side of the
    /// link), with extra flags `args`; its work dir is `dir/work-<name>`.
    pub fn worker_on(
        &self,
        ns: &str,
        dir: &std::path::Path,
        url: &str,
        name: &str,
        args: &[&str],
    ) -> (Proc, PathBuf) {
        let log = dir.join(format!("worker-{name}.log"));
        let child = self
            .command(ns, crate::WORKER)
            .args([
                "--master",
                url,
                "--name",
                name,
                "--runtime",
                "none",
                "--work-dir",
            ])
            .arg(dir.join(format!("work-{name}")))
            .args(args)
            .env("HERD_TOKEN", crate::JOIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start herd-worker in its namespace");
        (Proc(child), log)
    }
}

/// Copies `from` to `to`, each piece read delivered `delay` ± `jitter` after it was read,
/// never before the piece before it (a byte stream keeps its order).
fn hold_back(mut from: TcpStream, mut to: TcpStream, delay: Duration, jitter: Duration) {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let mut sink = to.try_clone().unwrap();
    std::thread::spawn(move || {
        for (at, piece) in rx {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            if sink.write_all(&piece).is_err() {
                break;
            }
        }
        let _ = sink.shutdown(std::net::Shutdown::Write);
    });
    let mut last = Instant::now();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let spread = jitter.as_secs_f64() * (2.0 * fastrand::f64() - 1.0);
        let hold = Duration::from_secs_f64((delay.as_secs_f64() + spread).max(0.0));
        last = last.max(Instant::now() + hold);
        if tx.send((last, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = to.flush();
}

/// A process killed when dropped (with the test or bench that started it).
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The veth pair goes with its namespaces.
        ip(&["netns", "del", &self.worker_ns]);
        ip(&["netns", "del", &self.master_ns]);
    }
}
