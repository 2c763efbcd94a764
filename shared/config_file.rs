//! Config files for herd-master and herd-worker: `--config FILE` (`HERD_CONFIG`), else
//! `/etc/herd/<program>.toml` when it exists. Every flag's long name is a key
//! (`heartbeat-timeout = "15s"`, `label = ["zone=a", "ssd"]`, `no-repl = true`).
//! Precedence: a flag, then its environment variable, then the file, then the default.
//!
//! The file is read with the `toml` crate and each value is checked by the flag's own
//! parser, so a file accepts exactly what the command line does; an unknown key or a bad
//! value is an error naming the file, the line, the key and what is allowed.
//! `--print-config` prints the effective configuration as TOML, each value with where it
//! came from, secrets masked.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};

/// The id of the `--config` flag ([`FileFlags`]).
pub const CONFIG_ID: &str = "config_file";
/// The id of `--print-config`.
pub const PRINT_ID: &str = "print_config";

/// The flags of a program that reads a config file (flattened into its command line).
#[derive(Debug, Clone, clap::Args)]
pub struct FileFlags {
    /// Read settings from this TOML file: each key is a flag's long name
    /// (`heartbeat-timeout = "15s"`, `label = ["zone=a"]`). A flag, then its environment
    /// variable, win over it [default: /etc/herd/master.toml or /etc/herd/worker.toml,
    /// when it exists]
    #[arg(
        long = "config",
        id = "config_file",
        env = "HERD_CONFIG",
        value_name = "FILE"
    )]
    pub config_file: Option<PathBuf>,
    /// Print the effective configuration as TOML, with where each value came from
    /// (flag, environment, file, default; secrets masked), and exit
    #[arg(long)]
    pub print_config: bool,
}

/// Flags that are not settings: never keys of a file, never printed.
const NOT_SETTINGS: &[&str] = &[CONFIG_ID, PRINT_ID, "help", "version"];

/// A parsed command line with its file merged in.
pub struct Parsed<T> {
    pub cli: T,
    matches: ArgMatches,
    /// The file read, if any.
    file: Option<PathBuf>,
    /// The settings that came from the file.
    from_file: Vec<FromFile>,
}

/// A setting the file supplied: its key, its line, and its value as written.
struct FromFile {
    key: String,
    line: Option<usize>,
    value: String,
}

/// Parses the command line of a program whose default config file is `default_file`, with
/// the file merged in. A bad command line or file ends the program with clap's usage
/// error (exit code 2), as a bad flag always did.
pub fn parse<T: CommandFactory + FromArgMatches>(default_file: &str) -> Parsed<T> {
    let args: Vec<OsString> = std::env::args_os().collect();
    match parse_from(args, Path::new(default_file)) {
        Ok(parsed) => parsed,
        Err(err) => err.exit(),
    }
}

/// [`parse`] over given arguments (the first is the program's name).
pub fn parse_from<T: CommandFactory + FromArgMatches>(
    args: Vec<OsString>,
    default_file: &Path,
) -> Result<Parsed<T>, clap::Error> {
    let mut command = T::command();
    let first = command.try_get_matches_from_mut(args.clone())?;
    let path = match first.get_one::<PathBuf>(CONFIG_ID) {
        Some(path) => Some(path.clone()),
        None => default_file.exists().then(|| default_file.to_path_buf()),
    };
    let Some(path) = path else {
        let cli = T::from_arg_matches(&first)?;
        return Ok(Parsed {
            cli,
            matches: first,
            file: None,
            from_file: Vec::new(),
        });
    };
    let text = std::fs::read_to_string(&path).map_err(|err| {
        command.error(
            clap::error::ErrorKind::Io,
            format!("cannot read the config file {}: {err}", path.display()),
        )
    })?;
    let (extra, from_file) = file_args(&mut command, &first, &path, &text)?;
    let mut merged = vec![args[0].clone()];
    merged.extend(extra);
    merged.extend(args.into_iter().skip(1));
    // Each value is checked by its flag's own parser: a file takes what the command line
    // takes, and a refusal names the file's line.
    let matches = T::command()
        .try_get_matches_from(merged)
        .map_err(|err| blame(err, &mut command, &path, &from_file))?;
    let cli = T::from_arg_matches(&matches)?;
    Ok(Parsed {
        cli,
        matches,
        file: Some(path),
        from_file,
    })
}

/// The file's settings as command-line arguments, leaving out every key whose flag was
/// given on the command line or in the environment; and the keys used, with their lines.
type FileArgs = (Vec<OsString>, Vec<FromFile>);

