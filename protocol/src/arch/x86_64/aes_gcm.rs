//! AES-256-GCM on 512-bit vectors (VAES, VPCLMULQDQ, AVX-512 F/BW/VL), tuned for the sizes
//! sluice opens: one envelope of a few hundred bytes to a few KiB.
//!
//! Why our own: at 512 bytes `ring` spends most of its ~155 ns in fixed per-call work, and a
//! shard opens one envelope per event, so the fixed cost is the cost. This implementation
//! works four blocks per vector, eight vectors (512 bytes) at a time, and seals or opens in
//! one pass over the message ([`VaesGcm::one_pass`]): each 64 bytes of ciphertext are hashed
//! as they are encrypted or decrypted, so the AES and the carry-less multiplications of the
//! same bytes overlap, and each byte is read once (the W1 pipeline in 0.94 of the time of
//! hashing, then decrypting, on the reference Zen 4; tuning.md, "Ninth round"). GHASH uses
//! [`POWERS`] precomputed powers of H, so that a message of up to about 8 KiB takes one
//! reduction, and a longer one a reduction every [`PART_BYTES`].
//!
//! GHASH is computed as POLYVAL (RFC 8452, Appendix A): with blocks and H byte-reversed and H
//! multiplied by x, GHASH's bit-reflected field becomes POLYVAL's little-endian one, which maps
//! straight onto carry-less multiplication. A failed `open` leaves the buffer as it was: it
//! XORs the keystream in again (so a forgery's plaintext exists only until then, inside the
//! call).
//!
//! Each unchecked operation here is either a call into a `#[target_feature]` function, sound as a
//! [`VaesGcm`] exists only after [`VaesGcm::new`] found the features, or a masked load or store
//! whose mask covers only bytes inside the slice it names.

use std::arch::x86_64::*;

/// AES-256-GCM with one key, on a CPU with the features [`VaesGcm::available`] checks.
#[derive(Clone)]
pub struct VaesGcm {
    /// AES-256 round keys.
    round_keys: [__m128i; 15],
    /// POLYVAL-domain powers of H, highest first: `powers[i]` = H^(POWERS - i).
    powers: [__m128i; POWERS],
}

/// A long message's ciphertext is hashed this many bytes at a time, each part one reduction:
/// whole 512-byte steps (so the counter blocks of one part end where the next part's begin),
/// with the length block fewer than [`POWERS`] blocks.
const PART_BYTES: usize = 512 * ((POWERS - 1) * 16 / 512);

/// GCM's largest message: 2^32 - 2 blocks of 16 bytes.
const GCM_BYTES_MAX: u64 = (1 << 36) - 32;

/// Powers of H kept per key: a message of up to this many GHASH blocks (AAD, ciphertext and
/// the length block) is hashed with one reduction. 8 KiB of powers a key: W2's envelopes (1
/// to 8 events, about 3.4 KB on average) fit.
const POWERS: usize = 512;

