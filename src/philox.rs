//! Philox4x32-10, the random stream of SPEC section 1, on the host.
//!
//! [`philox4x32_10`] is the textbook form (one counter block). [`words32`] computes eight
//! consecutive blocks at once: with AVX2 intrinsics where the CPU has them, else in
//! structure-of-arrays form; all produce the same bits. `kernels/philox.cuh` is the device
//! twin.

pub(crate) const M0: u32 = 0xD251_1F53;
pub(crate) const M1: u32 = 0xCD9E_8D57;
pub(crate) const W0: u32 = 0x9E37_79B9;
pub(crate) const W1: u32 = 0xBB67_AE85;

/// One Philox4x32-10 block: ten rounds, the key bumped between rounds.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let p0 = u64::from(M0) * u64::from(c0);
        let p1 = u64::from(M1) * u64::from(c2);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        [c0, c1, c2, c3] = [hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0];
    }
    [c0, c1, c2, c3]
}

/// The counter block of group `g` (decisions 4g..4g+3) at `offset`.
#[inline]
pub fn counter(group: u64, offset: u64) -> [u32; 4] {
    [
        group as u32,
        (group >> 32) as u32,
        offset as u32,
        (offset >> 32) as u32,
    ]
}

/// The key of `seed`.
#[inline]
pub fn key(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// The random word `u_i` of decision `i` (SPEC section 1).
#[inline]
pub fn random_word(seed: u64, offset: u64, i: u64) -> u32 {
    philox4x32_10(counter(i >> 2, offset), key(seed))[(i & 3) as usize]
}

/// The 32 random words of decisions `4 * first_group .. 4 * first_group + 32`, in order.
///
/// Eight blocks advance together. On x86_64 CPUs with AVX2 this runs AVX2 intrinsics (the
/// check is a cached flag; `DROPKIT_CPU_SIMD=scalar` turns it off); elsewhere the portable [`words32_portable`]. Both produce
/// the same bits as eight calls of [`philox4x32_10`] (tested below).
#[inline(always)]
pub fn words32(seed: u64, offset: u64, first_group: u64) -> [u32; 32] {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::host::simd::avx2() {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { x86::words32_avx2(seed, offset, first_group) };
        }
    }
    words32_portable(seed, offset, first_group)
}

/// [`words32`] in plain Rust: eight blocks in structure-of-arrays form.
///
/// Each u32 of the state lives in the low half of a u64 lane and the high half is left as
/// garbage: a multiply reads only the low halves, `p >> 32` is the clean high word and `p`
/// itself serves as the low word, so nothing is masked inside the rounds.
#[inline(always)]
pub fn words32_portable(seed: u64, offset: u64, first_group: u64) -> [u32; 32] {
    let mut c0 = [0u64; 8];
    let mut c1 = [0u64; 8];
    let mut c2 = [offset & 0xFFFF_FFFF; 8];
    let mut c3 = [offset >> 32; 8];
    for lane in 0..8 {
        let g = first_group.wrapping_add(lane as u64);
        c0[lane] = g & 0xFFFF_FFFF;
        c1[lane] = g >> 32;
    }
    let [mut k0, mut k1] = key(seed);
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        for lane in 0..8 {
            let p0 = u64::from(c0[lane] as u32) * u64::from(M0);
            let p1 = u64::from(c2[lane] as u32) * u64::from(M1);
            c0[lane] = (p1 >> 32) ^ c1[lane] ^ u64::from(k0);
            c2[lane] = (p0 >> 32) ^ c3[lane] ^ u64::from(k1);
            c1[lane] = p1;
            c3[lane] = p0;
        }
    }
    let mut out = [0u32; 32];
    for lane in 0..8 {
        out[4 * lane] = c0[lane] as u32;
        out[4 * lane + 1] = c1[lane] as u32;
        out[4 * lane + 2] = c2[lane] as u32;
        out[4 * lane + 3] = c3[lane] as u32;
    }
    out
}

