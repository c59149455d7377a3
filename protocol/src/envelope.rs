//! Envelopes: one device's upload, sealed with AES-256-GCM and opened in place.
//!
//! ```text
//! offset  size  field
//!  0       1    version         1
//!  1       1    format          1 = rkyv, 2 = JSON
//!  2       2    event_count     u16 LE, 1..=events_per_envelope_max
//!  4       4    key_id          u32 LE
//!  8      12    nonce           unique per envelope under one key
//! 20       4    payload_len     u32 LE, plaintext bytes (= ciphertext bytes)
//! 24       8    partition_key   u64 LE
//! 32       n    ciphertext      n = payload_len
//! 32+n    16    tag             over AAD = bytes 0..32 and the ciphertext
//! 48+n     p    padding         zeros up to a multiple of 16
//! ```
//!
//! The ciphertext starts 32 bytes into an envelope that starts 16-byte aligned, so the plaintext
//! decrypted in place is 16-byte aligned and its rkyv archive is read where it lies.
//!
//! A rejected envelope hands back its raw bytes as received, for the dead-letter stream. With a
//! backend whose failed open leaves the ciphertext as it was (`vaes`) nothing is copied unless
//! the envelope is rejected: a bad tag leaves the ciphertext in place, and a plaintext that
//! fails validation is sealed again, into the opener's scratch buffer, which gives back the
//! exact ciphertext. Other backends may destroy the ciphertext on a bad tag, so
//! [`Opener::open`] copies each envelope aside before decrypting it with them.

use crate::aead::{Aead, NONCE_BYTES, TAG_BYTES};
use crate::error::Error;
use crate::event::{Payload, PayloadFormat};
use crate::keyring::Keyring;
use crate::limits::Limits;
use crate::{AlignedBuf, align_up};

/// Bytes in an envelope header.
pub const ENVELOPE_HEADER_BYTES: usize = 32;
/// The envelope version this crate writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

/// An envelope's clear header, as on the wire. Fields are raw: [`EnvelopeHeader::check`] says
/// whether they are acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeHeader {
    pub version: u8,
    pub format: u8,
    pub event_count: u16,
    pub key_id: u32,
    pub nonce: [u8; NONCE_BYTES],
    pub payload_len: u32,
    pub partition_key: u64,
}

const _: () = assert!(ENVELOPE_HEADER_BYTES.is_multiple_of(crate::ALIGN));

impl EnvelopeHeader {
    /// A version-1 header; `payload_len` is set when sealing.
    pub fn new(
        format: PayloadFormat,
        key_id: u32,
        nonce: [u8; NONCE_BYTES],
        partition_key: u64,
        event_count: u16,
    ) -> Self {
        EnvelopeHeader {
            version: ENVELOPE_VERSION,
            format: format as u8,
            event_count,
            key_id,
            nonce,
            payload_len: 0,
            partition_key,
        }
    }

    pub fn encode(&self) -> [u8; ENVELOPE_HEADER_BYTES] {
        let mut b = [0u8; ENVELOPE_HEADER_BYTES];
        b[0] = self.version;
        b[1] = self.format;
        b[2..4].copy_from_slice(&self.event_count.to_le_bytes());
        b[4..8].copy_from_slice(&self.key_id.to_le_bytes());
        b[8..20].copy_from_slice(&self.nonce);
        b[20..24].copy_from_slice(&self.payload_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.partition_key.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; ENVELOPE_HEADER_BYTES]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        EnvelopeHeader {
            version: b[0],
            format: b[1],
            event_count: u16_at(2),
            key_id: u32_at(4),
            nonce: b[8..20].try_into().expect("12 bytes"),
            payload_len: u32_at(20),
            partition_key: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
        }
    }

    /// Bytes the whole envelope takes, padding included.
    #[inline]
    pub fn envelope_len(&self) -> usize {
        envelope_len(self.payload_len as usize)
    }

