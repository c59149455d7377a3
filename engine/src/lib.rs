//! sluice: reads a firehose of sealed client events once and routes every event, decrypted
//! and enriched, to many output streams.
//!
//! The model: one shard per core, each owning a set of partitions and sharing nothing. A
//! shard's work is a synchronous, I/O-free [`pipeline::Pipeline::step`] over one batch frame
//! (open → validate → enrich → route → project → encode); [`runtime`] is the thin glommio
//! layer around it (TCP ingest, cross-shard forwarding, segment writers, group commit, acks).
//! [`config`] compiles the TOML configuration, [`enrich`] holds the lookup tables, [`route`]
//! the rules, [`sink`] the output formats, [`metrics`] and [`admin`] the telemetry.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod admin;
pub mod cat;
pub mod commit;
pub mod config;
pub mod consts;
pub mod control;
pub mod enrich;
pub mod failpoint;
pub mod metrics;
pub mod os_error;
pub mod pipeline;
pub mod route;
pub mod runtime;
pub mod sink;
pub mod source;
