//! AES-256-GCM behind one small trait, with interchangeable backends that produce and accept
//! the same bytes:
//!
//! - `vaes`: sluice's own, on AVX-512 with VAES and VPCLMULQDQ (`arch/x86_64/aes_gcm.rs`); the
//!   default where the CPU has them, as the fastest measured here.
//! - `ring`: assembly with interleaved AES-CTR and GHASH; the default elsewhere.
//! - `aes-gcm`: the RustCrypto crate, pure Rust with AES-NI/CLMUL intrinsics.
//!
//! `tests/aead.rs` proves every pair interoperates both ways and runs the Wycheproof vectors
//! through each.

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

    /// Encrypts `plaintext` into `out` (as long) and returns the tag: the bytes of copying it
    /// there and calling [`Aead::seal_in_place`], which is what backends without a pass of
    /// their own do.
    ///
    /// # Panics
    /// If `plaintext` and `out` differ in length.
    fn seal_to(
        &self,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> [u8; TAG_BYTES] {
        out.copy_from_slice(plaintext);
        self.seal_in_place(nonce, aad, out)
    }

    /// Verifies `tag` and decrypts `buf` in place. On `Err` the contents of `buf` are
    /// unspecified (`ring` zeroes them; `aes-gcm` leaves the unauthenticated decryption),
    /// unless [`Aead::keeps_ciphertext_on_failure`] says they are untouched.
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_BYTES],
    ) -> Result<(), BadTag>;

    fn backend(&self) -> Backend;

    /// Whether a failed `open_in_place` leaves `buf` exactly as it was.
    fn keeps_ciphertext_on_failure(&self) -> bool {
        false
    }
}

/// Which implementation seals and opens. Figures are `aead/open/*/512` on the reference Zen 4
/// (`cargo bench -p sluice-benches --bench protocol -- aead/open`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// sluice's own AVX-512 VAES/VPCLMULQDQ implementation (x86_64 CPUs that have them):
    /// about 83 ns to open 512 bytes.
    Vaes,
    /// `ring`: about 155 ns to open 512 bytes.
    Ring,
    /// The RustCrypto `aes-gcm` crate: about 265 ns with `-C target-cpu=native`.
    RustCrypto,
}

impl Default for Backend {
    /// The fastest backend this CPU can run.
    fn default() -> Self {
        if Backend::Vaes.is_available() {
            Backend::Vaes
        } else {
            Backend::Ring
        }
    }
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Vaes, Backend::Ring, Backend::RustCrypto];

    /// Whether this CPU can run the backend (`ring` and `aes-gcm` run everywhere).
    pub fn is_available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Vaes => crate::arch::x86_64::aes_gcm::VaesGcm::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Vaes => false,
            Backend::Ring | Backend::RustCrypto => true,
        }
    }

    /// The backends this CPU can run.
    pub fn available() -> Vec<Backend> {
        Backend::ALL
            .into_iter()
            .filter(|b| b.is_available())
            .collect()
    }

    /// A cipher of this backend for `key`. A backend this CPU cannot run gives `ring`'s cipher
    /// (the same bytes); configuration refuses such a backend by name first.
    pub fn cipher(self, key: &[u8; KEY_BYTES]) -> Box<dyn Aead> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Vaes => match VaesAead::new(key) {
                Some(c) => Box::new(c),
                None => Box::new(RingAead::new(key)),
            },
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Vaes => Box::new(RingAead::new(key)),
            Backend::Ring => Box::new(RingAead::new(key)),
            Backend::RustCrypto => Box::new(RustCryptoAead::new(key)),
        }
    }

    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Vaes => "vaes",
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
        let backend = match s {
            "vaes" => Backend::Vaes,
            "ring" => Backend::Ring,
            "aes-gcm" | "rustcrypto" => Backend::RustCrypto,
            other => {
                return Err(format!(
                    "unknown AEAD backend {other:?} (expected \"vaes\", \"ring\" or \"aes-gcm\")"
                ));
            }
        };
        if !backend.is_available() {
            return Err(format!(
                "AEAD backend {s:?} needs AVX-512 (F, BW, VL), VAES and VPCLMULQDQ, which this CPU \
                 lacks; use \"ring\""
            ));
        }
        Ok(backend)
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

/// AES-256-GCM from sluice's own AVX-512 implementation.
#[cfg(target_arch = "x86_64")]
pub struct VaesAead(Box<crate::arch::x86_64::aes_gcm::VaesGcm>);

#[cfg(target_arch = "x86_64")]
impl VaesAead {
    /// The cipher for `key`, or `None` where the CPU lacks a feature it needs.
    pub fn new(key: &[u8; KEY_BYTES]) -> Option<Self> {
        crate::arch::x86_64::aes_gcm::VaesGcm::new(key).map(|c| VaesAead(Box::new(c)))
    }
}

#[cfg(target_arch = "x86_64")]
impl Aead for VaesAead {
    #[inline]
    fn seal_in_place(&self, nonce: &[u8; NONCE_BYTES], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        self.0.seal(nonce, aad, buf)
    }

    /// One pass: the keystream is XORed in as the plaintext is read, with no copy first.
    #[inline]
    fn seal_to(
        &self,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> [u8; 16] {
        self.0.seal_to(nonce, aad, plaintext, out)
    }

    /// On `Err`, `buf` holds the ciphertext as it was (`VaesGcm::open`).
    #[inline]
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_BYTES],
    ) -> Result<(), BadTag> {
        if self.0.open(nonce, aad, buf, tag) {
            Ok(())
        } else {
            Err(BadTag)
        }
    }

    fn backend(&self) -> Backend {
        Backend::Vaes
    }

    fn keeps_ciphertext_on_failure(&self) -> bool {
        true
    }
}
