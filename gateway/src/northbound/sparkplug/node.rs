//! The edge node task of one Sparkplug session: the single place where
//! `seq` is counted, so every node and device message of the session goes
//! through it in order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use prost::Message as _;

use super::history::{Entry, History};
use super::proto::payload::{metric, Metric};
use super::proto::{DataType, Payload};
use super::{bdseq::BdSeq, metric as m, millis, Parts};
use crate::config::resolved::{DeviceSettings, SparkplugSettings};
use crate::mqtt::drops;
use crate::mqtt::{ConnEvent, Inbound, Inbox, OutMsg, SessionHandle, SessionInput};
use crate::state::Published;
use crate::telemetry::{Metrics, SetResult};

/// Device events waiting for the node; devices wait when it is full.
const INPUT_QUEUE: usize = 1024;
/// NCMD, DCMD and STATE messages waiting for the node; more are dropped.
const COMMAND_QUEUE: usize = 64;
/// Aliases below this belong to node metrics.
const FIRST_DEVICE_ALIAS: u64 = 16;
/// Node metric aliases.
const ALIAS_REBIRTH: u64 = 0;
const ALIAS_VERSION: u64 = 1;
const ALIAS_DEVICES: u64 = 2;
const ALIAS_DEVICES_ONLINE: u64 = 3;

/// What devices tell their edge node.
#[derive(Debug)]
pub(crate) enum NodeInput {
    /// A device publishes through this node; DCMDs for it go to `inbox`.
    Attach {
        /// Its settings (name, properties).
        settings: Arc<DeviceSettings>,
        /// Its command inbox.
        inbox: Inbox,
    },
    /// The device stops publishing through this node (DDEATH if born).
    Detach {
        /// Device name.
        name: String,
    },
    /// The device became reachable or unreachable.
    Online {
        /// Device name.
        name: String,
        /// Reachable.
        online: bool,
    },
    /// The device's current state (every property, `None`: no value).
    Data {
        /// Device name.
        name: String,
        /// When it was read.
        at: SystemTime,
        /// Values in property order.
        values: Vec<Option<Published>>,
    },
}

/// Sends device events to a session's edge node.
#[derive(Clone)]
pub struct NodeHandle {
    tx: flume::Sender<NodeInput>,
    sp: Arc<SparkplugSettings>,
}

impl NodeHandle {
    /// The DCMD topic of `device` (its commands arrive there, as JSON
    /// `$set` objects translated by the node).
    pub fn dcmd_topic(&self, device: &str) -> String {
        super::device_topic(&self.sp, "DCMD", device)
    }

    /// Hands an event to the node, waiting while its queue is full.
    pub(crate) async fn send(&self, input: NodeInput) {
        if self.tx.send_async(input).await.is_err() {
            tracing::debug!("Sparkplug edge node already stopped");
        }
    }
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("edge_node_id", &self.sp.edge_node_id)
            .finish()
    }
}

/// One device as the node knows it.
struct Dev {
    settings: Arc<DeviceSettings>,
    inbox: Inbox,
    /// Alias of property 0; property i has `base + i`.
    base: u64,
    online: bool,
    /// DBIRTH sent in the current birth.
    born: bool,
    /// Values as last sent (or recorded as history), property order.
    values: Option<Vec<Option<Published>>>,
    /// When they were read (ms).
    at: u64,
    dbirth: Arc<str>,
    ddata: Arc<str>,
    ddeath: Arc<str>,
    dcmd: Arc<str>,
}

/// The `seq` for the next message, advancing `seq` (0–255, then 0 again;
/// an NBIRTH resets it to 0 first).
pub(super) fn next_seq(seq: &mut u8) -> u64 {
    let s = *seq;
    *seq = seq.wrapping_add(1);
    u64::from(s)
}

