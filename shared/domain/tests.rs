//! Tests of the validation at the edge.
use super::*;

fn description() -> pb::WorkerDescription {
    pb::WorkerDescription {
        name: "node-1".into(),
        host: "node-1.lan".into(),
        address: "10.0.0.1".into(),
        version: "0.1.0".into(),
        capacity: Some(pb::Resources {
            cpu: 8.0,
            memory_gb: 16.0,
            gpu: 1,
            disk_gb: 0.0,
        }),
        labels: [("zone".to_string(), "a".to_string())].into(),
        container_runtime: "podman".into(),
        ..Default::default()
    }
}

#[test]
fn a_good_description_is_accepted() {
    let spec = WorkerSpec::try_from(description()).unwrap();
    assert_eq!(spec.name, "node-1");
    assert_eq!(spec.runtime, Some(Runtime::Podman));
    assert_eq!(spec.capacity.gpu, 1);
}

#[test]
fn bad_descriptions_are_refused_with_a_reason() {
    type Mutation = fn(&mut pb::WorkerDescription);
    let cases: Vec<(Mutation, &str)> = vec![
        (|d| d.name.clear(), "empty"),
        (|d| d.name = "a b".into(), "contains"),
        (|d| d.name = "-x".into(), "start with"),
        (|d| d.name = "x".repeat(500), "at most"),
        (|d| d.capacity = None, "no capacity"),
        (|d| d.capacity.as_mut().unwrap().cpu = -1.0, "cpu"),
        (|d| d.capacity.as_mut().unwrap().cpu = f64::NAN, "cpu"),
        (
            |d| d.capacity.as_mut().unwrap().memory_gb = 1e12,
            "memory_gb",
        ),
        (|d| d.capacity.as_mut().unwrap().gpu = 1_000_000, "gpu"),
        (|d| d.container_runtime = "lxc".into(), "runtime"),
        (
            |d| {
                d.labels.insert(String::new(), "v".into());
            },
            "empty key",
        ),
    ];
    for (mutate, expected) in cases {
        let mut d = description();
        mutate(&mut d);
        let err = WorkerSpec::try_from(d).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains(expected)),
            "{err:?} should mention {expected:?}"
        );
    }
}

fn spec() -> pb::TaskSpec {
    pb::TaskSpec {
        name: "t".into(),
        image: String::new(),
        command: "echo hi".into(),
        resources: Some(pb::Resources {
            cpu: 1.0,
            memory_gb: 0.0,
            gpu: 0,
            disk_gb: 0.0,
        }),
        ..Default::default()
    }
}

#[test]
fn task_specs_are_checked_once() {
    assert!(TaskSpec::try_from(spec()).is_ok());
    type Mutation = fn(&mut pb::TaskSpec);
    let cases: Vec<(Mutation, &str)> = vec![
        (|t| t.command.clear(), "--command"),
        (|t| t.resources.as_mut().unwrap().cpu = 0.0, "--cpu"),
        (
            |t| t.resources.as_mut().unwrap().cpu = f64::INFINITY,
            "--cpu",
        ),
        (
            |t| t.resources.as_mut().unwrap().memory_gb = -1.0,
            "--memory",
        ),
        (|t| t.image = "a b".into(), "image reference"),
        (|t| t.command = "x".repeat(MAX_COMMAND_LEN + 1), "at most"),
    ];
    for (mutate, expected) in cases {
        let mut t = spec();
        mutate(&mut t);
        let err = TaskSpec::try_from(t).unwrap_err().to_string();
        assert!(err.contains(expected), "{err} should mention {expected}");
    }
}

#[test]
fn states_round_trip_through_their_words() {
    for s in TaskState::ALL {
        assert_eq!(TaskState::parse(s.as_str()), Some(s));
    }
}

#[test]
fn names_shaped_like_ids_are_refused_and_bad_usage_too() {
    assert!(looks_like_worker_id("w-0123abcd"));
    assert!(!looks_like_worker_id("w-0123abcde"));
    assert!(!looks_like_worker_id("web-1"));
    let err = validate_worker_name("w-5c1e0a9f").unwrap_err().to_string();
    assert!(err.contains("shape of a worker id"), "{err}");
    validate_worker_name("w-5c1e0a9f-gpu").unwrap();

    let mut hb = pb::Heartbeat {
        usage: Some(pb::Usage {
            cpu_percent: f64::NAN,
            memory_used_gb: 1.0,
        }),
        ..Default::default()
    };
    let err = check_heartbeat(&hb).unwrap_err().to_string();
    assert!(err.contains("cpu_percent"), "{err}");
    hb.usage = Some(pb::Usage {
        cpu_percent: 5.0,
        memory_used_gb: -1.0,
    });
    assert!(
        check_heartbeat(&hb)
            .unwrap_err()
            .to_string()
            .contains("memory_used_gb")
    );
    hb.usage = None;
    hb.running_task_ids = vec!["t".repeat(65)];
    assert!(
        check_heartbeat(&hb)
            .unwrap_err()
            .to_string()
            .contains("at most 64")
    );
}

#[test]
fn reasons_are_cut_with_a_marker() {
    assert_eq!(bounded_reason("short"), "short");
    let long = "é".repeat(5000);
    let cut = bounded_reason(&long);
    assert!(cut.len() < MAX_REASON_LEN + 64, "{}", cut.len());
    assert!(cut.ends_with("[cut: 10000 bytes in all]"), "{cut}");
}
