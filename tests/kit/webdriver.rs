//! A small WebDriver client for end-to-end tests in a real browser: it starts Debian's
//! `chromedriver` on a free port, opens one headless Chromium session, and speaks the W3C
//! WebDriver protocol (JSON over HTTP/1.1) with nothing but std and serde_json.
//! Every wait polls with a deadline; nothing sleeps blindly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where the browser and its driver are, if they are installed.
pub struct Browser {
    pub chromium: PathBuf,
    pub driver: PathBuf,
}

impl Browser {
    /// Finds `chromium` and `chromedriver` on PATH. Without them a test fails under CI
    /// (env `CI` set) and is skipped elsewhere: `None` after printing SKIPPED.
    pub fn find(test: &str) -> Option<Browser> {
        let chromium = which("chromium").or_else(|| which("chromium-browser"));
        let driver = which("chromedriver");
        match (chromium, driver) {
            (Some(chromium), Some(driver)) => Some(Browser { chromium, driver }),
            _ if std::env::var_os("CI").is_some() => panic!(
                "{test}: chromium and chromedriver are required under CI \
                 (apt-get install -y chromium chromium-driver)"
            ),
            _ => {
                println!("SKIPPED {test}: chromium or chromedriver not installed");
                None
            }
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// An error the driver answered with (`value.error` and `value.message`).
#[derive(Debug)]
pub struct DriverError {
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

/// A chromedriver process with one browser session; both end on drop.
pub struct Session {
    driver: Child,
    port: u16,
    id: String,
    pub log: PathBuf,
}

/// A reference to an element of the current page.
#[derive(Clone, Debug)]
pub struct Element(pub String);

impl Session {
    /// Starts chromedriver (its log in `dir`) and a headless browser of `width` x `height`.
    pub fn start(browser: &Browser, dir: &Path, width: u32, height: u32) -> Session {
        let port = crate::free_port();
        let log = dir.join(format!("chromedriver-{port}.log"));
        let driver = Command::new(&browser.driver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut session = Session {
            driver,
            port,
            id: String::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Ok(status)) = session.http("GET", "/status", None)
                && status["ready"] == true
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = dir.join(format!("chromium-profile-{port}"));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser.chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-extensions",
                    "--force-color-profile=srgb",
                    "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={width},{height}"),
                ],
            },
            "timeouts": {"script": 10_000, "pageLoad": 30_000, "implicit": 0},
        }}});
        // Chromium's first start on a busy machine can take a while.
        let value = session
            .http("POST", "/session", Some(caps))
            .expect("talk to chromedriver")
            .unwrap_or_else(|e| panic!("new session: {e}"));
        session.id = value["sessionId"].as_str().expect("session id").to_string();
        session
    }

    /// One command; the driver's `value`, or its error.
    pub fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, DriverError> {
        let path = format!("/session/{}{path}", self.id);
        self.http(method, &path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> std::io::Result<Result<Value, DriverError>> {
        let (status, text) = http_request(self.port, method, path, body.as_ref())?;
        let reply: Value = serde_json::from_slice(&text).map_err(|e| {
            std::io::Error::other(format!(
                "bad JSON from chromedriver ({status}): {e}: {}",
                String::from_utf8_lossy(&text)
            ))
        })?;
        let value = reply.get("value").cloned().unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            Ok(Ok(value))
        } else {
            Ok(Err(DriverError {
                error: value["error"].as_str().unwrap_or("unknown").to_string(),
                message: value["message"].as_str().unwrap_or("").to_string(),
            }))
        }
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.cmd(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn goto(&self, url: &str) {
        self.ok("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.ok("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn refresh(&self) {
        self.ok("POST", "/refresh", Some(json!({})));
    }

    /// The first element matching a CSS selector, if there is one now.
    pub fn find(&self, css: &str) -> Option<Element> {
        match self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        ) {
            Ok(v) => Some(Element(
                v[ELEMENT].as_str().expect("element id").to_string(),
            )),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("find {css}: {e}"),
        }
    }

    /// Every element matching a CSS selector now.
    pub fn find_all(&self, css: &str) -> Vec<Element> {
        self.ok(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|v| v[ELEMENT].as_str().map(|s| Element(s.to_string())))
                .collect()
        })
        .unwrap_or_default()
    }

    /// Waits up to `limit` for an element matching `css`.
    pub fn wait_for(&self, css: &str, limit: Duration) -> Element {
        self.poll(limit, &format!("an element matches {css}"), || {
            self.find(css)
        })
    }

    /// Calls `probe` every 20 ms until it gives `Some`, or panics after `limit` naming `what`.
    pub fn poll<T>(&self, limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = probe() {
                return v;
            }
            if start.elapsed() > limit {
                panic!(
                    "timed out after {limit:?} waiting until {what}; page text:\n{}",
                    self.page_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn click(&self, el: &Element) {
        self.ok("POST", &format!("/element/{}/click", el.0), Some(json!({})));
    }

    /// Clicks the first element matching `css` once there is one, again if the page
    /// replaced it between finding and clicking.
    pub fn click_css(&self, css: &str, limit: Duration) {
        self.poll(limit, &format!("{css} can be clicked"), || {
            let el = self.find(css)?;
            match self.cmd("POST", &format!("/element/{}/click", el.0), Some(json!({}))) {
                Ok(_) => Some(()),
                Err(e) if e.error == "stale element reference" => None,
                Err(e) => panic!("click {css}: {e}"),
            }
        })
    }

    pub fn clear(&self, el: &Element) {
        self.ok("POST", &format!("/element/{}/clear", el.0), Some(json!({})));
    }

    pub fn send_keys(&self, el: &Element, text: &str) {
        self.ok(
            "POST",
            &format!("/element/{}/value", el.0),
            Some(json!({ "text": text })),
        );
    }

    /// The element's rendered text; empty if it went stale meanwhile.
    pub fn text(&self, el: &Element) -> String {
        match self.cmd("GET", &format!("/element/{}/text", el.0), None) {
            Ok(v) => v.as_str().unwrap_or_default().to_string(),
            Err(e) if e.error == "stale element reference" => String::new(),
            Err(e) => panic!("text: {e}"),
        }
    }

    /// An attribute of the element; `None` if absent or the element went stale.
    pub fn attr(&self, el: &Element, name: &str) -> Option<String> {
        match self.cmd("GET", &format!("/element/{}/attribute/{name}", el.0), None) {
            Ok(v) => v.as_str().map(str::to_string),
            Err(e) if e.error == "stale element reference" => None,
            Err(e) => panic!("attribute {name}: {e}"),
        }
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub fn exec(&self, script: &str, args: Vec<Value>) -> Value {
        self.ok(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// `document.body.innerText`, for messages when a wait fails.
    pub fn page_text(&self) -> String {
        match self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": "return document.body ? document.body.innerText : ''", "args": []})),
        ) {
            Ok(v) => v.as_str().unwrap_or_default().to_string(),
            Err(e) => format!("(no page text: {e})"),
        }
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let b64 = self.ok("GET", "/screenshot", None);
        base64_decode(b64.as_str().expect("screenshot is base64"))
    }

    /// Accepts the page's `confirm()` dialog once it is open.
    pub fn accept_dialog(&self, limit: Duration) {
        self.poll(limit, "a dialog opens", || {
            match self.cmd("POST", "/alert/accept", Some(json!({}))) {
                Ok(_) => Some(()),
                Err(e) if e.error == "no such alert" => None,
                Err(e) => panic!("accept the dialog: {e}"),
            }
        })
    }

    /// Sets the window's outer size.
    pub fn resize(&self, width: u32, height: u32) {
        self.ok(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.id.is_empty() {
            let path = format!("/session/{}", self.id);
            let _ = http_request(self.port, "DELETE", &path, None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One HTTP/1.1 exchange on a fresh connection: `(status, body)`.
fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(90)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
    }
    let mut out = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|e| std::io::Error::other(format!("bad chunk size: {e}")))?;
            if size == 0 {
                break;
            }
            let start = out.len();
            out.resize(start + size, 0);
            reader.read_exact(&mut out[start..])?;
            line.clear();
            reader.read_line(&mut line)?;
        }
    } else if let Some(n) = length {
        out.resize(n, 0);
        reader.read_exact(&mut out)?;
    } else {
        reader.read_to_end(&mut out)?;
    }
    Ok((status, out))
}

/// Standard base64 (with or without padding) to bytes.
pub fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => panic!("not base64: {c:?}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
