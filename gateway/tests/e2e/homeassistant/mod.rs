//! Home Assistant Core as a test peer: the venv (made once by `venv.sh`,
//! cached outside the checkout), a headless instance on a free port with a
//! config dir the test writes, REST onboarding, the MQTT integration added
//! through its config flow, and small REST helpers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Upper bound for Home Assistant to answer HTTP after its start.
const START: Duration = Duration::from_secs(180);

/// `hass` of the cached venv, installed first when missing (the script
/// prints when it installs). Panics when it cannot be installed: the test
/// must fail, not skip.
pub(crate) fn hass_binary() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/homeassistant/venv.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}): Home Assistant Core could not be installed",
        script.display(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let hass = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(hass.is_file(), "venv.sh named no hass binary: {stdout}");
    hass
}

/// A running Home Assistant Core, onboarded, with a token; killed on drop.
pub(crate) struct HomeAssistant {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    token: String,
    mqtt_entry: String,
}

/// One HTTP answer.
pub(crate) struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A plain HTTP/1.1 request to 127.0.0.1:`port` (`Connection: close`).
pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, String)>,
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let (ctype, data) = body.unwrap_or(("application/json", String::new()));
    if method != "GET" {
        req.push_str(&format!(
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
            data.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&data);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok(Reply { status, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl HomeAssistant {
    /// Starts Home Assistant headless on a free port, onboards it (user,
    /// then analytics) and adds the MQTT integration pointed at
    /// 127.0.0.1:`mqtt_port`.
    pub(crate) fn start(mqtt_port: u16) -> Self {
        let hass = hass_binary();
        let dir = tempfile::tempdir().expect("temp dir for Home Assistant");
        let port = super::support::free_port();
        std::fs::write(
            dir.path().join("configuration.yaml"),
            format!(
                "homeassistant:\n  name: fieldgate-test\n  latitude: 52.5\n  longitude: 13.4\n  elevation: 30\n  unit_system: metric\n  time_zone: UTC\n  currency: EUR\n  country: DE\nhttp:\n  server_host: 127.0.0.1\n  server_port: {port}\nlogger:\n  default: warning\n  logs:\n    homeassistant.components.mqtt: debug\n"
            ),
        )
        .expect("write configuration.yaml");
        let log = std::fs::File::create(dir.path().join("hass.out")).expect("hass.out");
        let child = Command::new(&hass)
            .arg("--skip-pip")
            .arg("-c")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", hass.display()));
        let mut ha = Self {
            child,
            port,
            dir,
            token: String::new(),
            mqtt_entry: String::new(),
        };
        let t0 = Instant::now();
        while !http(port, "GET", "/api/onboarding", None, None).is_ok_and(|r| r.status == 200) {
            if let Ok(Some(status)) = ha.child.try_wait() {
                panic!("Home Assistant exited ({status}):\n{}", ha.log_tail());
            }
            assert!(
                t0.elapsed() < START,
                "Home Assistant did not answer within {START:?}:\n{}",
                ha.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "Home Assistant answers after {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        ha.onboard();
        ha.add_mqtt(mqtt_port);
        ha
    }

    fn onboard(&mut self) {
        let client_id = format!("http://127.0.0.1:{}/", self.port);
        let r = self.post_json(
            "/api/onboarding/users",
            json!({"client_id": client_id, "name": "Test", "username": "test",
                   "password": "fieldgate-test-pass", "language": "en"}),
            None,
        );
        let code = r["auth_code"]
            .as_str()
            .unwrap_or_else(|| panic!("no auth_code: {r}"))
            .to_owned();
        let form = format!("grant_type=authorization_code&code={code}&client_id={client_id}");
        let t = http(
            self.port,
            "POST",
            "/auth/token",
            None,
            Some(("application/x-www-form-urlencoded", form)),
        )
        .expect("POST /auth/token")
        .json();
        self.token = t["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token: {t}"))
            .to_owned();
        let token = self.token.clone();
        self.post_json("/api/onboarding/analytics", json!({}), Some(&token));
    }

    fn add_mqtt(&mut self, mqtt_port: u16) {
        let token = self.token.clone();
        let flow = self.post_json(
            "/api/config/config_entries/flow",
            json!({"handler": "mqtt", "show_advanced_options": false}),
            Some(&token),
        );
        let id = flow["flow_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no MQTT flow: {flow}"))
            .to_owned();
        assert_eq!(flow["step_id"], "broker", "{flow}");
        let done = self.post_json(
            &format!("/api/config/config_entries/flow/{id}"),
            json!({"broker": "127.0.0.1", "port": mqtt_port}),
            Some(&token),
        );
        assert_eq!(
            done["type"], "create_entry",
            "MQTT integration not added: {done}"
        );
        assert_eq!(done["result"]["state"], "loaded", "{done}");
        self.mqtt_entry = done["result"]["entry_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }

    /// Reloads the MQTT integration: it reconnects and publishes its birth
    /// message again, as after a restart of Home Assistant.
    pub(crate) fn reload_mqtt(&self) {
        let path = format!(
            "/api/config/config_entries/entry/{}/reload",
            self.mqtt_entry
        );
        self.post_json(&path, json!({}), Some(&self.token));
    }

    fn post_json(&self, path: &str, body: Value, token: Option<&str>) -> Value {
        let r = http(
            self.port,
            "POST",
            path,
            token,
            Some(("application/json", body.to_string())),
        )
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        assert!(
            r.status == 200 || r.status == 201,
            "POST {path}: {} {}",
            r.status,
            r.body
        );
        r.json()
    }

    /// The state object of `entity_id`, `None` when Home Assistant has no such entity.
    pub(crate) fn state(&self, entity_id: &str) -> Option<Value> {
        let r = http(
            self.port,
            "GET",
            &format!("/api/states/{entity_id}"),
            Some(&self.token),
            None,
        )
        .ok()?;
        (r.status == 200).then(|| r.json())
    }

    /// Calls service `domain.service` with `data`.
    pub(crate) fn call(&self, domain: &str, service: &str, data: Value) {
        self.post_json(
            &format!("/api/services/{domain}/{service}"),
            data,
            Some(&self.token),
        );
    }

    /// Every entity id Home Assistant has a state for.
    pub(crate) fn entity_ids(&self) -> Vec<String> {
        http(self.port, "GET", "/api/states", Some(&self.token), None)
            .map(|r| r.json())
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["entity_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// The end of Home Assistant's output (for failure messages).
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("hass.out")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Home Assistant's whole output.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hass.out")).unwrap_or_default()
    }
}

impl Drop for HomeAssistant {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
