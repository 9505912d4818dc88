//! Headless Chromium (Debian's `chromium`) driven over the DevTools
//! protocol: a real browser for the status page tests. One page per
//! [`Browser`]; the process and its profile directory go with it.

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// How long one protocol call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The Chromium binary: `$CHROMIUM` or Debian's `/usr/bin/chromium`.
pub(crate) fn chromium_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "Chromium is not installed: the status page tests need a real browser \
         (Debian package `chromium`; tests/run-tests.sh installs it)"
    );
}

/// A headless Chromium with one page attached over the DevTools protocol.
pub(crate) struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    /// Protocol events received so far (method, params).
    pub events: Vec<(String, Value)>,
}

impl Browser {
    /// Starts Chromium (`width`×`height` window) and attaches to its page.
    pub(crate) fn launch(width: u32, height: u32) -> Self {
        let profile = tempfile::tempdir().expect("browser profile dir");
        let mut child = Command::new(chromium_binary())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium_binary().display()));
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let stderr = child.stderr.take().expect("chromium stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let browser_url = match rx.recv_timeout(CALL_TIMEOUT) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("Chromium did not open its DevTools port within {CALL_TIMEOUT:?}");
            }
        };
        let host = browser_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host:port")
            .to_owned();
        // The page target that `about:blank` opened.
        let deadline = Instant::now() + CALL_TIMEOUT;
        let page_url = loop {
            let list = super::http::get(&host, "/json/list");
            let found = serde_json::from_str::<Value>(&list.body)
                .ok()
                .and_then(|v| {
                    v.as_array()?
                        .iter()
                        .find(|t| t["type"] == "page")
                        .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
                });
            if let Some(u) = found {
                break u;
            }
            assert!(Instant::now() < deadline, "no page target: {}", list.body);
            std::thread::sleep(Duration::from_millis(50));
        };
        let stream = TcpStream::connect(&host).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(CALL_TIMEOUT))
            .expect("read timeout");
        let (ws, _) = tungstenite::client(page_url.as_str(), stream).expect("DevTools handshake");
        let mut b = Self {
            child,
            _profile: profile,
            ws,
            next_id: 0,
            events: Vec::new(),
        };
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b
    }

    /// Calls `method` and returns its `result` (panics on a protocol error).
    pub(crate) fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws
            .send(tungstenite::Message::text(msg))
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "{method}: no answer");
            let frame = self.ws.read().unwrap_or_else(|e| panic!("{method}: {e}"));
            let tungstenite::Message::Text(text) = frame else {
                continue;
            };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["id"] == id {
                if let Some(err) = v.get("error") {
                    panic!("{method}: {err}");
                }
                return v["result"].clone();
            }
            if let Some(m) = v["method"].as_str() {
                self.events.push((m.to_owned(), v["params"].clone()));
            }
        }
    }

    /// Loads `url` and waits for its `load` event.
    pub(crate) fn navigate(&mut self, url: &str) {
        let before = self.count_events("Page.loadEventFired");
        self.call("Page.navigate", json!({ "url": url }));
        let ok = self.wait_until(CALL_TIMEOUT, |b| {
            b.count_events("Page.loadEventFired") > before
        });
        assert!(ok, "{url} did not load");
    }

    /// How many events named `method` arrived.
    pub(crate) fn count_events(&self, method: &str) -> usize {
        self.events.iter().filter(|(m, _)| m == method).count()
    }

    /// Evaluates `expr` in the page (promises awaited) and returns its value.
    pub(crate) fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("{expr}: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `cond` every 50 ms until it holds or `timeout` passes.
    pub(crate) fn wait_until(
        &mut self,
        timeout: Duration,
        mut cond: impl FnMut(&mut Self) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
            // Pick up events that arrived meanwhile.
            self.call("Runtime.evaluate", json!({ "expression": "0" }));
        }
    }

    /// Waits until `expr` evaluates to `true`.
    pub(crate) fn wait_for(&mut self, expr: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |b| b.eval(expr) == Value::Bool(true))
    }

    /// Clicks the middle of the first element matching `selector`, as a
    /// mouse would.
    pub(crate) fn click(&mut self, selector: &str) {
        let sel = serde_json::to_string(selector).expect("selector");
        let rect = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = match rect.as_array().map(|a| (a[0].as_f64(), a[1].as_f64())) {
            Some((Some(x), Some(y))) => (x, y),
            _ => panic!("nothing to click at {selector}"),
        };
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            );
        }
    }

    /// Focuses the element at `selector` (by clicking it) and types `text`.
    pub(crate) fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector);
        self.call("Input.insertText", json!({ "text": text }));
    }

    /// Saves a PNG of the page's viewport to `path` (directories made).
    pub(crate) fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let data = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, data).expect("write screenshot");
    }

    /// Emulates a phone screen (`width`×`height` CSS pixels).
    pub(crate) fn phone(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 2, "mobile": true }),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.ws.close(None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where test artifacts go: `<target dir>/test-artifacts/<name>`.
pub(crate) fn artifact(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artifacts").join(name)
}
