//! Home Assistant MQTT discovery (CONTRACT §10): one entity per property,
//! grouped into one HA device per fieldgate device behind the gateway's own
//! HA device, published as retained configs through the ordinary session
//! input. The session stays dialect-free: this module only sends it
//! retained messages and routes Home Assistant's status topic.
//!
//! - [`config`]: the config keys and their checks;
//! - [`entity`]: pure mapping, property → discovery config;
//! - [`gateway`]: the gateway's own device and its diagnostic entities
//!   (they read the `G/$health` document of [`crate::health`]);
//! - [`Discovery`]: the running part (publish on every applied config, clear
//!   what went, publish again on Home Assistant's birth message).

pub(crate) mod config;
pub(crate) mod entity;
pub(crate) mod gateway;

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::resolved::{DeviceSettings, Resolved};
use crate::config::types::PayloadEncode;
use crate::mqtt::{Inbound, OutMsg, PayloadBuilder, SessionHandle, SessionInput};

pub(crate) use config::HomeAssistantSettings;
use entity::DeviceContext;
use gateway::GatewayContext;

/// QoS of discovery configs (CONTRACT §10).
const CONFIG_QOS: u8 = 1;
/// Home Assistant status messages held while the task is busy.
const STATUS_QUEUE: usize = 8;
/// How long after announcing entities their devices are asked for their
/// state (`T/$get`): Home Assistant subscribes to a state topic only once it
/// has the config, and state messages are not retained by default.
const REFRESH_DELAY: Duration = Duration::from_secs(3);
/// Home Assistant's `online` re-announces at most this often (anyone may
/// publish on its status topic; a flood must not multiply into configs).
const REANNOUNCE_MIN: Duration = Duration::from_secs(10);
/// The longest a burst of configs waits for its session to send the
/// previous batch (once it waited in vain, the rest of the burst does not wait).
const PACE_WAIT: Duration = Duration::from_secs(2);

/// One applied config, as the discovery task needs it.
struct Update {
    settings: Option<HomeAssistantSettings>,
    namespace: Arc<str>,
    gateway_topic: Arc<str>,
    /// Per `Resolved::sessions` index: client id, will topic, will payload
    /// and the running session (`None` when it did not start).
    sessions: Vec<SessionRef>,
    devices: Vec<Arc<DeviceSettings>>,
}

#[derive(Clone)]
struct SessionRef {
    client_id: Arc<str>,
    /// `messageChannelDepth`: a burst of configs is paced to stay within it.
    depth: usize,
    will_topic: Arc<str>,
    will_payload: Arc<str>,
    handle: Option<SessionHandle>,
}

/// The running discovery: owned by the supervisor, told about every applied
/// config. Its task starts with the first config that enables it.
#[derive(Default)]
pub(crate) struct Discovery {
    tx: Option<mpsc::Sender<Update>>,
}

impl Discovery {
    /// Tells the discovery task about the config now running (`sessions`:
    /// the running sessions by their settings). Starts the task the first
    /// time discovery is enabled.
    pub(crate) async fn apply(
        &mut self,
        new: &Resolved,
        sessions: &HashMap<crate::config::resolved::SessionSettings, SessionHandle>,
    ) {
        if new.home_assistant.is_none() && self.tx.is_none() {
            return;
        }
        let update = Update {
            settings: new.home_assistant.clone(),
            namespace: new.gateway.namespace.as_str().into(),
            gateway_topic: new.gateway_topic.as_str().into(),
            sessions: new
                .sessions
                .iter()
                .map(|s| SessionRef {
                    client_id: s.client_id.as_str().into(),
                    depth: s.message_channel_depth,
                    will_topic: s.will.topic.as_str().into(),
                    will_payload: String::from_utf8_lossy(&s.will.payload).into(),
                    handle: sessions.get(s).cloned(),
                })
                .collect(),
            devices: new.devices.clone(),
        };
        let tx = self.tx.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(run(rx));
            tx
        });
        if tx.send(update).await.is_err() {
            tracing::error!("Home Assistant discovery task is gone; configs are not updated");
        }
    }
}

/// A config to publish: topic, session index, payload builder and a hash of
/// the payload (to publish only what changed).
struct Planned {
    topic: Arc<str>,
    session: usize,
    /// Index of its device in `Update::devices` (`None`: the gateway's).
    device: Option<usize>,
    builder: PayloadBuilder,
    hash: u64,
}

