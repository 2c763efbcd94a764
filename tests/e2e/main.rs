//! herd's end-to-end tests, one module per area, in one test binary: cargo runs test
//! binaries one after another, so one binary lets the tests of every area run side by
//! side, and links the master, the worker and their stack once instead of once per file.
//! Masters run in-process (`InProcess`) unless a test kills, pauses or reads one; workers,
//! supervisors, containers and the browser are real processes.

mod bounded;
mod crash;
mod dashboard;
mod failover;
mod http;
mod identity;
mod logs;
mod operator;
mod output;
mod partition;
mod pooler;
mod readme;
mod repl;
mod resources;
mod scheduling;
mod service;
mod skeleton;
mod streams;
mod supervisor;
mod takeover;
mod taskopts;
mod tasks;
mod tls;
mod worker_identity;