/// Starts the node task.
pub(super) fn spawn(
    sp: SparkplugSettings,
    parts: Parts,
    session: SessionHandle,
    metrics: Metrics,
) -> NodeHandle {
    let sp = Arc::new(sp);
    let (tx, rx) = flume::bounded(INPUT_QUEUE);
    let (cmd_tx, cmd_rx) = flume::bounded(COMMAND_QUEUE);
    let node = Node {
        nbirth: super::node_topic(&sp, "NBIRTH").into(),
        ndeath: super::node_topic(&sp, "NDEATH").into(),
        ndata: super::node_topic(&sp, "NDATA").into(),
        ncmd: super::node_topic(&sp, "NCMD").into(),
        state: sp
            .primary_host_id
            .as_deref()
            .map(|h| super::state_topic(h).into()),
        sp: sp.clone(),
        session,
        metrics,
        bdseq: parts.bdseq,
        devices: BTreeMap::new(),
        by_dcmd: HashMap::new(),
        next_alias: FIRST_DEVICE_ALIAS,
        seq: 0,
        connected: false,
        host_online: sp.primary_host_id.is_none(),
        live: false,
        historical: parts.history,
        commands: cmd_tx,
        online_reported: 0,
    };
    tokio::spawn(node.run(rx, cmd_rx, parts.conn));
    NodeHandle { tx, sp }
}

struct Node {
    sp: Arc<SparkplugSettings>,
    session: SessionHandle,
    metrics: Metrics,
    bdseq: Arc<BdSeq>,
    nbirth: Arc<str>,
    ndeath: Arc<str>,
    ndata: Arc<str>,
    ncmd: Arc<str>,
    state: Option<Arc<str>>,
    devices: BTreeMap<String, Dev>,
    by_dcmd: HashMap<Arc<str>, String>,
    next_alias: u64,
    /// `seq` of the next message.
    seq: u8,
    connected: bool,
    /// The primary host is online (always, without `primaryHostId`).
    host_online: bool,
    /// Born on the current connection: data goes out live.
    live: bool,
    /// DDATA recorded while not live, oldest first (bounded; on disk with
    /// a file store).
    historical: History,
    commands: Inbox,
    online_reported: u32,
}

impl Node {
    async fn run(
        mut self,
        inputs: flume::Receiver<NodeInput>,
        commands: flume::Receiver<Box<Inbound>>,
        conn: flume::Receiver<ConnEvent>,
    ) {
        let found = self.historical.open().await;
        if found > 0 {
            tracing::info!(
                "Sparkplug: {found} historical DDATA kept from before the restart; sent after the next births"
            );
        }
        self.route(self.ncmd.clone()).await;
        if let Some(state) = self.state.clone() {
            self.route(state).await;
        }
        loop {
            tokio::select! {
                biased;
                ev = conn.recv_async() => match ev {
                    Ok(ConnEvent::Up { returned }) => self.on_connected(returned).await,
                    Ok(ConnEvent::Down) => {
                        self.connected = false;
                        self.live = false;
                        // After a reconnect the host's STATE must be seen
                        // again (Sparkplug 3.0): it may have gone meanwhile.
                        if self.state.is_some() {
                            self.host_online = false;
                        }
                    }
                    // The session has ended.
                    Err(_) => break,
                },
                cmd = commands.recv_async() => if let Ok(cmd) = cmd {
                    self.on_command(*cmd).await;
                },
                input = inputs.recv_async() => match input {
                    Ok(input) => self.on_input(input).await,
                    Err(_) => break,
                },
            }
        }
        self.historical.close().await;
    }

    /// Routes `topic` to the node: the host's STATE is retained by design
    /// and delivered as such; NCMD/DCMD never are (a replay, not a command).
    async fn route(&self, topic: Arc<str>) {
        let retained = topic.starts_with(&format!("{}/STATE/", super::NAMESPACE));
        self.session
            .send(SessionInput::Route {
                topic,
                to: self.commands.clone(),
                retained,
            })
            .await;
    }

    fn next_seq(&mut self) -> u64 {
        next_seq(&mut self.seq)
    }

