//! Packet boundaries in an MQTT byte stream: the [`Framer`] that spots
//! PINGREQ/PINGRESP for the relay's ping watch, and the [`Cutter`] that cuts
//! PUBLISH packets from the broker that are larger than the client accepts.

/// Finds packet boundaries in an MQTT byte stream and reports each
/// packet's type as soon as its fixed header is complete.
#[derive(Default)]
pub(super) struct Framer {
    state: FrameState,
}

#[derive(Default, Clone, Copy)]
enum FrameState {
    #[default]
    Header,
    Length {
        kind: u8,
        shift: u32,
        value: usize,
    },
    Body(usize),
}

impl Framer {
    pub(super) fn feed(&mut self, data: &[u8], mut on_packet: impl FnMut(u8)) {
        let mut i = 0;
        while i < data.len() {
            self.state = match self.state {
                FrameState::Header => {
                    let kind = data[i] >> 4;
                    i += 1;
                    FrameState::Length {
                        kind,
                        shift: 0,
                        value: 0,
                    }
                }
                FrameState::Length { kind, shift, value } => {
                    let b = data[i];
                    i += 1;
                    let value = value | (usize::from(b & 0x7f) << shift);
                    if b & 0x80 != 0 && shift < 21 {
                        FrameState::Length {
                            kind,
                            shift: shift + 7,
                            value,
                        }
                    } else {
                        on_packet(kind);
                        if value == 0 {
                            FrameState::Header
                        } else {
                            FrameState::Body(value)
                        }
                    }
                }
                FrameState::Body(n) => {
                    let take = n.min(data.len() - i);
                    i += take;
                    if take == n {
                        FrameState::Header
                    } else {
                        FrameState::Body(n - take)
                    }
                }
            };
        }
    }
}

const PUBLISH: u8 = 3;
/// Largest variable header (topic, packet id, properties) a PUBLISH may
/// have to be cut; one with a larger header is passed on whole.
const CUT_MAX_HEADER: usize = 128 * 1024;

/// Passes the broker's byte stream on, except that a PUBLISH larger than
/// the client accepts ([`CutLimits::max_packet`]) is cut down to its
/// topic, packet id, properties and the first [`CutLimits::keep_payload`] bytes of
/// its payload. The client would otherwise fail the whole connection on it,
/// and a broker that keeps the session sends the same message again after
/// every reconnect: one oversized command would cut the gateway off for
/// good. Cut, it reaches the device as a command that is too large, which
/// gets an error result, and is acknowledged like any other.
pub(super) struct Cutter {
    mqtt5: bool,
    limits: CutLimits,
    state: CutState,
}

enum CutState {
    /// Collecting a fixed header (type byte and 1–4 remaining-length
    /// bytes): the bytes so far and how many there are. Held inline, as
    /// every packet from the broker passes through here.
    Head([u8; 5], usize),
    /// Passing `n` more bytes of the current packet.
    Pass(usize),
    /// Collecting the start of an oversized PUBLISH: its first byte, its
    /// remaining length and the bytes so far.
    Capture(u8, usize, Vec<u8>),
    /// Dropping `n` more bytes of a cut PUBLISH.
    Skip(usize),
}

impl CutState {
    /// At the start of a packet.
    const NEXT_PACKET: CutState = CutState::Head([0; 5], 0);
}

/// Where the [`Cutter`] cuts: the caller's limits (the transport knows no
/// application rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CutLimits {
    /// PUBLISH packets from the broker larger than this are cut (the
    /// client's maximum incoming packet).
    pub max_packet: usize,
    /// The payload bytes a cut PUBLISH keeps (more than the application
    /// accepts, so that it is still refused as too large).
    pub keep_payload: usize,
}

impl Cutter {
    pub(super) fn new(mqtt5: bool, limits: CutLimits) -> Self {
        Self {
            mqtt5,
            limits,
            state: CutState::NEXT_PACKET,
        }
    }

    /// Appends what goes on for `data` to `out`.
    pub(super) fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        while !data.is_empty() {
            let state = std::mem::replace(&mut self.state, CutState::Pass(0));
            self.state = match state {
                CutState::Head(mut head, mut n) => {
                    // `fixed_header` ends the header at its fifth byte at
                    // the latest, so `n` is at most 4 here.
                    head[n] = data[0];
                    n += 1;
                    data = &data[1..];
                    match fixed_header(&head[..n]) {
                        None => CutState::Head(head, n),
                        Some(len) if head[0] >> 4 == PUBLISH && len > self.limits.max_packet => {
                            CutState::Capture(head[0], len, Vec::new())
                        }
                        Some(len) => {
                            out.extend_from_slice(&head[..n]);
                            if len == 0 {
                                CutState::NEXT_PACKET
                            } else {
                                CutState::Pass(len)
                            }
                        }
                    }
                }
                CutState::Pass(n) => {
                    let take = n.min(data.len());
                    out.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if take == n {
                        CutState::NEXT_PACKET
                    } else {
                        CutState::Pass(n - take)
                    }
                }
                CutState::Skip(n) => {
                    let take = n.min(data.len());
                    data = &data[take..];
                    if take == n {
                        CutState::NEXT_PACKET
                    } else {
                        CutState::Skip(n - take)
                    }
                }
                CutState::Capture(first, len, mut body) => {
                    let keep = self.limits.keep_payload;
                    let want = CUT_MAX_HEADER + keep;
                    let take = (want - body.len()).min(data.len()).min(len - body.len());
                    body.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    let header = publish_header_len(&body, (first >> 1) & 3, self.mqtt5);
                    let complete = body.len() >= want || body.len() >= len;
                    match header {
                        Some(h) if h <= CUT_MAX_HEADER && body.len() >= h + keep => {
                            let consumed = body.len();
                            body.truncate(h + keep);
                            tracing::warn!(
                                "the broker sent a message of {len} bytes, more than a command may have; \
                                 passing it on cut to {} bytes so that it is refused",
                                body.len()
                            );
                            out.push(first);
                            put_length(out, body.len());
                            out.extend_from_slice(&body);
                            CutState::Skip(len - consumed)
                        }
                        Some(h) if h <= CUT_MAX_HEADER && !complete => {
                            CutState::Capture(first, len, body)
                        }
                        None if !complete => CutState::Capture(first, len, body),
                        _ => {
                            // Not a PUBLISH we can cut (or malformed): on
                            // whole, for the client to refuse as before.
                            out.push(first);
                            put_length(out, len);
                            out.extend_from_slice(&body);
                            if body.len() == len {
                                CutState::NEXT_PACKET
                            } else {
                                CutState::Pass(len - body.len())
                            }
                        }
                    }
                }
            };
        }
    }
}

