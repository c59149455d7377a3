//! sluice's load generator: it drives an engine with the standard workloads of
//! `sluice-workload`.
//!
//! [`client`] seals uploads into a pool of batch frames before the clock starts, sends them
//! open-loop and measures ack latency; [`kafka`] produces the same envelopes to a Kafka
//! topic, one per message, for an engine's consumer-group source; [`lookup`] is a lookup service for the customer table;
//! [`sweep`] runs latency against offered load and draws it.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod client;
pub mod kafka;
pub mod lookup;
pub mod sweep;
