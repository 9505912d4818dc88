//! Secret references (`caFilePemRef`, `certFilePemRef`, `keyFilePemRef`:
//! `{name, item}`): the reference design names an item of a Kubernetes
//! secret; fieldgate reads the file `<gateway.secretsDirectory>/<name>/<item>`,
//! which is where a secret mounted as a volume puts it.

use std::path::{Path, PathBuf};

use super::types::SecretRef;

/// Why one part (`name` or `item`) of a reference is not a single file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// The part is empty.
    #[error("is empty")]
    Empty,
    /// The part is `.` or `..`.
    #[error("must not be `.` or `..`")]
    Dot,
    /// The part holds `/` or NUL.
    #[error("must be a single file name (no `/`)")]
    NotAFileName,
}

/// A reference that could leave the secrets directory: `field` names the
/// offending part, `name` or `item`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret {field} `{value}` {why}")]
pub struct SecretRefError {
    /// `name` or `item`.
    pub field: &'static str,
    /// Its value as written.
    pub value: String,
    /// What is wrong with it.
    pub why: SegmentError,
}

/// Why a secret reference cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The reference itself is unusable.
    #[error(transparent)]
    Ref(#[from] SecretRefError),
    /// The file it points at cannot be read.
    #[error("cannot read secret `{name}` item `{item}` from `{}`: {source} (gateway.secretsDirectory is `{}`)", .file.display(), .secrets_dir.display())]
    Read {
        /// The secret's name.
        name: String,
        /// The item.
        item: String,
        /// The file read.
        file: PathBuf,
        /// `gateway.secretsDirectory`.
        secrets_dir: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
}

/// Checks that both parts of a reference are single file names.
pub fn check_ref(r: &SecretRef) -> Result<(), SecretRefError> {
    for (field, value) in [("name", &r.name), ("item", &r.item)] {
        if let Err(why) = check_segment(value) {
            return Err(SecretRefError {
                field,
                value: value.clone(),
                why,
            });
        }
    }
    Ok(())
}

/// One path segment: not empty, not `.`/`..`, no `/` or NUL, so a
/// reference cannot leave the secrets directory.
fn check_segment(s: &str) -> Result<(), SegmentError> {
    if s.is_empty() {
        return Err(SegmentError::Empty);
    }
    if s == "." || s == ".." {
        return Err(SegmentError::Dot);
    }
    if s.contains('/') || s.contains('\0') {
        return Err(SegmentError::NotAFileName);
    }
    Ok(())
}

/// The file a (valid) reference points at.
pub fn path(secrets_dir: &Path, r: &SecretRef) -> PathBuf {
    secrets_dir.join(&r.name).join(&r.item)
}

/// Reads the PEM text a reference points at (bounded like every PEM file).
pub fn read(secrets_dir: &Path, r: &SecretRef) -> Result<String, SecretError> {
    check_ref(r)?;
    let file = path(secrets_dir, r);
    super::read_limited(&file, super::MAX_PEM_FILE_BYTES)
        .and_then(|b| String::from_utf8(b).map_err(std::io::Error::other))
        .map_err(|source| SecretError::Read {
            name: r.name.clone(),
            item: r.item.clone(),
            file,
            secrets_dir: secrets_dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, item: &str) -> SecretRef {
        SecretRef {
            name: name.into(),
            item: item.into(),
        }
    }

    #[test]
    fn references_stay_inside_the_secrets_directory() {
        assert!(check_ref(&r("mqtt-tls", "ca.crt")).is_ok());
        assert!(check_ref(&r("mqtt-tls", "..data")).is_ok());
        assert_eq!(check_ref(&r("", "ca.crt")).unwrap_err().field, "name");
        assert_eq!(check_ref(&r("..", "ca.crt")).unwrap_err().field, "name");
        assert_eq!(
            check_ref(&r("a", "../../etc/shadow")).unwrap_err().field,
            "item"
        );
        assert_eq!(check_ref(&r("a", ".")).unwrap_err().field, "item");
    }

    #[test]
    fn reads_name_item_under_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mqtt-tls")).unwrap();
        std::fs::write(dir.path().join("mqtt-tls/ca.crt"), "PEM").unwrap();
        assert_eq!(read(dir.path(), &r("mqtt-tls", "ca.crt")).unwrap(), "PEM");
        let e = read(dir.path(), &r("mqtt-tls", "tls.key"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read secret `mqtt-tls` item `tls.key`"),
            "{e}"
        );
        assert!(e.contains("mqtt-tls/tls.key"), "{e}");
    }

    /// Config-level behaviour: the keys, their resolution and located errors.
    mod config {
        use std::path::Path;

        use crate::config::{load_str, ConfigError};

        const CA: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

        /// A secrets directory with `mqtt-tls/{ca.crt,tls.crt,tls.key}`.
        fn secrets() -> tempfile::TempDir {
            let dir = tempfile::tempdir().unwrap();
            let s = dir.path().join("secrets/mqtt-tls");
            std::fs::create_dir_all(&s).unwrap();
            std::fs::write(s.join("ca.crt"), CA).unwrap();
            std::fs::write(s.join("tls.crt"), CA).unwrap();
            std::fs::write(s.join("tls.key"), KEY).unwrap();
            dir
        }

        fn load(yaml: &str, base: &Path) -> Result<crate::config::resolved::Resolved, Vec<String>> {
            load_str(yaml, "c.yaml", base)
                .map_err(|e| e.0.iter().map(ConfigError::to_string).collect())
        }

        fn errs(yaml: &str, base: &Path) -> Vec<String> {
            match load(yaml, base) {
                Ok(_) => panic!("config unexpectedly valid:\n{yaml}"),
                Err(e) => e,
            }
        }

        fn has(errs: &[String], prefix: &str, needle: &str) {
            assert!(
                errs.iter()
                    .any(|e| e.starts_with(prefix) && e.contains(needle)),
                "no error `{prefix}…{needle}…` in:\n{}",
                errs.join("\n")
            );
        }

        #[test]
        fn pem_refs_read_name_item_under_the_secrets_directory() {
            let dir = secrets();
            // Relative to the config file's directory.
            let yaml = "gateway:\n  secretsDirectory: secrets\nmqtt:\n  client:\n    server: ssl://broker.test:8883\n    tlsConfig:\n      caFilePemRef: {name: mqtt-tls, item: ca.crt}\n      certFilePemRef: {name: mqtt-tls, item: tls.crt}\n      keyFilePemRef: {name: mqtt-tls, item: tls.key}\n";
            let r = load(yaml, dir.path()).unwrap_or_else(|e| panic!("{}", e.join("\n")));
            let tls = &r.sessions[0].tls;
            assert_eq!(tls.ca_pem.as_deref(), Some(CA));
            assert_eq!(tls.cert_pem.as_deref(), Some(CA));
            assert_eq!(tls.key_pem.as_ref().map(|k| k.expose()), Some(KEY));

            // Absolute, and per device (merged over the top level).
            let abs = dir.path().join("secrets");
            let yaml = format!(
                "gateway:\n  secretsDirectory: {}\ndevices:\n  - name: fan\n    driver: dummy\n    model: fan\n    mqtt:\n      client:\n        server: ssl://broker.test:8883\n        tlsConfig:\n          caFilePemRef: {{name: mqtt-tls, item: ca.crt}}\n",
                abs.display()
            );
            let r = load(&yaml, Path::new("/nonexistent"))
                .unwrap_or_else(|e| panic!("{}", e.join("\n")));
            assert!(r
                .sessions
                .iter()
                .any(|s| s.tls.ca_pem.as_deref() == Some(CA)));
        }

        #[test]
        fn missing_secrets_are_located_errors() {
            let dir = secrets();
            let e = errs(
                "gateway:\n  secretsDirectory: secrets\nmqtt:\n  client:\n    tlsConfig:\n      caFilePemRef: {name: mqtt-tls, item: missing.crt}\n",
                dir.path(),
            );
            has(
                &e,
                "c.yaml:6:21: mqtt.client.tlsConfig.caFilePemRef: ",
                "cannot read secret `mqtt-tls` item `missing.crt`",
            );
            // The default directory is /etc/fieldgate/secrets.
            let e = errs(
                "mqtt:\n  client:\n    tlsConfig:\n      keyFilePemRef:\n        name: no-such-secret\n        item: tls.key\n      certFilePem: |\n        -----BEGIN CERTIFICATE-----\n        AAAA\n        -----END CERTIFICATE-----\n",
                Path::new("/nonexistent"),
            );
            has(
                &e,
                "c.yaml:5:9: mqtt.client.tlsConfig.keyFilePemRef: ",
                "/etc/fieldgate/secrets/no-such-secret/tls.key",
            );
        }

        #[test]
        fn bad_references_are_located_errors() {
            let dir = secrets();
            let base = dir.path();
            let e = errs(
                "mqtt:\n  client:\n    tlsConfig:\n      caFilePemRef: {name: mqtt-tls, item: ../../etc/shadow}\n",
                base,
            );
            has(
                &e,
                "c.yaml:4:44: mqtt.client.tlsConfig.caFilePemRef.item: ",
                "single file name",
            );
            let e = errs(
                "mqtt:\n  client:\n    tlsConfig:\n      caFilePemRef: {name: mqtt-tls}\n",
                base,
            );
            has(
                &e,
                "c.yaml:4:21: mqtt.client.tlsConfig.caFilePemRef: ",
                "missing required key `item`",
            );
            let e = errs(
                "mqtt:\n  client:\n    tlsConfig:\n      caFilePemRef: {name: mqtt-tls, item: ca.crt, key: x}\n",
                base,
            );
            has(
                &e,
                "c.yaml:4:52: mqtt.client.tlsConfig.caFilePemRef.key: ",
                "unknown key",
            );
            let e = errs(
                "mqtt:\n  client:\n    tlsConfig:\n      caFile: ca.pem\n      caFilePemRef: {name: mqtt-tls, item: ca.crt}\n",
                base,
            );
            has(
                &e,
                "c.yaml:5:7: mqtt.client.tlsConfig.caFilePemRef: ",
                "not `caFile` and `caFilePemRef`",
            );
            let e = errs(
                "gateway:\n  secretsDirectory: secrets\nmqtt:\n  client:\n    tlsConfig:\n      certFilePemRef: {name: mqtt-tls, item: tls.crt}\n",
                base,
            );
            has(
                &e,
                "c.yaml:6:7: mqtt.client.tlsConfig.certFilePemRef: ",
                "`keyFile` (or `keyFilePem`, `keyFilePemRef`) is missing",
            );
            let e = errs(
                "gateway:\n  secretsDirectory: secrets\nmqtt:\n  client:\n    tlsConfig:\n      keyFilePemRef: {name: mqtt-tls, item: ca.crt}\n      certFilePemRef: {name: mqtt-tls, item: tls.crt}\n",
                base,
            );
            has(
                &e,
                "c.yaml:6:22: mqtt.client.tlsConfig.keyFilePemRef: ",
                "PEM private key",
            );
            let e = errs("gateway:\n  secretsDirectory: \"\"\n", base);
            has(
                &e,
                "c.yaml:2:21: gateway.secretsDirectory: ",
                "must not be empty",
            );
        }
    }
}
