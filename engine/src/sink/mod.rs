//! Sinks: where records go. Every stream is written to local segment files first
//! ([`segment`] is the format, [`writer`] the glommio writer); [`record`] encodes records.
pub mod record;
pub mod segment;
pub mod writer;
