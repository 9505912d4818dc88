//! A subscriber that timestamps the first message on each topic it is told
//! to watch: the `reload` scenario's stopwatch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// First-arrival times of watched topics.
pub(crate) struct FirstMessage {
    client: AsyncClient,
    arrivals: Arc<Mutex<HashMap<String, Instant>>>,
    subacks: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl FirstMessage {
    /// Connects to 127.0.0.1:`port`.
    pub(crate) async fn connect(port: u16) -> anyhow::Result<Self> {
        let mut opts = MqttOptions::new(
            format!("fieldgate-bench-first-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let (suback_tx, subacks) = watch::channel(0u64);
        let task = {
            let arrivals = arrivals.clone();
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let now = Instant::now();
                            if let Ok(mut a) = arrivals.lock() {
                                a.entry(p.topic.clone()).or_insert(now);
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            suback_tx.send_modify(|n| *n += 1);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("fieldgate-bench: stopwatch connection: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        };
        Ok(Self {
            client,
            arrivals,
            subacks,
            task,
        })
    }

    /// Subscribes to `topic` and returns once the broker acknowledged it.
    pub(crate) async fn watch(&mut self, topic: &str) -> anyhow::Result<()> {
        let before = *self.subacks.borrow();
        self.client
            .subscribe(topic, QoS::AtMostOnce)
            .await
            .context("queue the subscription")?;
        let acked = tokio::time::timeout(
            Duration::from_secs(10),
            self.subacks.wait_for(|n| *n > before),
        )
        .await;
        match acked {
            Ok(Ok(_)) => Ok(()),
            _ => bail!("no SUBACK for {topic} within 10 s"),
        }
    }

    /// When the first message on `topic` arrived, if it has.
    pub(crate) fn arrival(&self, topic: &str) -> Option<Instant> {
        self.arrivals.lock().ok()?.get(topic).copied()
    }
}

impl Drop for FirstMessage {
    fn drop(&mut self) {
        self.task.abort();
    }
}
