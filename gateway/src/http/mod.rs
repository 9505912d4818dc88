//! The one HTTP listener (`gateway.metrics.listen`): `/metrics`, `/healthz`,
//! the JSON API under `/api/v1/` and the status page at `/` (its assets are
//! embedded in the binary). Bounded: at most [`MAX_CONNECTIONS`] connections,
//! 16 KiB of request head, request bodies up to the `$set` limit.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{Health, Metrics};

pub(crate) mod api;
pub(crate) mod guard;
pub(crate) mod info;

pub(crate) use info::GatewayInfo;

/// Connections served at once; more wait in the kernel's accept queue.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// Largest request body (a `$set` payload's limit).
pub(crate) const MAX_BODY: usize = crate::command::MAX_SET_PAYLOAD;
/// How long a write from the page waits for the device's result.
const SET_WAIT: Duration = Duration::from_secs(30);
/// How long a client may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The status page and its assets, embedded at build time.
const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// The page may load only its own script and style and talk only to its
/// own origin; no inline script, no frames, no forms posted elsewhere.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Everything the listener reads.
#[derive(Clone)]
pub(crate) struct HttpState {
    /// The Prometheus families.
    pub metrics: Metrics,
    /// What `/healthz` reports.
    pub health: Health,
    /// The gateway's facts and running devices.
    pub info: GatewayInfo,
}

type Resp = Response<Full<Bytes>>;

fn respond(code: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = code;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn json(code: StatusCode, value: &serde_json::Value) -> Resp {
    respond(code, "application/json", value.to_string())
}

fn error(code: StatusCode, message: &str) -> Resp {
    json(code, &serde_json::json!({ "error": message }))
}

fn page(content_type: &'static str, body: &'static str) -> Resp {
    let mut resp = respond(StatusCode::OK, content_type, body);
    let h = resp.headers_mut();
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Answers one request.
async fn route(state: HttpState, req: Request<hyper::body::Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let read = req.method() == Method::GET || req.method() == Method::HEAD;
    if let Some(rest) = path.strip_prefix("/api/v1/devices/") {
        if let Some(name) = rest.strip_suffix("/set") {
            if req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            return set(state, name.to_owned(), req).await;
        }
        if !read {
            return method_not_allowed("GET, HEAD");
        }
        return match api::one_device(&state.info, rest).await {
            Some(d) => json(StatusCode::OK, &d),
            None => error(StatusCode::NOT_FOUND, "no such device"),
        };
    }
    let known = matches!(
        path.as_str(),
        "/" | "/index.html"
            | "/app.js"
            | "/style.css"
            | "/metrics"
            | "/healthz"
            | "/api/v1/status"
            | "/api/v1/devices"
    );
    if !known {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    if !read {
        return method_not_allowed("GET, HEAD");
    }
    match path.as_str() {
        "/" | "/index.html" => page("text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => page("text/javascript; charset=utf-8", APP_JS),
        "/style.css" => page("text/css; charset=utf-8", STYLE_CSS),
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        "/healthz" => {
            match crate::health::HealthReport::gather(&state.info, &state.metrics, &state.health) {
                Some(report) => {
                    let (code, body) = report.healthz();
                    respond(code, "application/json", body)
                }
                None => error(StatusCode::SERVICE_UNAVAILABLE, "status unavailable"),
            }
        }
        "/api/v1/status" => json(
            StatusCode::OK,
            &api::status(&state.info, &state.metrics, &state.health),
        ),
        _ => json(StatusCode::OK, &api::devices(&state.info).await),
    }
}

/// `POST /api/v1/devices/<name>/set`: a `$set` payload, through the
/// device's own `$set` validation and queue.
async fn set(state: HttpState, name: String, req: Request<hyper::body::Incoming>) -> Resp {
    let (commands, token) = match state.info.facts() {
        Some(f) => (f.commands, f.token),
        None => (false, None),
    };
    if let Err(refusal) = guard::check_write(req.headers(), commands, token.as_ref()) {
        let mut resp = error(refusal.code, &refusal.message);
        if refusal.code == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        return resp;
    }
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the command is larger than {MAX_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let Some(probe) = api::find(&state.info, &name) else {
        return error(StatusCode::NOT_FOUND, "no such device");
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return too_large(),
    };
    match probe.set(body, SET_WAIT).await {
        Ok(result) => {
            let ok = serde_json::from_slice::<serde_json::Value>(&result)
                .ok()
                .and_then(|v| v.get("ok").and_then(serde_json::Value::as_bool))
                .unwrap_or(false);
            let code = if ok {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            respond(code, "application/json", result)
        }
        Err(crate::device::Unanswered::Stopped) => {
            error(StatusCode::NOT_FOUND, "the device has stopped")
        }
        Err(crate::device::Unanswered::Busy) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the device is busy; try again",
        ),
        Err(crate::device::Unanswered::Timeout) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "no result from the device in time; the write may still happen",
        ),
    }
}

/// Binds `addr` and serves until `cancel` fires. Binding errors are
/// returned at once so start-up can report them.
pub(crate) async fn serve(
    addr: SocketAddr,
    state: HttpState,
    cancel: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    tracing::info!("status page on http://{addr}/, metrics on /metrics, health on /healthz");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        // Accept errors (EMFILE when the process is out of descriptors,
        // ENOBUFS) repeat at once if retried at once: back off, log once.
        let mut accept_backoff = Duration::ZERO;
        loop {
            // Wait for a free slot before accepting: excess clients wait in
            // the kernel's queue instead of costing memory here.
            let permit = tokio::select! {
                _ = cancel.cancelled() => return,
                p = Arc::clone(&slots).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let (stream, _) = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => {
                        accept_backoff = Duration::ZERO;
                        a
                    }
                    Err(e) => {
                        if accept_backoff.is_zero() {
                            tracing::warn!("http listener: {e}; retrying with backoff");
                        }
                        accept_backoff = (accept_backoff * 2)
                            .clamp(Duration::from_millis(10), Duration::from_secs(1));
                        drop(permit);
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(accept_backoff) => {}
                        }
                        continue;
                    }
                },
            };
            let state = state.clone();
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(state, req).await) }
            });
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(16 * 1024)
                    .serve_connection(io, service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(e) = r {
                        tracing::debug!("http connection: {e}");
                    },
                    _ = cancel.cancelled() => {}
                }
                drop(permit);
            });
        }
    }))
}