/// Philox with AVX2 intrinsics: LLVM does not vectorise the portable form reliably.
///
/// These functions are `#[inline(always)]` without `#[target_feature]` (Rust does not allow
/// both): inlined into a function compiled with AVX2 (such as the CPU backend's chunk loop)
/// they become straight vector code with everything in registers. Called from code compiled
/// without AVX2 they are still correct on an AVX2 CPU, only slower (each intrinsic becomes
/// a call).
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::{key, M0, M1, W0, W1};
    use std::arch::x86_64::*;

    /// Eight consecutive Philox blocks on AVX2, as four registers of eight words each:
    /// `[0]` holds the words of blocks 0 and 1 (decisions 4 * first_group + 0..8), `[1]`
    /// blocks 2 and 3, and so on, in decision order.
    ///
    /// Same layout trick as [`super::words32_portable`]: each state word of four blocks is
    /// one register of four u64 lanes whose low halves hold the u32 values. `vpmuludq`
    /// reads only the low halves and yields the full 64-bit products, so a round is two
    /// multiplies, two shifts and four xors per four blocks.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline(always)]
    pub unsafe fn blocks8_avx2(seed: u64, offset: u64, first_group: u64) -> [__m256i; 4] {
        // SAFETY: the caller upholds this fn's contract: the CPU must support AVX2.
        unsafe {
            let m0 = _mm256_set1_epi64x(i64::from(M0));
            let m1 = _mm256_set1_epi64x(i64::from(M1));
            let [mut k0, mut k1] = key(seed);
            // Blocks first_group + 0..4 in the `a` registers, + 4..8 in `b` (wrapping like the
            // scalar form).
            let g = |i: u64| first_group.wrapping_add(i);
            let lo = |i: u64| (g(i) & 0xFFFF_FFFF) as i64;
            let hi = |i: u64| (g(i) >> 32) as i64;
            let mut c0a = _mm256_setr_epi64x(lo(0), lo(1), lo(2), lo(3));
            let mut c0b = _mm256_setr_epi64x(lo(4), lo(5), lo(6), lo(7));
            let mut c1a = _mm256_setr_epi64x(hi(0), hi(1), hi(2), hi(3));
            let mut c1b = _mm256_setr_epi64x(hi(4), hi(5), hi(6), hi(7));
            let mut c2a = _mm256_set1_epi64x((offset & 0xFFFF_FFFF) as i64);
            let mut c2b = c2a;
            let mut c3a = _mm256_set1_epi64x((offset >> 32) as i64);
            let mut c3b = c3a;
            // Ten rounds, unrolled by hand: the round keys are then constants of the call that
            // the compiler can hoist out of a caller's loop.
            macro_rules! round {
                () => {{
                    let kv0 = _mm256_set1_epi64x(i64::from(k0));
                    let kv1 = _mm256_set1_epi64x(i64::from(k1));
                    let p0a = _mm256_mul_epu32(c0a, m0);
                    let p0b = _mm256_mul_epu32(c0b, m0);
                    let p1a = _mm256_mul_epu32(c2a, m1);
                    let p1b = _mm256_mul_epu32(c2b, m1);
                    c0a =
                        _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64::<32>(p1a), c1a), kv0);
                    c0b =
                        _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64::<32>(p1b), c1b), kv0);
                    c2a =
                        _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64::<32>(p0a), c3a), kv1);
                    c2b =
                        _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64::<32>(p0b), c3b), kv1);
                    c1a = p1a;
                    c1b = p1b;
                    c3a = p0a;
                    c3b = p0b;
                }};
                (bump) => {{
                    k0 = k0.wrapping_add(W0);
                    k1 = k1.wrapping_add(W1);
                    round!();
                }};
            }
            round!();
            round!(bump);
            round!(bump);
            round!(bump);
            round!(bump);
            round!(bump);
            round!(bump);
            round!(bump);
            round!(bump);
            round!(bump);
            // Per u64 lane (block): (c1 << 32 | c0) and (c3 << 32 | c2) are its four words in
            // order. Interleaving those 64 bits at a time gives blocks (0 | 2) and (1 | 3) of
            // the four; swapping 128-bit halves puts them in order.
            let order = |c0, c1, c2, c3| {
                let w01 = _mm256_blend_epi32::<0b1010_1010>(c0, _mm256_slli_epi64::<32>(c1));
                let w23 = _mm256_blend_epi32::<0b1010_1010>(c2, _mm256_slli_epi64::<32>(c3));
                let even = _mm256_unpacklo_epi64(w01, w23);
                let odd = _mm256_unpackhi_epi64(w01, w23);
                (
                    _mm256_permute2x128_si256::<0x20>(even, odd),
                    _mm256_permute2x128_si256::<0x31>(even, odd),
                )
            };
            let (r0, r1) = order(c0a, c1a, c2a, c3a);
            let (r2, r3) = order(c0b, c1b, c2b, c3b);
            [r0, r1, r2, r3]
        }
    }

    /// [`super::words32`] on AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline(always)]
    pub unsafe fn words32_avx2(seed: u64, offset: u64, first_group: u64) -> [u32; 32] {
        // SAFETY: the caller upholds this fn's contract: the CPU must support AVX2.
        unsafe {
            let regs = blocks8_avx2(seed, offset, first_group);
            let mut out = [0u32; 32];
            for (i, r) in regs.into_iter().enumerate() {
                // SAFETY: `out` holds 4 x 8 u32; unaligned stores of 8 u32 at 8 * i, i < 4.
                _mm256_storeu_si256(out.as_mut_ptr().add(8 * i) as *mut __m256i, r);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Random123 kat_vectors for philox4x32_10 (also listed in SPEC section 1).
    #[test]
    fn known_answers() {
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn words32_matches_scalar_blocks() {
        for &(seed, offset, g) in &[
            (0u64, 0u64, 0u64),
            (42, 7, 1 << 32),
            (u64::MAX, u64::MAX, (1 << 62) - 8),
        ] {
            let fast = words32(seed, offset, g);
            assert_eq!(fast, words32_portable(seed, offset, g));
            for (k, &w) in fast.iter().enumerate() {
                let i = (g.wrapping_add(k as u64 / 4) << 2) | (k as u64 & 3);
                assert_eq!(
                    w,
                    random_word(seed, offset, i),
                    "seed {seed} offset {offset} k {k}"
                );
            }
        }
    }
}
