//! The relay between rumqttc's connection (on the bridge's private socket)
//! and the broker: it rewrites MQTT 3.1's CONNECT, bounds every write by
//! `writeTimeout`, fails the connection when a PINGRESP does not follow a
//! PINGREQ within `pingTimeout`, and cuts oversized PUBLISH packets from
//! the broker (see [`super::frame::Cutter`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::frame::{put_length, CutLimits, Cutter, Framer, PINGREQ, PINGRESP};
use super::Stream;

/// Timing, protocol options and limits of the relay.
#[derive(Debug, Clone, Copy)]
pub(super) struct RelayOptions {
    /// Rewrite the first CONNECT for MQTT 3.1.
    pub mqtt31: bool,
    /// The connection speaks MQTT 5 (PUBLISH packets carry properties).
    pub mqtt5: bool,
    /// One write to the broker may take this long; zero = no limit.
    pub write_timeout: Duration,
    /// A PINGRESP must follow a PINGREQ within this; zero = no limit.
    pub ping_timeout: Duration,
    /// Where oversized PUBLISH packets from the broker are cut.
    pub limits: CutLimits,
}

/// Why rumqttc's first packet could not be rewritten for MQTT 3.1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V31Error {
    /// The first packet is something else.
    #[error("the first packet is not a CONNECT")]
    NotConnect,
    /// The remaining length has more than four bytes.
    #[error("malformed CONNECT length")]
    MalformedLength,
    /// The CONNECT is not the MQTT 3.1.1 one it should be.
    #[error("the CONNECT is not MQTT 3.1.1")]
    NotV311,
}

/// Why a relayed connection ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RelayError {
    /// A write to the broker failed.
    #[error("write to the broker failed: {0}")]
    Write(Arc<std::io::Error>),
    /// A write to the broker did not finish within `writeTimeout`.
    #[error("a write to the broker took longer than writeTimeout ({})", humantime::format_duration(*.0))]
    WriteTimeout(Duration),
    /// Reading from the broker failed.
    #[error("connection to the broker lost: {0}")]
    Read(Arc<std::io::Error>),
    /// The broker closed the connection.
    #[error("the broker closed the connection")]
    Closed,
    /// No PINGRESP within `pingTimeout`.
    #[error("no PINGRESP within pingTimeout ({})", humantime::format_duration(*.0))]
    PingTimeout(Duration),
    /// Reading rumqttc's side failed.
    #[error("the client's side of the bridge failed: {0}")]
    Local(Arc<std::io::Error>),
    /// The CONNECT could not be rewritten for MQTT 3.1.
    #[error(transparent)]
    V31(#[from] V31Error),
}

/// Rewrites an MQTT 3.1.1 CONNECT at the start of `buf` into an MQTT 3.1
/// CONNECT. `Ok(None)`: more bytes are needed.
fn connect_to_v31(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, V31Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != 0x10 {
        return Err(V31Error::NotConnect);
    }
    let mut len = 0usize;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err(V31Error::MalformedLength);
        }
    }
    let total = i + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[i..total];
    if body.get(..7) != Some(&[0, 4, b'M', b'Q', b'T', b'T', 4][..]) {
        return Err(V31Error::NotV311);
    }
    let mut out = Vec::with_capacity(total + 3);
    out.push(0x10);
    put_length(&mut out, len + 2);
    out.extend_from_slice(&[0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3]);
    out.extend_from_slice(&body[7..]);
    Ok(Some((out, total)))
}

/// Writes all of `data` to the broker within `limit` (zero = no limit).
async fn write_upstream<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    data: &[u8],
    limit: Duration,
) -> Result<(), RelayError> {
    let write = async {
        w.write_all(data).await?;
        w.flush().await
    };
    if limit.is_zero() {
        return write.await.map_err(|e| RelayError::Write(Arc::new(e)));
    }
    match tokio::time::timeout(limit, write).await {
        Ok(r) => r.map_err(|e| RelayError::Write(Arc::new(e))),
        Err(_) => Err(RelayError::WriteTimeout(limit)),
    }
}

