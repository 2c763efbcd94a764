//! End to end: standby masters on a real PostgreSQL (a throwaway server of this test
//! process). Two masters on one store, one leads; a standby refuses calls and names the
//! leader; kill -9 or SIGSTOP of the leader hands the lead to the standby, the worker
//! follows, its running task finishes there under the same attempt, and a deposed leader,
//! resumed, leads no more.

use herd_testkit as common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use herd::pb;

pub(crate) const T: Duration = Duration::from_secs(30);

/// A master of the store at `url`, with its own data dir under `dir/name`.
pub(crate) fn master(dir: &Path, name: &str, url: &str) -> Master {
    let args = [FAST, &["--store", url]].concat();
    Master::start_on(dir, &dir.join(name), free_port(), &args)
}

/// Two masters of the store at `url`: `a` leads (term 1), `b` is its standby.
pub(crate) async fn leader_and_standby(dir: &Path, url: &str) -> (Master, Master) {
    let a = master(dir, "a", url);
    leads(&a.url(), T).await;
    let b = master(dir, "b", url);
    let term = standby_of(&b.url(), &a.url(), T).await;
    assert_eq!(term, 1, "the first leader's term");
    (a, b)
}

/// What a master says to an Admin call: Ok, or the refusal's leader and term.
pub(crate) async fn answer(url: &str) -> Result<(), (tonic::Code, Option<(String, i64)>)> {
    let Ok((mut admin, _)) = clients(url).await else {
        return Err((tonic::Code::Unavailable, None));
    };
    match admin.list_workers(pb::ListWorkersRequest::default()).await {
        Ok(_) => Ok(()),
        Err(status) => Err((status.code(), herd::client::leader_hint(&status))),
    }
}

/// `herdctl --master LIST COMMAND`: what it printed, and whether it succeeded.
fn herdctl(masters: &str, command: &str) -> (bool, String) {
    herdctl_with(masters, TOKEN, command)
}