fn hash_of(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// Everything fixed per applied config that a payload builder needs.
struct Shared {
    prefix: String,
    namespace: Arc<str>,
    base64: bool,
}

/// The discovery configs of one applied config, in publishing order (the
/// gateway's entities first, so `via_device` exists when devices arrive).
fn plan(u: &Update, s: &HomeAssistantSettings) -> Vec<Planned> {
    let mut out = Vec::new();
    let mut push =
        |topic: String, session: usize, device: Option<usize>, builder: PayloadBuilder| {
            let hash = hash_of(&builder.build());
            out.push(Planned {
                topic: topic.into(),
                session,
                device,
                builder,
                hash,
            });
        };
    if let Some(gw) = u.sessions.first() {
        let ctx = GatewayContext {
            prefix: &s.prefix,
            namespace: &u.namespace,
            gateway_topic: &u.gateway_topic,
            will_topic: &gw.will_topic,
            will_payload: &gw.will_payload,
        };
        for e in gateway::gateway_entities(&ctx) {
            let payload = Bytes::from(e.payload.to_string());
            push(
                e.topic,
                0,
                None,
                PayloadBuilder::new(move || payload.clone()),
            );
        }
    }
    for (di, d) in u.devices.iter().enumerate() {
        let Some(sess) = u.sessions.get(d.session) else {
            continue;
        };
        let shared = Arc::new(Shared {
            prefix: s.prefix.clone(),
            namespace: Arc::clone(&u.namespace),
            base64: d.message.payload_encode == PayloadEncode::Base64,
        });
        for i in 0..d.properties.len() {
            // `$`-named properties are device-level (a BLE advertisement's
            // decode error), never published as values: no entity.
            if crate::state::is_device_slot(&d.properties[i].name) {
                continue;
            }
            let build = {
                let (d, shared, sess) = (Arc::clone(d), Arc::clone(&shared), sess.clone());
                move || device_entity(&shared, &sess, &d, i)
            };
            let (topic, _) = build();
            push(
                topic,
                d.session,
                Some(di),
                PayloadBuilder::new(move || build().1),
            );
        }
    }
    out
}

/// Topic and payload of property `i`'s entity of device `d`.
fn device_entity(
    shared: &Shared,
    sess: &SessionRef,
    d: &DeviceSettings,
    i: usize,
) -> (String, Bytes) {
    let ctx = DeviceContext {
        prefix: &shared.prefix,
        namespace: &shared.namespace,
        device: &d.name,
        model: d.driver.as_str(),
        topic: &d.message.topic,
        qos: d.message.qos,
        base64: shared.base64,
        will_topic: &sess.will_topic,
        will_payload: &sess.will_payload,
    };
    let p = &d.properties[i];
    let overrides = p.details.as_ref().and_then(|x| x.home_assistant.as_deref());
    let e = entity::property_entity(&ctx, p, overrides);
    (e.topic, Bytes::from(e.payload.to_string()))
}

/// What was published, per config topic: its payload hash and the session
/// (client id) that carries it.
type Published = HashMap<Arc<str>, (u64, Arc<str>)>;

/// The discovery task: applies updates, answers Home Assistant's birth.
async fn run(mut updates: mpsc::Receiver<Update>) {
    let (status_tx, status_rx) = flume::bounded::<Box<Inbound>>(STATUS_QUEUE);
    let mut published: Published = HashMap::new();
    let mut current: Option<(Update, Vec<Planned>)> = None;
    let mut routed: Option<(Arc<str>, SessionHandle)> = None;
    // Devices whose entities were (re)announced, asked for their state at `refresh_at`.
    let mut refresh: BTreeSet<String> = BTreeSet::new();
    let mut refresh_at: Option<tokio::time::Instant> = None;
    let mut reannounced: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            u = updates.recv() => {
                let Some(u) = u else { return };
                let planned = match &u.settings {
                    Some(s) => plan(&u, s),
                    None => Vec::new(),
                };
                let announced = publish_diff(&u, &planned, &mut published).await;
                if !announced.is_empty() {
                    refresh.extend(announced);
                    refresh_at = Some(tokio::time::Instant::now() + REFRESH_DELAY);
                }
                // Home Assistant's status topic, on the gateway session.
                let want = u.settings.as_ref().and_then(|s| {
                    let h = u.sessions.first()?.handle.clone()?;
                    Some((Arc::<str>::from(s.status_topic.as_str()), h))
                });
                if let Some((topic, h)) = &routed {
                    if want.as_ref().map(|(t, _)| t) != Some(topic) {
                        h.send(SessionInput::Unroute { topic: Arc::clone(topic) }).await;
                    }
                }
                if let Some((topic, h)) = &want {
                    h.send(SessionInput::Route { topic: Arc::clone(topic), to: status_tx.clone(), retained: true }).await;
                }
                routed = want;
                current = Some((u, planned));
            }
            msg = status_rx.recv_async() => {
                let Ok(msg) = msg else { continue };
                if msg.payload.as_ref() != b"online" {
                    continue;
                }
                let enabled = current.as_ref().filter(|(u, _)| u.settings.is_some());
                if let Some((u, planned)) = enabled {
                    let now = tokio::time::Instant::now();
                    if reannounced.is_some_and(|at| now.duration_since(at) < REANNOUNCE_MIN) {
                        tracing::debug!("Home Assistant is online again within {REANNOUNCE_MIN:?}; not publishing the configs again yet");
                        continue;
                    }
                    reannounced = Some(now);
                    tracing::info!(
                        "Home Assistant is online ({}): publishing {} discovery configs again",
                        msg.topic,
                        planned.len()
                    );
                    let mut pacer = Pacer::default();
                    for p in planned {
                        let Some(s) = u.sessions.get(p.session) else { continue };
                        if let Some(h) = &s.handle {
                            let input = SessionInput::SetRetainedRebuilt {
                                msg: config_msg(&p.topic, p.builder.build()),
                                rebuild: p.builder.clone(),
                            };
                            pacer.send(s, h, input).await;
                        }
                    }
                    refresh.extend(u.devices.iter().map(|d| d.name.clone()));
                    refresh_at = Some(tokio::time::Instant::now() + REFRESH_DELAY);
                }
            }
            _ = sleep_until(refresh_at) => {
                refresh_at = None;
                if let Some((u, _)) = &current {
                    request_states(u, std::mem::take(&mut refresh)).await;
                }
            }
        }
    }
}

