//! The README's quick start, run exactly as written (issue #19): the command,
//! the `mosquitto_sub` / `mosquitto_pub` lines and the expected output are
//! read from README.md itself, so the README cannot drift from what works.
//!
//! The README's command is `cargo run --release -- <args>`; the test runs the
//! `fieldgate` binary cargo built for the tests with those `<args>`, from the
//! workspace root as a user would (a second, release build inside the test
//! would double CI's build time for the same code). It uses the README's
//! fixed ports (MQTT 11883, metrics 9880) and fails with a clear message when
//! something else already holds them.
#![cfg(feature = "broker")]

use crate::support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{fieldgate_binary, http_get, wait_port_open};

const T: Duration = Duration::from_secs(60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The README's `## Quick start` section: its prose and its fenced blocks
/// as `(info string, body)`.
struct QuickStart {
    text: String,
    blocks: Vec<(String, String)>,
}

fn quick_start() -> QuickStart {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    let start = readme
        .find("\n## Quick start\n")
        .expect("README.md has a `## Quick start` section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let text = rest[..end].to_owned();
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(info) = line.strip_prefix("```") {
            let mut body = String::new();
            for l in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            blocks.push((info.trim().to_owned(), body));
        }
    }
    QuickStart { text, blocks }
}

/// The command lines of a shell block: comments dropped, `\`-continued lines
/// joined.
fn commands(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in body.lines() {
        let line = line.trim();
        if cur.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(line);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    out
}

/// POSIX shell word splitting for the quoting a README uses: '…', "…"
/// (with \" \\ \$ \` escapes) and backslash escapes outside quotes.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => word.push(e),
                            Some(e) => {
                                word.push('\\');
                                word.push(e);
                            }
                            None => word.push('\\'),
                        },
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(e) = chars.next() {
                    word.push(e);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The value after `flag` in `args`.
fn arg<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("README command {args:?} has no `{flag}`"));
    args.get(i + 1)
        .unwrap_or_else(|| panic!("README command {args:?}: `{flag}` has no value"))
}

/// Fails the test, clearly, when 127.0.0.1:`port` is taken.
fn require_free(port: u16, what: &str) {
    if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
        panic!(
            "port {port} ({what}, fixed by the README's quick start) is not free on 127.0.0.1: {e}. \
             Another process (a running demo? `ss -ltnp 'sport = :{port}'`) holds it; stop it and run the test again."
        );
    }
}

/// A child killed on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of `child`'s stdout, read on a thread.
fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line of `rx` for which `pick` is true, within `timeout`.
fn next_line(
    rx: &mpsc::Receiver<String>,
    timeout: Duration,
    seen: &mut Vec<String>,
    mut pick: impl FnMut(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).ok()?;
        seen.push(line.clone());
        if pick(&line) {
            return Some(line);
        }
    }
}

