//! `task submit --file tasks.jsonl`: one task per JSON line, read where the command is
//! typed (herdctl, or the master's REPL), checked line by line with the master's own
//! validation so a bad line is named before anything is sent, then submitted as one batch.

use std::path::Path;

use herd::domain::body::SubmitBody;
use herd::domain::run::MAX_BATCH;
use herd::domain::{MAX_MESSAGE_BYTES, TaskSpec};
use herd::error::Error;
use herd::pb;
use herd::text::clip;

use crate::failure::Failure;

/// The tasks of a file, and the line each came from.
#[derive(Debug)]
pub struct Batch {
    pub specs: Vec<pb::TaskSpec>,
    /// `lines[i]` is the line number (from 1) of `specs[i]`.
    pub lines: Vec<usize>,
}

/// Reads and checks `path`: every non-blank line one task. The first bad line fails the
/// whole file, named by its number.
pub fn read(path: &Path) -> Result<Batch, Failure> {
    let shown = path.display();
    let size = std::fs::metadata(path)
        .map_err(|e| format!("error: cannot read {shown}: {e}"))?
        .len();
    // One call carries at most 1 MiB of tasks; a file far larger cannot be one batch.
    if size > 4 * MAX_MESSAGE_BYTES as u64 {
        return Err(format!(
            "error: {shown} is {size} bytes; one batch carries at most {} bytes of tasks",
            MAX_MESSAGE_BYTES
        )
        .into());
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("error: cannot read {shown}: {e}"))?;
    parse(&text).map_err(|e| format!("error: {shown} {e}").into())
}

/// Parses JSON lines into checked specs (errors start with `line N: `).
pub fn parse(text: &str) -> Result<Batch, Error> {
    let mut batch = Batch {
        specs: Vec::new(),
        lines: Vec::new(),
    };
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() {
            continue;
        }
        if batch.specs.len() == MAX_BATCH {
            return Err(Error::invalid(format!(
                "line {n}: more than {MAX_BATCH} tasks; one batch takes at most {MAX_BATCH}"
            )));
        }
        let body: SubmitBody = serde_json::from_str(line).map_err(|e| {
            Error::invalid(format!("line {n}: not a task: {}", clip(&e.to_string())))
        })?;
        let spec = body
            .into_spec()
            .map_err(|e| Error::invalid(format!("line {n}: {e}")))?;
        TaskSpec::try_from(spec.clone()).map_err(|e| Error::invalid(format!("line {n}: {e}")))?;
        batch.specs.push(spec);
        batch.lines.push(n);
    }
    if batch.specs.is_empty() {
        return Err(Error::invalid(
            "holds no task: write one JSON object per line",
        ));
    }
    Ok(batch)
}

impl Batch {
    /// The master's word on a bad task (`specs[i]: ...`) in terms of the file's lines.
    pub fn explain(&self, path: &Path, message: &str) -> String {
        let line = message
            .strip_prefix("specs[")
            .and_then(|rest| rest.split_once("]: "))
            .and_then(|(i, why)| Some((self.lines.get(i.parse::<usize>().ok()?)?, why)));
        match line {
            Some((n, why)) => format!("error: {} line {n}: {why}", path.display()),
            None => format!("error: {message}"),
        }
    }
}

/// What `task submit --count/--file` prints: the range of ids first.
pub fn submitted(ids: &[String]) -> String {
    match ids {
        [] => "no tasks submitted".into(),
        [one] => format!("{one}: 1 task submitted"),
        [first, .., last] => format!("{first}..{last}: {} tasks submitted", ids.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_specs_and_blank_lines_are_skipped() {
        let batch = parse(
            r#"{"command": "echo a", "cpu": 0.5, "env": {"K": "v"}, "timeout_ms": 1000}

{"command": "echo b", "retries": 2, "workdir": "/tmp", "gpu": 0}
"#,
        )
        .unwrap();
        assert_eq!(batch.lines, [1, 3]);
        assert_eq!(batch.specs[0].resources.unwrap().cpu, 0.5);
        assert_eq!(batch.specs[0].env["K"], "v");
        assert_eq!(batch.specs[0].timeout_ms, 1000);
        assert_eq!(batch.specs[1].retries, 2);
        assert_eq!(batch.specs[1].resources.unwrap().cpu, 1.0, "the default");
    }

    #[test]
    fn the_first_bad_line_is_named() {
        for (text, expected) in [
            (
                "{\"command\": \"a\"}\n{\"command\": \"b\", \"cpus\": 2}",
                "line 2: not a task",
            ),
            ("{\"command\": \"a\"}\n\n[1]", "line 3: not a task"),
            (
                "{\"command\": \"a\"}\n{\"cpu\": 1}",
                "line 2: a task needs --command",
            ),
            (
                "{\"command\": \"a\", \"retries\": 500}",
                "line 1: --retries",
            ),
            (
                "{\"command\": \"a\", \"gpu\": 1.5}",
                "line 1: gpu must be a whole",
            ),
            ("\n\n", "holds no task"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{text:?}: {err}");
        }
        let many = "{\"command\": \"a\"}\n".repeat(MAX_BATCH + 1);
        assert!(
            parse(&many)
                .unwrap_err()
                .to_string()
                .contains("at most 10000")
        );
    }

    #[test]
    fn the_masters_index_is_told_as_a_line() {
        let batch = parse("\n{\"command\": \"a\"}\n\n{\"command\": \"b\"}").unwrap();
        let path = Path::new("t.jsonl");
        assert_eq!(
            batch.explain(path, "specs[1]: --cpu must be above 0"),
            "error: t.jsonl line 4: --cpu must be above 0"
        );
        assert_eq!(
            batch.explain(path, "storage error: x"),
            "error: storage error: x"
        );
        assert_eq!(batch.explain(path, "specs[9]: x"), "error: specs[9]: x");
    }

    #[test]
    fn the_range_of_ids_comes_first() {
        let ids: Vec<String> = (5..=7).map(|n| format!("t-{n}")).collect();
        assert_eq!(submitted(&ids), "t-5..t-7: 3 tasks submitted");
        assert_eq!(submitted(&ids[..1]), "t-5: 1 task submitted");
    }
}