impl VaesGcm {
    /// Whether this CPU has every feature the implementation uses.
    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("vaes")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
            && std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }

    /// The cipher for `key`, or `None` where the CPU lacks a feature.
    pub fn new(key: &[u8; 32]) -> Option<Self> {
        if !Self::available() {
            return None;
        }
        // SAFETY: the features were detected just above.
        Some(unsafe { Self::new_unchecked(key) })
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,vaes,vpclmulqdq,aes,pclmulqdq")]
    fn new_unchecked(key: &[u8; 32]) -> Self {
        let round_keys = expand_key(key);
        let h = encrypt_block(&round_keys, _mm_setzero_si128());
        // POLYVAL's H is mulX(ByteReverse(H)).
        let h = mul_x(u128::from_le_bytes(to_bytes(byte_reverse(h))));
        let h = from_bytes(h.to_le_bytes());
        let mut powers = [h; POWERS];
        let mut p = h;
        for i in (0..POWERS - 1).rev() {
            p = dot(p, h);
            powers[i] = p;
        }
        VaesGcm { round_keys, powers }
    }

    /// Encrypts `buf` in place; returns the tag.
    ///
    /// # Panics
    /// If `buf` is over GCM's limit of 2^36 - 32 bytes (the 32-bit block counter would wrap).
    pub fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        assert!(
            buf.len() as u64 <= GCM_BYTES_MAX,
            "AES-GCM seals at most 2^36 - 32 bytes"
        );
        let (at, len) = (buf.as_mut_ptr(), buf.len());
        // SAFETY: `self` exists only where the features were detected (see `new`); `one_pass`
        // reads and writes the `len` bytes of `buf`, in place.
        unsafe { to_bytes(self.one_pass::<false>(nonce, aad, at, at, len)) }
    }

    /// Encrypts `plaintext` into `out`, in one pass over both; returns the tag. The bytes are
    /// those of copying `plaintext` into `out` and sealing it there with [`VaesGcm::seal`].
    ///
    /// # Panics
    /// If the two differ in length, or are over GCM's limit of 2^36 - 32 bytes.
    pub fn seal_to(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> [u8; 16] {
        assert_eq!(
            plaintext.len(),
            out.len(),
            "AES-GCM seals into as many bytes"
        );
        assert!(
            out.len() as u64 <= GCM_BYTES_MAX,
            "AES-GCM seals at most 2^36 - 32 bytes"
        );
        let len = out.len();
        // SAFETY: as in `seal`; `one_pass` reads the `len` bytes of `plaintext` and writes
        // those of `out`, two slices that cannot overlap (one is borrowed mutably).
        unsafe {
            to_bytes(self.one_pass::<false>(nonce, aad, plaintext.as_ptr(), out.as_mut_ptr(), len))
        }
    }

    /// Verifies `tag` over `aad` and the ciphertext in `buf`, then decrypts in place. On a bad
    /// tag `buf` is left as it was.
    pub fn open(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> bool {
        if buf.len() as u64 > GCM_BYTES_MAX {
            return false;
        }
        let (at, len) = (buf.as_mut_ptr(), buf.len());
        // SAFETY: `self` exists only where the features were detected (see `new`); `one_pass`
        // and `ctr` read and write the `len` bytes of `buf`, in place.
        unsafe {
            let expected = self.one_pass::<true>(nonce, aad, at, at, len);
            if !same(expected, tag) {
                // Decrypted already: the keystream once more makes it ciphertext again.
                self.ctr(nonce, at, at, len);
                return false;
            }
        }
        true
    }

    /// GCM in one pass: writes the `len` bytes at `src` XORed with the keystream to `dst`
    /// (decrypting when `OPEN`, encrypting otherwise), hashing each 64 bytes of ciphertext as
    /// they pass (read when `OPEN`, written otherwise). Returns the tag.
    ///
    /// A message of fewer than [`POWERS`] blocks (with its length block) is hashed with one
    /// reduction, its AAD's blocks in the same sum. A longer one hashes its AAD apart, then its
    /// ciphertext [`POWERS`] blocks at a time, the running hash folded into each part's first
    /// block (Horner's rule, a part at a step).
    ///
    /// # Safety
    /// As [`VaesGcm::ctr`]'s.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,vaes,vpclmulqdq,aes,pclmulqdq")]
    unsafe fn one_pass<const OPEN: bool>(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        src: *const u8,
        dst: *mut u8,
        len: usize,
    ) -> __m128i {
        let (a, c) = (aad.len().div_ceil(16), len.div_ceil(16));
        let mut p = Product::new();
        let mut s = _mm_setzero_si128();
        let whole = a + c < POWERS;
        if whole {
            // Block j of the n = a + c + 1 (the length block last) takes H^(n-j+1).
            let first = POWERS - (a + c + 1);
            p.absorb(aad, &self.powers[first..first + a], s);
        } else {
            s = self.horner(s, aad);
        }
        let rk: [__m512i; 15] = std::array::from_fn(|i| _mm512_broadcast_i32x4(self.round_keys[i]));
        let reverse = reverse_lanes();
        let base = _mm512_broadcast_i32x4(byte_reverse(counter_block(nonce, 0)));
        let mut ctr = _mm512_add_epi32(
            base,
            _mm512_set_epi32(0, 0, 0, 5, 0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0, 2),
        );
        let four = _mm512_set_epi32(0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4);
        let mut part = 0;
        loop {
            // This part: the whole message, or PART_BYTES (the last part up to them, with the
            // length block). Its block j of m takes H^(m-j+1); the running hash goes into its
            // first block.
            let end = if whole {
                len
            } else {
                len.min(part + PART_BYTES)
            };
            let last = end == len;
            let m = (end - part).div_ceil(16) + usize::from(last);
            let powers = &self.powers[POWERS - m..];
            let mut carry = _mm512_zextsi128_si512(s);
            let mut o = part;
            while end - o >= 512 {
                let mut k = [_mm512_setzero_si512(); 8];
                for v in &mut k {
                    *v = _mm512_xor_si512(_mm512_shuffle_epi8(ctr, reverse), rk[0]);
                    ctr = _mm512_add_epi32(ctr, four);
                }
                for r in &rk[1..14] {
                    for v in &mut k {
                        *v = _mm512_aesenc_epi128(*v, *r);
                    }
                }
                for (i, v) in k.iter().enumerate() {
                    let v = _mm512_aesenclast_epi128(*v, rk[14]);
                    let q = o + 64 * i;
                    // SAFETY: `q + 64 <= end <= len`, inside both buffers (the caller's
                    // contract; in place, each 64 bytes are read before they are written);
                    // the part's four powers of blocks `(q - part) / 16 ..` are inside
                    // `powers`, which has one per block of the part.
                    unsafe {
                        let data = _mm512_loadu_si512(src.add(q).cast());
                        let out = _mm512_xor_si512(data, v);
                        let h = _mm512_loadu_si512(powers.as_ptr().add((q - part) / 16).cast());
                        let sealed = if OPEN { data } else { out };
                        let x = _mm512_xor_si512(_mm512_shuffle_epi8(sealed, reverse), carry);
                        carry = _mm512_setzero_si512();
                        p.add(x, h);
                        _mm512_storeu_si512(dst.add(q).cast(), out);
                    }
                }
                o += 512;
            }
            while o < end {
                let mut v = _mm512_xor_si512(_mm512_shuffle_epi8(ctr, reverse), rk[0]);
                ctr = _mm512_add_epi32(ctr, four);
                for r in &rk[1..14] {
                    v = _mm512_aesenc_epi128(v, *r);
                }
                v = _mm512_aesenclast_epi128(v, rk[14]);
                let n = (end - o).min(64);
                let mk = mask(n);
                // SAFETY: the masks cover the `n` bytes left in both buffers and the powers
                // of their `n.div_ceil(16)` blocks, inside `powers`. Masked-off bytes load as
                // zeros (GHASH's padding) and are not stored.
                unsafe {
                    let data = _mm512_maskz_loadu_epi8(mk, src.add(o).cast());
                    // Zeros past the message: what GHASH hashes of a sealed partial vector.
                    let out = _mm512_maskz_mov_epi8(mk, _mm512_xor_si512(data, v));
                    let h = _mm512_maskz_loadu_epi8(
                        mask(16 * n.div_ceil(16)),
                        powers.as_ptr().add((o - part) / 16).cast(),
                    );
                    let sealed = if OPEN { data } else { out };
                    let x = _mm512_xor_si512(_mm512_shuffle_epi8(sealed, reverse), carry);
                    carry = _mm512_setzero_si512();
                    p.add(x, h);
                    _mm512_mask_storeu_epi8(dst.add(o).cast(), mk, out);
                }
                o += 64;
            }
            if last {
                // An empty message: the running hash (its AAD's) goes into the length block.
                let lengths =
                    _mm_set_epi64x((aad.len() as u64 * 8) as i64, (len as u64 * 8) as i64);
                let lengths = _mm_xor_si128(lengths, _mm512_castsi512_si128(carry));
                p.absorb_block(lengths, self.powers[POWERS - 1]);
                s = p.reduce();
                break;
            }
            s = p.reduce();
            p = Product::new();
            part = end;
        }
        _mm_xor_si128(
            byte_reverse(s),
            encrypt_block(&self.round_keys, counter_block(nonce, 1)),
        )
    }

    /// Absorbs `data`, zero-padded to whole blocks, into the POLYVAL state `s`, [`POWERS`]
    /// blocks per reduction.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,vaes,vpclmulqdq,aes,pclmulqdq")]
    fn horner(&self, mut s: __m128i, data: &[u8]) -> __m128i {
        for chunk in data.chunks(POWERS * 16) {
            let blocks = chunk.len().div_ceil(16);
            let mut p = Product::new();
            // The chunk's first block takes H^blocks, its last H^1.
            p.absorb(chunk, &self.powers[POWERS - blocks..], s);
            s = p.reduce();
        }
        s
    }

    /// Writes the `len` bytes at `src` XORed with the keystream from counter 2 on (GCM's CTR
    /// mode with a 96-bit nonce) to the `len` bytes at `dst`: how a failed open is undone.
    /// Its keystream loop is [`VaesGcm::one_pass`]'s again on purpose: each way of sharing it
    /// that was tried cost the W1 pipeline about 2% (tuning.md, "Ninth round").
    ///
    /// # Safety
    /// `src` must be valid to read and `dst` to write for `len` bytes, and the two are either
    /// the same address (in place) or do not overlap.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,vaes,vpclmulqdq,aes,pclmulqdq")]
    unsafe fn ctr(&self, nonce: &[u8; 12], src: *const u8, dst: *mut u8, len: usize) {
        let rk: [__m512i; 15] = std::array::from_fn(|i| _mm512_broadcast_i32x4(self.round_keys[i]));
        let reverse = reverse_lanes();
        // Counter blocks kept byte-reversed, so the big-endian 32-bit counter is the low dword
        // of each lane and a 32-bit add is exactly GCM's inc32.
        let base = _mm512_broadcast_i32x4(byte_reverse(counter_block(nonce, 0)));
        let mut ctr = _mm512_add_epi32(
            base,
            _mm512_set_epi32(0, 0, 0, 5, 0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0, 2),
        );
        let four = _mm512_set_epi32(0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4);
        let mut at = 0;
        while len - at >= 512 {
            let mut k = [_mm512_setzero_si512(); 8];
            for v in &mut k {
                *v = _mm512_xor_si512(_mm512_shuffle_epi8(ctr, reverse), rk[0]);
                ctr = _mm512_add_epi32(ctr, four);
            }
            for r in &rk[1..14] {
                for v in &mut k {
                    *v = _mm512_aesenc_epi128(*v, *r);
                }
            }
            for (i, v) in k.iter().enumerate() {
                let v = _mm512_aesenclast_epi128(*v, rk[14]);
                let o = at + 64 * i;
                // SAFETY: `o + 64 <= len`, inside both buffers (the caller's contract). In
                // place, each 64 bytes are read before they are written.
                unsafe {
                    let data = _mm512_loadu_si512(src.add(o).cast());
                    _mm512_storeu_si512(dst.add(o).cast(), _mm512_xor_si512(data, v));
                }
            }
            at += 512;
        }
        while at < len {
            let mut v = _mm512_xor_si512(_mm512_shuffle_epi8(ctr, reverse), rk[0]);
            ctr = _mm512_add_epi32(ctr, four);
            for r in &rk[1..14] {
                v = _mm512_aesenc_epi128(v, *r);
            }
            v = _mm512_aesenclast_epi128(v, rk[14]);
            let m = mask((len - at).min(64));
            // SAFETY: the mask covers the `min(len - at, 64)` bytes left in both buffers.
            unsafe {
                let data = _mm512_maskz_loadu_epi8(m, src.add(at).cast());
                _mm512_mask_storeu_epi8(dst.add(at).cast(), m, _mm512_xor_si512(data, v));
            }
            at += 64;
        }
    }
}

/// A sum of 256-bit carry-less products, four lanes at a time, not yet reduced.
struct Product {
    lo: __m512i,
    hi: __m512i,
    mid: __m512i,
}

impl Product {
    #[target_feature(enable = "avx512f")]
    fn new() -> Self {
        let z = _mm512_setzero_si512();
        Product {
            lo: z,
            hi: z,
            mid: z,
        }
    }

    /// Adds `data` (zero-padded to whole blocks; `s` XORed into its first block), block `i`
    /// times `powers[i]`. `powers` has one power per block.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,vpclmulqdq")]
    fn absorb(&mut self, data: &[u8], powers: &[__m128i], s: __m128i) {
        debug_assert_eq!(powers.len(), data.len().div_ceil(16));
        let reverse = reverse_lanes();
        let mut s = _mm512_zextsi128_si512(s);
        for (part, p) in data.chunks(64).zip(powers.chunks(4)) {
            // SAFETY: the mask covers `part.len()` bytes of `part`.
            let x = unsafe { _mm512_maskz_loadu_epi8(mask(part.len()), part.as_ptr().cast()) };
            let x = _mm512_xor_si512(_mm512_shuffle_epi8(x, reverse), s);
            s = _mm512_setzero_si512();
            // SAFETY: the mask covers the `p.len()` blocks of `p`.
            let h = unsafe { _mm512_maskz_loadu_epi8(mask(16 * p.len()), p.as_ptr().cast()) };
            self.add(x, h);
        }
    }

    /// Adds `x · h` for one block.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,vpclmulqdq")]
    fn absorb_block(&mut self, x: __m128i, h: __m128i) {
        self.add(_mm512_zextsi128_si512(x), _mm512_zextsi128_si512(h));
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,vpclmulqdq")]
    fn add(&mut self, x: __m512i, h: __m512i) {
        self.lo = _mm512_xor_si512(self.lo, _mm512_clmulepi64_epi128(x, h, 0x00));
        self.hi = _mm512_xor_si512(self.hi, _mm512_clmulepi64_epi128(x, h, 0x11));
        self.mid = _mm512_ternarylogic_epi64(
            self.mid,
            _mm512_clmulepi64_epi128(x, h, 0x01),
            _mm512_clmulepi64_epi128(x, h, 0x10),
            0x96,
        );
    }

    /// The POLYVAL value of the sum.
    #[target_feature(enable = "avx512f,pclmulqdq")]
    fn reduce(&self) -> __m128i {
        let (lo, hi, mid) = (
            fold_lanes(self.lo),
            fold_lanes(self.hi),
            fold_lanes(self.mid),
        );
        reduce(
            _mm_xor_si128(hi, _mm_srli_si128(mid, 8)),
            _mm_xor_si128(lo, _mm_slli_si128(mid, 8)),
        )
    }
}

/// Whether the computed tag is `tag`, in constant time: one test of all 128 bits.
#[inline]
#[target_feature(enable = "sse4.1")]
fn same(expected: __m128i, tag: &[u8; 16]) -> bool {
    let diff = _mm_xor_si128(expected, from_bytes(*tag));
    _mm_testz_si128(diff, diff) != 0
}

/// A mask of the low `n` bytes of a 64-byte vector (`n` ≤ 64).
#[inline(always)]
fn mask(n: usize) -> __mmask64 {
    debug_assert!(n <= 64);
    if n >= 64 { !0 } else { (1u64 << n) - 1 }
}

#[inline(always)]
fn to_bytes(v: __m128i) -> [u8; 16] {
    // SAFETY: __m128i and [u8; 16] have the same size, and every bit pattern is valid for both.
    unsafe { std::mem::transmute(v) }
}

#[inline(always)]
fn from_bytes(b: [u8; 16]) -> __m128i {
    // SAFETY: as in `to_bytes`.
    unsafe { std::mem::transmute(b) }
}

/// `nonce ‖ BE32(counter)`.
#[inline(always)]
fn counter_block(nonce: &[u8; 12], counter: u32) -> __m128i {
    let mut b = [0u8; 16];
    b[..12].copy_from_slice(nonce);
    b[12..].copy_from_slice(&counter.to_be_bytes());
    from_bytes(b)
}

#[inline(always)]
fn byte_reverse(v: __m128i) -> __m128i {
    let mut b = to_bytes(v);
    b.reverse();
    from_bytes(b)
}

/// A `vpshufb` control that reverses the bytes of each 128-bit lane.
#[target_feature(enable = "avx512f")]
fn reverse_lanes() -> __m512i {
    _mm512_broadcast_i32x4(_mm_set_epi8(
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    ))
}

/// XOR of a vector's four 128-bit lanes.
#[target_feature(enable = "avx512f")]
fn fold_lanes(v: __m512i) -> __m128i {
    let a = _mm_xor_si128(_mm512_castsi512_si128(v), _mm512_extracti32x4_epi32::<1>(v));
    let b = _mm_xor_si128(
        _mm512_extracti32x4_epi32::<2>(v),
        _mm512_extracti32x4_epi32::<3>(v),
    );
    _mm_xor_si128(a, b)
}

/// POLYVAL's x^-128 reduction of the 256-bit product `hi·x^128 + lo` (Gueron's two folds by
/// the constant 0xc2000000000000000000000000000001).
#[target_feature(enable = "pclmulqdq,sse2")]
fn reduce(hi: __m128i, lo: __m128i) -> __m128i {
    let poly = _mm_set_epi64x(0xc200_0000_0000_0000_u64 as i64, 1);
    let t = _mm_clmulepi64_si128(lo, poly, 0x10);
    let lo = _mm_xor_si128(_mm_shuffle_epi32(lo, 0x4e), t);
    let t = _mm_clmulepi64_si128(lo, poly, 0x10);
    let lo = _mm_xor_si128(_mm_shuffle_epi32(lo, 0x4e), t);
    _mm_xor_si128(hi, lo)
}

/// POLYVAL's product `a·b·x^-128`.
#[target_feature(enable = "pclmulqdq,sse2")]
fn dot(a: __m128i, b: __m128i) -> __m128i {
    let lo = _mm_clmulepi64_si128(a, b, 0x00);
    let hi = _mm_clmulepi64_si128(a, b, 0x11);
    let mid = _mm_xor_si128(
        _mm_clmulepi64_si128(a, b, 0x01),
        _mm_clmulepi64_si128(a, b, 0x10),
    );
    reduce(
        _mm_xor_si128(hi, _mm_srli_si128(mid, 8)),
        _mm_xor_si128(lo, _mm_slli_si128(mid, 8)),
    )
}

/// `v·x` in POLYVAL's field.
fn mul_x(v: u128) -> u128 {
    let carry = v >> 127;
    (v << 1) ^ (carry * 0xc200_0000_0000_0000_0000_0000_0000_0001)
}

#[target_feature(enable = "aes,sse2")]
fn encrypt_block(rk: &[__m128i; 15], block: __m128i) -> __m128i {
    let mut v = _mm_xor_si128(block, rk[0]);
    for r in &rk[1..14] {
        v = _mm_aesenc_si128(v, *r);
    }
    _mm_aesenclast_si128(v, rk[14])
}

/// The AES-256 key schedule (FIPS 197, with AESKEYGENASSIST).
#[target_feature(enable = "aes,sse2")]
fn expand_key(key: &[u8; 32]) -> [__m128i; 15] {
    #[target_feature(enable = "sse2")]
    fn spread(mut a: __m128i) -> __m128i {
        // a ^= a << 32 ^ a << 64 ^ a << 96
        let mut t = _mm_slli_si128(a, 4);
        a = _mm_xor_si128(a, t);
        t = _mm_slli_si128(t, 4);
        a = _mm_xor_si128(a, t);
        t = _mm_slli_si128(t, 4);
        _mm_xor_si128(a, t)
    }
    let mut rk = [_mm_setzero_si128(); 15];
    rk[0] = from_bytes(key[..16].try_into().expect("16 bytes"));
    rk[1] = from_bytes(key[16..].try_into().expect("16 bytes"));
    // Even round keys from the previous pair with the round constant; odd ones without.
    macro_rules! even {
        ($i:expr, $rcon:expr) => {
            let t = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(rk[$i - 1], $rcon), 0xff);
            rk[$i] = _mm_xor_si128(spread(rk[$i - 2]), t);
        };
    }
    macro_rules! odd {
        ($i:expr) => {
            let t = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(rk[$i - 1], 0), 0xaa);
            rk[$i] = _mm_xor_si128(spread(rk[$i - 2]), t);
        };
    }
    even!(2, 0x01);
    odd!(3);
    even!(4, 0x02);
    odd!(5);
    even!(6, 0x04);
    odd!(7);
    even!(8, 0x08);
    odd!(9);
    even!(10, 0x10);
    odd!(11);
    even!(12, 0x20);
    odd!(13);
    even!(14, 0x40);
    rk
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex16(s: &str) -> [u8; 16] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// RFC 8452, Appendix A: POLYVAL(H, X_1, X_2).
    #[test]
    fn polyval_matches_rfc_8452() {
        if !VaesGcm::available() {
            return;
        }
        let h = from_bytes(hex16("25629347589242761d31f826ba4b757b"));
        let x1 = from_bytes(hex16("4f4f95668c83dfb6401762bb2d01a262"));
        let x2 = from_bytes(hex16("d1a24ddd2721d006bbe45f20d3c9f362"));
        // SAFETY: the features were detected above.
        let s = unsafe { dot(_mm_xor_si128(dot(x1, h), x2), h) };
        assert_eq!(to_bytes(s), hex16("f7a3b47b846119fae5b7866cf5e5b77e"));
    }

    /// FIPS 197, Appendix C.3: AES-256 of 00112233445566778899aabbccddeeff.
    #[test]
    fn aes256_matches_fips_197() {
        if !VaesGcm::available() {
            return;
        }
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        // SAFETY: the features were detected above.
        let out = unsafe {
            let rk = expand_key(&key);
            encrypt_block(&rk, from_bytes(hex16("00112233445566778899aabbccddeeff")))
        };
        assert_eq!(to_bytes(out), hex16("8ea2b7ca516745bfeafc49904b496089"));
    }
}
