//! How a task runs, beyond what it needs: its time limit, environment, working directory
//! and retries, and the batches tasks are submitted in. Checked once here, for the
//! gRPC, HTTP and command-line edges alike.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::Error;
use crate::pb;
use crate::text::clip;

/// Longest time limit a task may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 86_400);
/// Most environment variables one task may set.
pub const MAX_ENV_VARS: usize = 128;
/// Longest environment variable name.
pub const MAX_ENV_KEY_LEN: usize = 256;
/// Most bytes of environment (names and values together) one task may set.
pub const MAX_ENV_BYTES: usize = 64 * 1024;
/// Longest working directory path, in characters.
pub const MAX_WORKDIR_LEN: usize = 4096;
/// A working directory: empty (a fresh folder), or an absolute path without control
/// characters (see [`check_workdir`]).
pub const WORKDIR_PATTERN: &str = "^(/[^\\x00-\\x1f\\x7f-\\x9f]*)?$";
/// Environment variable names (see [`is_env_key`]).
pub const ENV_KEY_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";
/// Most re-runs of a task that exits non-zero.
pub const MAX_RETRIES: u32 = 100;
/// Most tasks in one batch (`--count`, `--file`, `SubmitTasks`).
pub const MAX_BATCH: usize = 10_000;
/// The variable that tells each copy of a `--count` batch which one it is.
pub const TASK_INDEX_VAR: &str = "HERD_TASK_INDEX";

/// What the worker does with a task when it is cut off from the master past its fencing
/// deadline (`--on-disconnect`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnDisconnect {
    /// Stop it before the master runs it elsewhere: it never runs on both sides of a
    /// partition.
    #[default]
    Stop,
    /// Leave it running: for a task that must not be interrupted and is safe to run twice.
    Keep,
}

impl OnDisconnect {
    pub fn from_keep(keep: bool) -> OnDisconnect {
        if keep {
            OnDisconnect::Keep
        } else {
            OnDisconnect::Stop
        }
    }

    pub fn keeps(self) -> bool {
        self == OnDisconnect::Keep
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnDisconnect::Stop => "stop",
            OnDisconnect::Keep => "keep",
        }
    }
}

/// The checked run options of a task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOptions {
    pub timeout: Option<Duration>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub retries: u32,
    pub on_disconnect: OnDisconnect,
}

/// Checks the run options of a task spec.
pub fn check(t: &pb::TaskSpec) -> Result<RunOptions, Error> {
    Ok(RunOptions {
        timeout: check_timeout(t.timeout_ms)?,
        env: check_env(t.env.iter())?,
        workdir: check_workdir(&t.workdir)?,
        retries: check_retries(t.retries)?,
        on_disconnect: OnDisconnect::from_keep(t.keep_on_disconnect),
    })
}

/// 0 is no limit; anything else at most [`MAX_TIMEOUT`].
pub fn check_timeout(ms: u64) -> Result<Option<Duration>, Error> {
    if ms == 0 {
        return Ok(None);
    }
    let timeout = Duration::from_millis(ms);
    if timeout > MAX_TIMEOUT {
        return Err(Error::invalid(format!(
            "--timeout must be at most 30 days, got {}",
            crate::time::short(timeout)
        )));
    }
    Ok(Some(timeout))
}

/// Whether `key` can be an environment variable name a shell can read: letters, digits
/// and `_`, not starting with a digit.
pub fn is_env_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a task's environment: names of the shape [`is_env_key`], values without NUL,
/// bounded in count and size.
pub fn check_env<'a>(
    vars: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<BTreeMap<String, String>, Error> {
    if vars.len() > MAX_ENV_VARS {
        return Err(Error::invalid(format!(
            "{} environment variables given (--env); at most {MAX_ENV_VARS} are allowed",
            vars.len()
        )));
    }
    let mut env = BTreeMap::new();
    let mut bytes = 0;
    for (key, value) in vars {
        if key.len() > MAX_ENV_KEY_LEN {
            return Err(Error::invalid(format!(
                "an --env name is {} bytes long; at most {MAX_ENV_KEY_LEN} are allowed",
                key.len()
            )));
        }
        if !is_env_key(key) {
            return Err(Error::invalid(format!(
                "--env name '{}' is not a variable name: use letters, digits and '_', not \
                 starting with a digit",
                clip(&key.escape_debug().to_string())
            )));
        }
        if value.contains('\0') {
            return Err(Error::invalid(format!(
                "--env {} has a NUL character in its value",
                clip(key)
            )));
        }
        bytes += key.len() + value.len();
        env.insert(key.clone(), value.clone());
    }
    if bytes > MAX_ENV_BYTES {
        return Err(Error::invalid(format!(
            "the environment (--env) is {bytes} bytes; at most {MAX_ENV_BYTES} are allowed"
        )));
    }
    Ok(env)
}

