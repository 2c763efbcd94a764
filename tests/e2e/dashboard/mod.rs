//! The dashboard in a real browser: headless Chromium driven through chromedriver
//! (WebDriver) against a real herd-master serving its HTTP API and assets, with real
//! herd-workers. What a person at the page would see is what is checked: rows and their
//! states, live changes without a reload, buttons that act on the cluster.
//!
//! Without chromium and chromedriver these tests fail under CI and print SKIPPED elsewhere.

use herd_testkit as common;
use herd_testkit::webdriver;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use herd::pb;
use serde_json::json;
use webdriver::{Browser, Session};

/// One browser at a time: Chromium is heavy on a 2-core machine, and timings are asserted.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Generous waits for anything that is not itself the thing being timed.
const LOAD: Duration = Duration::from_secs(20);

/// A master with its HTTP server on a free port, some workers, and a browser.
struct Dash {
    master: Master,
    workers: Vec<Worker>,
    /// `http://127.0.0.1:PORT` as the master printed it.
    base: String,
    /// The token from the printed dashboard line.
    token: String,
    browser: Session,
    _dir: tempfile::TempDir,
}

impl Dash {
    /// `None` when the browser is missing outside CI.
    async fn start(test: &str, workers: &[&str]) -> Option<Dash> {
        Dash::start_on(test, workers, "127.0.0.1:0").await
    }

    /// With the HTTP server on `http` (port 0: any free one).
    async fn start_on(test: &str, workers: &[&str], http: &str) -> Option<Dash> {
        let browser = Browser::find(test)?;
        let dir = tempfile::tempdir().unwrap();
        let master = Master::start(dir.path(), &master_args(http));
        let (base, token) = dashboard_line(&master).await;
        let workers: Vec<Worker> = workers
            .iter()
            .map(|name| {
                Worker::start(
                    dir.path(),
                    &master.url(),
                    name,
                    &["--cpu", "4", "--memory", "8", "--kill-grace", "1s"],
                )
            })
            .collect();
        let mut admin = master.admin().await;
        for w in &workers {
            wait_state(&mut admin, &w.name, pb::WorkerState::Active, LOAD).await;
        }
        let browser = Session::start(&browser, dir.path(), 1440, 1000);
        Some(Dash {
            master,
            workers,
            base,
            token,
            browser,
            _dir: dir,
        })
    }

    /// Opens the dashboard logged in by the fragment, as the printed link does.
    fn open(&self) {
        self.browser
            .goto(&format!("{}/#token={}", self.base, self.token));
        self.browser.wait_for("#app:not([hidden])", LOAD);
    }

    /// The `data-status` of the worker row `name`, once the row is there.
    fn worker_status(&self, name: &str) -> Option<String> {
        let row = self.browser.find(&format!("tr[data-worker=\"{name}\"]"))?;
        self.browser.attr(&row, "data-status")
    }

    fn wait_worker_status(&self, name: &str, status: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        self.browser
            .poll(limit, &format!("{name} shows {status}"), || {
                (self.worker_status(name).as_deref() == Some(status)).then_some(())
            });
        start.elapsed()
    }

    /// Waits until the task panel shows `state`.
    fn wait_panel_state(&self, id: &str, state: &str, limit: Duration) {
        self.browser
            .poll(limit, &format!("the panel shows {id} {state}"), || {
                let shown = self.browser.find("#task-id").map(|e| self.browser.text(&e));
                let st = self
                    .browser
                    .find("#task-state")
                    .and_then(|e| self.browser.attr(&e, "data-state"));
                (shown.as_deref() == Some(id) && st.as_deref() == Some(state)).then_some(())
            });
    }

    fn output(&self) -> String {
        self.browser
            .find("#task-output")
            .map(|e| self.browser.text(&e))
            .unwrap_or_default()
    }

    fn wait_output(&self, needle: &str, limit: Duration) {
        self.browser
            .poll(limit, &format!("the output shows {needle:?}"), || {
                let shown = self.browser.exec(
                    "const o = document.getElementById('task-output');
                     return !!o && o.textContent.includes(arguments[0])",
                    vec![json!(needle)],
                );
                (shown == json!(true)).then_some(())
            });
    }
}