    async fn publish(&self, topic: Arc<str>, payload: &Payload) {
        let msg = OutMsg {
            topic,
            payload: Bytes::from(payload.encode_to_vec()),
            qos: 0,
            retain: false,
            correlation: None,
            props: None,
        };
        self.session.send(SessionInput::Publish(msg)).await;
    }

    async fn on_connected(&mut self, returned: Vec<crate::mqtt::OutMsg>) {
        self.connected = true;
        self.live = false;
        // What the store held when the connection went is history now: its
        // DDATA go out again, marked historical, after the new births.
        let prefix = format!(
            "{}/{}/DDATA/{}/",
            super::NAMESPACE,
            self.sp.group_id,
            self.sp.edge_node_id
        );
        let older: Vec<Entry> = returned
            .iter()
            .filter_map(|msg| {
                let device = msg.topic.strip_prefix(&prefix)?;
                let mut payload = Payload::decode(msg.payload.as_ref()).ok()?;
                let d = self.devices.get(device);
                for metric in &mut payload.metrics {
                    metric.is_historical = Some(true);
                    // Name it: aliases may be assigned anew before the replay.
                    if metric.name.is_none() {
                        metric.name = d.and_then(|d| {
                            let i = metric.alias?.checked_sub(d.base)?;
                            Some(
                                d.settings
                                    .properties
                                    .get(usize::try_from(i).ok()?)?
                                    .name
                                    .to_string(),
                            )
                        });
                    }
                }
                payload.seq = None;
                Some(Entry {
                    device: device.to_owned(),
                    payload,
                })
            })
            .collect();
        let dropped = self.historical.prepend(older).await;
        self.count_dropped(dropped);
        if self.host_online {
            self.birth().await;
        } else {
            tracing::info!(
                "Sparkplug: connected; waiting for primary host `{}` to be online before the NBIRTH",
                self.sp.primary_host_id.as_deref().unwrap_or_default()
            );
        }
    }

    /// Counts history entries dropped to stay within the bound.
    fn count_dropped(&self, dropped: u64) {
        if dropped > 0 {
            self.metrics
                .mqtt_dropped
                .with_label_values(&[&self.session.client_id, drops::STORE_FULL])
                .inc_by(dropped);
        }
    }

    fn online_count(&self) -> u32 {
        self.devices.values().filter(|d| d.online).count() as u32
    }

