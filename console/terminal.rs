//! Just enough terminal control for the live `status` view: wait for one key press with a
//! timeout, without echo, line buffering or signal keys, and restore the terminal afterwards.

use std::io::IsTerminal;
use std::time::Duration;

/// Puts stdin in non-canonical, no-echo mode while alive.
struct RawInput {
    saved: libc::termios,
}

impl RawInput {
    fn enter() -> Option<RawInput> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // ISIG off too: Ctrl-C is a key press that ends the view like any other, rather
        // than a SIGINT that would leave this read behind to swallow the next line typed.
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: as above, with a termios derived from the current one.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawInput { saved })
    }
}

impl Drop for RawInput {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

/// Whether a key was pressed within `timeout` (the key is consumed). False at once when
/// stdin is not a terminal.
pub fn key_pressed_within(timeout: Duration) -> bool {
    let Some(_raw) = RawInput::enter() else {
        return false;
    };
    let mut poll = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as i32) };
    if ready > 0 {
        let mut byte = [0u8; 8];
        // SAFETY: reading into a local buffer from a readable fd.
        unsafe { libc::read(libc::STDIN_FILENO, byte.as_mut_ptr().cast(), byte.len()) };
        return true;
    }
    false
}