/// Empty is none; anything else an absolute path without control characters.
pub fn check_workdir(path: &str) -> Result<Option<String>, Error> {
    if path.is_empty() {
        return Ok(None);
    }
    let chars = path.chars().count();
    if chars > MAX_WORKDIR_LEN {
        return Err(Error::invalid(format!(
            "--workdir is {chars} characters long; at most {MAX_WORKDIR_LEN} are allowed"
        )));
    }
    if path.chars().any(char::is_control) {
        return Err(Error::invalid("--workdir contains control characters"));
    }
    if !path.starts_with('/') {
        return Err(Error::invalid(format!(
            "--workdir '{}' must be an absolute path (it is a path on the worker)",
            clip(path)
        )));
    }
    Ok(Some(path.to_string()))
}

pub fn check_retries(retries: u32) -> Result<u32, Error> {
    if retries > MAX_RETRIES {
        return Err(Error::invalid(format!(
            "--retries must be at most {MAX_RETRIES}, got {retries}"
        )));
    }
    Ok(retries)
}

/// Splits `K=V` as typed after `--env` (the value may contain `=`; the name is checked
/// with the rest of the task).
pub fn parse_env_pair(text: &str) -> Result<(String, String), Error> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(Error::invalid(format!(
            "'{}' is not KEY=VALUE",
            clip(&text.escape_debug().to_string())
        ))),
    }
}

/// The tasks of a `SubmitTasks` request, in order, each checked: a batch of `count`
/// copies (each with its [`TASK_INDEX_VAR`]) or the specs as given. The first bad one
/// fails the whole batch, named by its index.
pub fn batch(req: pb::SubmitTasksRequest) -> Result<Vec<super::TaskSpec>, Error> {
    let pb::SubmitTasksRequest { specs, count } = req;
    let count = count as usize;
    if count > 0 {
        if count > MAX_BATCH {
            return Err(Error::invalid(format!(
                "--count must be from 1 to {MAX_BATCH}, got {count}"
            )));
        }
        let [spec] = <[pb::TaskSpec; 1]>::try_from(specs).map_err(|specs| {
            Error::invalid(format!(
                "a batch with a count takes exactly one task spec, got {}",
                specs.len()
            ))
        })?;
        let one = super::TaskSpec::try_from(spec)?;
        let indexed = !one.run.env.contains_key(TASK_INDEX_VAR);
        // The index adds its name and at most 5 digits: it must fit within the bound too.
        if indexed && env_bytes(&one.run.env) + TASK_INDEX_VAR.len() + 5 > MAX_ENV_BYTES {
            return Err(Error::invalid(format!(
                "the environment (--env) leaves no room for {TASK_INDEX_VAR}: at most \
                 {MAX_ENV_BYTES} bytes are allowed"
            )));
        }
        return Ok((0..count)
            .map(|i| {
                let mut copy = one.clone();
                if indexed {
                    copy.run.env.insert(TASK_INDEX_VAR.into(), i.to_string());
                }
                copy
            })
            .collect());
    }
    if specs.is_empty() {
        return Err(Error::invalid("the batch holds no task"));
    }
    if specs.len() > MAX_BATCH {
        return Err(Error::invalid(format!(
            "the batch holds {} tasks; at most {MAX_BATCH} are allowed in one call",
            specs.len()
        )));
    }
    specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            super::TaskSpec::try_from(spec).map_err(|err| match err {
                Error::InvalidArgument(m) => Error::invalid(format!("specs[{i}]: {m}")),
                other => other,
            })
        })
        .collect()
}