    /// NBIRTH (seq 0), the DBIRTH of every online device with values, then
    /// the history in order; from then on data goes out live.
    async fn birth(&mut self) {
        let now = millis(SystemTime::now());
        self.seq = 0;
        let node_metric = |name: &str, alias: u64, dt: DataType, v: metric::Value| Metric {
            name: Some(name.into()),
            alias: Some(alias),
            timestamp: Some(now),
            datatype: Some(dt as u32),
            value: Some(v),
            ..Default::default()
        };
        let online = self.online_count();
        let nbirth = Payload {
            timestamp: Some(now),
            seq: Some(self.next_seq()),
            metrics: vec![
                super::bdseq_metric(self.bdseq.current()),
                node_metric(
                    super::REBIRTH,
                    ALIAS_REBIRTH,
                    DataType::Boolean,
                    metric::Value::BooleanValue(false),
                ),
                node_metric(
                    "Node Info/Version",
                    ALIAS_VERSION,
                    DataType::String,
                    metric::Value::StringValue(env!("CARGO_PKG_VERSION").into()),
                ),
                node_metric(
                    "Node Info/Devices",
                    ALIAS_DEVICES,
                    DataType::UInt32,
                    metric::Value::IntValue(self.devices.len() as u32),
                ),
                node_metric(
                    "Node Info/Devices Online",
                    ALIAS_DEVICES_ONLINE,
                    DataType::UInt32,
                    metric::Value::IntValue(online),
                ),
            ],
            ..Default::default()
        };
        self.publish(self.nbirth.clone(), &nbirth).await;
        self.online_reported = online;
        tracing::info!(
            bd_seq = self.bdseq.current(),
            "Sparkplug: NBIRTH of edge node {}/{}",
            self.sp.group_id,
            self.sp.edge_node_id
        );
        let names: Vec<String> = self.devices.keys().cloned().collect();
        for name in &names {
            let ready = self
                .devices
                .get(name)
                .is_some_and(|d| d.online && d.values.is_some());
            if let Some(d) = self.devices.get_mut(name) {
                d.born = false;
            }
            if ready {
                self.dbirth(name).await;
            }
        }
        let history = self.historical.take_all().await;
        let mut skipped = 0u64;
        for Entry {
            device,
            mut payload,
        } in history
        {
            let Some(d) = self.devices.get(&device).filter(|d| d.born) else {
                skipped += 1;
                continue;
            };
            // Names to the aliases of these births; metrics of properties
            // that are gone, or changed type, are left out.
            payload.metrics.retain_mut(|metric| {
                let Some(name) = metric.name.take() else {
                    return false;
                };
                let Some((i, prop)) = d
                    .settings
                    .properties
                    .iter()
                    .enumerate()
                    .find(|(_, p)| *p.name == *name)
                else {
                    return false;
                };
                if metric
                    .datatype
                    .is_some_and(|t| t != m::datatype(prop) as u32)
                {
                    return false;
                }
                metric.alias = Some(d.base + i as u64);
                metric.is_historical = Some(true);
                true
            });
            if payload.metrics.is_empty() {
                skipped += 1;
                continue;
            }
            let topic = d.ddata.clone();
            payload.seq = Some(self.next_seq());
            payload.timestamp = Some(millis(SystemTime::now()));
            self.publish(topic, &payload).await;
        }
        if skipped > 0 {
            tracing::warn!(
                "Sparkplug: {skipped} historical DDATA dropped: their devices are gone or offline"
            );
            self.metrics
                .mqtt_dropped
                .with_label_values(&[&self.session.client_id, drops::DEVICE_GONE])
                .inc_by(skipped);
        }
        self.live = true;
    }

    async fn dbirth(&mut self, name: &str) {
        let seq = self.next_seq();
        let Some(d) = self.devices.get_mut(name) else {
            return;
        };
        let now = millis(SystemTime::now());
        let values = d.values.as_deref().unwrap_or(&[]);
        let metrics = d
            .settings
            .properties
            .iter()
            .enumerate()
            // `$`-named properties are device-level (a BLE advertisement's
            // decode error), never published as values: no metric.
            .filter(|(_, prop)| !crate::state::is_device_slot(&prop.name))
            .map(|(i, prop)| {
                let v = values.get(i).and_then(Option::as_ref);
                m::birth_metric(d.base + i as u64, prop, v, d.at)
            })
            .collect();
        d.born = true;
        let p = Payload {
            timestamp: Some(now),
            seq: Some(seq),
            metrics,
            ..Default::default()
        };
        let topic = d.dbirth.clone();
        self.publish(topic, &p).await;
    }

    async fn ddeath(&mut self, name: &str) {
        let seq = self.next_seq();
        let Some(d) = self.devices.get_mut(name) else {
            return;
        };
        d.born = false;
        let p = Payload {
            timestamp: Some(millis(SystemTime::now())),
            seq: Some(seq),
            ..Default::default()
        };
        let topic = d.ddeath.clone();
        self.publish(topic, &p).await;
    }

    /// NDATA with the number of online devices, when it changed.
    async fn report_online(&mut self) {
        let online = self.online_count();
        if !self.live || online == self.online_reported {
            return;
        }
        self.online_reported = online;
        let now = millis(SystemTime::now());
        let p = Payload {
            timestamp: Some(now),
            seq: Some(self.next_seq()),
            metrics: vec![Metric {
                alias: Some(ALIAS_DEVICES_ONLINE),
                timestamp: Some(now),
                datatype: Some(DataType::UInt32 as u32),
                value: Some(metric::Value::IntValue(online)),
                ..Default::default()
            }],
            ..Default::default()
        };
        self.publish(self.ndata.clone(), &p).await;
    }