    /// Whether this crate can open an envelope with this header under `limits`.
    pub fn check(&self, limits: &Limits) -> Result<PayloadFormat, Error> {
        if self.version != ENVELOPE_VERSION {
            return Err(Error::BadVersion(self.version));
        }
        let format = PayloadFormat::from_u8(self.format)?;
        let events = usize::from(self.event_count);
        if events == 0 {
            return Err(Error::BadLength("an envelope must hold at least one event"));
        }
        if events > limits.events_per_envelope_max {
            return Err(Error::Oversized {
                what: "envelope",
                len: events,
                max: limits.events_per_envelope_max,
                unit: "events",
            });
        }
        Ok(format)
    }
}

/// Bytes an envelope with `payload_len` plaintext bytes takes, padding included.
#[inline]
pub const fn envelope_len(payload_len: usize) -> usize {
    align_up(ENVELOPE_HEADER_BYTES + payload_len + TAG_BYTES)
}

/// Seals `plaintext` under `header` (whose `payload_len` is set here) and appends the envelope
/// to `out`, which must end 16-byte aligned. Returns the envelope's range in `out`.
pub fn seal_envelope(
    out: &mut AlignedBuf,
    cipher: &dyn Aead,
    mut header: EnvelopeHeader,
    plaintext: &[u8],
) -> std::ops::Range<usize> {
    assert_eq!(
        out.len() % crate::ALIGN,
        0,
        "envelopes start 16-byte aligned"
    );
    header.payload_len = u32::try_from(plaintext.len()).expect("payload over 4 GiB");
    let start = out.len();
    let aad = header.encode();
    out.extend_from_slice(&aad);
    out.extend_from_slice(plaintext);
    let body = start + ENVELOPE_HEADER_BYTES..out.len();
    let tag = cipher.seal_in_place(&header.nonce, &aad, &mut out[body]);
    out.extend_from_slice(&tag);
    out.resize(start + header.envelope_len(), 0);
    start..out.len()
}

/// One envelope of a batch frame, whose bytes the caller may decrypt in place.
#[derive(Debug)]
pub struct EnvelopeMut<'a> {
    header: EnvelopeHeader,
    /// The partition of the frame it came in.
    frame_partition: u32,
    /// The whole envelope: header, ciphertext, tag, padding.
    bytes: &'a mut [u8],
}

impl<'a> EnvelopeMut<'a> {
    /// Wraps an envelope whose length the frame decoder has checked.
    pub(crate) fn new(header: EnvelopeHeader, frame_partition: u32, bytes: &'a mut [u8]) -> Self {
        debug_assert_eq!(bytes.len(), header.envelope_len());
        EnvelopeMut {
            header,
            frame_partition,
            bytes,
        }
    }

    pub fn header(&self) -> &EnvelopeHeader {
        &self.header
    }

    /// The envelope's bytes as received (until it is opened).
    pub fn raw(&self) -> &[u8] {
        &self.bytes[..self.unpadded_len()]
    }

    fn unpadded_len(&self) -> usize {
        ENVELOPE_HEADER_BYTES + self.header.payload_len as usize + TAG_BYTES
    }
}

/// An opened envelope: its header and its validated events, read where they lie.
#[derive(Debug)]
pub struct Opened<'a> {
    pub header: EnvelopeHeader,
    pub format: PayloadFormat,
    pub payload: Payload<'a>,
}

/// An envelope that could not be opened: why, and its raw bytes as received (header,
/// ciphertext, tag; no padding), for the dead-letter stream.
#[derive(Debug)]
pub struct Rejected<'s> {
    pub error: Error,
    pub header: EnvelopeHeader,
    pub raw: &'s [u8],
}

/// Opens envelopes: a shard's keyring, limits and scratch buffer.
#[derive(Debug)]
pub struct Opener {
    keyring: Keyring,
    limits: Limits,
    /// The partition count an envelope's partition key is mapped with, to check that it
    /// belongs to its frame's partition (`None`: not checked).
    partitions: Option<u32>,
    /// Holds the envelope being opened, as received; capacity `envelope_bytes_max`.
    scratch: Vec<u8>,
}

impl Opener {
    pub fn new(keyring: Keyring, limits: Limits) -> Self {
        let scratch = Vec::with_capacity(limits.envelope_bytes_max);
        Opener {
            keyring,
            limits,
            partitions: None,
            scratch,
        }
    }

