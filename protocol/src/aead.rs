//! AES-256-GCM behind one small trait, with two interchangeable backends: `ring` (assembly,
//! interleaved AES-CTR and GHASH; the default, as the faster here) and the RustCrypto `aes-gcm`
//! crate (pure Rust with AES-NI/CLMUL intrinsics). Both produce and accept the same bytes;
//! `tests/aead.rs` proves it both ways and runs the Wycheproof vectors through each.

use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::{AeadInPlace, KeyInit};

/// Bytes in an AES-256 key.
pub const KEY_BYTES: usize = 32;
/// Bytes in a GCM nonce.
pub const NONCE_BYTES: usize = 12;
/// Bytes in a GCM tag.
pub const TAG_BYTES: usize = 16;

/// The tag did not verify (wrong key, or the bytes were changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadTag;

/// AES-256-GCM with one key, sealing and opening in place with a detached tag.
pub trait Aead: Send + Sync {
    /// Encrypts `buf` in place and returns the tag over `aad` and the ciphertext.
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_BYTES];

    /// Verifies `tag` and decrypts `buf` in place. On `Err` the contents of `buf` are
    /// unspecified (`ring` zeroes them; `aes-gcm` leaves the unauthenticated decryption).
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_BYTES],
    ) -> Result<(), BadTag>;

    fn backend(&self) -> Backend;
}

/// Which implementation seals and opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// `ring`: about 130 ns to open 512 bytes on this project's reference CPU.
    #[default]
    Ring,
    /// The RustCrypto `aes-gcm` crate: about 290 ns with `-C target-cpu=native`.
    RustCrypto,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Ring, Backend::RustCrypto];

    /// A cipher of this backend for `key`.
    pub fn cipher(self, key: &[u8; KEY_BYTES]) -> Box<dyn Aead> {
        match self {
            Backend::Ring => Box::new(RingAead::new(key)),
            Backend::RustCrypto => Box::new(RustCryptoAead::new(key)),
        }
    }

    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Ring => "ring",
            Backend::RustCrypto => "aes-gcm",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ring" => Ok(Backend::Ring),
            "aes-gcm" | "rustcrypto" => Ok(Backend::RustCrypto),
            other => Err(format!(
                "unknown AEAD backend {other:?} (expected \"ring\" or \"aes-gcm\")"
            )),
        }
    }
}

/// AES-256-GCM from `ring`.
pub struct RingAead(ring::aead::LessSafeKey);

impl RingAead {
    pub fn new(key: &[u8; KEY_BYTES]) -> Self {
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
            .expect("a 32-byte key is a valid AES-256 key");
        RingAead(ring::aead::LessSafeKey::new(unbound))
    }
}

impl Aead for RingAead {
    #[inline]
    fn seal_in_place(&self, nonce: &[u8; NONCE_BYTES], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), buf)
            .expect("ring refuses only inputs over 64 GiB, far past every limit");
        let mut out = [0; TAG_BYTES];
        out.copy_from_slice(tag.as_ref());
        out
    }

    #[inline]
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_BYTES],
    ) -> Result<(), BadTag> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
        let tag = ring::aead::Tag::from(*tag);
        self.0
            .open_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), tag, buf, 0..)
            .map(|_| ())
            .map_err(|_| BadTag)
    }

    fn backend(&self) -> Backend {
        Backend::Ring
    }
}

/// AES-256-GCM from the RustCrypto `aes-gcm` crate.
pub struct RustCryptoAead(Box<aes_gcm::Aes256Gcm>);

impl RustCryptoAead {
    pub fn new(key: &[u8; KEY_BYTES]) -> Self {
        RustCryptoAead(Box::new(aes_gcm::Aes256Gcm::new(key.into())))
    }
}

impl Aead for RustCryptoAead {
    #[inline]
    fn seal_in_place(&self, nonce: &[u8; NONCE_BYTES], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        self.0
            .encrypt_in_place_detached(nonce.into(), aad, buf)
            .expect("aes-gcm refuses only inputs over 64 GiB, far past every limit")
            .into()
    }

    #[inline]
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_BYTES],
    ) -> Result<(), BadTag> {
        self.0
            .decrypt_in_place_detached(nonce.into(), aad, buf, tag.into())
            .map_err(|_| BadTag)
    }

    fn backend(&self) -> Backend {
        Backend::RustCrypto
    }
}