/// Relays rumqttc's connection (`local`) to the broker (`upstream`) until
/// either side ends. `Err` says why, when the cause is on the broker's side;
/// it is also stored in `error` before the sockets close, so rumqttc's
/// driver finds it when it sees the connection end.
pub(super) async fn relay(
    local: UnixStream,
    upstream: Box<dyn Stream>,
    options: RelayOptions,
    error: &Mutex<Option<RelayError>>,
) -> Result<(), RelayError> {
    let (mut lr, mut lw) = local.into_split();
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let (ping_tx, mut ping_rx) = watch::channel::<Option<Instant>>(None);
    // The futures below only borrow the sockets, which close when this
    // function returns, after the outcome has been recorded.
    let (lr, lw, ur, uw) = (&mut lr, &mut lw, &mut ur, &mut uw);
    let ping_tx = &ping_tx;

    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut framer = Framer::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut connect_done = !options.mqtt31;
        loop {
            let n = lr
                .read(&mut buf)
                .await
                .map_err(|e| RelayError::Local(Arc::new(e)))?;
            if n == 0 {
                // rumqttc closed its side: a normal end.
                let _ = uw.shutdown().await;
                return Ok(());
            }
            let data = &buf[..n];
            let mut ping = false;
            framer.feed(data, |kind| ping |= kind == PINGREQ);
            if ping && !options.ping_timeout.is_zero() {
                ping_tx.send_if_modified(|d| {
                    if d.is_none() {
                        *d = Some(Instant::now() + options.ping_timeout);
                        true
                    } else {
                        false
                    }
                });
            }
            if connect_done {
                write_upstream(uw, data, options.write_timeout).await?;
                continue;
            }
            pending.extend_from_slice(data);
            if let Some((connect, used)) = connect_to_v31(&pending)? {
                write_upstream(uw, &connect, options.write_timeout).await?;
                write_upstream(uw, &pending[used..], options.write_timeout).await?;
                pending = Vec::new();
                connect_done = true;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut framer = Framer::default();
        let mut cutter = Cutter::new(options.mqtt5, options.limits);
        let mut out = Vec::with_capacity(buf.len());
        loop {
            let n = ur
                .read(&mut buf)
                .await
                .map_err(|e| RelayError::Read(Arc::new(e)))?;
            if n == 0 {
                return Err(RelayError::Closed);
            }
            let mut pong = false;
            framer.feed(&buf[..n], |kind| pong |= kind == PINGRESP);
            if pong {
                ping_tx.send_replace(None);
            }
            out.clear();
            cutter.feed(&buf[..n], &mut out);
            if lw.write_all(&out).await.is_err() {
                return Ok(());
            }
        }
    };
    let ping_watch = async {
        loop {
            let deadline = *ping_rx.borrow_and_update();
            match deadline {
                None => {
                    if ping_rx.changed().await.is_err() {
                        return std::future::pending::<Result<(), RelayError>>().await;
                    }
                }
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {
                            return Err(RelayError::PingTimeout(options.ping_timeout));
                        }
                        r = ping_rx.changed() => if r.is_err() {
                            return std::future::pending().await;
                        },
                    }
                }
            }
        }
    };
    let outcome = tokio::select! {
        r = up => r,
        r = down => r,
        r = ping_watch => r,
    };
    if let Err(reason) = &outcome {
        if let Ok(mut e) = error.lock() {
            *e = Some(reason.clone());
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CutLimits = CutLimits {
        max_packet: 1024 * 1024,
        keep_payload: 64 * 1024 + 1,
    };
    #[test]
    fn rewrites_connect_to_mqtt31() {
        // CONNECT, MQTT 3.1.1, clean session, keep-alive 30, client id "ab".
        let v311 = [
            0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 2, b'a', b'b', 0xC0, 0,
        ];
        let (out, used) = connect_to_v31(&v311).unwrap().unwrap();
        assert_eq!(used, 16);
        assert_eq!(
            out,
            vec![
                0x10, 16, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 30, 0, 2, b'a',
                b'b'
            ]
        );
        assert_eq!(connect_to_v31(&v311[..10]).unwrap(), None);
        assert_eq!(connect_to_v31(&[0x30, 0]), Err(V31Error::NotConnect));
    }

    #[tokio::test]
    async fn a_stalled_write_to_the_broker_fails_the_relay() {
        let (local, mut client) = UnixStream::pair().unwrap();
        // The "broker" never reads: its buffer of 1 KiB fills up.
        let (upstream, _broker) = tokio::io::duplex(1024);
        let options = RelayOptions {
            mqtt31: false,
            mqtt5: false,
            write_timeout: Duration::from_millis(200),
            ping_timeout: Duration::ZERO,
            limits: LIMITS,
        };
        let relay = tokio::spawn(async move {
            relay(local, Box::new(upstream), options, &Mutex::new(None)).await
        });
        // A PUBLISH far larger than the broker's buffer.
        let mut publish = vec![0x30, 0x80, 0x80, 0x01];
        publish.extend(std::iter::repeat_n(0u8, 16 * 1024));
        client.write_all(&publish).await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), relay)
            .await
            .expect("the relay ends")
            .unwrap();
        let err = outcome
            .expect_err("a stalled write is an error")
            .to_string();
        assert!(err.contains("writeTimeout (200ms)"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_pingresp_fails_the_relay() {
        let (local, mut client) = UnixStream::pair().unwrap();
        let (upstream, _broker) = tokio::io::duplex(1024);
        let options = RelayOptions {
            mqtt31: false,
            mqtt5: false,
            write_timeout: Duration::ZERO,
            ping_timeout: Duration::from_millis(100),
            limits: LIMITS,
        };
        let relay = tokio::spawn(async move {
            relay(local, Box::new(upstream), options, &Mutex::new(None)).await
        });
        client.write_all(&[0xC0, 0]).await.unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), relay)
            .await
            .expect("the relay ends")
            .unwrap()
            .expect_err("no PINGRESP is an error")
            .to_string();
        assert!(err.contains("pingTimeout (100ms)"), "{err}");
    }
}
