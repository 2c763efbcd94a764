//! Running as a service: the systemd units in packaging/systemd and what the programs do
//! under them (READY=1 once listening, watchdog pings), the worker unit's kill mode applied
//! the way systemd applies it on a restart, and config files as a real program reads them.

use herd_testkit as common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use herd::pb;

const T: Duration = Duration::from_secs(30);

/// A socket standing in for systemd's notify socket.
struct Notify {
    socket: UnixDatagram,
    path: String,
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Notify {
            socket,
            path: path.display().to_string(),
        }
    }

    /// The environment systemd gives a `Type=notify` unit with `WatchdogSec=1s`.
    fn env(&self) -> [(&str, &str); 2] {
        [("NOTIFY_SOCKET", &self.path), ("WATCHDOG_USEC", "1000000")]
    }

    /// Waits for a message holding `line`; every message read meanwhile.
    fn wait_for(&self, line: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = message.lines().any(|l| l == line);
                seen.push(message);
                if found {
                    return seen;
                }
            }
        }
        panic!("no {line} within {within:?}; seen: {seen:?}");
    }
}

/// The `[Service]` setting `key` of a unit file in packaging/systemd.
fn unit_setting(unit: &str, key: &str) -> Option<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/systemd")
        .join(unit);
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_says_ready_only_once_it_answers_and_pings_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let notify = Notify::bind(dir.path());
    let master = Master::start_with_env(
        dir.path(),
        &dir.path().join("data"),
        free_port(),
        &[],
        &notify.env(),
    );
    let seen = notify.wait_for("READY=1", T);
    assert!(
        seen.last().unwrap().contains("STATUS=listening on"),
        "{seen:?}"
    );
    // Ready means listening: the port answers at once.
    let mut admin = tokio::time::timeout(Duration::from_secs(2), master.admin())
        .await
        .expect("the master answers once it said READY=1");
    assert!(workers(&mut admin).await.is_empty());
    notify.wait_for("WATCHDOG=1", Duration::from_secs(3));
    notify.wait_for("WATCHDOG=1", Duration::from_secs(3));
}

/// What `systemctl restart herd-worker` does to the unit's processes, read from the unit:
/// KillSignal to the main process only (KillMode=process), or to every process of the
/// unit's cgroup (control-group; mixed: SIGKILL to the others). The processes of the
/// cgroup are those carrying the unit's mark in their environment (children inherit it).
fn restart_as_systemd_would(worker: &mut Worker, mark: &str) -> Vec<u32> {
    let kill_mode = unit_setting("herd-worker.service", "KillMode");
    let kill_mode = kill_mode.unwrap_or_else(|| "control-group".into());
    let signal = match unit_setting("herd-worker.service", "KillSignal").as_deref() {
        None | Some("SIGTERM") => libc::SIGTERM,
        Some("SIGINT") => libc::SIGINT,
        Some(other) => panic!("KillSignal={other}: teach this test"),
    };
    let main = worker.child.id();
    let cgroup: Vec<u32> = pids()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == mark.as_bytes()))
        })
        .collect();
    let others: Vec<u32> = cgroup.iter().copied().filter(|p| *p != main).collect();
    let signalled: Vec<(u32, i32)> = match kill_mode.as_str() {
        "process" => vec![(main, signal)],
        "mixed" => std::iter::once((main, signal))
            .chain(others.iter().map(|p| (*p, libc::SIGKILL)))
            .collect(),
        "control-group" => cgroup.iter().map(|p| (*p, signal)).collect(),
        other => panic!("KillMode={other}: teach this test"),
    };
    for (pid, signal) in signalled {
        // SAFETY: signalling processes this test started (they carry its mark).
        unsafe { libc::kill(pid as i32, signal) };
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while worker.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "herd-worker did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    others
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_the_worker_unit_leaves_its_task_running() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = KillUnder(dir.path().to_path_buf());
    let master = InProcess::start(dir.path(), &["--heartbeat-timeout", "20s"]);
    let mut admin = master.admin().await;
    let notify = Notify::bind(dir.path());
    let mark = format!("HERD_TEST_UNIT=herd-worker-{}", fastrand::u64(..));
    let (key, value) = mark.split_once('=').unwrap();
    let mut env = notify.env().to_vec();
    env.push((key, value));
    let start = |env: &[(&str, &str)]| {
        Worker::start_with_env(dir.path(), &master.url(), "svc", "work-svc", &[], env)
    };
    let mut worker = start(&env);
    notify.wait_for("READY=1", T);
    wait_state(&mut admin, "svc", pb::WorkerState::Active, T).await;
    let seconds = 3.0 + fastrand::u32(0..1000) as f64 / 1000.0;
    let sleep = format!("{seconds:.3}");
    let t = submit(&mut admin, &format!("sleep {sleep}"), 1.0).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    let deadline = Deadline::new(T, "the task's process starts");
    let task_pids = loop {
        let pids = processes_with(&sleep);
        if !pids.is_empty() {
            break pids;
        }
        deadline.wait().await;
    };
    assert_eq!(task_pids.len(), 1, "{task_pids:?}");

    let spared = restart_as_systemd_would(&mut worker, &mark);
    // The unit's cgroup held the task: only the kill mode spared it.
    assert!(
        spared.contains(&task_pids[0]),
        "the task {task_pids:?} among the unit's other processes {spared:?}"
    );
    assert!(process_alive(task_pids[0]), "the task runs on");
    let _worker = start(&env);
    let t = wait_task(&mut admin, &t.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(t.attempts, 1, "the same attempt, reattached: {}", t.reason);
}

fn master_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(MASTER.path())
        .args(args)
        .env_remove("HERD_TOKEN")
        .env_remove("HERD_SCHEDULER")
        .env("XDG_STATE_HOME", dir.join("state"))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code() == Some(0),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_and_secrets_are_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("master.toml");
    std::fs::write(
        &file,
        "scheduler = \"round-robin\"\nmax-attempts = 4\ncheck-interval = \"3s\"\n\
         token = \"file-token-0123456789abcdef\"\n",
    )
    .unwrap();
    let config = file.display().to_string();
    let (ok, out, err) = master_with(
        dir.path(),
        &["--config", &config, "--print-config", "--max-attempts", "6"],
        &[
            ("HERD_SCHEDULER", "bin-pack"),
            ("HERD_CHECK_INTERVAL", "2s"),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("max-attempts = \"6\"  # flag"), "{out}");
    assert!(
        out.contains("scheduler = \"bin-pack\"  # environment HERD_SCHEDULER"),
        "{out}"
    );
    assert!(
        out.contains("check-interval = \"2s\"  # environment HERD_CHECK_INTERVAL"),
        "{out}"
    );
    assert!(
        out.contains(&format!("token = \"****\"  # file {config}:4")),
        "{out}"
    );
    assert!(!out.contains("file-token"), "{out}");
    assert!(
        out.contains("heartbeat-timeout = \"30\"  # default"),
        "{out}"
    );
}

#[test]
fn a_bad_config_file_stops_the_program_naming_the_line_and_what_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("master.toml");
    std::fs::write(&file, "# herd\nscheduler = \"fastest\"\n").unwrap();
    let config = file.display().to_string();
    let (ok, _out, err) = master_with(dir.path(), &["--config", &config], &[]);
    assert!(!ok);
    assert!(err.contains(&format!("{config}:2")), "{err}");
    assert!(
        err.contains("possible values") || err.contains("round-robin"),
        "{err}"
    );

    let missing = dir.path().join("absent.toml").display().to_string();
    let (ok, _out, err) = master_with(dir.path(), &["--config", &missing], &[]);
    assert!(!ok);
    assert!(err.contains("cannot read the config file"), "{err}");

    // The worker reads its own keys.
    std::fs::write(&file, "drain-on-exit = true\nheartbeat-timeout = \"9s\"\n").unwrap();
    let out = Command::new(WORKER)
        .args(["--config", &config, "--print-config"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("{config}:2")), "{err}");
    assert!(err.contains("unknown key `heartbeat-timeout`"), "{err}");
}

