//! Every limit a value that crosses a boundary is held to (lengths, counts, sizes,
//! ranges): validation, the error messages and the API documents read them from here.

/// Longest worker name accepted (a DNS label is 63; leave room for suffixes like `-gpu0`).
pub const MAX_NAME_LEN: usize = 128;

/// Most labels a worker may carry.
pub const MAX_LABELS: usize = 64;

/// Longest label key or value.
pub const MAX_LABEL_LEN: usize = 256;

/// Longest reason or message the master keeps with a task (longer ones are cut, with a
/// marker saying so).
pub const MAX_REASON_LEN: usize = 1024;

/// Longest task id a worker may speak of (ids are `t-` and a number).
pub const MAX_TASK_ID_LEN: usize = 64;

/// Most task attempts one heartbeat may list as held, or as finished.
pub const MAX_HELD: usize = 10_000;

/// Longest worker secret accepted (the master issues 64 hex digits).
pub const MAX_SECRET_LEN: usize = 128;

/// Longest shell command accepted for a task.
pub const MAX_COMMAND_LEN: usize = 64 * 1024;

/// Longest container image reference accepted.
pub const MAX_IMAGE_LEN: usize = 512;

/// Largest gRPC message accepted by any herd program.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Largest piece of task output in one message.
pub const MAX_OUTPUT_CHUNK: usize = 64 * 1024;

/// Output kept per task (the most recent bytes); older output is dropped.
pub const MAX_LOG_BYTES: usize = 1024 * 1024;

/// The range of task priorities.
pub const PRIORITIES: std::ops::RangeInclusive<i32> = -1000..=1000;

/// Names of workers and operator tokens: letters, digits, `.`, `_` and `-`, starting with
/// a letter or a digit (checked by `validate_worker_name` and `validate_token_name`).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]*$";

/// Text without control characters (Unicode `Cc`: what `char::is_control` refuses).
pub const NO_CONTROL_PATTERN: &str = "^[^\\x00-\\x1f\\x7f-\\x9f]*$";

/// Label keys: letters, digits, `.`, `_`, `/` and `-`, starting with a letter or a digit
/// (at most [`MAX_LABEL_LEN`]); see [`is_label_key`].
pub const LABEL_KEY_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._/-]*$";

/// Whether `key` is a label key ([`LABEL_KEY_PATTERN`]).
pub fn is_label_key(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_alphanumeric())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
}

/// Page tokens of the lists numbered newest first (tasks, audit): empty (the first page)
/// or up to 19 digits.
pub const NUMBERED_PAGE_TOKEN_PATTERN: &str = "^[0-9]{0,19}$";
