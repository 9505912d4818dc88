//! The private `dbus-daemon` the stand-in and the gateway meet on.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A private `dbus-daemon` on a unix socket in a temp dir.
pub struct DbusDaemon {
    pub(super) child: Child,
    pub(super) address: String,
    pub(super) _dir: tempfile::TempDir,
}

impl DbusDaemon {
    /// Starts the daemon and waits for it to print its address.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for dbus-daemon");
        let socket = dir.path().join("bus");
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("write bus.conf");
        let mut child = Command::new(dbus_daemon_binary())
            .arg(format!("--config-file={}", conf.display()))
            .arg("--nofork")
            .arg("--print-address=1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its notices (e.g. about the fd limit as non-root) go to a file.
            .stderr(
                std::fs::File::create(dir.path().join("dbus-daemon.log")).expect("dbus-daemon.log"),
            )
            .spawn()
            .expect("start dbus-daemon (Debian package dbus-daemon)");
        let stdout = child.stdout.take().expect("dbus-daemon stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read dbus-daemon address");
        let address = line.trim().to_string();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon printed no address: {line:?}"
        );
        Self {
            child,
            address,
            _dir: dir,
        }
    }

    /// The bus address, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn dbus_daemon_binary() -> PathBuf {
    ["/usr/bin/dbus-daemon", "/bin/dbus-daemon"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("dbus-daemon"))
}
