//! `tlsConfig`: where each PEM item comes from (inline, file or secret
//! reference), its checks, and the resolved [`TlsSettings`].

use std::path::Path;

use super::ctx::Ctx;
use super::resolved::{Secret, TlsSettings};
use super::tree::{join, Node};
use super::types::{SecretRef, TlsOptions};

/// Why a PEM item cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PemSourceError {
    /// The secret reference cannot be read.
    #[error(transparent)]
    Secret(#[from] super::secrets::SecretError),
    /// The file cannot be read.
    #[error("cannot read `{}`: {source}", .path.display())]
    File {
        /// The file, resolved against the config file's directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// PEM text given inline (`…Pem`), as a file (relative to the config file)
/// or as a secret reference (`…PemRef`, under `secrets`).
fn pem_source(
    base: &Path,
    secrets: &Path,
    inline: Option<&str>,
    file: Option<&str>,
    reference: Option<&SecretRef>,
) -> Result<Option<String>, PemSourceError> {
    if let Some(t) = inline.filter(|t| !t.trim().is_empty()) {
        return Ok(Some(t.to_string()));
    }
    if let Some(r) = reference {
        return Ok(Some(super::secrets::read(secrets, r)?));
    }
    let Some(f) = file.filter(|f| !f.is_empty()) else {
        return Ok(None);
    };
    let p = Path::new(f);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    super::read_limited(&full, super::MAX_PEM_FILE_BYTES)
        .and_then(|b| String::from_utf8(b).map_err(std::io::Error::other))
        .map(Some)
        .map_err(|source| PemSourceError::File { path: full, source })
}

/// Validates `tlsConfig`: one source per item, readable files, parseable PEM,
/// certificate and key together.
#[allow(clippy::type_complexity)]
pub(super) fn check_tls(
    ctx: &mut Ctx,
    base: &Path,
    secrets: &Path,
    tn: &Node,
    tp: &str,
    t: &TlsOptions,
) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let items: [(
        &str,
        &str,
        &str,
        &Option<String>,
        &Option<String>,
        &Option<SecretRef>,
    ); 3] = [
        (
            "caFilePem",
            "caFile",
            "caFilePemRef",
            &t.ca_file_pem,
            &t.ca_file,
            &t.ca_file_pem_ref,
        ),
        (
            "certFilePem",
            "certFile",
            "certFilePemRef",
            &t.cert_file_pem,
            &t.cert_file,
            &t.cert_file_pem_ref,
        ),
        (
            "keyFilePem",
            "keyFile",
            "keyFilePemRef",
            &t.key_file_pem,
            &t.key_file,
            &t.key_file_pem_ref,
        ),
    ];
    let mut present = [false; 3];
    for (i, (pem_key, file_key, ref_key, inline, file, reference)) in items.iter().enumerate() {
        let has_inline = inline.as_deref().is_some_and(|s| !s.trim().is_empty());
        let has_file = file.as_deref().is_some_and(|s| !s.is_empty());
        let given: Vec<&str> = [
            (has_inline, *pem_key),
            (has_file, *file_key),
            (reference.is_some(), *ref_key),
        ]
        .into_iter()
        .filter_map(|(on, k)| on.then_some(k))
        .collect();
        // Given, even if unusable (reported below): not "missing".
        present[i] = !given.is_empty();
        if given.len() > 1 {
            ctx.key(
                tn,
                tp,
                &given[1..],
                format!(
                    "give one of `{pem_key}`, `{file_key}` and `{ref_key}`, not {}",
                    given
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            );
            continue;
        }
        if let Some(r) = reference {
            if let Err(e) = super::secrets::check_ref(r) {
                match tn.get(ref_key) {
                    Some(rn) => ctx.val(rn, &join(tp, ref_key), &[e.field], e),
                    None => ctx.val(tn, tp, &[ref_key], e),
                }
                continue;
            }
        }
        let key = if has_inline {
            *pem_key
        } else if reference.is_some() {
            *ref_key
        } else {
            *file_key
        };
        match pem_source(
            base,
            secrets,
            inline.as_deref(),
            file.as_deref(),
            reference.as_ref(),
        ) {
            Err(e) => ctx.val(tn, tp, &[key], e),
            Ok(None) => {}
            Ok(Some(text)) => {
                let ok = if i == 2 {
                    PrivateKeyDer::from_pem_slice(text.as_bytes()).is_ok()
                } else {
                    CertificateDer::pem_slice_iter(text.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .is_ok_and(|v| !v.is_empty())
                };
                if !ok {
                    let what = if i == 2 {
                        "a PEM private key (PKCS#8, PKCS#1 or SEC1)"
                    } else {
                        "one or more PEM certificates"
                    };
                    ctx.val(tn, tp, &[key], format!("`{key}` must hold {what}"));
                }
            }
        }
    }
    if present[1] != present[2] {
        let missing = if present[1] { "keyFile" } else { "certFile" };
        let given = if present[1] {
            &["certFilePem", "certFile", "certFilePemRef"]
        } else {
            &["keyFilePem", "keyFile", "keyFilePemRef"]
        };
        ctx.key(
            tn,
            tp,
            given,
            format!("mutual TLS needs both a client certificate and its key: `{missing}` (or `{missing}Pem`, `{missing}PemRef`) is missing"),
        );
    }
    if let Some(name) = t.server_name.as_deref().filter(|s| !s.is_empty()) {
        if rustls_pki_types::ServerName::try_from(name).is_err() {
            ctx.val(
                tn,
                tp,
                &["serverName"],
                format!("`{name}` is not a DNS name or IP address"),
            );
        }
    }
}

/// The resolved TLS settings (errors were reported by [`check_tls`]).
pub(super) fn resolve_tls(base: &Path, secrets: &Path, t: Option<&TlsOptions>) -> TlsSettings {
    let Some(t) = t else {
        return TlsSettings::default();
    };
    let pem = |inline: &Option<String>, file: &Option<String>, reference: &Option<SecretRef>| {
        pem_source(
            base,
            secrets,
            inline.as_deref(),
            file.as_deref(),
            reference.as_ref(),
        )
        .ok()
        .flatten()
    };
    TlsSettings {
        ca_pem: pem(&t.ca_file_pem, &t.ca_file, &t.ca_file_pem_ref),
        cert_pem: pem(&t.cert_file_pem, &t.cert_file, &t.cert_file_pem_ref),
        key_pem: pem(&t.key_file_pem, &t.key_file, &t.key_file_pem_ref).map(Secret),
        server_name: t.server_name.clone().filter(|s| !s.is_empty()),
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
    }
}
