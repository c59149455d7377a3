//! The sluice wire format.
//!
//! Clients seal events into **envelopes** and send them in **batch frames**; a shard opens each
//! envelope *in place* in its receive buffer and reads the events where they lie. The model:
//!
//! - An [`Event`] travels as an rkyv archive (or, for clients that cannot write rkyv, as a JSON
//!   document). Both decode into one borrowed [`EventView`]; the rkyv form is never copied.
//! - An envelope is one device's upload: a 32-byte clear [`EnvelopeHeader`] (the AEAD's
//!   associated data) followed by AES-256-GCM ciphertext and its 16-byte tag, padded to 16 bytes
//!   so that the next envelope, and every plaintext, starts 16-byte aligned.
//! - A frame is a 32-byte [`FrameHeader`] (magic, version, kind, flags, sequence, partition,
//!   count, length, CRC32C) and a body. Kinds: batch, ack, hello, hello reply.
//!
//! Rules that hold everywhere:
//!
//! - Bytes from a client are untrusted. A device holds its key, so a valid tag says nothing about
//!   a well-formed archive: plaintext is validated (bytecheck, UTF-8, limits) before it is read.
//! - Every malformed input yields a typed [`Error`] with a stable [`Error::name`]; nothing panics.
//! - Every size has a named limit ([`limits`]).
//! - On the receive path nothing is allocated for rkyv payloads; buffers are caller-owned.
//!
//! The byte layout is specified in `PROTOCOL.md` beside this crate.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod aead;
mod arch;
pub mod archived_str;
pub mod envelope;
pub mod error;
pub mod event;
pub mod frame;
pub mod fuzzing;
pub mod keyring;
pub mod limits;
pub mod sample;
pub mod split;

pub use aead::{
    Aead, Backend, BadTag, KEY_BYTES, NONCE_BYTES, RingAead, RustCryptoAead, TAG_BYTES,
};
pub use envelope::{EnvelopeHeader, EnvelopeMut, Opened, Opener, Rejected, seal_envelope};
pub use error::Error;
pub use event::{Attr, Attrs, ClientIp, Event, EventView, Events, Payload, PayloadFormat};
pub use frame::{
    Ack, AckStatus, BatchFrame, FrameBuilder, FrameHeader, FrameKind, HelloReply, ShardAddr,
    decode_frame_header, encode_hello, fnv1a64, mix64, partition_for, partition_key_for_device,
    reseal_frame,
};
pub use keyring::{KeyFileError, Keyring};
pub use limits::Limits;
pub use split::{FrameSplitter, Split};

/// A 16-byte aligned, growable byte buffer. Frames are decoded from buffers of this alignment so
/// that every plaintext archive is aligned where it lies.
pub type AlignedBuf = rkyv::util::AlignedVec<16>;

/// The alignment every frame and every envelope starts at.
pub const ALIGN: usize = 16;

/// Rounds `n` up to the next multiple of [`ALIGN`].
#[inline]
pub const fn align_up(n: usize) -> usize {
    (n + (ALIGN - 1)) & !(ALIGN - 1)
}

/// One envelope's header and owned events, as [`decode_batch`] returns them.
pub type DecodedEnvelope = (EnvelopeHeader, Vec<Event>);

/// Decodes the batch frame at the start of `frame` and opens every envelope, stopping at the
/// first error, and returns owned copies of the events by envelope. For tools, tests and the
/// fuzzer: it copies the frame into an aligned buffer and allocates; the engine's data path
/// uses [`BatchFrame`] and [`Opener`] directly.
pub fn decode_batch(
    frame: &[u8],
    opener: &mut Opener,
) -> Result<(FrameHeader, Vec<DecodedEnvelope>), Error> {
    let mut buf = AlignedBuf::with_capacity(frame.len());
    buf.extend_from_slice(frame);
    let batch = BatchFrame::parse(&mut buf, opener.limits())?;
    let header = batch.header;
    let mut out = Vec::with_capacity(header.count as usize);
    for env in batch.into_envelopes() {
        let opened = opener.open(env).map_err(|r| r.error)?;
        out.push((
            opened.header,
            opened.payload.iter().map(|e| e.to_event()).collect(),
        ));
    }
    Ok((header, out))
}