fn master_args(http: &str) -> Vec<&str> {
    let mut args = FAST.to_vec();
    args.extend(["--http-listen", http]);
    args
}

/// The `dashboard: http://HOST:PORT/` line the master logs at start, and the token to
/// log in with (the test's: the log never holds one).
async fn dashboard_line(master: &Master) -> (String, String) {
    let deadline = Deadline::new(LOAD, "the master logs its dashboard address");
    loop {
        let log = master.log_text();
        if let Some(url) = log
            .lines()
            .find_map(|l| l.split("dashboard: ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
        {
            let base = url.trim_end_matches('/');
            assert!(
                !base.ends_with(":0"),
                "the dashboard line names port 0: {url}"
            );
            assert!(
                !log.contains(TOKEN),
                "the admin token is in the master's log"
            );
            return (base.to_string(), TOKEN.to_string());
        }
        deadline.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_from_the_fragment_and_shows_the_worker_active() {
    let _one = ONE_BROWSER.lock().await;
    let Some(dash) = Dash::start("dashboard login", &["alpha"]).await else {
        return;
    };
    let b = &dash.browser;

    // Without a token: the login form, and a wrong token is refused there.
    b.goto(&format!("{}/", dash.base));
    let input = b.wait_for("#login:not([hidden]) #login-token", LOAD);
    b.send_keys(&input, "not-the-token");
    b.click(&b.find("#login-button").unwrap());
    b.poll(LOAD, "the login form says the token was refused", || {
        let login = b.find("#login:not([hidden])")?;
        let err = b.find("#login-error").map(|e| b.text(&e))?;
        (!err.is_empty()).then_some(login)
    });

    // The printed link logs in and the token leaves the address bar.
    dash.open();
    dash.wait_worker_status("alpha", "Active", LOAD);
    let url = b.url();
    assert!(
        !url.contains("token"),
        "the token stays in the address bar: {url}"
    );
    let kept = b.exec("return sessionStorage.getItem('herd-token')", vec![]);
    assert_eq!(kept, json!(dash.token));

    // The row says it in words too, and the summary counts it.
    let row = b.find("tr[data-worker=\"alpha\"]").unwrap();
    let text = b.text(&row);
    assert!(text.contains("Active"), "row text: {text}");
    let id = b.attr(&row, "data-id").unwrap();
    assert!(text.contains(&id), "row text: {text}");
    b.poll(LOAD, "the summary counts one Active worker", || {
        let n = b.find("#count-worker-Active").map(|e| b.text(&e))?;
        (n == "1").then_some(())
    });

    // A reload keeps the session (token in sessionStorage).
    b.refresh();
    dash.wait_worker_status("alpha", "Active", LOAD);
    assert!(b.find("#login:not([hidden])").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_turns_inactive_on_screen_without_a_reload() {
    let _one = ONE_BROWSER.lock().await;
    let Some(mut dash) = Dash::start("dashboard kill -9", &["alpha", "beta"]).await else {
        return;
    };
    dash.open();
    dash.wait_worker_status("alpha", "Active", LOAD);
    dash.wait_worker_status("beta", "Active", LOAD);
    let b = &dash.browser;
    b.poll(LOAD, "the event stream is live", || {
        let el = b.find("#live-status")?;
        (b.attr(&el, "data-live").as_deref() == Some("live")).then_some(())
    });
    b.exec("window.__sameDocument = true", vec![]);

    dash.workers[0].kill9();
    let took = dash.wait_worker_status("alpha", "Inactive", Duration::from_secs(2));
    println!("alpha shown Inactive {took:?} after kill -9");
    assert_eq!(
        b.exec("return window.__sameDocument === true", vec![]),
        json!(true),
        "the page was reloaded"
    );
    assert_eq!(dash.worker_status("beta").as_deref(), Some("Active"));
    let row = b.find("tr[data-worker=\"alpha\"]").unwrap();
    assert!(b.text(&row).contains("Inactive"));

    // Forgotten with its button (after a confirmation), it leaves the table.
    b.click_css("button[data-forget=\"alpha\"]", LOAD);
    b.accept_dialog(LOAD);
    b.poll(LOAD, "alpha leaves the table", || {
        b.find("tr[data-worker=\"alpha\"]").is_none().then_some(())
    });
    let mut admin = dash.master.admin().await;
    assert!(
        worker(&mut admin, "alpha").await.is_none(),
        "alpha still known"
    );

    // And back: the restarted worker shows Active again, still without a reload.
    let dir = dash.master.log.parent().unwrap().to_path_buf();
    dash.workers[0] = Worker::start(&dir, &dash.master.url(), "alpha", &["--cpu", "4"]);
    dash.wait_worker_status("alpha", "Active", LOAD);
    assert_eq!(
        b.exec("return window.__sameDocument === true", vec![]),
        json!(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_submitted_from_the_form_succeeds_with_its_output() {
    let _one = ONE_BROWSER.lock().await;
    let Some(dash) = Dash::start("dashboard submit", &["alpha"]).await else {
        return;
    };
    dash.open();
    dash.wait_worker_status("alpha", "Active", LOAD);
    let b = &dash.browser;

    let command = b.find("#submit-command").unwrap();
    b.send_keys(&command, "echo hello-from-the-dashboard; echo second line");
    let cpu = b.find("#submit-cpu").unwrap();
    b.clear(&cpu);
    b.send_keys(&cpu, "0.5");
    b.click(&b.find("#submit-button").unwrap());

    let link = b.wait_for("#submit-result a[data-submitted]", LOAD);
    let id = b.attr(&link, "data-submitted").unwrap();
    assert!(id.starts_with("t-"), "task id {id}");

    // The panel opens on the new task and follows it to the end.
    dash.wait_panel_state(&id, "succeeded", LOAD);
    dash.wait_output("hello-from-the-dashboard", LOAD);
    dash.wait_output("second line", LOAD);
    let exit = b.find("#task-exit").map(|e| b.text(&e)).unwrap();
    assert_eq!(exit, "0");
    let worker = b.find("#task-worker").map(|e| b.text(&e)).unwrap();
    assert!(worker.contains("alpha"), "worker: {worker}");
    b.wait_for("#task-history tr[data-attempt=\"1\"]", LOAD);

    // The tasks table has it, live, and the master agrees.
    b.poll(LOAD, "the tasks table shows it succeeded", || {
        let row = b.find(&format!("tr[data-task=\"{id}\"]"))?;
        (b.attr(&row, "data-state").as_deref() == Some("succeeded")).then_some(())
    });
    let mut admin = dash.master.admin().await;
    let t = task(&mut admin, &id).await;
    assert_eq!(t.state(), pb::TaskState::Succeeded);
    assert_eq!(t.spec.unwrap().resources.unwrap().cpu, 0.5);

    // An empty form is refused in the page, not sent.
    b.click_css("#task-close", LOAD);
    b.wait_for("#task-panel[hidden]", LOAD);
    b.clear(&command);
    b.click(&b.find("#submit-button").unwrap());
    b.poll(LOAD, "the form asks for a command", || {
        let r = b.find("#submit-result.error").map(|e| b.text(&e))?;
        (!r.is_empty()).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_is_cancelled_from_its_page() {
    let _one = ONE_BROWSER.lock().await;
    let Some(dash) = Dash::start("dashboard cancel", &["alpha"]).await else {
        return;
    };
    let mut admin = dash.master.admin().await;
    let t = submit(&mut admin, "echo started-and-waiting; sleep 60", 1.0).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, LOAD).await;

    dash.open();
    let b = &dash.browser;
    b.click_css(&format!("tr[data-task=\"{}\"] td.cmd", t.id), LOAD);
    dash.wait_panel_state(&t.id, "running", LOAD);
    dash.wait_output("started-and-waiting", LOAD);
    let follow = b.find("#task-output-state").unwrap();
    assert_eq!(b.attr(&follow, "data-follow").as_deref(), Some("following"));

    b.click_css("#cancel-button:not([disabled])", LOAD);
    dash.wait_panel_state(&t.id, "cancelled", LOAD);
    wait_task(&mut admin, &t.id, pb::TaskState::Cancelled, LOAD).await;
    b.poll(LOAD, "the cancel button goes away", || {
        b.find("#cancel-button[hidden]").map(|_| ())
    });
    b.poll(LOAD, "the log stream ends", || {
        let el = b.find("#task-output-state")?;
        (b.attr(&el, "data-follow").as_deref() == Some("ended")).then_some(())
    });
    b.poll(LOAD, "the worker holds no task on screen", || {
        let row = b.find("tr[data-worker=\"alpha\"]")?;
        let cells = b.text(&row);
        cells.contains("0/4").then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_is_drained_and_undrained_with_its_button() {
    let _one = ONE_BROWSER.lock().await;
    let Some(dash) = Dash::start("dashboard drain", &["alpha", "beta"]).await else {
        return;
    };
    dash.open();
    dash.wait_worker_status("beta", "Active", LOAD);
    let b = &dash.browser;
    let mut admin = dash.master.admin().await;

    b.click_css("button[data-drain=\"beta\"]", LOAD);
    dash.wait_worker_status("beta", "Draining", LOAD);
    wait_state(&mut admin, "beta", pb::WorkerState::Draining, LOAD).await;
    assert_eq!(dash.worker_status("alpha").as_deref(), Some("Active"));

    // A drained worker gets no new task: one submitted now lands on alpha.
    let t = submit(&mut admin, "true", 0.5).await;
    let t = wait_task(&mut admin, &t.id, pb::TaskState::Succeeded, LOAD).await;
    assert_eq!(t.worker_name, "alpha");

    b.click_css("button[data-drain=\"beta\"][data-action=\"undrain\"]", LOAD);
    dash.wait_worker_status("beta", "Active", LOAD);
    wait_state(&mut admin, "beta", pb::WorkerState::Active, LOAD).await;

    // The scheduler is switched from its menu too.
    b.click_css("#scheduler-select", LOAD);
    b.click_css("#scheduler-select option[value=\"round-robin\"]", LOAD);
    let deadline = Deadline::new(LOAD, "the master uses round-robin");
    loop {
        let name = admin
            .scheduler(pb::SchedulerRequest::default())
            .await
            .unwrap()
            .into_inner()
            .name;
        if name == "round-robin" {
            break;
        }
        deadline.wait().await;
    }
}

/// The master restarts under an open page: the page says it lost the stream, comes back
/// by itself, and shows what happens on the new master live (whose event ids start anew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_comes_back_by_itself_after_a_master_restart() {
    let _one = ONE_BROWSER.lock().await;
    let http = format!("127.0.0.1:{}", free_port());
    let Some(mut dash) = Dash::start_on("dashboard master restart", &["alpha"], &http).await else {
        return;
    };
    // Some events on the first master, so the page has seen ids the new one reuses.
    let mut admin = dash.master.admin().await;
    for _ in 0..3 {
        let t = submit(&mut admin, "true", 0.5).await;
        wait_task(&mut admin, &t.id, pb::TaskState::Succeeded, LOAD).await;
    }
    dash.open();
    let b = &dash.browser;
    dash.wait_worker_status("alpha", "Active", LOAD);
    let live = |want: bool| {
        b.poll(LOAD, &format!("the stream is live: {want}"), || {
            let el = b.find("#live-status")?;
            (b.attr(&el, "data-live").as_deref().map(|s| s == "live") == Some(want)).then_some(())
        })
    };
    live(true);
    b.exec("window.__sameDocument = true", vec![]);

    dash.master.kill9();
    live(false);
    let dir = dash.master.log.parent().unwrap().to_path_buf();
    let data = dash.master.data_dir.clone();
    dash.master = Master::start_on(&dir, &data, dash.master.addr.port(), &master_args(&http));
    live(true);

    // The worker reconnects to the new master and shows Active; a task submitted there
    // shows up live and succeeds on screen.
    let mut admin = dash.master.admin().await;
    wait_state(&mut admin, "alpha", pb::WorkerState::Active, LOAD).await;
    dash.wait_worker_status("alpha", "Active", LOAD);
    let t = submit(&mut admin, "echo after the restart", 0.5).await;
    b.poll(LOAD, "the new task shows succeeded", || {
        let row = b.find(&format!("tr[data-task=\"{}\"]", t.id))?;
        (b.attr(&row, "data-state").as_deref() == Some("succeeded")).then_some(())
    });
    assert_eq!(
        b.exec("return window.__sameDocument === true", vec![]),
        json!(true),
        "the page was reloaded"
    );
}

/// A task that writes more than the panel keeps: followed to its last line, with the
/// page holding only the tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_output_is_followed_to_its_last_line() {
    let _one = ONE_BROWSER.lock().await;
    let Some(dash) = Dash::start("dashboard big output", &["alpha"]).await else {
        return;
    };
    let mut admin = dash.master.admin().await;
    // About 3.4 MB of numbered lines, written once the page follows (the go file).
    let go = dash.master.log.parent().unwrap().join("go");
    let command = format!(
        "while [ ! -e {go} ]; do sleep 0.05; done; \
         for i in 1 2 3 4 5; do seq $(( (i-1)*100000+1 )) $(( i*100000 )); sleep 0.2; done; \
         echo the-end",
        go = go.display()
    );
    let t = submit(&mut admin, &command, 0.5).await;
    dash.browser.goto(&format!(
        "{}/#token={}&task/{}",
        dash.base, dash.token, t.id
    ));
    dash.wait_panel_state(&t.id, "running", LOAD);
    let b = &dash.browser;
    b.wait_for("#task-output-state[data-follow=\"following\"]", LOAD);
    std::fs::write(&go, "").unwrap();
    dash.wait_panel_state(&t.id, "succeeded", LOAD);
    dash.wait_output("499999\n500000\nthe-end", LOAD);
    let len = b
        .exec(
            "return document.getElementById('task-output').textContent.length",
            vec![],
        )
        .as_u64()
        .unwrap();
    assert!(len <= 2 << 20, "the page holds {len} characters of output");
    assert!(
        dash.output().starts_with("[… earlier output trimmed]"),
        "the page says it trimmed"
    );
    b.poll(LOAD, "the log stream ends", || {
        let el = b.find("#task-output-state")?;
        (b.attr(&el, "data-follow").as_deref() == Some("ended")).then_some(())
    });
}

/// More tasks than a page: newest first, and the older page behind a button.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_paged_newest_first() {
    let _one = ONE_BROWSER.lock().await;
    let Some(dash) = Dash::start("dashboard task pages", &["alpha"]).await else {
        return;
    };
    let mut admin = dash.master.admin().await;
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(submit(&mut admin, "true", 0.1).await.id);
    }
    dash.open();
    let b = &dash.browser;
    let shown = |what: &str| {
        b.poll(LOAD, what, || {
            let rows = b.find_all("#tasks-body tr[data-task]");
            let ids: Vec<String> = rows.iter().filter_map(|r| b.attr(r, "data-task")).collect();
            (ids.len() == rows.len() && !ids.is_empty()).then_some(ids)
        })
    };
    let first = shown("the first page");
    assert_eq!(first.len(), 50);
    assert_eq!(first[0], ids[59], "newest first");
    assert_eq!(first[49], ids[10]);

    b.click_css("#tasks-next:not([disabled])", LOAD);
    b.poll(LOAD, "the second page", || {
        let rows = b.find_all("#tasks-body tr[data-task]");
        let ids: Vec<String> = rows.iter().filter_map(|r| b.attr(r, "data-task")).collect();
        (ids.len() == 10).then_some(())
    });
    let second = shown("the second page");
    assert_eq!(second.first(), Some(&ids[9]));
    assert_eq!(second.last(), Some(&ids[0]));
    b.click_css("#tasks-prev:not([disabled])", LOAD);
    b.poll(LOAD, "back on the first page", || {
        let row = b.find("#tasks-body tr[data-task]")?;
        (b.attr(&row, "data-task").as_deref() == Some(ids[59].as_str())).then_some(())
    });
}

mod scale;