    async fn on_input(&mut self, input: NodeInput) {
        match input {
            NodeInput::Attach { settings, inbox } => {
                let name = settings.name.clone();
                if self.devices.contains_key(&name) {
                    self.detach(&name).await;
                }
                let base = self.next_alias;
                self.next_alias += settings.properties.len() as u64;
                let t =
                    |kind: &str| -> Arc<str> { super::device_topic(&self.sp, kind, &name).into() };
                let dev = Dev {
                    dbirth: t("DBIRTH"),
                    ddata: t("DDATA"),
                    ddeath: t("DDEATH"),
                    dcmd: t("DCMD"),
                    settings,
                    inbox,
                    base,
                    online: false,
                    born: false,
                    values: None,
                    at: 0,
                };
                self.by_dcmd.insert(dev.dcmd.clone(), name.clone());
                self.route(dev.dcmd.clone()).await;
                self.devices.insert(name, dev);
            }
            NodeInput::Detach { name } => self.detach(&name).await,
            NodeInput::Online { name, online } => {
                let Some(d) = self.devices.get_mut(&name) else {
                    return;
                };
                d.online = online;
                if !online && d.born && self.live {
                    self.ddeath(&name).await;
                }
                self.report_online().await;
            }
            NodeInput::Data { name, at, values } => self.on_data(&name, at, values).await,
        }
    }

    async fn detach(&mut self, name: &str) {
        if self.devices.get(name).is_some_and(|d| d.born) && self.live {
            self.ddeath(name).await;
        }
        if let Some(d) = self.devices.remove(name) {
            self.by_dcmd.remove(&d.dcmd);
            self.session
                .send(SessionInput::Unroute { topic: d.dcmd })
                .await;
        }
        self.report_online().await;
    }

    async fn on_data(&mut self, name: &str, at: SystemTime, values: Vec<Option<Published>>) {
        let at = millis(at);
        let live = self.live;
        let Some(d) = self.devices.get_mut(name) else {
            return;
        };
        let first_online = !d.online;
        d.online = true;
        if live && !d.born {
            d.values = Some(values);
            d.at = at;
            self.dbirth(name).await;
            if first_online {
                self.report_online().await;
            }
            return;
        }
        let old = d.values.take();
        let metrics: Vec<Metric> = d
            .settings
            .properties
            .iter()
            .enumerate()
            .filter(|(i, prop)| {
                !crate::state::is_device_slot(&prop.name)
                    && old.as_ref().is_none_or(|o| o.get(*i) != values.get(*i))
            })
            .map(|(i, prop)| {
                let v = values.get(i).and_then(Option::as_ref);
                let mut metric = m::data_metric(d.base + i as u64, m::datatype(prop), v, prop, at);
                if !live {
                    // History is kept by name (see `history`).
                    metric.is_historical = Some(true);
                    metric.name = Some(prop.name.to_string());
                }
                metric
            })
            .collect();
        d.values = Some(values);
        d.at = at;
        if metrics.is_empty() {
            return;
        }
        let mut p = Payload {
            timestamp: Some(at),
            metrics,
            ..Default::default()
        };
        if live {
            let topic = d.ddata.clone();
            p.seq = Some(self.next_seq());
            p.timestamp = Some(millis(SystemTime::now()));
            self.publish(topic, &p).await;
        } else {
            let dropped = self
                .historical
                .push(Entry {
                    device: name.to_owned(),
                    payload: p,
                })
                .await;
            self.count_dropped(dropped);
        }
        if first_online {
            self.report_online().await;
        }
    }