/// The remaining length of a complete fixed header in `head` (type byte
/// plus 1–4 length bytes), `None` while incomplete. A fifth length byte
/// with its continuation bit set is malformed; it is read as complete so
/// the client sees it and refuses the connection.
fn fixed_header(head: &[u8]) -> Option<usize> {
    let bytes = head.get(1..)?;
    let last = *bytes.last()?;
    if last & 0x80 != 0 && bytes.len() < 4 {
        return None;
    }
    Some(
        bytes
            .iter()
            .enumerate()
            .map(|(i, b)| usize::from(b & 0x7f) << (7 * i))
            .sum(),
    )
}

/// Appends an MQTT variable byte integer.
pub(super) fn put_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

/// The length of a PUBLISH's variable header at the start of `body` (topic,
/// packet id when `qos` > 0, and MQTT 5 properties), `None` while more
/// bytes are needed.
fn publish_header_len(body: &[u8], qos: u8, mqtt5: bool) -> Option<usize> {
    let topic = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let mut at = 2 + topic + if qos > 0 { 2 } else { 0 };
    if mqtt5 {
        let mut props = 0usize;
        for i in 0..4 {
            let b = *body.get(at + i)?;
            props |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                at += i + 1 + props;
                return (body.len() >= at).then_some(at);
            }
        }
        // A malformed length: let the client judge the packet.
        return Some(usize::MAX);
    }
    (body.len() >= at).then_some(at)
}

/// PINGREQ's packet type.
pub(super) const PINGREQ: u8 = 12;
/// PINGRESP's packet type.
pub(super) const PINGRESP: u8 = 13;

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits the session uses: 1 MiB packets, 64 KiB + 1 payload kept.
    const LIMITS: CutLimits = CutLimits {
        max_packet: 1024 * 1024,
        keep_payload: 64 * 1024 + 1,
    };

    /// A PUBLISH (QoS 1, packet id 7) to `topic` with `payload`.
    fn publish(topic: &str, payload: &[u8], mqtt5: bool) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&7u16.to_be_bytes());
        if mqtt5 {
            body.extend_from_slice(&[3, 0x01, 0x01, 0x03]); // 3 bytes of properties
        }
        body.extend_from_slice(payload);
        let mut p = vec![0x32];
        put_length(&mut p, body.len());
        p.extend(body);
        p
    }

    fn cut_in_pieces(stream: &[u8], piece: usize, mqtt5: bool) -> Vec<u8> {
        let mut c = Cutter::new(mqtt5, LIMITS);
        let mut out = Vec::new();
        for chunk in stream.chunks(piece) {
            c.feed(chunk, &mut out);
        }
        out
    }

    #[test]
    fn an_oversized_publish_is_cut_and_the_rest_passes_unchanged() {
        for mqtt5 in [false, true] {
            let small = publish("a/$set", b"{}", mqtt5);
            let big = publish("a/$set", &vec![b'x'; 2 << 20], mqtt5);
            let mut stream = small.clone();
            stream.extend(&big);
            stream.extend([0xD0, 0]); // PINGRESP
            stream.extend(&small);
            let mut want = small.clone();
            let header = 2 + 6 + 2 + if mqtt5 { 4 } else { 0 };
            want.extend(publish("a/$set", &vec![b'x'; LIMITS.keep_payload], mqtt5));
            want.extend([0xD0, 0]);
            want.extend(&small);
            assert_eq!(
                want.len(),
                2 * small.len() + 2 + 1 + 3 + header + LIMITS.keep_payload
            );
            for piece in [1, 3, 1000, 16 * 1024, stream.len()] {
                let out = cut_in_pieces(&stream, piece, mqtt5);
                assert!(out == want, "mqtt5 {mqtt5}, pieces of {piece}");
            }
        }
    }

    #[test]
    fn packets_the_client_accepts_pass_unchanged() {
        let mut stream = publish("t", &vec![1u8; LIMITS.max_packet - 20], false);
        stream.extend([0x20, 2, 0, 0]); // CONNACK
        stream.extend(publish("t", b"", false));
        for piece in [1, 7, 16 * 1024] {
            assert!(
                cut_in_pieces(&stream, piece, false) == stream,
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn framer_finds_packets_split_anywhere() {
        // PUBLISH (len 200, two-byte length), PINGREQ, PINGRESP.
        let mut stream = vec![0x30, 0xC8, 0x01];
        stream.extend(std::iter::repeat_n(7u8, 200));
        stream.extend([0xC0, 0, 0xD0, 0]);
        for split in 0..stream.len() {
            let mut f = Framer::default();
            let mut kinds = Vec::new();
            f.feed(&stream[..split], |k| kinds.push(k));
            f.feed(&stream[split..], |k| kinds.push(k));
            assert_eq!(kinds, vec![3, PINGREQ, PINGRESP], "split at {split}");
        }
    }
}