#[test]
fn readme_quick_start_works_as_written() {
    let qs = quick_start();
    let sh: Vec<&String> = qs
        .blocks
        .iter()
        .filter(|(info, _)| info == "sh")
        .map(|(_, body)| body)
        .collect();
    assert!(
        sh.len() >= 2,
        "the quick start needs two sh blocks: {:?}",
        qs.blocks
    );

    // 1. The command.
    let run = commands(sh[0]);
    assert_eq!(run.len(), 1, "one command to run the demo: {run:?}");
    let run = shell_words(&run[0]);
    let dashes = run
        .iter()
        .position(|w| w == "--")
        .expect("`--` in the cargo command");
    assert_eq!(
        &run[..dashes],
        ["cargo", "run", "--release"],
        "the README's command is no longer `cargo run --release -- …`: update this test"
    );
    let gateway_args = &run[dashes + 1..];

    // 2. The watch-and-command lines.
    let lines: Vec<Vec<String>> = commands(sh[1]).iter().map(|l| shell_words(l)).collect();
    let sub = lines
        .iter()
        .find(|l| l[0] == "mosquitto_sub")
        .expect("a mosquitto_sub line");
    let publ = lines
        .iter()
        .find(|l| l[0] == "mosquitto_pub")
        .expect("a mosquitto_pub line");
    let set_topic = arg(publ, "-t").to_owned();
    assert!(
        set_topic.ends_with("/$set"),
        "the pub goes to a $set topic: {set_topic}"
    );
    let device_topic = set_topic.trim_end_matches("/$set").to_owned();
    let port: u16 = arg(sub, "-p").parse().expect("numeric -p");
    assert_eq!(arg(publ, "-p"), arg(sub, "-p"), "sub and pub use one port");

    // 3. The expected output: the result and the fan's state.
    let expected = qs
        .blocks
        .iter()
        .find(|(info, _)| info == "text")
        .map(|(_, body)| body.clone())
        .expect("a text block with the expected output");
    let expect_line = |topic: &str| -> Value {
        let line = expected
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{topic} ")))
            .unwrap_or_else(|| panic!("expected output has no `{topic}` line:\n{expected}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("`{topic}` line is not JSON: {e}"))
    };
    let want_result = expect_line(&format!("{device_topic}/$set/result"));
    let want_state = expect_line(&device_topic);

    // 4. The metrics URL the prose names.
    let metrics_url = qs
        .text
        .split('`')
        .find(|s| s.starts_with("http://") && s.ends_with("/metrics"))
        .expect("the quick start names its metrics URL");
    let metrics_addr = metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    let metrics_port: u16 = metrics_addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("metrics port");

    require_free(port, "the demo's MQTT broker");
    require_free(metrics_port, "the demo's metrics");

    // Run the demo as the README says (no RUST_LOG: the config's level).
    let root = workspace_root();
    let log_path =
        std::env::temp_dir().join(format!("fieldgate-quickstart-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).expect("log file");
    let gateway = Command::new(fieldgate_binary())
        .args(gateway_args)
        .current_dir(&root)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start fieldgate");
    let mut gateway = Guard(gateway);
    let gateway_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        wait_port_open(port, T),
        "the demo's broker never listened on {port}:\n{}",
        gateway_log()
    );

    // The subscriber, as written; then the command, as written.
    let mut sub_child = Command::new(&sub[0])
        .args(&sub[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mosquitto_sub (package mosquitto-clients; run tests/run-tests.sh)");
    let rx = stdout_lines(&mut sub_child);
    let _sub_guard = Guard(sub_child);
    let mut seen = Vec::new();
    // The first line proves the subscription is in place.
    next_line(&rx, T, &mut seen, |l| {
        l.starts_with(&format!("{device_topic} "))
    })
    .unwrap_or_else(|| {
        panic!(
            "mosquitto_sub saw no state of {device_topic}; saw {seen:?}\n{}",
            gateway_log()
        )
    });
    let out = Command::new(&publ[0])
        .args(&publ[1..])
        .stdin(Stdio::null())
        .output()
        .expect("run mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let result_prefix = format!("{device_topic}/$set/result ");
    let result = next_line(&rx, T, &mut seen, |l| l.starts_with(&result_prefix))
        .unwrap_or_else(|| panic!("no $set/result; saw {seen:?}\n{}", gateway_log()));
    let result: Value = serde_json::from_str(&result[result_prefix.len()..]).expect("result JSON");
    assert_eq!(
        result, want_result,
        "the $set result differs from the README"
    );

    let state_prefix = format!("{device_topic} ");
    let state = next_line(&rx, T, &mut seen, |l| l.starts_with(&state_prefix))
        .unwrap_or_else(|| panic!("no state after the $set; saw {seen:?}"));
    let state: Value = serde_json::from_str(&state[state_prefix.len()..]).expect("state JSON");
    assert_eq!(state["name"], want_state["name"]);
    let (got, want) = (&state["properties"], &want_state["properties"]);
    for key in ["on", "gear"] {
        assert_eq!(
            got[key], want[key],
            "the fan's `{key}` after the $set: {state}"
        );
    }
    // The speed starts at the README's value and climbs while the fan runs.
    let (speed, from) = (
        got["rotatingSpeed"].as_u64(),
        want["rotatingSpeed"].as_u64(),
    );
    assert!(
        speed.is_some() && from.is_some() && speed >= from,
        "rotatingSpeed {speed:?}, README says it climbs from {from:?}: {state}"
    );

    // /metrics answers at the README's address and counted the command.
    let (status, body) = http_get(&metrics_addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("fieldgate_build_info{"), "{body}");
    let device = device_topic.rsplit('/').next().unwrap_or_default();
    assert!(
        body.contains(&format!(
            "fieldgate_device_set_commands_total{{device=\"{device}\",result=\"ok\"}} 1"
        )),
        "the $set is not counted in /metrics:\n{body}"
    );

    // A clean stop, and no ERROR line on the way (clients came and went).
    support::send_signal(gateway.0.id(), "TERM");
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(s) = gateway.0.try_wait().expect("wait fieldgate") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "fieldgate did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = gateway_log();
    assert!(status.success(), "fieldgate exit {status}:\n{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "the demo logged errors:\n{}",
        errors.join("\n")
    );
    let _ = std::fs::remove_file(&log_path);
}

#[test]
fn shell_words_split_like_sh() {
    assert_eq!(
        shell_words(r#"mosquitto_pub -t 'a/$set' -m '{"on": true}' x\ y "q\"z""#),
        [
            "mosquitto_pub",
            "-t",
            "a/$set",
            "-m",
            r#"{"on": true}"#,
            "x y",
            "q\"z"
        ]
    );
    assert_eq!(commands("# c\nfoo a \\\n    b\nbar\n"), ["foo a  b", "bar"]);
}
