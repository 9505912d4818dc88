//! `store_recovery`: bytes → segment files in a fresh store directory →
//! recovery (`mqtt::filestore::recover`) and the file store (`mqtt::store`)
//! opened on it, driven through pushes, hand-outs, acknowledgements and
//! reconnects, closed and recovered again. Segments are raw bytes or
//! records built from the input (well-formed, with garbage bodies under a
//! valid checksum, or damaged). It must never panic or hang; recovery
//! returns only well-formed records in sequence order, a second recovery
//! finds nothing more to cut, and after a restart exactly the messages the
//! store had not released come back, unchanged and in order.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use fieldgate::config::resolved::StoreSettings;
use fieldgate::mqtt::filestore::{self, Recovery};
use fieldgate::mqtt::store::Store;
use fieldgate::mqtt::{MessageProps, OutMsg};

use super::input::Input;

const HEADER: &[u8; 8] = b"FGSTORE1";
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
/// Store bound: the smallest accepted.
const MAX_BYTES: u64 = 64 << 10;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A fresh directory, on tmpfs when there is one (syncs are cheap there).
fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("fieldgate-fuzz-store");
        b
    };
    if shm.is_dir() {
        if let Ok(d) = builder.tempdir_in(shm) {
            return d;
        }
    }
    builder.tempdir().expect("temporary directory")
}

/// A string, sometimes long (a piece repeated), to reach the 16-bit length
/// fields of the record format.
fn string(input: &mut Input<'_>) -> String {
    let s = input.string();
    if input.u8() == 0xA5 {
        let times = usize::from(input.u16()) + 1;
        s.repeat(times.min(70_000 / s.len().max(1)))
    } else {
        s
    }
}

/// A message from the input.
fn message(input: &mut Input<'_>) -> OutMsg {
    let flags = input.u8();
    let topic = string(input);
    let payload = Bytes::copy_from_slice(input.bytes());
    let correlation = (flags & 4 != 0).then(|| Bytes::copy_from_slice(input.bytes()));
    let props = (flags & 8 != 0).then(|| {
        let n = input.u8() % 3;
        Arc::new(MessageProps {
            content_type: input.bool().then(|| string(input)),
            user_properties: (0..n).map(|_| (string(input), string(input))).collect(),
            message_expiry: input.bool().then(|| input.u64() as u32),
        })
    });
    OutMsg {
        topic: topic.into(),
        payload,
        qos: flags % 3,
        retain: flags & 16 != 0,
        correlation,
        props,
    }
}

/// `[len][crc][body]` with the right length and checksum.
fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&CRC.checksum(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Interesting sequence numbers.
fn seq(input: &mut Input<'_>, last: &mut u64) -> u64 {
    let s = match input.u8() % 8 {
        0..=3 => last.saturating_add(1),
        4 => *last,
        5 => u64::MAX - u64::from(input.u8() % 3),
        6 => u64::from(input.u8()),
        _ => input.u64(),
    };
    *last = s;
    s
}

/// One segment file's bytes.
fn segment(input: &mut Input<'_>, last: &mut u64) -> Vec<u8> {
    let mode = input.u8();
    if mode.is_multiple_of(4) {
        // Raw bytes, with or without the header.
        let mut data = if mode & 4 != 0 {
            HEADER.to_vec()
        } else {
            Vec::new()
        };
        data.extend_from_slice(input.bytes());
        return data;
    }
    let mut data = HEADER.to_vec();
    if mode & 8 != 0 {
        data[usize::from(mode >> 4) % 8] ^= 1 << (input.u8() % 8);
    }
    let records = input.u8() % 8;
    for _ in 0..records {
        let kind = input.u8();
        let mut record = match kind % 5 {
            0 | 1 => {
                let s = seq(input, last);
                let ms = input.u64();
                filestore::encode_message(s, ms, &message(input))
            }
            2 => {
                let mut body = vec![2];
                body.extend_from_slice(&seq(input, last).to_le_bytes());
                seal(&body)
            }
            3 => seal(input.bytes()),
            _ => {
                // A well-formed body with one byte changed, sealed again.
                let s = seq(input, last);
                let rec = filestore::encode_message(s, 0, &message(input));
                let mut body = rec[8..].to_vec();
                let at = usize::from(input.u16()) % body.len();
                body[at] = input.u8();
                seal(&body)
            }
        };
        if kind & 0x20 != 0 {
            // Damage: a flipped bit anywhere, or a cut.
            let at = usize::from(input.u16()) % record.len();
            if kind & 0x40 != 0 {
                record[at] ^= 1 << (input.u8() % 8);
            } else {
                record.truncate(at);
            }
        }
        data.extend_from_slice(&record);
    }
    data
}

/// Recovers, checking what any recovery must satisfy.
fn recover(dir: &Path) -> Recovery {
    let rec = filestore::recover(dir).unwrap_or_else(|e| panic!("recovery failed: {e}"));
    let mut last = None;
    for m in &rec.messages {
        assert!(m.msg.qos <= 2, "qos {}", m.msg.qos);
        assert!(last.is_none_or(|l| m.seq > l), "sequence out of order");
        last = Some(m.seq);
        // Well-formed: encodes to a record of the same content.
        let record = filestore::encode_message(m.seq, m.stored_ms, &m.msg);
        assert!(record.len() >= 8 + 23);
    }
    if let Some(l) = last {
        assert!(
            rec.next_seq > l,
            "next sequence number {} does not follow the last recovered {l}",
            rec.next_seq
        );
    }
    rec
}

/// Where a message of the model is.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Stage {
    Queued,
    Handed,
    Done,
}

