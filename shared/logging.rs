//! How herd's programs log: `tracing` lines as text for people (colour only on a terminal
//! without `NO_COLOR`) or one JSON object per line for log shippers (`--log-format json`),
//! filtered by `--log-level` (else `HERD_LOG`, else `info`). Tokens and secrets are never
//! logged, whatever the format.

use std::io::IsTerminal;

use clap::{Args, ValueEnum};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::error::Error;

/// The logging flags every long-running program takes.
#[derive(Debug, Clone, Default, Args)]
pub struct LogOptions {
    /// `text` (for people) or `json` (one object per line: timestamp, level, target,
    /// fields; for log shippers).
    #[arg(long, env = "HERD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// What to log: a level (`error`, `warn`, `info`, `debug`, `trace`) or a filter like
    /// `info,herd_master=debug` [default: `HERD_LOG`, else info].
    #[arg(long)]
    pub log_level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogOptions {
    /// The filter: `--log-level`, else `HERD_LOG`, else `info`. A filter that does not
    /// parse is an error naming it (from the flag; from `HERD_LOG`, `info` is used).
    fn filter(&self) -> Result<EnvFilter, Error> {
        match &self.log_level {
            Some(level) => EnvFilter::try_new(level).map_err(|e| {
                Error::invalid(format!(
                    "--log-level '{}' is not a level (error, warn, info, debug, trace) or a \
                     filter like info,herd_master=debug: {e}",
                    crate::text::clip(level)
                ))
            }),
            None => {
                Ok(EnvFilter::try_from_env("HERD_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
            }
        }
    }

    /// Sets up logging: every line through `writer`.
    pub fn init<W>(&self, writer: W) -> Result<(), Error>
    where
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        let filter = self.filter()?;
        let layer = match self.log_format {
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_writer(writer)
                .boxed(),
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_ansi(
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                )
                .with_writer(writer)
                .boxed(),
        };
        tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .init();
        Ok(())
    }

    /// Sets up logging for a program with an operator at its terminal (the master's REPL):
    /// everything the filter lets through goes to `file` (in the chosen format), and only
    /// warnings and errors also reach the `screen`, as text, so task events do not scroll
    /// the operator's work away.
    pub fn init_split<F, W>(&self, file: F, screen: W) -> Result<(), Error>
    where
        F: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        let filter = self.filter()?;
        let to_file = match self.log_format {
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_writer(file)
                .boxed(),
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(file)
                .boxed(),
        };
        tracing_subscriber::registry()
            .with(to_file.with_filter(filter))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::env::var_os("NO_COLOR").is_none())
                    .with_writer(screen)
                    .with_filter(LevelFilter::WARN),
            )
            .init();
        Ok(())
    }
}
