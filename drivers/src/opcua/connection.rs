//! Opening a session: discovery (GetEndpoints), endpoint selection, trust, identity, and the event-loop task.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use opcua::client::{ClientBuilder, IdentityToken, Session, SessionPollResult};
use opcua::crypto::SecurityPolicy;
use opcua::types::{EndpointDescription, StatusCode, UserTokenType};
use tokio::sync::mpsc;
use tracing::info;

use super::{dial, security};
use super::{Identity, OpcUaConnection, Policy};
use crate::{DeviceSpec, DriverError, ErrorKind};

/// A live session and the task driving its event loop.
pub(super) struct Connected {
    pub(super) session: Arc<Session>,
    pub(super) events: mpsc::Receiver<LoopEvent>,
    _driver: AbortOnDrop,
}

/// Stops the session's event-loop task when the session is dropped.
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the session's event loop reports to the device task.
#[derive(Debug)]
pub(super) enum LoopEvent {
    /// Something arrived from the server.
    Alive,
    /// The transport or session is gone.
    Lost(String),
}

pub(super) fn io(msg: impl Into<String>) -> DriverError {
    DriverError::new(ErrorKind::Io, msg)
}

pub(super) fn describe_status(code: StatusCode) -> String {
    let hint = match code {
        StatusCode::BadUserAccessDenied | StatusCode::BadIdentityTokenRejected => {
            " (wrong user name or password?)"
        }
        StatusCode::BadIdentityTokenInvalid => {
            " (the server does not accept this kind of identity)"
        }
        StatusCode::BadCertificateUntrusted | StatusCode::BadSecurityChecksFailed => {
            " (does the server trust the client certificate?)"
        }
        StatusCode::BadCertificateHostNameInvalid => {
            " (the endpoint host name is not in the server certificate)"
        }
        _ => "",
    };
    format!("{code}{hint}")
}

/// One connection attempt: discovery, endpoint selection, trust, session.
pub(super) async fn connect(
    spec: &DeviceSpec,
    conn: &OpcUaConnection,
) -> Result<Connected, DriverError> {
    // The host name first, in the resolver's own time and not the device
    // timeout's: a dead name server marks only the devices behind a name.
    // The connections below find the answer in the resolver's cache.
    if let Ok(endpoint) = dial::endpoint_of(conn.endpoint.as_str()) {
        crate::resolve::resolve(&endpoint).await?;
    }
    let secure = conn.policy != Policy::None;
    let own = if secure || conn.certificate.is_some() {
        Some(security::client_certificate(conn).await?)
    } else {
        None
    };
    let mut builder = ClientBuilder::new()
        .application_name("fieldgate")
        .application_uri(security::APPLICATION_URI)
        .product_uri(security::APPLICATION_URI)
        .pki_dir(conn.state_dir.join("pki"))
        .create_sample_keypair(false)
        // Trust was decided by `security::check_server` against the
        // configured directory before the session is built.
        .trust_server_certs(true)
        .verify_server_certs(true)
        .session_retry_limit(0)
        .session_retry_initial(Duration::from_millis(100))
        .recreate_subscriptions(false)
        .request_timeout(spec.timeout)
        .publish_timeout(spec.timeout + spec.sync_interval.max(Duration::from_secs(1)) * 3)
        .keep_alive_interval(keep_alive_interval(spec))
        .max_failed_keep_alive_count(0)
        .session_name(format!("fieldgate {}", spec.name));
    if let Some((cert, key)) = &own {
        builder = builder.certificate_path(cert).private_key_path(key);
    }
    let client = builder
        .client()
        .map_err(|e| DriverError::new(ErrorKind::Unsupported, e.join("; ")))?;
    let endpoints = tokio::time::timeout(
        spec.timeout,
        client.get_server_endpoints_from_url(dial::ResolvingConnector::new(conn.endpoint.as_str())),
    )
    .await
    .map_err(|_| DriverError::timeout(spec.timeout))?
    .map_err(|e| {
        io(format!(
            "cannot get the endpoints of {}: {}",
            conn.endpoint,
            describe_status(e.status())
        ))
    })?;
    let mut endpoint = select_endpoint(&endpoints, conn)?;
    if secure {
        security::check_server(conn, &endpoint).await?;
    }
    // Connect to the configured address, not to whatever host name the
    // server advertises (often unresolvable from the gateway).
    endpoint.endpoint_url = conn.endpoint.as_str().into();
    let identity = identity_token(conn, &endpoint, own.as_ref())?;
    let (session, event_loop) = client
        .session_builder()
        .connect_to_endpoint_directly(endpoint)
        .map(|b| {
            b.user_identity_token(identity)
                .with_connector(dial::ResolvingSource)
                .build(client.certificate_store().clone())
        })
        .and_then(|built| built)
        .map_err(|e| {
            io(format!(
                "cannot start a session: {}",
                describe_status(e.status())
            ))
        })?;

    let (tx, mut rx) = mpsc::channel(64);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let driver = AbortOnDrop(tokio::spawn(async move {
        let stream = event_loop.enter();
        tokio::pin!(stream);
        let mut ready = Some(ready_tx);
        loop {
            let ev = match stream.next().await {
                None => LoopEvent::Lost("session closed".into()),
                Some(Err(code)) => LoopEvent::Lost(describe_status(code)),
                Some(Ok(SessionPollResult::Reconnected(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    }
                    LoopEvent::Alive
                }
                Some(Ok(SessionPollResult::ConnectionLost(code))) => {
                    LoopEvent::Lost(format!("connection lost: {}", describe_status(code)))
                }
                Some(Ok(SessionPollResult::ReconnectFailed(code))) => {
                    LoopEvent::Lost(describe_status(code))
                }
                Some(Ok(SessionPollResult::Transport(
                    opcua::client::transport::TransportPollResult::IncomingMessage,
                )))
                | Some(Ok(SessionPollResult::Subscription(
                    opcua::client::SubscriptionActivity::Publish,
                ))) => LoopEvent::Alive,
                Some(Ok(SessionPollResult::SessionActivity(
                    opcua::client::SessionActivity::KeepAliveSucceeded,
                ))) => LoopEvent::Alive,
                Some(Ok(_)) => continue,
            };
            let lost = matches!(ev, LoopEvent::Lost(_));
            if lost {
                if let (Some(r), LoopEvent::Lost(m)) = (ready.take(), &ev) {
                    let _ = r.send(Err(m.clone()));
                    return;
                }
            }
            // A full channel only drops liveness hints; a loss must get through.
            if lost {
                let _ = tx.send(ev).await;
                return;
            }
            let _ = tx.try_send(ev);
        }
    }));
    let ready = tokio::time::timeout(spec.timeout * 3 + Duration::from_secs(2), ready_rx).await;
    match ready {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(m))) => {
            return Err(io(format!("cannot connect to {}: {m}", conn.endpoint)));
        }
        Ok(Err(_)) => return Err(io(format!("cannot connect to {}", conn.endpoint))),
        Err(_) => {
            return Err(DriverError::timeout(
                spec.timeout * 3 + Duration::from_secs(2),
            ))
        }
    }
    // Drain anything queued before the hand-over.
    while let Ok(ev) = rx.try_recv() {
        if let LoopEvent::Lost(m) = ev {
            return Err(io(m));
        }
    }
    info!(device = %spec.name, endpoint = %conn.endpoint, policy = conn.policy.as_str(),
          mode = conn.security_mode.as_str(), "opcua: session open");
    Ok(Connected {
        session,
        events: rx,
        _driver: driver,
    })
}