/// The store as the session sees it: every message in order with its stage.
struct Model {
    entries: Vec<(OutMsg, Stage)>,
    pkids: Vec<(u16, usize)>,
    next_pkid: u16,
}

impl Model {
    fn unreleased(&self) -> Vec<OutMsg> {
        let first = self
            .entries
            .iter()
            .position(|(_, s)| *s != Stage::Done)
            .unwrap_or(self.entries.len());
        self.entries[first..]
            .iter()
            .map(|(m, _)| m.clone())
            .collect()
    }

    fn unconfirmed(&self) -> Vec<OutMsg> {
        self.entries
            .iter()
            .filter(|(_, s)| *s != Stage::Done)
            .map(|(m, _)| m.clone())
            .collect()
    }
}

/// The fuzz entry point.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let tmp = temp_dir();
    let dir = tmp.path().join("store");
    std::fs::create_dir(&dir).expect("store directory");
    let segments = 1 + input.u8() % 3;
    let mut last = 0u64;
    for _ in 0..segments {
        let first = match input.u8() % 6 {
            0 => last,
            1 => last.saturating_add(1),
            2 => u64::MAX,
            3 => u64::from(input.u8()),
            _ => input.u64(),
        };
        let bytes = segment(&mut input, &mut last);
        std::fs::write(dir.join(format!("{first:020}.seg")), bytes).expect("write segment");
    }

    // Recovery cuts the damage; a second one finds the same and no damage.
    let first = recover(&dir);
    let found: Vec<_> = first.messages.clone();
    drop(first);
    let second = recover(&dir);
    assert_eq!(second.damaged, 0, "damage left after recovery");
    assert_eq!(second.messages, found, "a second recovery differs");
    drop(second);

    runtime().block_on(drive(
        &dir,
        &mut input,
        found.into_iter().map(|s| s.msg).collect(),
    ));
}

async fn drive(dir: &Path, input: &mut Input<'_>, recovered: Vec<OutMsg>) {
    let settings = StoreSettings::File {
        directory: dir.to_path_buf(),
        max_bytes: MAX_BYTES,
        max_age: None,
        min_free_bytes: 0,
    };
    let mut store = Store::new(&settings, 10);
    let before: Vec<OutMsg> = (0..input.u8() % 3).map(|_| message(input)).collect();
    for m in &before {
        store.push(m.clone(), true).await;
    }
    let older: Vec<OutMsg> = (0..input.u8() % 3).map(|_| message(input)).collect();
    let opened = store
        .open(older.clone())
        .await
        .unwrap_or_else(|e| panic!("the store does not open: {e}"));
    assert_eq!(opened.recovered, recovered.len(), "recovered count");
    let mut model = Model {
        entries: recovered
            .into_iter()
            .chain(older)
            .chain(before)
            .map(|m| (m, Stage::Queued))
            .collect(),
        pkids: Vec::new(),
        next_pkid: 1,
    };
    let ops = input.u8() % 40;
    for _ in 0..ops {
        if store.dropped() > 0 {
            break;
        }
        match input.u8() % 6 {
            0 | 1 => {
                let m = message(input);
                store.push(m.clone(), input.bool()).await;
                model.entries.push((m, Stage::Queued));
            }
            2 | 3 => {
                // Hand out the next message and write it.
                let next = model.entries.iter().position(|(_, s)| *s == Stage::Queued);
                let peeked = store.peek_queued().cloned();
                let Some(i) = next else {
                    assert_eq!(
                        peeked, None,
                        "the store hands out a message the model lacks"
                    );
                    continue;
                };
                assert_eq!(peeked.as_ref(), Some(&model.entries[i].0), "hand-out order");
                store.mark_handed();
                if model.entries[i].0.qos == 0 {
                    store.on_written(0);
                    model.entries[i].1 = Stage::Done;
                } else {
                    let pkid = model.next_pkid;
                    model.next_pkid = model.next_pkid.wrapping_add(1).max(1);
                    store.on_written(pkid);
                    model.entries[i].1 = Stage::Handed;
                    model.pkids.push((pkid, i));
                }
            }
            4 => {
                if model.pkids.is_empty() {
                    continue;
                }
                let k = usize::from(input.u8()) % model.pkids.len();
                let (pkid, i) = model.pkids.remove(k);
                assert!(store.on_acked(pkid).is_some(), "ack of a handed message");
                model.entries[i].1 = Stage::Done;
            }
            _ => {
                store.rewind();
                model.pkids.clear();
                for (_, s) in &mut model.entries {
                    if *s == Stage::Handed {
                        *s = Stage::Queued;
                    }
                }
            }
        }
    }
    let dropped = store.dropped();
    let hand_over = input.bool();
    let left = store.close(hand_over).await;
    let again = recover(dir);
    if dropped > 0 {
        return;
    }
    let back: Vec<OutMsg> = again.messages.into_iter().map(|s| s.msg).collect();
    if hand_over {
        assert_eq!(left, model.unconfirmed(), "handed-over messages");
        assert_eq!(
            back,
            Vec::<OutMsg>::new(),
            "handed-over messages stay on disk"
        );
    } else {
        assert!(left.is_empty());
        assert_eq!(back, model.unreleased(), "messages after a restart");
    }
}
