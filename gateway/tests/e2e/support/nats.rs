//! nats-server (the Debian package) as an MQTT broker: one node, or a
//! cluster of nodes on loopback, each a child process killed on drop.
//!
//! NATS speaks MQTT 3.1.1 with QoS 0 and 1 only, refuses topics with dots
//! or spaces, and serves MQTT only with JetStream in the cluster. With
//! JetStream on every node, a killed node makes raft re-elect for seconds
//! and new QoS 1 subscriptions are refused meanwhile; a reliable cluster
//! keeps JetStream on nodes that are never stopped (stream replicas 1, a
//! short redelivery wait) and kills only MQTT nodes without JetStream.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a node may take to open its MQTT listener.
const START: Duration = Duration::from_secs(20);

/// nats-server, if installed.
pub(crate) fn nats_binary() -> Option<PathBuf> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// `n` free loopback ports, all bound at once before any is released, so
/// that they are distinct.
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// One node of a [`NatsCluster`].
struct Node {
    child: Option<Child>,
    mqtt_port: u16,
    log: PathBuf,
}

/// nats-server nodes with MQTT listeners, clustered on loopback.
pub(crate) struct NatsCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// A single node with JetStream and an MQTT listener on `mqtt_port`.
    pub(crate) fn single(binary: &PathBuf, mqtt_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("nats dir");
        let client = free_ports(1)[0];
        let conf = format!(
            "server_name: fieldgate-test\nlisten: 127.0.0.1:{client}\njetstream {{ store_dir: \"{}\" }}\nmqtt {{ listen: 127.0.0.1:{mqtt_port} }}\n",
            dir.path().join("js").display()
        );
        let node = start_node(binary, &dir, "single", &conf, mqtt_port);
        NatsCluster {
            nodes: vec![node],
            _dir: dir,
        }
    }

    /// Nodes clustered on loopback, one per entry of `jetstream` (whether
    /// that node runs JetStream); every node serves MQTT. Returns once every
    /// MQTT listener is open and the JetStream nodes have elected a leader.
    pub(crate) fn start(binary: &PathBuf, jetstream: &[bool]) -> Self {
        let dir = tempfile::tempdir().expect("nats dir");
        let n = jetstream.len();
        // client, cluster and MQTT port of each node, allocated at once.
        let ports = free_ports(3 * n);
        let cluster_port = |i: usize| ports[3 * i + 1];
        let mut nodes = Vec::with_capacity(n);
        for (i, js) in jetstream.iter().enumerate() {
            let routes: Vec<String> = (0..n)
                .filter(|j| *j != i)
                .map(|j| format!("nats-route://127.0.0.1:{}", cluster_port(j)))
                .collect();
            let js_block = if *js {
                format!(
                    "jetstream {{ store_dir: \"{}\" }}\n",
                    dir.path().join(format!("js{i}")).display()
                )
            } else {
                String::new()
            };
            let conf = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{client}\n\
                 cluster {{ name: fieldgate-test, listen: 127.0.0.1:{cluster}, routes: [{routes}] }}\n\
                 {js_block}\
                 mqtt {{ listen: 127.0.0.1:{mqtt}, stream_replicas: 1, ack_wait: \"2s\" }}\n",
                client = ports[3 * i],
                cluster = cluster_port(i),
                routes = routes.join(", "),
                mqtt = ports[3 * i + 2],
            );
            nodes.push(start_node(
                binary,
                &dir,
                &format!("n{i}"),
                &conf,
                ports[3 * i + 2],
            ));
        }
        let cluster = NatsCluster { nodes, _dir: dir };
        let leader = super::wait_until(START, || {
            (0..n).any(|i| jetstream[i] && cluster.log(i).contains("new metadata leader"))
        });
        assert!(
            leader,
            "the JetStream nodes elected no leader: {}",
            cluster.log(0)
        );
        cluster
    }

    /// The MQTT port of node `i`.
    pub(crate) fn mqtt_port(&self, i: usize) -> u16 {
        self.nodes[i].mqtt_port
    }

    /// `tcp://127.0.0.1:<port>` of node `i`'s MQTT listener.
    pub(crate) fn mqtt_url(&self, i: usize) -> String {
        format!("tcp://127.0.0.1:{}", self.mqtt_port(i))
    }

    /// Kills node `i` (SIGKILL) and waits for it to exit.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Node `i`'s log so far.
    pub(crate) fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Every node's log, for a failure message.
    pub(crate) fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| format!("--- n{i}\n{}", self.log(i)))
            .collect()
    }
}

/// Starts one node with `conf` and waits for its MQTT listener.
fn start_node(
    binary: &PathBuf,
    dir: &tempfile::TempDir,
    name: &str,
    conf: &str,
    mqtt_port: u16,
) -> Node {
    let conf_path = dir.path().join(format!("{name}.conf"));
    std::fs::write(&conf_path, conf).expect("nats config");
    let log = dir.path().join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("nats log");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start nats-server");
    let node = Node {
        child: Some(child),
        mqtt_port,
        log,
    };
    assert!(
        super::wait_port_open(mqtt_port, START),
        "nats-server {name}: the MQTT listener did not open: {}",
        std::fs::read_to_string(&node.log).unwrap_or_default()
    );
    node
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
