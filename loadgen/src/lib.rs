//! sluice's load generator.
//!
//! [`workload`] produces the standard workloads of WORKLOAD.md (W1, W2, W3) from a seed, and
//! [`tables`] the enrichment tables their events join against. The same seed gives the same
//! bytes (on one platform: see [`workload`]). Sending them (open-loop rates, shard-aware
//! connections, latency histograms, reports) is built on top.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod tables;
pub mod workload;

pub use workload::{Upload, Workload, WorkloadGen};