    async fn on_command(&mut self, msg: Inbound) {
        if *msg.topic == *self.ncmd {
            self.on_ncmd(&msg.payload).await;
        } else if self.state.as_deref() == Some(msg.topic.as_str()) {
            self.on_state(&msg.payload).await;
        } else if let Some(name) = self.by_dcmd.get(msg.topic.as_str()).cloned() {
            self.on_dcmd(&name, &msg.payload);
        }
    }

    async fn on_ncmd(&mut self, payload: &[u8]) {
        let p = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("Sparkplug: NCMD ignored: not a Sparkplug B payload ({e})");
                return;
            }
        };
        for metric in &p.metrics {
            let rebirth = metric.name.as_deref() == Some(super::REBIRTH)
                || (metric.name.is_none() && metric.alias == Some(ALIAS_REBIRTH));
            if !rebirth {
                tracing::warn!(
                    "Sparkplug: NCMD metric `{}` ignored: only `{}` is writable on the node",
                    metric.name.as_deref().unwrap_or("(alias)"),
                    super::REBIRTH
                );
                continue;
            }
            if metric.value == Some(metric::Value::BooleanValue(true))
                && self.connected
                && self.host_online
            {
                tracing::info!("Sparkplug: rebirth requested");
                self.birth().await;
            }
        }
    }

    async fn on_state(&mut self, payload: &[u8]) {
        let online = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("online").and_then(serde_json::Value::as_bool));
        let Some(online) = online else {
            if !payload.is_empty() {
                tracing::warn!(
                    "Sparkplug: STATE message ignored: not {{\"online\": true|false, …}}"
                );
            }
            return;
        };
        if online == self.host_online {
            return;
        }
        self.host_online = online;
        if online {
            tracing::info!("Sparkplug: primary host is online");
            if self.connected {
                self.birth().await;
            }
        } else {
            tracing::warn!(
                "Sparkplug: primary host is offline: NDEATH and reconnect; data is kept as history until it is back"
            );
            if self.live {
                self.live = false;
                // NDEATH as the will would carry it (QoS 1), then a new
                // connection (Sparkplug 3.0): the births wait for the host.
                let msg = OutMsg {
                    topic: self.ndeath.clone(),
                    payload: Bytes::from(super::ndeath_payload(self.bdseq.current())),
                    qos: 1,
                    retain: false,
                    correlation: None,
                    props: None,
                };
                self.session.send(SessionInput::Publish(msg)).await;
                self.session.send(SessionInput::Reconnect).await;
            }
        }
    }

    /// A DCMD becomes the JSON object of a `$set` on the device's inbox:
    /// the device validates and writes it as any `$set`.
    fn on_dcmd(&self, name: &str, payload: &[u8]) {
        let Some(d) = self.devices.get(name) else {
            return;
        };
        let reject = |why: String| {
            tracing::warn!(device = %name, "Sparkplug DCMD rejected: {why}");
            self.metrics
                .devices
                .series(name)
                .count_set(SetResult::Rejected);
        };
        let p = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => return reject(format!("not a Sparkplug B payload ({e})")),
        };
        let mut set = serde_json::Map::new();
        for metric in &p.metrics {
            let prop = match (&metric.name, metric.alias) {
                (Some(n), _) => n.clone(),
                (None, Some(a)) => match a
                    .checked_sub(d.base)
                    .and_then(|i| d.settings.properties.get(i as usize))
                {
                    Some(p) => p.name.to_string(),
                    None => format!("alias {a}"),
                },
                (None, None) => return reject("a metric has neither name nor alias".into()),
            };
            match m::command_json(metric) {
                Ok(v) => {
                    set.insert(prop, v);
                }
                Err(why) => return reject(format!("{prop}: {why}")),
            }
        }
        let json = serde_json::Value::Object(set).to_string();
        let msg = Inbound {
            topic: d.dcmd.to_string(),
            payload: Bytes::from(json),
            response_topic: None,
            correlation: None,
            retain: false,
        };
        if d.inbox.try_send(Box::new(msg)).is_err() {
            reject("the device is busy with earlier commands".into());
        }
    }
}
