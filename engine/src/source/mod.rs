//! Sources besides the TCP ingest: what they take in, sans I/O. The runtime's glue for each
//! (threads, consumers, the shards' side) is in `runtime/`.

pub mod kafka;

use std::sync::Arc;

/// Where a consumed envelope came from: written into its dead-letter record when it is
/// rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coord {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}