/// Keeps a burst of configs (thousands on a large gateway) within the
/// sessions' stores, which drop their oldest when full: after each batch of a
/// quarter of a session's `messageChannelDepth`, waits until the session has
/// sent what it holds. When a session is not connected the burst goes on
/// unpaced: the session publishes every retained config again once it connects.
#[derive(Default)]
struct Pacer {
    sent: HashMap<Arc<str>, usize>,
    gave_up: bool,
}

impl Pacer {
    async fn send(&mut self, s: &SessionRef, h: &SessionHandle, input: SessionInput) {
        h.send(input).await;
        let n = self.sent.entry(Arc::clone(&s.client_id)).or_default();
        *n += 1;
        let batch = (s.depth / 4).max(1);
        if !self.gave_up
            && (*n).is_multiple_of(batch)
            && !h.pace_new_devices(batch, PACE_WAIT).await
        {
            self.gave_up = true;
        }
    }
}

/// Sleeps until `at`; forever when `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Asks each of `devices` for its current state by publishing to its
/// `T/$get`: Home Assistant has just subscribed to their state topics.
async fn request_states(u: &Update, devices: BTreeSet<String>) {
    for d in u.devices.iter().filter(|d| devices.contains(&d.name)) {
        let Some(h) = u.sessions.get(d.session).and_then(|s| s.handle.as_ref()) else {
            continue;
        };
        h.send(SessionInput::Publish(OutMsg {
            topic: format!("{}/$get", d.message.topic).into(),
            payload: Bytes::new(),
            qos: 1,
            retain: false,
            correlation: None,
            props: None,
        }))
        .await;
    }
}

fn config_msg(topic: &Arc<str>, payload: Bytes) -> OutMsg {
    OutMsg {
        topic: Arc::clone(topic),
        payload,
        qos: CONFIG_QOS,
        retain: true,
        correlation: None,
        props: None,
    }
}

/// Publishes the configs that are new or changed, and clears (empty
/// retained message) those no longer planned: a removed device's or
/// property's entity leaves Home Assistant. Returns the devices with a new
/// or changed config.
async fn publish_diff(
    u: &Update,
    planned: &[Planned],
    published: &mut Published,
) -> BTreeSet<String> {
    let mut announced = BTreeSet::new();
    let session_of = |client_id: &str| {
        u.sessions
            .iter()
            .find(|s| &*s.client_id == client_id)
            .or(u.sessions.first())
    };
    let mut pacer = Pacer::default();
    let keep: std::collections::HashSet<&str> = planned.iter().map(|p| &*p.topic).collect();
    let gone: Vec<(Arc<str>, Arc<str>)> = published
        .iter()
        .filter(|(t, _)| !keep.contains(&***t))
        .map(|(t, (_, c))| (Arc::clone(t), Arc::clone(c)))
        .collect();
    for (topic, client) in gone {
        published.remove(&topic);
        if let Some(s) = session_of(&client) {
            if let Some(h) = &s.handle {
                let input = SessionInput::ClearRetained {
                    topic,
                    qos: CONFIG_QOS,
                };
                pacer.send(s, h, input).await;
            }
        }
    }
    let mut sent = 0usize;
    for p in planned {
        let Some(sess) = u.sessions.get(p.session) else {
            continue;
        };
        let same = published
            .get(&p.topic)
            .is_some_and(|(h, c)| *h == p.hash && *c == sess.client_id);
        if same {
            continue;
        }
        let Some(h) = &sess.handle else { continue };
        let input = SessionInput::SetRetainedRebuilt {
            msg: config_msg(&p.topic, p.builder.build()),
            rebuild: p.builder.clone(),
        };
        pacer.send(sess, h, input).await;
        published.insert(Arc::clone(&p.topic), (p.hash, Arc::clone(&sess.client_id)));
        if let Some(d) = p.device.and_then(|i| u.devices.get(i)) {
            announced.insert(d.name.clone());
        }
        sent += 1;
    }
    if sent > 0 {
        tracing::info!("Home Assistant discovery: {sent} config(s) published");
    }
    announced
}

#[cfg(test)]
mod tests;