fn file_args(
    command: &mut clap::Command,
    given: &ArgMatches,
    path: &Path,
    text: &str,
) -> Result<FileArgs, clap::Error> {
    let fail = |command: &mut clap::Command, line: Option<usize>, message: String| {
        let at = match line {
            Some(line) => format!("{}:{line}", path.display()),
            None => path.display().to_string(),
        };
        command.error(
            clap::error::ErrorKind::InvalidValue,
            format!("{at}: {message}"),
        )
    };
    let table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(err) => {
            let line = err.span().map(|span| line_of(text, span.start));
            let message = format!("not valid TOML: {}", err.message());
            return Err(fail(command, line, message));
        }
    };
    let mut out = Vec::new();
    let mut used = Vec::new();
    for (key, value) in &table {
        let line = key_line(text, key);
        let Some(arg) = settings(command).find(|a| a.get_long() == Some(key.as_str())) else {
            let keys: Vec<String> = settings(command)
                .filter_map(|a| a.get_long().map(String::from))
                .collect();
            let message = format!(
                "unknown key `{key}`; the keys are the flags' long names: {}",
                keys.join(", ")
            );
            return Err(fail(command, line, message));
        };
        let arg = arg.clone();
        let id = arg.get_id().as_str().to_string();
        if matches!(
            given.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        used.push(FromFile {
            key: key.clone(),
            line,
            value: value.to_string(),
        });
        let flag = format!("--{key}");
        let is_switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        if is_switch {
            match value {
                toml::Value::Boolean(true) => out.push(flag.into()),
                toml::Value::Boolean(false) => {}
                other => {
                    let message = format!("`{key}` is a switch: true or false, not {other}");
                    return Err(fail(command, line, message));
                }
            }
            continue;
        }
        let many = matches!(arg.get_action(), ArgAction::Append);
        let values: Vec<&toml::Value> = match value {
            toml::Value::Array(items) if many => items.iter().collect(),
            toml::Value::Array(_) => {
                let message = format!("`{key}` takes one value, not a list");
                return Err(fail(command, line, message));
            }
            one => vec![one],
        };
        for value in values {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    let message = format!("`{key}` takes a string or a number, not {other}");
                    return Err(fail(command, line, message));
                }
            };
            out.push(flag.clone().into());
            out.push(text.into());
        }
    }
    Ok((out, used))
}

/// Clap's refusal of a value the file supplied, as the file's error: its line, the key
/// and value, and what clap says is allowed.
fn blame(
    err: clap::Error,
    command: &mut clap::Command,
    path: &Path,
    from_file: &[FromFile],
) -> clap::Error {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(flag)) = err.get(ContextKind::InvalidArg) else {
        return err;
    };
    let key = flag.trim_start_matches("--");
    let key = key.split([' ', '=']).next().unwrap_or(key);
    let Some(FromFile { key, line, value }) = from_file.iter().find(|f| f.key == key) else {
        return err;
    };
    let why = err.to_string();
    let why: Vec<&str> = why
        .lines()
        .map(|l| l.trim_start_matches("error: "))
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    let at = match line {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    };
    command.error(
        clap::error::ErrorKind::InvalidValue,
        format!("{at}: `{key} = {value}`: {}", why.join(" ")),
    )
}

fn settings(command: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    command
        .get_arguments()
        .filter(|a| !NOT_SETTINGS.contains(&a.get_id().as_str()) && !a.is_hide_set())
        .filter(|a| a.get_long().is_some())
}

/// The 1-based line of byte `at`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// The line where `key` is set (`key =` at the start of a line).
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .or_else(|| l.strip_prefix(&format!("\"{key}\"")))
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

impl<T> Parsed<T> {
    /// The effective configuration as TOML (a valid config file), each value followed by
    /// where it came from; tokens, secrets and passwords masked.
    pub fn render<C: CommandFactory>(&self) -> String {
        let command = C::command();
        let mut out = String::new();
        if let Some(path) = &self.file {
            let _ = writeln!(out, "# config file: {}", path.display());
        }
        for arg in settings(&command) {
            let key = arg.get_long().expect("settings have long names");
            let id = arg.get_id().as_str();
            let source = match self.matches.value_source(id) {
                None => {
                    let _ = writeln!(out, "# {key} = (not set)");
                    continue;
                }
                Some(ValueSource::DefaultValue) => "default".to_string(),
                Some(ValueSource::EnvVariable) => match arg.get_env() {
                    Some(env) => format!("environment {}", env.to_string_lossy()),
                    None => "environment".into(),
                },
                Some(ValueSource::CommandLine) => self.file_source(key),
                Some(_) => "unknown".into(),
            };
            let values: Vec<String> = self
                .matches
                .get_raw(id)
                .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let values: Vec<String> = values.iter().map(|v| mask(key, v)).collect();
            let value = match arg.get_action() {
                ArgAction::SetTrue | ArgAction::SetFalse => {
                    let on = self.matches.get_flag(id);
                    on.to_string()
                }
                ArgAction::Append => format!(
                    "[{}]",
                    values
                        .iter()
                        .map(|v| quote(v))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                _ => values.first().map(|v| quote(v)).unwrap_or_default(),
            };
            let _ = writeln!(out, "{key} = {value}  # {source}");
        }
        out
    }

    /// "flag", or "file PATH:LINE" for a value the file supplied.
    fn file_source(&self, key: &str) -> String {
        let used = self.from_file.iter().find(|f| f.key == key);
        match (&self.file, used.map(|f| f.line)) {
            (Some(path), Some(Some(line))) => format!("file {}:{line}", path.display()),
            (Some(path), Some(None)) => format!("file {}", path.display()),
            _ => "flag".into(),
        }
    }
}

/// A TOML string.
fn quote(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// `value` as it may be shown: a token, secret or password as `****`, a URL without its
/// password.
pub fn mask(key: &str, value: &str) -> String {
    let secret = ["token", "secret", "password"]
        .iter()
        .any(|word| key.contains(word));
    if secret && !value.is_empty() {
        return "****".into();
    }
    match value.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((who, host)) => match who.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:****@{host}"),
                None => value.to_string(),
            },
            None => value.to_string(),
        },
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests;
