//! Philox4x32-10, the random stream of SPEC section 1, on the host.
//!
//! [`philox4x32_10`] is the textbook form (one counter block). [`words32`] computes eight
//! consecutive blocks in structure-of-arrays form so the compiler can vectorise the
//! multiplies; both produce the same bits. `kernels/philox.cuh` is the device twin.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

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
/// Eight blocks advance together lane by lane; with AVX2 this compiles to vector multiplies.
#[inline(always)]
pub fn words32(seed: u64, offset: u64, first_group: u64) -> [u32; 32] {
    let mut c0 = [0u32; 8];
    let mut c1 = [0u32; 8];
    let c2 = [offset as u32; 8];
    let c3 = [(offset >> 32) as u32; 8];
    for lane in 0..8 {
        let g = first_group.wrapping_add(lane as u64);
        c0[lane] = g as u32;
        c1[lane] = (g >> 32) as u32;
    }
    let (mut c2, mut c3) = (c2, c3);
    let [mut k0, mut k1] = key(seed);
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        for lane in 0..8 {
            let p0 = u64::from(M0) * u64::from(c0[lane]);
            let p1 = u64::from(M1) * u64::from(c2[lane]);
            let n0 = ((p1 >> 32) as u32) ^ c1[lane] ^ k0;
            let n2 = ((p0 >> 32) as u32) ^ c3[lane] ^ k1;
            c1[lane] = p1 as u32;
            c3[lane] = p0 as u32;
            c0[lane] = n0;
            c2[lane] = n2;
        }
    }
    let mut out = [0u32; 32];
    for lane in 0..8 {
        out[4 * lane] = c0[lane];
        out[4 * lane + 1] = c1[lane];
        out[4 * lane + 2] = c2[lane];
        out[4 * lane + 3] = c3[lane];
    }
    out
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