/// Like [`herdctl`], presenting `token`.
pub(crate) fn herdctl_with(masters: &str, token: &str, command: &str) -> (bool, String) {
    let out = std::process::Command::new(HERDCTL.path())
        .args(["--master", masters, "--token", token, command])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success(),
        text + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Waits until the store at `url` has worker `name` Active (the ticker wrote it).
pub(crate) async fn stored_active(url: &str, name: &str) {
    let deadline = Deadline::new(T, format!("{name} is stored Active"));
    let sql = format!("SELECT state FROM workers WHERE name = '{name}'");
    while postgres_query(url, &sql).trim() != "Active" {
        deadline.wait().await;
    }
}

/// Waits until the master at `url` leads (answers an Admin call).
pub(crate) async fn leads(url: &str, within: Duration) -> Duration {
    let start = Instant::now();
    let deadline = Deadline::new(within, format!("{url} leads"));
    while answer(url).await.is_err() {
        deadline.wait().await;
    }
    start.elapsed()
}

/// Waits until the master at `url` refuses as a standby naming `leader`; returns the term.
pub(crate) async fn standby_of(url: &str, leader: &str, within: Duration) -> i64 {
    let deadline = Deadline::new(within, format!("{url} is a standby of {leader}"));
    loop {
        if let Err((tonic::Code::Unavailable, Some((named, term)))) = answer(url).await
            && named == leader
        {
            return term;
        }
        deadline.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_hands_the_lead_to_the_standby_and_the_task_finishes_there() {
    if !postgres_available("failover::kill_9") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = postgres_database();
    // The standby refuses, naming the leader and its term.
    let (mut a, b) = leader_and_standby(dir.path(), &url).await;

    // The worker is given the standby first: it follows the hint to the leader.
    let both = format!("{},{}", b.url(), a.url());
    let w1 = Worker::start(dir.path(), &both, "w1", &[]);
    let mut admin = a.admin().await;
    wait_state(&mut admin, "w1", pb::WorkerState::Active, T).await;
    // herdctl given the standby first finds the leader too.
    let (ok, text) = herdctl(&both, "workers");
    assert!(ok && text.contains("w1"), "{text}");
    let marker = dir.path().join("ran");
    let command = format!("sleep 2; echo once >> {}", marker.display());
    let task = submit(&mut admin, &command, 0.1).await;
    wait_task(&mut admin, &task.id, pb::TaskState::Running, T).await;
    stored_active(&url, "w1").await;

    a.kill9();
    let took = leads(&b.url(), T).await;
    assert!(
        took < Duration::from_secs(10),
        "the standby led after {took:?}"
    );
    let mut admin = b.admin().await;
    // Active at once on the new leader (the failover grace), and never Inactive.
    let seen = worker(&mut admin, "w1")
        .await
        .expect("the new leader knows w1");
    assert_eq!(
        seen.state(),
        pb::WorkerState::Active,
        "{}\n----\n{}",
        b.log_text(),
        w1.log_text()
    );
    let done = wait_task(&mut admin, &task.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(
        done.attempts, 1,
        "the same attempt finished on the new leader"
    );
    // The dead leader first in the list: herdctl goes on to the new one, whose status
    // names it the leader in term 2, and the old one deposed.
    let (ok, text) = herdctl(&format!("{},{}", a.url(), b.url()), "workers");
    assert!(ok && text.contains("w1"), "{text}");
    let (ok, text) = herdctl(&both, "status");
    let leader = format!("leader:     {} (term 2,", b.url());
    let deposed = format!("deposed:    {} (term 1,", a.url());
    assert!(
        ok && text.contains(&leader) && text.contains(&deposed),
        "{text}"
    );
    let ran = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(ran, "once\n", "the task ran exactly once");
    let seen = worker(&mut admin, "w1").await.unwrap();
    assert_eq!(seen.state(), pb::WorkerState::Active);
    assert!(
        w1.log_text().contains("a standby named the leader"),
        "{}",
        w1.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_loses_the_lead_and_resumed_it_is_a_standby() {
    if !postgres_available("failover::a_frozen_leader") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = postgres_database();
    let (a, b) = leader_and_standby(dir.path(), &url).await;
    let both = format!("{},{}", a.url(), b.url());
    let w1 = Worker::start(dir.path(), &both, "w1", &[]);
    let mut admin = a.admin().await;
    wait_state(&mut admin, "w1", pb::WorkerState::Active, T).await;
    stored_active(&url, "w1").await;

    // SAFETY: signalling our own child.
    unsafe { libc::kill(a.child.id() as i32, libc::SIGSTOP) };
    let took = leads(&b.url(), T).await;
    assert!(
        took < Duration::from_secs(10),
        "the standby led after {took:?}"
    );
    let mut admin = b.admin().await;
    let seen = worker(&mut admin, "w1").await.unwrap();
    assert_eq!(seen.state(), pb::WorkerState::Active, "{}", b.log_text());

    // SAFETY: as above.
    unsafe { libc::kill(a.child.id() as i32, libc::SIGCONT) };
    // Resumed, the old leader finds its session ended and a newer term: it is a standby
    // of the new leader, and the worker stays there.
    let term = tokio::time::timeout(T, standby_of(&a.url(), &b.url(), T * 2)).await;
    let last = answer(&a.url()).await;
    let term = term.unwrap_or_else(|_| panic!("{last:?}\n{}", a.log_text()));
    assert_eq!(term, 2);
    assert!(
        a.log_text().contains("no longer the leader"),
        "{}",
        a.log_text()
    );
    let task = submit(&mut admin, "true", 0.1).await;
    let done = wait_task(&mut admin, &task.id, pb::TaskState::Succeeded, T);
    if tokio::time::timeout(T, done).await.is_err() {
        panic!("{}\n---\n{}", w1.log_text(), b.log_text());
    }
    let seen = worker(&mut admin, "w1").await.unwrap();
    assert_eq!(seen.state(), pb::WorkerState::Active);
}

/// In the spirit of Jepsen: three masters, two workers, a client submitting tasks that
/// each append a unique marker; the leader is killed (-9, then restarted) or frozen
/// (SIGSTOP for longer than its lease, then resumed) ten times at random moments. At the
/// end every acknowledged task succeeded exactly once (its marker once), nothing ran twice,
/// and no two masters led in the same term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_killed_and_frozen_at_random_lose_no_acknowledged_task_and_run_none_twice() {
    if !postgres_available("failover::leaders_killed_and_frozen") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = postgres_database();
    let ports = [free_port(), free_port(), free_port()];
    let args = [FAST, &["--store", &url]].concat();
    let start = |i: usize| {
        let data = dir.path().join(format!("m{i}"));
        Master::start_on(dir.path(), &data, ports[i], &args)
    };
    let mut masters: Vec<Master> = (0..3).map(start).collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let all = urls.join(",");
    let _workers: Vec<Worker> = ["w1", "w2"]
        .iter()
        .map(|name| Worker::start(dir.path(), &all, name, &[]))
        .collect();
    let markers = dir.path().join("markers");
    let mut acknowledged = Vec::new();
    let mut logs = Vec::new();
    for round in 0..10 {
        let leader = leader_of(&urls).await;
        for i in 0..4 {
            let marker = format!("m-{round}-{i}");
            let command = format!(
                "sleep 0.{}; echo {marker} >> {}",
                fastrand::u8(1..9),
                markers.display()
            );
            if let Some(id) = try_submit(&all, &command).await {
                acknowledged.push((id, marker));
            }
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..800))).await;
        let m = &mut masters[leader];
        if round % 2 == 0 {
            logs.push(m.log_text());
            m.kill9();
            masters[leader] = start(leader);
        } else {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(m.child.id() as i32, libc::SIGSTOP) };
            // Past its lease (5 s from its last renewal, which may be a second old, and a
            // standby looks every 0.5 s): a standby has taken over when it resumes.
            tokio::time::sleep(Duration::from_secs(8)).await;
            // SAFETY: as above.
            unsafe { libc::kill(m.child.id() as i32, libc::SIGCONT) };
            // Resumed, it may answer for a moment before it finds itself deposed: the
            // next round must not take it for the leader.
            let deadline = Deadline::new(T, "the resumed leader steps down");
            while !matches!(answer(&urls[leader]).await, Err((_, Some(_)))) {
                deadline.wait().await;
            }
        }
    }
    // Every acknowledged task ends Succeeded, on whichever master leads now.
    let deadline = Deadline::new(Duration::from_secs(90), "every acknowledged task succeeded");
    for (id, _) in &acknowledged {
        loop {
            let leader = leader_of(&urls).await;
            let (mut admin, _) = clients(&urls[leader]).await.unwrap();
            if let Ok(t) = admin
                .get_task(pb::GetTaskRequest {
                    task_id: id.clone(),
                })
                .await
            {
                let t = t.into_inner();
                assert!(
                    !matches!(t.state(), pb::TaskState::Failed | pb::TaskState::Cancelled),
                    "task {id} ended {:?}: {}",
                    t.state(),
                    t.reason
                );
                if t.state() == pb::TaskState::Succeeded {
                    break;
                }
            }
            deadline.wait().await;
        }
    }
    let ran = std::fs::read_to_string(&markers).unwrap_or_default();
    for (id, marker) in &acknowledged {
        let times = ran.lines().filter(|l| l == marker).count();
        assert_eq!(times, 1, "task {id} ({marker}) ran {times} times");
    }
    // No marker at all (acknowledged or not) ran twice.
    let mut lines: Vec<&str> = ran.lines().collect();
    lines.sort();
    let before = lines.len();
    lines.dedup();
    assert_eq!(lines.len(), before, "a task ran twice:\n{ran}");
    // No two masters led in the same term.
    logs.extend(masters.iter().map(Master::log_text));
    let mut terms: Vec<String> = logs
        .iter()
        .flat_map(|log| log.lines())
        .filter(|l| l.contains("this master leads"))
        .filter_map(|l| l.split("term=").nth(1))
        .map(|t| t.split_whitespace().next().unwrap_or("").to_string())
        .collect();
    let led = terms.len();
    terms.sort();
    terms.dedup();
    assert_eq!(terms.len(), led, "a term led twice: {terms:?}");
    assert!(
        led >= 11,
        "ten fail-overs after the first leader: {led} terms"
    );
    assert!(
        acknowledged.len() >= 20,
        "{} acknowledged",
        acknowledged.len()
    );
}

/// Which of `urls` leads now (waits for one).
async fn leader_of(urls: &[String]) -> usize {
    let deadline = Deadline::new(T, "a master leads");
    loop {
        for (i, url) in urls.iter().enumerate() {
            if answer(url).await.is_ok() {
                return i;
            }
        }
        deadline.wait().await;
    }
}

/// Submits `command` to whichever master leads, once: its id when acknowledged.
async fn try_submit(masters: &str, command: &str) -> Option<String> {
    let mut list = herd::client::Masters::parse(masters, None, None).unwrap();
    let bearer = herd::auth::Bearer::new(Some(TOKEN)).unwrap();
    let leader = herd::client::find_leader(&mut list, &bearer).await;
    let (mut admin, _) = clients(&leader).await.ok()?;
    let spec = process(command, 0.1);
    let submitted = admin
        .submit_task(pb::SubmitTaskRequest { spec: Some(spec) })
        .await;
    submitted.ok().map(|r| r.into_inner().id)
}

/// A standby over HTTP: the API answers 503 naming the leader's dashboard, the dashboard
/// is a page that links to it, and the leader's status lists both masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_answers_http_with_503_and_the_leaders_address() {
    if !postgres_available("failover::a_standby_answers_http") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = postgres_database();
    let (http_a, http_b) = (free_port(), free_port());
    let with_http = |name: &str, port: u16| {
        let listen = format!("127.0.0.1:{port}");
        let args = [FAST, &["--store", &url, "--http-listen", &listen]].concat();
        Master::start_on(dir.path(), &dir.path().join(name), free_port(), &args)
    };
    let mut a = with_http("a", http_a);
    leads(&a.url(), T).await;
    let b = with_http("b", http_b);
    standby_of(&b.url(), &a.url(), T).await;
    let api = |port: u16| common::http::Api {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        token: Some(TOKEN.into()),
    };
    let leader_http = format!("http://127.0.0.1:{http_a}");

    let (status, body) = api(http_b)
        .json(hyper::Method::GET, "/api/v1/status", None)
        .await;
    assert_eq!(status, hyper::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "UNAVAILABLE", "{body}");
    assert_eq!(body["leader"], leader_http.as_str(), "{body}");
    assert_eq!(body["term"], 1, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("standby"),
        "{body}"
    );

    let (status, kind, page) = api(http_b).call(hyper::Method::GET, "/", None).await;
    let page = String::from_utf8_lossy(&page);
    assert_eq!(status, hyper::StatusCode::SERVICE_UNAVAILABLE);
    assert!(kind.starts_with("text/html"), "{kind}");
    let link = format!("standby: the leader is <a href=\"{leader_http}\">");
    assert!(page.contains(&link), "{page}");

    let status = api(http_a).get("/api/v1/status").await;
    let roles: Vec<(String, String)> = status["masters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().into(),
                m["address"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("leader".to_string(), a.url()),
            ("standby".to_string(), b.url())
        ],
        "{status}"
    );

    // An event stream resumed at the new leader with an id the old one gave: what the old
    // one sent after it is not known there, so the client is told to list again.
    let old_id = api(http_a).listed_event_id().await;
    a.kill9();
    leads(&b.url(), T).await;
    let mut resumed = api(http_b)
        .events(&format!("/api/v1/events?last_event_id={old_id}"), None)
        .await;
    let first = tokio::time::timeout(T, resumed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.kind, "resync", "{first:?}");
    let new_id = api(http_b).listed_event_id().await;
    let mut stream = api(http_b)
        .events(&format!("/api/v1/events?last_event_id={new_id}"), None)
        .await;
    let next = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
    assert!(
        next.is_err(),
        "an id of the new leader resumes quietly: {next:?}"
    );
}

/// The console behind herdctl's REPL, connected to a standby, runs each command at the
/// leader the standby names; given every master, it follows a fail-over mid-session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_follows_the_leader_mid_session() {
    if !postgres_available("failover::the_console_follows") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = postgres_database();
    let (mut a, b) = leader_and_standby(dir.path(), &url).await;
    let both = format!("{},{}", b.url(), a.url());
    let token = herd::auth::Bearer::new(Some(TOKEN)).unwrap();
    let masters = herd::client::Masters::parse(&both, None, None).unwrap();
    let style = herd_console::render::Style::plain();
    let mut console = herd_console::console::Console::connect(&b.url(), None, token, style)
        .unwrap()
        .with_masters(masters);
    let line = herd_console::command::parse_words(["scheduler"]).unwrap();
    let mut out = Vec::new();
    console.run(line.clone(), &mut out).await.unwrap();
    let said = String::from_utf8_lossy(&out).into_owned();
    assert!(said.contains("resource-aware"), "{said}");

    // The console now talks to a; a dies and b takes over.
    a.kill9();
    leads(&b.url(), T).await;
    let mut out = Vec::new();
    console.run(line, &mut out).await.unwrap();
    let said = String::from_utf8_lossy(&out).into_owned();
    assert!(said.contains("resource-aware"), "{said}");
}
