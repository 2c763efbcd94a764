//! End to end: logs for machines (issue 25, item 6). `--log-format json` writes one JSON
//! object per line that a log shipper can take whole; `--log-level` filters, and wins over
//! `HERD_LOG`; a filter that does not parse stops the program naming it. No token or secret
//! appears in any of it.

use herd_testkit as common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use herd::pb;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line_filtered_by_the_level_and_never_hold_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(dir.path(), &[FAST, &["--log-format", "json"]].concat());
    let mut admin = master.admin().await;
    let w = Worker::start(
        dir.path(),
        &master.url(),
        "shipped",
        &["--log-format", "json", "--log-level", "warn"],
    );
    wait_state(&mut admin, "shipped", pb::WorkerState::Active, T).await;
    let t = submit(&mut admin, "echo logged", 0.5).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Succeeded, T).await;

    let lines: Vec<Value> = master
        .log_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let registered = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("registered"))
        })
        .expect("the registration is logged");
    assert_eq!(registered["level"], "INFO");
    assert!(registered["timestamp"].is_string() && registered["target"].is_string());
    assert!(
        lines.iter().any(|l| l["fields"]["task"] == t.id.as_str()),
        "task events carry the task id as a field"
    );
    // The worker logs warnings only: none happened.
    let worker_log = std::fs::read_to_string(&w.log).unwrap();
    assert!(!worker_log.contains("\"level\":\"INFO\""), "{worker_log}");
    for log in [master.log_text(), worker_log] {
        for secret in [TOKEN, JOIN_TOKEN] {
            assert!(!log.contains(secret), "a token in the log");
        }
    }
}

#[test]
fn a_log_level_that_does_not_parse_stops_the_program_naming_it() {
    for program in [MASTER, WORKER] {
        let out = Command::new(program)
            .args(["--log-level", "info,herd=nonsense"])
            .env("HERD_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{program:?}: {err}");
        assert!(err.contains("--log-level 'info,herd=nonsense'"), "{err}");
    }
}
