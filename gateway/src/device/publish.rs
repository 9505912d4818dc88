//! How the actor encodes and publishes the device's state and retained topics.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;

use crate::config::types::PayloadEncode;
use crate::mqtt::{OutMsg, SessionInput};
use crate::northbound::sparkplug::node::NodeInput;

use super::Actor;

impl Actor {
    pub(super) fn encode(&self, json: Vec<u8>) -> Bytes {
        match self.settings.message.payload_encode {
            PayloadEncode::Raw => Bytes::from(json),
            PayloadEncode::Base64 => {
                Bytes::from(base64::engine::general_purpose::STANDARD.encode(json))
            }
        }
    }

    pub(super) async fn publish_state(&self, json: Vec<u8>) {
        if let Some(sp) = &self.sparkplug {
            let (at, values) = self.state.snapshot();
            sp.0.send(NodeInput::Data {
                name: self.settings.name.clone(),
                at,
                values,
            })
            .await;
            return;
        }
        let msg = OutMsg {
            topic: self.topics.state.clone(),
            payload: self.encode(json),
            qos: self.settings.message.qos,
            retain: self.settings.message.retained,
            correlation: None,
            props: Some(self.settings.message.state_props.clone()),
        };
        self.publish(SessionInput::Publish(msg)).await;
    }

    /// Hands a message to the session within `waitTimeout`; a message the
    /// session cannot take in time is dropped and counted.
    pub(super) async fn publish(&self, input: SessionInput) {
        // Usually the session has room: take it without the waiting future,
        // which would otherwise be part of every device task's state.
        let Err(input) = self.session.try_send(input) else {
            return;
        };
        let wait = self.settings.message.wait_timeout;
        if !Box::pin(self.session.send_within(input, wait)).await {
            tracing::warn!(
                device = %self.name(),
                "publish not accepted within waitTimeout ({}); dropped",
                humantime::format_duration(wait)
            );
            self.m
                .metrics
                .mqtt_dropped
                .with_label_values(&[&self.session.client_id, crate::mqtt::drops::WAIT_TIMEOUT])
                .inc();
        }
    }

    pub(super) async fn retain(&self, topic: Arc<str>, payload: Bytes) {
        let msg = self.retained_msg(topic, payload);
        self.publish(SessionInput::SetRetained(msg)).await;
    }

    /// A retained message of this device (`T/$meta`, `T/$state`).
    pub(super) fn retained_msg(&self, topic: Arc<str>, payload: Bytes) -> OutMsg {
        OutMsg {
            topic,
            payload,
            qos: self.settings.message.qos,
            retain: true,
            correlation: None,
            props: None,
        }
    }
}