pub(super) fn keep_alive_interval(spec: &DeviceSpec) -> Duration {
    spec.sync_interval
        .clamp(Duration::from_secs(1), Duration::from_secs(10))
}

pub(super) fn select_endpoint(
    endpoints: &[EndpointDescription],
    conn: &OpcUaConnection,
) -> Result<EndpointDescription, DriverError> {
    let uri = conn.policy.to_library().to_uri();
    let mode = conn.security_mode.to_library();
    endpoints
        .iter()
        .find(|e| e.security_policy_uri.as_ref() == uri && e.security_mode == mode)
        .cloned()
        .ok_or_else(|| {
            let offered: Vec<String> = endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{}/{:?}",
                        SecurityPolicy::from_uri(e.security_policy_uri.as_ref()),
                        e.security_mode
                    )
                })
                .collect();
            DriverError::new(
                ErrorKind::NotFound,
                format!(
                    "{} offers no endpoint with securityPolicy {} and securityMode {}; it offers: {}",
                    conn.endpoint,
                    conn.policy.as_str(),
                    conn.security_mode.as_str(),
                    offered.join(", ")
                ),
            )
        })
}

pub(super) fn identity_token(
    conn: &OpcUaConnection,
    endpoint: &EndpointDescription,
    own: Option<&(PathBuf, PathBuf)>,
) -> Result<IdentityToken, DriverError> {
    let offers = |t: UserTokenType| {
        endpoint
            .user_identity_tokens
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|p| p.token_type == t)
    };
    match &conn.identity {
        Identity::UserName { user, password } => {
            Ok(IdentityToken::new_user_name(user.clone(), password.clone()))
        }
        Identity::Anonymous => {
            if !offers(UserTokenType::Anonymous) && offers(UserTokenType::Certificate) {
                if let Some((cert, key)) = own {
                    return IdentityToken::new_x509_path(cert, key).map_err(|e| {
                        DriverError::new(
                            ErrorKind::Io,
                            format!("cannot load the X.509 identity: {e}"),
                        )
                    });
                }
            }
            Ok(IdentityToken::Anonymous)
        }
    }
}