fn env_bytes(env: &BTreeMap<String, String>) -> usize {
    env.iter().map(|(k, v)| k.len() + v.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> pb::TaskSpec {
        pb::TaskSpec {
            command: "true".into(),
            resources: Some(pb::Resources {
                cpu: 1.0,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn refused(t: pb::TaskSpec) -> String {
        match super::super::TaskSpec::try_from(t) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn good_run_options_are_taken() {
        let mut t = spec();
        t.timeout_ms = 1500;
        t.env = [("A_1".to_string(), "x=y".to_string())].into();
        t.workdir = "/tmp".into();
        t.retries = 2;
        let task = super::super::TaskSpec::try_from(t.clone()).unwrap();
        assert_eq!(task.run.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(task.run.env["A_1"], "x=y");
        assert_eq!(task.run.workdir.as_deref(), Some("/tmp"));
        assert_eq!(task.run.retries, 2);
        // And back to the wire unchanged.
        assert_eq!(pb::TaskSpec::from(&task), t);
        let plain = super::super::TaskSpec::try_from(spec()).unwrap();
        assert_eq!(plain.run, RunOptions::default());
    }

    #[test]
    fn bad_run_options_are_refused_naming_the_flag_and_its_limit() {
        type Mutation = fn(&mut pb::TaskSpec);
        let cases: Vec<(Mutation, &str)> = vec![
            (
                |t| t.timeout_ms = 31 * 86_400_000,
                "--timeout must be at most",
            ),
            (|t| t.retries = 101, "--retries must be at most 100"),
            (|t| t.workdir = "tmp/x".into(), "absolute"),
            (|t| t.workdir = "/a\nb".into(), "control"),
            (|t| t.workdir = format!("/{}", "a".repeat(5000)), "4096"),
            (
                |t| {
                    t.env.insert("1X".into(), "v".into());
                },
                "not a variable name",
            ),
            (
                |t| {
                    t.env.insert("A-B".into(), "v".into());
                },
                "not a variable name",
            ),
            (
                |t| {
                    t.env.insert(String::new(), "v".into());
                },
                "not a variable name",
            ),
            (
                |t| {
                    t.env.insert("A".into(), "a\0b".into());
                },
                "NUL",
            ),
            (
                |t| {
                    t.env.insert("K".repeat(300), "v".into());
                },
                "at most 256",
            ),
            (
                |t| {
                    for i in 0..129 {
                        t.env.insert(format!("V{i}"), String::new());
                    }
                },
                "at most 128",
            ),
            (
                |t| {
                    t.env.insert("BIG".into(), "x".repeat(70_000));
                },
                "at most 65536 are allowed",
            ),
        ];
        for (mutate, expected) in cases {
            let mut t = spec();
            mutate(&mut t);
            let message = refused(t);
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
            assert!(message.len() < 300, "{message}");
        }
    }

    #[test]
    fn env_pairs_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_env_pair("A=b=c"),
            Ok(("A".to_string(), "b=c".to_string()))
        );
        assert_eq!(parse_env_pair("A="), Ok(("A".to_string(), String::new())));
        assert!(parse_env_pair("A").is_err());
        assert!(parse_env_pair("=v").is_err());
    }

    #[test]
    fn a_counted_batch_gives_each_copy_its_index() {
        let tasks = batch(pb::SubmitTasksRequest {
            specs: vec![spec()],
            count: 3,
        })
        .unwrap();
        let indexes: Vec<&str> = tasks
            .iter()
            .map(|t| t.run.env[TASK_INDEX_VAR].as_str())
            .collect();
        assert_eq!(indexes, ["0", "1", "2"]);
        // The task's own value wins.
        let mut own = spec();
        own.env.insert(TASK_INDEX_VAR.into(), "7".into());
        let tasks = batch(pb::SubmitTasksRequest {
            specs: vec![own],
            count: 2,
        })
        .unwrap();
        assert!(tasks.iter().all(|t| t.run.env[TASK_INDEX_VAR] == "7"));
    }

    #[test]
    fn bad_batches_are_refused_whole_naming_the_task() {
        let err = |req| match batch(req) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        };
        let count = |specs: Vec<pb::TaskSpec>, count| pb::SubmitTasksRequest { specs, count };
        assert!(err(count(vec![spec()], 10_001)).contains("from 1 to 10000"));
        assert!(err(count(vec![spec(), spec()], 2)).contains("exactly one"));
        assert!(err(count(vec![], 2)).contains("exactly one"));
        assert!(err(count(vec![], 0)).contains("no task"));
        assert!(err(count(vec![spec(); 10_001], 0)).contains("at most 10000"));
        let mut bad = spec();
        bad.retries = 1000;
        let message = err(count(vec![spec(), spec(), bad], 0));
        assert!(message.starts_with("specs[2]: --retries"), "{message}");
        let mut full = spec();
        full.env.insert("BIG".into(), "x".repeat(MAX_ENV_BYTES - 3));
        assert!(err(count(vec![full], 2)).contains(TASK_INDEX_VAR));
    }
}
