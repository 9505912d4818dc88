//! Client certificate (configured, or generated once into the state
//! directory) and the server-certificate trust check.

use std::path::{Path, PathBuf};

use opcua::crypto::{CertificateStore, X509Data, X509};
use opcua::types::{ApplicationDescription, ApplicationType, EndpointDescription, LocalizedText};
use tracing::{info, warn};

use super::OpcUaConnection;
use crate::{DriverError, ErrorKind};

/// The application URI of the gateway (also in the generated certificate).
pub const APPLICATION_URI: &str = "urn:fieldgate:client";

/// Serializes certificate generation: devices starting together must not
/// generate (and overwrite) the shared pair twice.
static GENERATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Paths of the generated pair under `<stateDirectory>/opcua`.
pub fn generated_paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    (
        state_dir.join("own").join("cert.der"),
        state_dir.join("private").join("private.pem"),
    )
}

/// The client certificate and key to use: the configured pair, or the
/// generated one (created on first use, key readable by the owner only).
pub async fn client_certificate(conn: &OpcUaConnection) -> Result<(PathBuf, PathBuf), DriverError> {
    if let Some((cert, key)) = &conn.certificate {
        for (what, p) in [("certificate", cert), ("privateKey", key)] {
            if tokio::fs::metadata(p).await.is_err() {
                return Err(DriverError::new(
                    ErrorKind::Io,
                    format!("cannot read the client {what} {}", p.display()),
                ));
            }
        }
        return Ok((cert.clone(), key.clone()));
    }
    let (cert, key) = generated_paths(&conn.state_dir);
    let _guard = GENERATE.lock().await;
    if tokio::fs::metadata(&cert).await.is_ok() && tokio::fs::metadata(&key).await.is_ok() {
        return Ok((cert, key));
    }
    let (c, k) = (cert.clone(), key.clone());
    let generated = tokio::task::spawn_blocking(move || generate(&c, &k))
        .await
        .map_err(|e| {
            DriverError::new(ErrorKind::Io, format!("certificate generation failed: {e}"))
        })?;
    generated.map_err(|e| {
        DriverError::new(
            ErrorKind::Io,
            format!(
                "cannot generate a client certificate in {}: {e}",
                cert.display()
            ),
        )
    })?;
    info!(
        certificate = %cert.display(),
        key = %key.display(),
        "opcua: generated a self-signed client certificate; servers that check clients must trust this certificate"
    );
    Ok((cert, key))
}

fn generate(cert: &Path, key: &Path) -> Result<(), String> {
    for p in [cert, key] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    // The key's directory is the owner's alone before the key is written
    // (the library creates the file with the default mode; it is narrowed
    // to 0600 below, and nobody else may look in meanwhile).
    #[cfg(unix)]
    if let Some(dir) = key.parent() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let desc = ApplicationDescription {
        application_uri: APPLICATION_URI.into(),
        product_uri: APPLICATION_URI.into(),
        application_name: LocalizedText::new("", "fieldgate"),
        application_type: ApplicationType::Client,
        ..Default::default()
    };
    let mut data = X509Data::from(desc);
    data.certificate_duration_days = 3650;
    CertificateStore::create_certificate_and_key(&data, true, cert, key)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", key.display()))?;
    }
    Ok(())
}

fn load_cert(bytes: &[u8]) -> Option<X509> {
    X509::from_der(bytes)
        .ok()
        .or_else(|| X509::from_pem(bytes).ok())
}

/// Accepts the endpoint's server certificate only when the same certificate
/// (by thumbprint) is a file in the trusted directory. An unknown one is
/// saved under `<stateDirectory>/opcua/rejected/` and refused with an error
/// that says which file to copy where.
pub async fn check_server(
    conn: &OpcUaConnection,
    endpoint: &EndpointDescription,
) -> Result<(), DriverError> {
    let cert = X509::from_byte_string(&endpoint.server_certificate).map_err(|e| {
        DriverError::new(
            ErrorKind::Exception,
            format!("the server sent no valid certificate: {e}"),
        )
    })?;
    let thumb = cert.thumbprint();
    if let Ok(mut dir) = tokio::fs::read_dir(&conn.trusted_dir).await {
        while let Ok(Some(entry)) = dir.next_entry().await {
            let Ok(bytes) = tokio::fs::read(entry.path()).await else {
                continue;
            };
            if load_cert(&bytes).is_some_and(|c| c.thumbprint().value() == thumb.value()) {
                return Ok(());
            }
        }
    }
    let cn = cert.common_name().unwrap_or_default();
    let cn = cn.strip_prefix("CN=").unwrap_or(&cn);
    let safe: String = cn
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = if safe.is_empty() {
        format!("{}.der", thumb.as_hex_string())
    } else {
        format!("{safe}-{}.der", thumb.as_hex_string())
    };
    let rejected = conn.state_dir.join("rejected").join(&name);
    let saved = match cert.to_der() {
        Ok(der) => {
            let r = async {
                if let Some(d) = rejected.parent() {
                    tokio::fs::create_dir_all(d).await?;
                }
                tokio::fs::write(&rejected, der).await
            }
            .await;
            if let Err(e) = &r {
                warn!(
                    "opcua: cannot save the rejected server certificate {}: {e}",
                    rejected.display()
                );
            }
            r.is_ok()
        }
        Err(_) => false,
    };
    let how = if saved {
        format!(
            "copy {} into {} to trust it",
            rejected.display(),
            conn.trusted_dir.display()
        )
    } else {
        format!(
            "put the server's certificate (thumbprint {}) into {} to trust it",
            thumb.as_hex_string(),
            conn.trusted_dir.display()
        )
    };
    Err(DriverError::new(
        ErrorKind::Rejected,
        format!(
            "the server certificate of {} ({cn}) is not trusted; {how}",
            conn.endpoint
        ),
    ))
}
