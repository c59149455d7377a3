//! The AND at the heart of the matcher: the rule bitset of every row an event picked, ANDed
//! word by word with the rules that can match at all, noting which words stay nonzero.
//!
//! One body ([`and_rows_wide`]) over a vector width ([`Lanes`]), compiled once per width with
//! that width's target feature, beside the scalar reference ([`and_rows`]) that also finishes
//! the words past the last whole vector. The matcher's property tests run every width this CPU
//! has against the interpreter.

/// Which AND the matcher runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    Avx512,
    Avx2,
    Scalar,
}

impl Simd {
    /// The widest this CPU runs.
    pub fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Simd::Avx2;
            }
        }
        Simd::Scalar
    }

    /// Every path this CPU can run, widest first.
    pub fn available() -> Vec<Simd> {
        let all = [Simd::Avx512, Simd::Avx2, Simd::Scalar];
        let best = all.iter().position(|s| *s == Simd::detect()).unwrap_or(2);
        all[best..].to_vec()
    }
}

/// The rows an event picked: word offsets into the matcher's masks.
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub masks: &'a [u64],
    pub offs: &'a [u32],
}

/// The AND of `base` and the rows, from word `from` on, into `bits`, noting the nonzero words
/// in `nonzero`.
#[inline]
pub(super) fn and_rows(
    bits: &mut [u64],
    nonzero: &mut [u64],
    base: &[u64],
    rows: Rows<'_>,
    from: usize,
) {
    for i in from..bits.len() {
        let mut v = base[i];
        for &o in rows.offs {
            v &= rows.masks[o as usize + i];
        }
        bits[i] = v;
        nonzero[i / 64] |= u64::from(v != 0) << (i % 64);
    }
}

/// A vector of `WORDS` 64-bit words.
///
/// # Safety
/// An implementation's functions may be called only where the CPU has its target feature.
pub(super) unsafe trait Lanes {
    const WORDS: usize;
    type V: Copy;
    /// # Safety
    /// `p` points to `WORDS` readable words, and the CPU has the target feature.
    unsafe fn load(p: *const u64) -> Self::V;
    /// # Safety
    /// `p` points to `WORDS` writable words, and the CPU has the target feature.
    unsafe fn store(p: *mut u64, v: Self::V);
    /// # Safety
    /// The CPU has the implementation's target feature.
    unsafe fn and(a: Self::V, b: Self::V) -> Self::V;
    /// One bit per word of `v`, set where the word is nonzero.
    ///
    /// # Safety
    /// The CPU has the implementation's target feature.
    unsafe fn nonzero(v: Self::V) -> u64;
}

/// [`and_rows`], `L::WORDS` words at a time, then the rest one by one.
///
/// # Safety
/// The CPU must have `L`'s target feature (callers are compiled with it, and this body is
/// inlined into them).
#[inline(always)]
pub(super) unsafe fn and_rows_wide<L: Lanes>(
    bits: &mut [u64],
    nonzero: &mut [u64],
    base: &[u64],
    rows: Rows<'_>,
) {
    let n = bits.len();
    assert!(
        base.len() >= n
            && rows
                .offs
                .iter()
                .all(|&o| o as usize + n <= rows.masks.len())
    );
    let mut i = 0;
    while i + L::WORDS <= n {
        // SAFETY: words i..i + WORDS are in `base`, `bits` and every row (asserted above), and
        // the caller has the feature.
        unsafe {
            let mut v = L::load(base.as_ptr().add(i));
            for &o in rows.offs {
                v = L::and(v, L::load(rows.masks.as_ptr().add(o as usize + i)));
            }
            L::store(bits.as_mut_ptr().add(i), v);
            nonzero[i / 64] |= L::nonzero(v) << (i % 64);
        }
        i += L::WORDS;
    }
    and_rows(bits, nonzero, base, rows, i);
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86_64 {
    use std::arch::x86_64::{
        __m256i, __m512i, _mm256_and_si256, _mm256_castsi256_pd, _mm256_cmpeq_epi64,
        _mm256_loadu_si256, _mm256_movemask_pd, _mm256_setzero_si256, _mm256_storeu_si256,
        _mm512_and_si512, _mm512_loadu_si512, _mm512_storeu_si512, _mm512_test_epi64_mask,
    };

    use super::{Lanes, Rows, and_rows_wide};

    pub struct Avx512;

    // SAFETY: used only through `and_rows_avx512`, which needs AVX-512F.
    unsafe impl Lanes for Avx512 {
        const WORDS: usize = 8;
        type V = __m512i;
        /// # Safety
        /// As [`Lanes::load`].
        #[inline(always)]
        unsafe fn load(p: *const u64) -> __m512i {
            // SAFETY: the caller's contract.
            unsafe { _mm512_loadu_si512(p.cast()) }
        }
        /// # Safety
        /// As [`Lanes::store`].
        #[inline(always)]
        unsafe fn store(p: *mut u64, v: __m512i) {
            // SAFETY: the caller's contract.
            unsafe { _mm512_storeu_si512(p.cast(), v) }
        }
        /// # Safety
        /// As [`Lanes::and`].
        #[inline(always)]
        unsafe fn and(a: __m512i, b: __m512i) -> __m512i {
            // SAFETY: the caller has AVX-512F.
            unsafe { _mm512_and_si512(a, b) }
        }
        /// # Safety
        /// As [`Lanes::nonzero`].
        #[inline(always)]
        unsafe fn nonzero(v: __m512i) -> u64 {
            // SAFETY: the caller has AVX-512F.
            u64::from(unsafe { _mm512_test_epi64_mask(v, v) })
        }
    }

    pub struct Avx2;

    // SAFETY: used only through `and_rows_avx2`, which needs AVX2.
    unsafe impl Lanes for Avx2 {
        const WORDS: usize = 4;
        type V = __m256i;
        /// # Safety
        /// As [`Lanes::load`].
        #[inline(always)]
        unsafe fn load(p: *const u64) -> __m256i {
            // SAFETY: the caller's contract.
            unsafe { _mm256_loadu_si256(p.cast()) }
        }
        /// # Safety
        /// As [`Lanes::store`].
        #[inline(always)]
        unsafe fn store(p: *mut u64, v: __m256i) {
            // SAFETY: the caller's contract.
            unsafe { _mm256_storeu_si256(p.cast(), v) }
        }
        /// # Safety
        /// As [`Lanes::and`].
        #[inline(always)]
        unsafe fn and(a: __m256i, b: __m256i) -> __m256i {
            // SAFETY: the caller has AVX2.
            unsafe { _mm256_and_si256(a, b) }
        }
        /// # Safety
        /// As [`Lanes::nonzero`].
        #[inline(always)]
        unsafe fn nonzero(v: __m256i) -> u64 {
            // SAFETY: the caller has AVX2.
            let zero = unsafe {
                _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(
                    v,
                    _mm256_setzero_si256(),
                )))
            };
            u64::from(!zero as u8 & 0xf)
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn and_rows_avx512(
        bits: &mut [u64],
        nonzero: &mut [u64],
        base: &[u64],
        rows: Rows<'_>,
    ) {
        // SAFETY: this function has AVX-512F.
        unsafe { and_rows_wide::<Avx512>(bits, nonzero, base, rows) }
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn and_rows_avx2(
        bits: &mut [u64],
        nonzero: &mut [u64],
        base: &[u64],
        rows: Rows<'_>,
    ) {
        // SAFETY: this function has AVX2.
        unsafe { and_rows_wide::<Avx2>(bits, nonzero, base, rows) }
    }
}
