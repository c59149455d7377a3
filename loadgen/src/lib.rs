//! sluice's load generator.
//!
//! [`workload`] produces the standard workloads of WORKLOAD.md (W1, W2, W3) from a seed: the
//! same seed gives the same events, byte for byte, whatever the machine. Sending them (open-loop
//! rates, shard-aware connections, latency histograms, reports) is built on top of it.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod workload;

pub use workload::{Upload, Workload, WorkloadGen};