    /// This opener, refusing (`bad_partition`) every envelope whose partition key does not
    /// map to its frame's partition among `partitions` ([`crate::partition_for`]).
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        assert!(partitions > 0, "at least one partition");
        self.partitions = Some(partitions);
        self
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Replaces the keyring (a key rotation), between batches.
    pub fn set_keyring(&mut self, keyring: Keyring) {
        self.keyring = keyring;
    }

    /// Decrypts `env` in place and validates its events. On failure the envelope's raw bytes
    /// are returned from the scratch buffer, valid until the next call.
    pub fn open<'a, 's>(&'s mut self, env: EnvelopeMut<'a>) -> Result<Opened<'a>, Rejected<'s>> {
        self.open_upto::<true>(env)
    }

    /// [`Opener::open`], or with `DECODE` false only its checks and decryption: the payload
    /// comes back empty, unvalidated (for benches that time the stages apart).
    #[doc(hidden)]
    #[inline]
    pub fn open_upto<'a, 's, const DECODE: bool>(
        &'s mut self,
        env: EnvelopeMut<'a>,
    ) -> Result<Opened<'a>, Rejected<'s>> {
        let header = env.header;
        let raw_len = env.unpadded_len();
        debug_assert!(
            raw_len <= self.limits.envelope_bytes_max,
            "frame decoder checks sizes"
        );
        let bytes: &'a mut [u8] = &mut env.bytes[..raw_len];
        let scratch = &mut self.scratch;
        scratch.clear();
        let reject = |error, raw: &'s Vec<u8>| Err(Rejected { error, header, raw });

        let partitions = self.partitions;
        let frame_partition = env.frame_partition;
        let belongs = |format| match partitions {
            Some(n) if crate::partition_for(header.partition_key, n) != frame_partition => {
                Err(Error::WrongPartition {
                    of_key: crate::partition_for(header.partition_key, n),
                    of_frame: frame_partition,
                })
            }
            _ => Ok(format),
        };
        let cipher = match header
            .check(&self.limits)
            .and_then(belongs)
            .and_then(|format| {
                let cipher = self
                    .keyring
                    .get(header.key_id)
                    .ok_or(Error::UnknownKey(header.key_id))?;
                Ok((format, cipher))
            }) {
            Ok(found) => found,
            Err(error) => {
                scratch.extend_from_slice(bytes);
                return reject(error, scratch);
            }
        };
        let (format, cipher) = cipher;
        // A backend that may destroy the ciphertext on a bad tag gets a copy kept aside first;
        // with one that leaves it as it was, nothing is copied unless the envelope is rejected.
        let kept = cipher.keeps_ciphertext_on_failure();
        if !kept {
            scratch.extend_from_slice(bytes);
        }
        let (aad, rest) = bytes.split_at_mut(ENVELOPE_HEADER_BYTES);
        let (body, tag) = rest.split_at_mut(header.payload_len as usize);
        let tag: &[u8; TAG_BYTES] = (&*tag).try_into().expect("frame decoder checked length");
        if cipher.open_in_place(&header.nonce, aad, body, tag).is_err() {
            if kept {
                scratch.extend_from_slice(aad);
                scratch.extend_from_slice(body);
                scratch.extend_from_slice(tag);
            }
            return reject(Error::BadTag, scratch);
        }
        let plaintext: &'a [u8] = body;
        if !DECODE {
            return Ok(Opened {
                header,
                format,
                payload: Payload::Rkyv(&[]),
            });
        }
        match Payload::decode(
            format,
            plaintext,
            usize::from(header.event_count),
            &self.limits,
        ) {
            Ok(payload) => Ok(Opened {
                header,
                format,
                payload,
            }),
            Err(error) => {
                if kept {
                    // Sealing the plaintext again under the same key and nonce gives back the
                    // ciphertext exactly (the tag too, which is still in the buffer).
                    scratch.extend_from_slice(aad);
                    scratch.extend_from_slice(plaintext);
                    let body = ENVELOPE_HEADER_BYTES..ENVELOPE_HEADER_BYTES + plaintext.len();
                    cipher.seal_in_place(&header.nonce, aad, &mut scratch[body]);
                    scratch.extend_from_slice(tag);
                }
                reject(error, scratch)
            }
        }
    }
}