/// What bash offers after `words` (the last one being typed), with herdctl's completion
/// script loaded the way a user loads it.
fn bash_completes(words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "source <('{herdctl}' completions bash) || exit 3\n\
         COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}\n\
         _herdctl herdctl '{current}' '{previous}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        herdctl = HERDCTL.path().display(),
        words = quoted.join(" "),
        cword = words.len() - 1,
        line = words.join(" "),
        current = words[words.len() - 1],
        previous = words[words.len() - 2],
    );
    let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_herdctl_flags_and_the_repl_grammar() {
    assert_eq!(bash_completes(&["herdctl", "task", "su"]), ["submit"]);
    let commands = bash_completes(&["herdctl", ""]);
    for word in [
        "workers",
        "task",
        "tasks",
        "scheduler",
        "drain",
        "token",
        "audit",
    ] {
        assert!(commands.iter().any(|c| c == word), "{word} in {commands:?}");
    }
    assert!(commands.iter().any(|c| c == "--master"), "{commands:?}");
    let submit = bash_completes(&["herdctl", "--json", "task", "submit", "--doc"]);
    assert_eq!(submit, ["--docker-image"]);
    let policies = bash_completes(&["herdctl", "scheduler", ""]);
    for policy in ["round-robin", "resource-aware", "bin-pack"] {
        assert!(policies.iter().any(|p| p == policy), "{policies:?}");
    }
    let states = bash_completes(&["herdctl", "tasks", "--state", "ru"]);
    assert_eq!(states, ["running"]);
}

#[test]
fn completions_for_each_shell_and_a_clear_error_for_another() {
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) = herdctl("http://127.0.0.1:1", &["completions", shell]);
        assert!(ok, "{shell}: {err}");
        assert!(out.contains("docker-image"), "{shell}");
    }
    let (ok, _out, err) = herdctl("http://127.0.0.1:1", &["completions", "tcsh"]);
    assert!(!ok);
    assert!(err.contains("one of bash") && err.contains("zsh"), "{err}");
}

#[test]
fn man_pages_are_made_for_the_three_programs() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herd-assets"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = |name: &str| std::fs::read_to_string(dir.path().join("man").join(name)).unwrap();
    let master = page("herd-master.1");
    assert!(
        master.starts_with(".ie") || master.contains(".TH herd-master"),
        "{master}"
    );
    for flag in [
        "heartbeat\\-timeout",
        "HERD_CONFIG",
        "print\\-config",
        "store",
    ] {
        assert!(master.contains(flag), "{flag} in herd-master.1");
    }
    assert!(page("herd-worker.1").contains("drain\\-on\\-exit"));
    assert!(page("herdctl.1").contains("HERD_MASTER"));
    for script in ["herdctl", "_herdctl", "herdctl.fish"] {
        let path = dir.path().join("completions").join(script);
        assert!(std::fs::metadata(&path).unwrap().len() > 1000, "{script}");
    }
}
