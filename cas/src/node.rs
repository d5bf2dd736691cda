//! Nodes: chunks that link to other chunks.
//!
//! Every structure built on the store (blob indexes here; trees, snapshots
//! and volume commits in the crates above) is made of nodes. A node lists
//! its links in a fixed place before its type-specific body, so garbage
//! collection and fsck can follow any structure without understanding it.

use crate::config::MAX_NODE_LINKS;
use crate::error::{Error, Result};
use crate::id::{ChunkId, CHUNK_ID_LEN};

/// Magic at the start of every node.
pub const NODE_MAGIC: [u8; 4] = *b"SNOD";
/// Node encoding version written by this build.
pub const NODE_VERSION: u8 = 1;
/// Bytes before the links.
pub const NODE_HEADER_LEN: usize = 12;

/// What a node's body means. Registered types are listed in FORMAT.md;
/// crates above `cas` allocate theirs there too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeType(pub u8);

impl NodeType {
    /// A blob index node (see [`crate::blob`]).
    pub const BLOB: NodeType = NodeType(1);
    /// A node used only by tests and tools: links and an opaque body.
    pub const OPAQUE: NodeType = NodeType(255);
}

/// A decoded node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub node_type: NodeType,
    pub links: Vec<ChunkId>,
    pub body: Vec<u8>,
}

impl Node {
    /// A node of `node_type` with the given links and body.
    pub fn new(node_type: NodeType, links: Vec<ChunkId>, body: Vec<u8>) -> Node {
        Node {
            node_type,
            links,
            body,
        }
    }

    /// The canonical bytes of this node.
    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.links.len() > MAX_NODE_LINKS {
            return Err(Error::TooManyLinks {
                count: self.links.len(),
                max: MAX_NODE_LINKS,
            });
        }
        let mut out =
            Vec::with_capacity(NODE_HEADER_LEN + self.links.len() * CHUNK_ID_LEN + self.body.len());
        out.extend_from_slice(&NODE_MAGIC);
        out.push(NODE_VERSION);
        out.push(self.node_type.0);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(self.links.len() as u32).to_le_bytes());
        for link in &self.links {
            out.extend_from_slice(link.as_bytes());
        }
        out.extend_from_slice(&self.body);
        Ok(out)
    }

    /// Decodes the bytes of node `id`.
    pub fn decode(id: ChunkId, bytes: &[u8]) -> Result<Node> {
        let (node_type, links, body) = split(id, bytes)?;
        Ok(Node {
            node_type,
            links: links
                .chunks_exact(CHUNK_ID_LEN)
                .filter_map(ChunkId::from_slice)
                .collect(),
            body: body.to_vec(),
        })
    }
}

/// The links of node `id`, without decoding its body.
pub fn links_of(id: ChunkId, bytes: &[u8]) -> Result<impl Iterator<Item = ChunkId> + '_> {
    let (_, links, _) = split(id, bytes)?;
    Ok(links
        .chunks_exact(CHUNK_ID_LEN)
        .filter_map(ChunkId::from_slice))
}

/// Splits node bytes into type, link bytes and body.
fn split(id: ChunkId, bytes: &[u8]) -> Result<(NodeType, &[u8], &[u8])> {
    let bad = |reason: &str| Error::MalformedNode {
        id,
        reason: reason.to_string(),
    };
    if bytes.len() < NODE_HEADER_LEN || bytes[0..4] != NODE_MAGIC {
        return Err(bad("missing node header"));
    }
    if bytes[4] != NODE_VERSION {
        return Err(bad(&format!("unknown node version {}", bytes[4])));
    }
    let count = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if count > MAX_NODE_LINKS {
        return Err(bad("too many links"));
    }
    let links_end = NODE_HEADER_LEN + count * CHUNK_ID_LEN;
    if bytes.len() < links_end {
        return Err(bad("links run past the end of the node"));
    }
    Ok((
        NodeType(bytes[5]),
        &bytes[NODE_HEADER_LEN..links_end],
        &bytes[links_end..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChunkKind;

    #[test]
    fn nodes_round_trip_and_reject_truncation() {
        let links: Vec<_> = (0..3u8)
            .map(|i| ChunkId::compute(ChunkKind::Data, &[i]))
            .collect();
        let node = Node::new(NodeType::OPAQUE, links.clone(), b"body".to_vec());
        let bytes = node.encode().unwrap();
        let id = ChunkId::compute(ChunkKind::Node, &bytes);
        assert_eq!(Node::decode(id, &bytes).unwrap(), node);
        assert_eq!(links_of(id, &bytes).unwrap().collect::<Vec<_>>(), links);
        for cut in 0..NODE_HEADER_LEN + 3 * CHUNK_ID_LEN {
            assert!(Node::decode(id, &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}

/// A node together with its id, known to match: read from the store
/// ([`crate::Store::get_verified_node`], which verifies what it reads) or
/// written by a writer ([`crate::Writer::put_verified_node`]). Only this
/// crate makes one, so [`crate::Writer::pin_node`] can trust it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedNode {
    id: crate::ChunkId,
    node: Node,
}

impl VerifiedNode {
    pub(crate) fn new(id: crate::ChunkId, node: Node) -> VerifiedNode {
        VerifiedNode { id, node }
    }

    /// The node's id.
    pub fn id(&self) -> crate::ChunkId {
        self.id
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The same node without its body: its id and links, all that
    /// [`crate::Writer::pin_node`] reads, for keeping many in memory.
    pub fn without_body(mut self) -> VerifiedNode {
        self.node.body = Vec::new();
        self
    }
}
