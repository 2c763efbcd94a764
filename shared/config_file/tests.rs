//! The config file merged under the command line: what wins, and what a bad file says.

use std::ffi::OsString;
use std::time::Duration;

use clap::Parser;

use super::{Parsed, parse_from};
use crate::config::{MasterConfig, SchedulerKind, WorkerConfig};

#[derive(Parser)]
struct Master {
    #[command(flatten)]
    config: MasterConfig,
    #[command(flatten)]
    file: super::FileFlags,
}

#[derive(Parser)]
struct Worker {
    #[command(flatten)]
    config: WorkerConfig,
    #[command(flatten)]
    file: super::FileFlags,
}

/// Writes `toml` to a file and parses `flags` with it given as `--config`.
fn with_file<T: clap::CommandFactory + clap::FromArgMatches>(
    toml: &str,
    flags: &[&str],
) -> (Result<Parsed<T>, clap::Error>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.toml");
    std::fs::write(&path, toml).unwrap();
    let mut args: Vec<OsString> = vec!["herd".into(), "--config".into(), path.clone().into()];
    args.extend(flags.iter().map(OsString::from));
    (parse_from(args, &dir.path().join("absent.toml")), dir)
}

#[test]
fn a_file_sets_what_no_flag_sets_and_a_flag_wins() {
    let toml = "# the cluster's master\n\
                heartbeat-timeout = \"45s\"\n\
                scheduler = \"bin-pack\"\n\
                max-attempts = 5\n\
                no-repl = true\n";
    let (parsed, _dir) = with_file::<Master>(toml, &["--max-attempts", "2"]);
    let config = parsed.unwrap().cli.config;
    assert_eq!(config.heartbeat_timeout, Duration::from_secs(45));
    assert_eq!(config.scheduler, Some(SchedulerKind::BinPack));
    assert_eq!(config.max_attempts, 2, "the flag wins over the file");
    assert!(config.no_repl);
    // Not in the file: the default.
    assert_eq!(config.check_interval, Duration::from_secs(1));
}

#[test]
fn lists_are_arrays_and_each_item_is_checked() {
    let toml = "label = [\"zone=a\", \"disk=ssd\"]\nname = \"gpu-1\"\n";
    let (parsed, _dir) = with_file::<Worker>(toml, &[]);
    let config = parsed.unwrap().cli.config;
    assert_eq!(config.labels.len(), 2);
    assert_eq!(config.name.as_deref(), Some("gpu-1"));

    let (parsed, _dir) = with_file::<Worker>("\nlabel = [\"zone=a\", \"ssd\"]\n", &[]);
    let err = parsed.err().expect("refused").to_string();
    assert!(err.contains("herd.toml:2"), "{err}");
    assert!(err.contains("label 'ssd' is not key=value"), "{err}");
}

#[test]
fn an_unknown_key_names_its_line_and_the_keys_there_are() {
    let (parsed, dir) =
        with_file::<Master>("listen = \"0.0.0.0:1\"\nheartbeat-timout = \"9s\"\n", &[]);
    let err = parsed.err().expect("refused").to_string();
    let at = format!("{}:2", dir.path().join("herd.toml").display());
    assert!(err.contains(&at), "{err}");
    assert!(err.contains("unknown key `heartbeat-timout`"), "{err}");
    assert!(
        err.contains("heartbeat-timeout"),
        "the keys there are: {err}"
    );
}

#[test]
fn a_bad_value_says_what_is_allowed_and_where() {
    let (parsed, _dir) = with_file::<Master>("\n\nscheduler = \"fastest\"\n", &[]);
    let err = parsed.err().expect("refused").to_string();
    assert!(err.contains("herd.toml:3"), "{err}");
    assert!(err.contains("`scheduler = \"fastest\"`"), "{err}");
    assert!(err.contains("bin-pack"), "the allowed values: {err}");

    let (parsed, _dir) = with_file::<Master>("heartbeat-timeout = \"soon\"\n", &[]);
    let err = parsed.err().expect("refused").to_string();
    assert!(
        err.contains("herd.toml:1") && err.contains("heartbeat-timeout"),
        "{err}"
    );

    let (parsed, _dir) = with_file::<Master>("no-repl = \"yes\"\n", &[]);
    let err = parsed.err().expect("refused").to_string();
    assert!(err.contains("a switch: true or false"), "{err}");

    let (parsed, _dir) = with_file::<Master>("listen = [\"a\", \"b\"]\n", &[]);
    let err = parsed.err().expect("refused").to_string();
    assert!(err.contains("takes one value, not a list"), "{err}");

    let (parsed, _dir) = with_file::<Master>("listen = \n", &[]);
    let err = parsed.err().expect("refused").to_string();
    assert!(
        err.contains("herd.toml:1") && err.contains("not valid TOML"),
        "{err}"
    );
}

#[test]
fn the_default_file_is_read_only_when_it_exists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.toml");
    let parse = |path: &std::path::Path| {
        parse_from::<Master>(vec!["herd-master".into()], path)
            .unwrap()
            .cli
            .config
    };
    assert_eq!(parse(&path).max_attempts, 3, "no file: the default");
    std::fs::write(&path, "max-attempts = 7\n").unwrap();
    assert_eq!(parse(&path).max_attempts, 7);
}

#[test]
fn print_config_says_where_each_value_came_from_and_masks_secrets() {
    let toml = "token = \"s3cr3t-operator-token\"\n\
                store = \"postgres://herd:hunter2@db:5432/herd\"\n\
                max-attempts = 5\n";
    let (parsed, dir) = with_file::<Master>(toml, &["--scheduler", "round-robin"]);
    let text = parsed.unwrap().render::<Master>();
    let file = dir.path().join("herd.toml").display().to_string();
    assert!(
        !text.contains("s3cr3t") && !text.contains("hunter2"),
        "{text}"
    );
    assert!(
        text.contains(&format!("token = \"****\"  # file {file}:1")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "store = \"postgres://herd:****@db:5432/herd\"  # file {file}:2"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("max-attempts = \"5\"  # file {file}:3")),
        "{text}"
    );
    assert!(
        text.contains("scheduler = \"round-robin\"  # flag"),
        "{text}"
    );
    assert!(
        text.contains("check-interval = \"1s\"  # default"),
        "{text}"
    );
    assert!(text.contains("# tls-cert = (not set)"), "{text}");
    // What it prints is itself a config file that gives the same settings.
    let (again, _dir) = with_file::<Master>(&text.replace("\"****\"", "\"x\""), &[]);
    assert_eq!(again.unwrap().cli.config.max_attempts, 5);
}

/// Every setting the packaged default files show (commented out) is a real key with a
/// value its flag takes: uncommented, each file parses.
#[test]
fn the_packaged_config_files_parse_with_every_line_uncommented() {
    fn uncomment(text: &str) -> String {
        text.lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = "))
            .collect::<Vec<_>>()
            .join("\n")
    }
    let master = uncomment(include_str!("../../packaging/etc/master.toml"));
    assert!(master.contains("heartbeat-timeout"), "{master}");
    let (parsed, _dir) = with_file::<Master>(&master, &[]);
    assert_eq!(
        parsed.unwrap().cli.config.heartbeat_timeout,
        Duration::from_secs(30)
    );
    let worker = uncomment(include_str!("../../packaging/etc/worker.toml"));
    let (parsed, _dir) = with_file::<Worker>(&worker, &[]);
    assert!(parsed.unwrap().cli.config.labels.len() == 2);
}
