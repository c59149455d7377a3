//! Sinks: where records go. Every stream is written to local segment files first
//! ([`segment`] is the format, [`writer`] the glommio writer, [`buf`] the memory records are
//! framed in); [`record`] encodes records. Network sinks ([`kafka`]) read a stream's segments
//! through their own cursors; [`log`] decides what each reads next, its backlog, and which
//! segments retention deletes.
pub mod buf;
pub mod kafka;
pub mod log;
pub mod record;
pub mod segment;
pub mod writer;
