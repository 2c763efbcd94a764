//! README.md says what the programs do: every REPL line it shows parses, every herdctl line
//! it shows parses, and every flag and environment variable in its configuration tables is
//! one the program really takes.

use herd_testkit as common;

use std::process::Command;

use common::{MASTER, WORKER};

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

fn help(program: impl AsRef<std::ffi::OsStr>) -> String {
    let out = Command::new(program).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The table rows under the line `heading` (up to the next blank line after the table).
fn table_after<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| l.trim() != heading)
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .collect()
}

fn words_like(cell: &str, starts: &str, ok: impl Fn(char) -> bool) -> Vec<String> {
    cell.split(|c: char| !(ok(c) || starts.contains(c)))
        .filter(|w| w.starts_with(starts) && w.len() > starts.len())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_flag_and_variable_in_the_tables_is_real() {
    let text = readme();
    for (heading, program) in [("herd-master:", MASTER), ("herd-worker:", WORKER)] {
        let rows = table_after(&text, heading);
        assert!(rows.len() > 5, "no table under {heading}");
        let help = help(program);
        for row in rows {
            let cells: Vec<&str> = row.split('|').collect();
            let flags = words_like(cells[1], "--", |c| c.is_ascii_lowercase() || c == '-');
            assert!(!flags.is_empty(), "{row}");
            for flag in flags {
                assert!(
                    help.contains(&flag),
                    "{heading} README names {flag}, --help does not"
                );
            }
            let vars = words_like(cells[2], "", |c| c.is_ascii_uppercase() || c == '_');
            for var in vars.iter().filter(|v| v.len() > 3) {
                assert!(
                    help.contains(&format!("env: {var}")),
                    "{heading} README names {var}"
                );
            }
        }
    }
}

#[test]
fn every_repl_and_herdctl_line_it_shows_parses() {
    let text = readme();
    let mut checked = 0;
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("master> ") {
            herd_console::command::parse_line(rest).unwrap_or_else(|e| panic!("'{rest}': {e}"));
            checked += 1;
        }
    }
    // herdctl in inline code: `... herdctl ARGS` (options before the command skipped).
    for code in text.split('`').skip(1).step_by(2) {
        let Some((_, args)) = code.split_once("herdctl ") else {
            continue;
        };
        let words = shlex::split(args).unwrap();
        let mut words = words.as_slice();
        while let [first, rest @ ..] = words
            && first.starts_with("--")
        {
            words = if matches!(first.as_str(), "--json") {
                rest
            } else {
                &rest[1.min(rest.len())..]
            };
        }
        if words.is_empty() {
            continue;
        }
        // herdctl's own word, not the grammar's: `herdctl completions SHELL`.
        if words[0] == "completions" {
            let shells = herd_console::shell::shells();
            assert!(
                words.len() == 2 && (words[1] == "SHELL" || shells.contains(words[1].as_str())),
                "'{code}': herdctl completions takes one of {shells}"
            );
            checked += 1;
            continue;
        }
        herd_console::command::parse_words(words).unwrap_or_else(|e| panic!("'{code}': {e}"));
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} lines checked");
}

#[test]
fn the_scripts_it_names_exist_and_run() {
    let text = readme();
    for word in text.split(|c: char| c.is_whitespace() || c == '`' || c == '(' || c == ')') {
        if let Some(script) = word.strip_prefix("scripts/").filter(|s| s.ends_with(".sh")) {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("scripts")
                .join(script);
            let meta = std::fs::metadata(&path).unwrap_or_else(|_| panic!("{script} is missing"));
            assert!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0);
        }
    }
}

#[test]
fn setup_podman_keeps_an_existing_config_and_adds_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("containers.conf");
    let mine =
        "[network]\nnetwork_backend = \"netavark\"\n[engine]\ncgroup_manager = \"cgroupfs\"\n";
    std::fs::write(&conf, mine).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup-podman.sh");
    for _ in 0..2 {
        let status = Command::new("bash")
            .args([script, "--config-only"])
            .env("HERD_CONTAINERS_CONF", &conf)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let text = std::fs::read_to_string(&conf).unwrap();
    for line in mine.lines() {
        assert!(text.contains(line), "lost {line:?}: {text}");
    }
    assert_eq!(text.matches("runtime = \"runc\"").count(), 1, "{text}");
    assert_eq!(text.matches("default_ulimits = []").count(), 1, "{text}");
}

/// README's command list ("REPL and herdctl") and `help` say the same: every command of
/// `help` is in README with every flag `help` gives it.
#[test]
fn the_command_list_has_every_command_and_flag_of_help() {
    let text = readme();
    let start = text.find("### REPL and herdctl").expect("the section");
    let block = text[start..].split("```").nth(1).expect("its command list");
    // An entry: a line that starts at the margin, and the indented lines after it.
    let mut entries: Vec<String> = Vec::new();
    for line in block.lines() {
        match (line.starts_with(' '), entries.last_mut()) {
            (true, Some(entry)) => {
                entry.push('\n');
                entry.push_str(line);
            }
            _ => entries.push(line.to_string()),
        }
    }
    let mut checked = 0;
    for entry in herd_console::command::HELP.lines() {
        if !entry.starts_with("  ") || entry.starts_with("   ") {
            continue;
        }
        // "  task logs <id> [--all] [--follow]   its output...": the grammar part.
        let grammar = entry.trim().split("  ").next().unwrap_or_default();
        let words: Vec<&str> = grammar
            .split_whitespace()
            .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase()))
            .collect();
        if words.is_empty() || words == ["help"] || words == ["exit"] {
            continue;
        }
        let head = words.join(" ");
        let found: Vec<&String> = entries
            .iter()
            .filter(|e| {
                let first = e.lines().next().unwrap_or_default();
                first.starts_with(&head) || first.contains(&format!("| {head}"))
            })
            .collect();
        assert!(!found.is_empty(), "README's command list lacks '{head}'");
        for flag in grammar
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--"))
        {
            assert!(
                found.iter().any(|e| e.contains(flag)),
                "README's '{head}' lacks {flag} (help: {grammar})"
            );
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} commands checked");
}
