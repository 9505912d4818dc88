//! The checks a write (`POST`) must pass before its body is read: writes
//! turned on, same origin only, JSON only, the Host a loopback name when no
//! token guards the listener (against DNS rebinding), and the bearer token
//! compared in constant time.

use hyper::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use hyper::StatusCode;
use subtle::ConstantTimeEq as _;

use crate::config::resolved::Secret;

/// Why a write was refused: the status code and a message for the caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// HTTP status.
    pub code: StatusCode,
    /// What is wrong.
    pub message: String,
}

fn refuse(code: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// Whether `host` (a Host header, maybe with a port) names this machine's
/// loopback interface: `localhost`, `127.x.y.z` or `[::1]`.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks the headers of a write request against the listener's settings.
pub(crate) fn check_write(
    headers: &HeaderMap,
    commands: bool,
    token: Option<&Secret>,
) -> Result<(), Refusal> {
    if !commands {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "writes are off; turn them on with gateway.metrics.commands: true",
        ));
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let json = text(CONTENT_TYPE.as_str()).is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the command as Content-Type: application/json",
        ));
    }
    let host = text(HOST.as_str()).unwrap_or("");
    // A page of another site may not write (no CORS is ever allowed).
    if let Some(origin) = headers.get(ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host));
        if !same {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "cross-origin writes are not allowed",
            ));
        }
    }
    if let Some(site) = text("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "cross-site writes are not allowed",
            ));
        }
    }
    match token {
        Some(token) => {
            let given = text(AUTHORIZATION.as_str())
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(str::trim)
                .unwrap_or("");
            let ok: bool = given.as_bytes().ct_eq(token.0.as_bytes()).into();
            if !ok {
                return Err(refuse(
                    StatusCode::UNAUTHORIZED,
                    "a valid token is needed: Authorization: Bearer <gateway.metrics.token>",
                ));
            }
        }
        // Without a token only a loopback name may be used: a site whose
        // name resolves to 127.0.0.1 (DNS rebinding) is not this gateway.
        None if !is_loopback_host(host) => {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "writes without a token are accepted only for a loopback Host (got `{host}`)"
                ),
            ));
        }
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn writes_off_are_refused() {
        let h = headers(&[JSON, ("host", "127.0.0.1:9880")]);
        let e = check_write(&h, false, None).expect_err("off");
        assert_eq!(e.code, StatusCode::FORBIDDEN);
    }

    #[test]
    fn json_only() {
        let h = headers(&[
            ("content-type", "application/x-www-form-urlencoded"),
            ("host", "127.0.0.1:9880"),
        ]);
        let e = check_write(&h, true, None).expect_err("form");
        assert_eq!(e.code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let h = headers(&[
            ("content-type", "application/json; charset=utf-8"),
            ("host", "127.0.0.1:9880"),
        ]);
        assert_eq!(check_write(&h, true, None), Ok(()));
    }

    #[test]
    fn same_origin_only() {
        let h = headers(&[
            JSON,
            ("host", "127.0.0.1:9880"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(
            check_write(&h, true, None).map_err(|e| e.code),
            Err(StatusCode::FORBIDDEN)
        );
        let h = headers(&[
            JSON,
            ("host", "127.0.0.1:9880"),
            ("origin", "http://127.0.0.1:9880"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(check_write(&h, true, None), Ok(()));
        let h = headers(&[
            JSON,
            ("host", "127.0.0.1:9880"),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert!(check_write(&h, true, None).is_err());
    }

    #[test]
    fn rebinding_host_needs_a_token() {
        let h = headers(&[JSON, ("host", "attacker.example:9880")]);
        assert!(check_write(&h, true, None).is_err());
        for host in ["localhost:9880", "[::1]:9880", "127.0.0.2", "LOCALHOST"] {
            let h = headers(&[JSON, ("host", host)]);
            assert_eq!(check_write(&h, true, None), Ok(()), "{host}");
        }
    }

    #[test]
    fn token_is_checked() {
        let token = Secret("s3cret-token-0123".into());
        let h = headers(&[JSON, ("host", "gw.plant:9880")]);
        let e = check_write(&h, true, Some(&token)).expect_err("no token");
        assert_eq!(e.code, StatusCode::UNAUTHORIZED);
        let h = headers(&[
            JSON,
            ("host", "gw.plant:9880"),
            ("authorization", "Bearer s3cret-token-0124"),
        ]);
        assert!(check_write(&h, true, Some(&token)).is_err());
        let h = headers(&[
            JSON,
            ("host", "gw.plant:9880"),
            ("authorization", "Bearer s3cret-token-0123"),
        ]);
        assert_eq!(check_write(&h, true, Some(&token)), Ok(()));
    }
}
