//! Read-only browsing for `fieldgate discover opcua`: walks the address
//! space from a root node down to a depth along hierarchical references and
//! reads each variable's data type, value rank and access level. Only
//! Browse, BrowseNext and Read are sent.

use std::collections::{HashSet, VecDeque};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use opcua::client::Session;
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, BrowseResultMask, ByteString, NodeClass,
    NodeId, ReadValueId, ReferenceDescription, ReferenceTypeId, TimestampsToReturn, Variant,
};

use super::connection::{connect, describe_status, io};
use super::OpcUaConnection;
use crate::{Connection, DeviceSpec, DriverError, ErrorKind};

/// Most nodes one discovery visits.
pub const MAX_NODES: usize = 50_000;
/// Attribute reads per Read request.
const READ_CHUNK: usize = 400;

/// One node found below the root.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundNode {
    /// Browse names from the root (excluded) to this node.
    pub path: Vec<String>,
    /// NodeId in the standard string form.
    pub node_id: String,
    /// What it is.
    pub kind: FoundKind,
}

/// What a found node is.
#[derive(Debug, Clone, PartialEq)]
pub enum FoundKind {
    /// A variable with its attributes.
    Variable {
        /// DataType attribute (a NodeId string, e.g. `i=11`).
        data_type: String,
        /// ValueRank attribute (-1 = scalar).
        value_rank: i32,
        /// UserAccessLevel (bit 0 read, bit 1 write).
        access_level: u8,
    },
    /// A method (never called; listed so the output can say it skipped it).
    Method,
}

/// Everything a discovery found.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// Variables and methods, in browse order (breadth first).
    pub nodes: Vec<FoundNode>,
    /// Set when [`MAX_NODES`] stopped the walk.
    pub truncated: bool,
}

fn err(e: opcua::types::Error) -> DriverError {
    io(describe_status(e.status()))
}

/// Browses `root` down to `depth` levels (1 = its direct children).
pub async fn discover(
    conn: &OpcUaConnection,
    root: &str,
    depth: usize,
    timeout: Duration,
) -> Result<Discovery, DriverError> {
    let root = NodeId::from_str(root).map_err(|_| {
        DriverError::new(
            ErrorKind::Rejected,
            format!("`{root}` is not a valid NodeId; write e.g. \"i=85\" or \"ns=2;s=Line1\""),
        )
    })?;
    let spec = DeviceSpec {
        name: "discover".into(),
        sync_interval: Duration::from_secs(1),
        timeout,
        connection: Connection::OpcUa(conn.clone()),
        properties: Arc::from(Vec::new()),
    };
    let connected = connect(&spec, conn).await?;
    let session = connected.session.clone();
    let result = walk(&session, root, depth, timeout).await;
    let _ = tokio::time::timeout(timeout, session.disconnect()).await;
    result
}

async fn walk(
    session: &Session,
    root: NodeId,
    depth: usize,
    timeout: Duration,
) -> Result<Discovery, DriverError> {
    let mut out = Discovery::default();
    let mut seen: HashSet<NodeId> = HashSet::from([root.clone()]);
    let mut queue: VecDeque<(NodeId, Vec<String>, usize)> = VecDeque::from([(root, Vec::new(), 0)]);
    let mut variables: Vec<(NodeId, Vec<String>)> = Vec::new();
    while let Some((node, path, level)) = queue.pop_front() {
        if level >= depth {
            continue;
        }
        for r in children(session, &node, timeout).await? {
            // Nodes on other servers are not followed.
            if r.node_id.server_index != 0 {
                continue;
            }
            let id = r.node_id.node_id.clone();
            if !seen.insert(id.clone()) {
                continue;
            }
            if seen.len() > MAX_NODES {
                out.truncated = true;
                queue.clear();
                break;
            }
            let mut p = path.clone();
            p.push(r.browse_name.name.as_ref().to_string());
            match r.node_class {
                NodeClass::Variable => {
                    variables.push((id.clone(), p.clone()));
                    queue.push_back((id, p, level + 1));
                }
                NodeClass::Object => queue.push_back((id, p, level + 1)),
                NodeClass::Method => out.nodes.push(FoundNode {
                    path: p,
                    node_id: id.to_string(),
                    kind: FoundKind::Method,
                }),
                _ => {}
            }
        }
    }
    // Attributes of every variable, a chunk of reads at a time.
    for chunk in variables.chunks(READ_CHUNK / 3) {
        let ids: Vec<ReadValueId> = chunk
            .iter()
            .flat_map(|(id, _)| {
                [
                    AttributeId::DataType,
                    AttributeId::ValueRank,
                    AttributeId::UserAccessLevel,
                ]
                .map(|a| ReadValueId {
                    node_id: id.clone(),
                    attribute_id: a as u32,
                    ..Default::default()
                })
            })
            .collect();
        let values = tokio::time::timeout(
            timeout,
            session.read(&ids, TimestampsToReturn::Neither, 0.0),
        )
        .await
        .map_err(|_| DriverError::timeout(timeout))?
        .map_err(err)?;
        for (i, (id, path)) in chunk.iter().enumerate() {
            let v = |k: usize| values.get(i * 3 + k).and_then(|d| d.value.clone());
            let data_type = match v(0) {
                Some(Variant::NodeId(n)) => n.to_string(),
                _ => String::new(),
            };
            let value_rank = match v(1) {
                Some(Variant::Int32(r)) => r,
                _ => -1,
            };
            let access_level = match v(2) {
                Some(Variant::Byte(b)) => b,
                _ => 1,
            };
            out.nodes.push(FoundNode {
                path: path.clone(),
                node_id: id.to_string(),
                kind: FoundKind::Variable {
                    data_type,
                    value_rank,
                    access_level,
                },
            });
        }
    }
    Ok(out)
}

/// Every hierarchical forward reference of `node`, following continuation
/// points.
async fn children(
    session: &Session,
    node: &NodeId,
    timeout: Duration,
) -> Result<Vec<ReferenceDescription>, DriverError> {
    let desc = BrowseDescription {
        node_id: node.clone(),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
        include_subtypes: true,
        node_class_mask: 0,
        result_mask: BrowseResultMask::All as u32,
    };
    let mut refs = Vec::new();
    let first = tokio::time::timeout(timeout, session.browse(&[desc], 1000, None))
        .await
        .map_err(|_| DriverError::timeout(timeout))?
        .map_err(err)?;
    let mut result = first.into_iter().next();
    while let Some(r) = result.take() {
        if let Some(list) = r.references {
            refs.extend(list);
        }
        let cp: ByteString = r.continuation_point;
        if cp.is_null() || cp.is_empty() {
            break;
        }
        if refs.len() > MAX_NODES {
            let _ = session.browse_next(true, &[cp]).await;
            break;
        }
        result = tokio::time::timeout(timeout, session.browse_next(false, &[cp]))
            .await
            .map_err(|_| DriverError::timeout(timeout))?
            .map_err(err)?
            .into_iter()
            .next();
    }
    Ok(refs)
}
