//! A TCP relay in front of a server that a test can stall: while stalled it stops reading
//! both ways, so bytes wait in the kernel's buffers (the far kernel still acknowledges
//! them, as a link that stopped carrying traffic can look to the sender) and are delivered,
//! in order, once it carries them again, as after a partition that healed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The relay; it runs until the test process ends.
pub struct Relay {
    pub addr: SocketAddr,
    stalled: Arc<AtomicBool>,
}

impl Relay {
    /// A relay on a free port of 127.0.0.1 to `target`.
    pub fn to(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = stalled.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || carry(from, to, &flag));
                }
            }
        });
        Relay { addr, stalled }
    }

    /// Stops carrying bytes, both ways, on every connection.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// Carries bytes again, the ones held first.
    pub fn heal(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }
}

fn carry(mut from: TcpStream, mut to: TcpStream, stalled: &AtomicBool) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        while stalled.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Read just before a stall: held until it heals, like the rest.
        while stalled.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
