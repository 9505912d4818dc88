//! The on-disk record format of the file store: message and ack records,
//! their checksums, and the parsing of a segment file.

use super::*;

/// Encodes a message record (header included).
pub fn encode_message(seq: u64, stored_ms: u64, msg: &OutMsg) -> Vec<u8> {
    let topic = msg.topic.as_bytes();
    let corr = msg.correlation.as_deref().unwrap_or(&[]);
    let topic_len = topic.len().min(u16::MAX as usize);
    let corr_len = corr.len().min(u16::MAX as usize);
    let props = msg.props.as_deref().map(encode_props).unwrap_or_default();
    let body_len =
        1 + 8 + 8 + 1 + 1 + 2 + topic_len + 2 + corr_len + props.len() + msg.payload.len();
    let mut buf = Vec::with_capacity(RECORD_HEADER + body_len);
    buf.extend_from_slice(&[0; RECORD_HEADER]);
    buf.push(KIND_MSG);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&stored_ms.to_le_bytes());
    buf.push(msg.qos);
    let flags = u8::from(msg.retain)
        | (u8::from(msg.correlation.is_some()) << 1)
        | (u8::from(msg.props.is_some()) << 2);
    buf.push(flags);
    buf.extend_from_slice(&(topic_len as u16).to_le_bytes());
    buf.extend_from_slice(&topic[..topic_len]);
    buf.extend_from_slice(&(corr_len as u16).to_le_bytes());
    buf.extend_from_slice(&corr[..corr_len]);
    buf.extend_from_slice(&props);
    buf.extend_from_slice(&msg.payload);
    seal(&mut buf);
    buf
}

/// MQTT 5 properties of a stored message: `[flags u8]` (bit 0 content
/// type, bit 1 expiry), then the content type (`u16` length + bytes), the
/// expiry (`u32`), and the user properties (`u16` count, then `u16` length +
/// bytes for each key and value). Longer strings are cut at 65535 bytes.
pub(super) fn encode_props(p: &MessageProps) -> Vec<u8> {
    fn put_str(buf: &mut Vec<u8>, s: &str) {
        let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        buf.extend_from_slice(&(b.len() as u16).to_le_bytes());
        buf.extend_from_slice(b);
    }
    let mut buf = Vec::new();
    buf.push(u8::from(p.content_type.is_some()) | (u8::from(p.message_expiry.is_some()) << 1));
    if let Some(ct) = &p.content_type {
        put_str(&mut buf, ct);
    }
    if let Some(e) = p.message_expiry {
        buf.extend_from_slice(&e.to_le_bytes());
    }
    let n = p.user_properties.len().min(u16::MAX as usize);
    buf.extend_from_slice(&(n as u16).to_le_bytes());
    for (k, v) in p.user_properties.iter().take(n) {
        put_str(&mut buf, k);
        put_str(&mut buf, v);
    }
    buf
}

pub(super) fn decode_props(r: &mut Reader<'_>) -> Option<MessageProps> {
    fn get_str(r: &mut Reader<'_>) -> Option<String> {
        let len = usize::from(r.u16()?);
        std::str::from_utf8(r.take(len)?).ok().map(str::to_owned)
    }
    let flags = r.u8()?;
    if flags > 3 {
        return None;
    }
    let content_type = if flags & 1 != 0 {
        Some(get_str(r)?)
    } else {
        None
    };
    let message_expiry = if flags & 2 != 0 {
        Some(u32::from_le_bytes(r.take(4)?.try_into().ok()?))
    } else {
        None
    };
    let n = usize::from(r.u16()?);
    let mut user_properties = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        user_properties.push((get_str(r)?, get_str(r)?));
    }
    Some(MessageProps {
        content_type,
        user_properties,
        message_expiry,
    })
}

pub(super) fn encode_ack(upto: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(RECORD_HEADER + 9);
    buf.extend_from_slice(&[0; RECORD_HEADER]);
    buf.push(KIND_ACK);
    buf.extend_from_slice(&upto.to_le_bytes());
    seal(&mut buf);
    buf
}

/// Fills in the record header of `buf` (body after the header).
pub(super) fn seal(buf: &mut [u8]) {
    let (head, body) = buf.split_at_mut(RECORD_HEADER);
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4..].copy_from_slice(&CRC.checksum(body).to_le_bytes());
}

/// A decoded record body.
#[derive(Debug, PartialEq)]
pub(super) enum Record {
    Msg(Stored),
    Ack(u64),
}

/// A little-endian reader over a body that fails instead of panicking.
pub(super) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }
}

pub(super) fn decode_body(body: &[u8]) -> Option<Record> {
    let mut r = Reader(body);
    match r.u8()? {
        KIND_MSG => {
            let seq = r.u64().filter(|s| *s <= MAX_SEQ)?;
            let stored_ms = r.u64()?;
            let qos = r.u8()?;
            let flags = r.u8()?;
            if qos > 2 || flags > 7 {
                return None;
            }
            let topic_len = usize::from(r.u16()?);
            let topic = std::str::from_utf8(r.take(topic_len)?).ok()?;
            let corr_len = usize::from(r.u16()?);
            let corr = r.take(corr_len)?;
            let props = if flags & 4 != 0 {
                Some(Arc::new(decode_props(&mut r)?))
            } else {
                None
            };
            Some(Record::Msg(Stored {
                seq,
                stored_ms,
                msg: OutMsg {
                    topic: topic.into(),
                    payload: Bytes::copy_from_slice(r.0),
                    qos,
                    retain: flags & 1 != 0,
                    correlation: (flags & 2 != 0).then(|| Bytes::copy_from_slice(corr)),
                    props,
                },
            }))
        }
        KIND_ACK => {
            let upto = r.u64().filter(|u| *u <= MAX_SEQ + 1)?;
            r.0.is_empty().then_some(Record::Ack(upto))
        }
        _ => None,
    }
}

/// Parses one segment's bytes: the records up to the first damage, and the
/// offset where valid data ends (`None` when the file is intact).
pub(super) fn parse_segment(data: &[u8]) -> (Vec<Record>, Option<(usize, &'static str)>) {
    let mut records = Vec::new();
    if data.len() < HEADER.len() || &data[..HEADER.len()] != HEADER {
        return (records, Some((0, "bad segment header")));
    }
    let mut at = HEADER.len();
    let mut last_seq = None;
    while at < data.len() {
        let rest = &data[at..];
        if rest.len() < RECORD_HEADER {
            return (records, Some((at, "torn record header")));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 || len > MAX_BODY {
            return (records, Some((at, "impossible record length")));
        }
        let Some(body) = rest.get(RECORD_HEADER..RECORD_HEADER + len) else {
            return (records, Some((at, "torn record")));
        };
        if CRC.checksum(body) != crc {
            return (records, Some((at, "checksum mismatch")));
        }
        let Some(record) = decode_body(body) else {
            return (records, Some((at, "undecodable record")));
        };
        if let Record::Msg(m) = &record {
            if last_seq.is_some_and(|l| m.seq <= l) {
                return (records, Some((at, "sequence number out of order")));
            }
            last_seq = Some(m.seq);
        }
        records.push(record);
        at += RECORD_HEADER + len;
    }
    (records, None)
}

pub(super) fn seg_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

pub(super) fn parse_seg_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|s| *s <= MAX_SEQ)
}
