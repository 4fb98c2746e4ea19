//! Philox4x32-10 for 32 consecutive counter blocks (128 decisions, four mask words) at
//! once in AVX-512 registers, scheduled by hand.
//!
//! Each 32-bit state word sits in the low half of a 64-bit lane, eight blocks to a
//! register, because `vpmuludq` multiplies those low halves into full 64-bit products:
//! the low word stays in place and a swap of the two halves (`vpshufd`) brings the high
//! word down. A round is then, per eight blocks, two multiplies, two swaps and two
//! three-way xors with the round key. On the Xeon of the committed CPU logs
//! (`cargo bench --bench x86_ports`) the multiply and the xor issue two per cycle, the
//! swap one, and the round's mix two per cycle, so the rate is set by the
//! instruction count, provided both ports always have work: a round's chain (multiply,
//! swap, xor) takes about 7 cycles, so four independent sets of eight blocks are in flight.
//!
//! Why assembly: from intrinsics LLVM rewrites the swap as a 64-bit shift (it sees that
//! only the low half is used) and merges the two multiplies of a round into one register
//! with cross-lane permutes, more instructions per round than the three above; assembly
//! keeps the schedule as written. The round keys are precomputed and xored in from
//! memory by broadcast.

use crate::philox::{M0, M1, W0, W1};
use std::arch::x86_64::*;

/// The ten round keys of a seed, each zero-extended to 64 bits for a `{1to8}` broadcast:
/// `[k0 of round 0, k1 of round 0, k0 of round 1, ...]`.
pub(crate) struct RoundKeys([u64; 20]);

impl RoundKeys {
    pub(crate) fn new(seed: u64) -> Self {
        let mut keys = [0u64; 20];
        let (mut k0, mut k1) = (seed as u32, (seed >> 32) as u32);
        for round in 0..10 {
            keys[2 * round] = u64::from(k0);
            keys[2 * round + 1] = u64::from(k1);
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        Self(keys)
    }
}

/// The state of eight blocks: words 0-3, each in the low halves of eight 64-bit lanes.
type Blocks8 = [__m512i; 4];

/// Two rounds of four sets of eight blocks; `k` points at the first round's two keys.
///
/// The first round writes its products into scratch registers, the second writes back
/// into words 1 and 3, so no register moves are needed between rounds.
///
/// # Safety
/// The CPU must support AVX-512 F; `k` valid for four `u64`s.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn two_rounds(s: &mut [Blocks8; 4], m0: __m512i, m1: __m512i, k: *const u64) {
    let [a, b, c, d] = s;
    // Scratch: the first round's products (words 3 and 1 of that round's output).
    let (_a3, _a1, _b3, _b1, _c3, _c1, _d3, _d1): (
        __m512i,
        __m512i,
        __m512i,
        __m512i,
        __m512i,
        __m512i,
        __m512i,
        __m512i,
    );
    // SAFETY: register arithmetic plus four 8-byte loads at `k`, valid by the contract.
    unsafe {
        std::arch::asm!(
            // Round r: products p0 = M0 * w0 and p1 = M1 * w2.
            "vpmuludq {ta3}, {a0}, {m0}",
            "vpmuludq {ta1}, {a2}, {m1}",
            "vpmuludq {tb3}, {b0}, {m0}",
            "vpmuludq {tb1}, {b2}, {m1}",
            "vpmuludq {tc3}, {c0}, {m0}",
            "vpmuludq {tc1}, {c2}, {m1}",
            "vpmuludq {td3}, {d0}, {m0}",
            "vpmuludq {td1}, {d2}, {m1}",
            // w0' = hi(p1) ^ w1 ^ k0, w2' = hi(p0) ^ w3 ^ k1 (0x96: a ^ b ^ c).
            "vpshufd {a0}, {ta1}, 0xB1",
            "vpshufd {a2}, {ta3}, 0xB1",
            "vpshufd {b0}, {tb1}, 0xB1",
            "vpshufd {b2}, {tb3}, 0xB1",
            "vpshufd {c0}, {tc1}, 0xB1",
            "vpshufd {c2}, {tc3}, 0xB1",
            "vpshufd {d0}, {td1}, 0xB1",
            "vpshufd {d2}, {td3}, 0xB1",
            "vpternlogq {a0}, {a1}, qword ptr [{k}]{{1to8}}, 0x96",
            "vpternlogq {a2}, {a3}, qword ptr [{k} + 8]{{1to8}}, 0x96",
            "vpternlogq {b0}, {b1}, qword ptr [{k}]{{1to8}}, 0x96",
            "vpternlogq {b2}, {b3}, qword ptr [{k} + 8]{{1to8}}, 0x96",
            "vpternlogq {c0}, {c1}, qword ptr [{k}]{{1to8}}, 0x96",
            "vpternlogq {c2}, {c3}, qword ptr [{k} + 8]{{1to8}}, 0x96",
            "vpternlogq {d0}, {d1}, qword ptr [{k}]{{1to8}}, 0x96",
            "vpternlogq {d2}, {d3}, qword ptr [{k} + 8]{{1to8}}, 0x96",
            // Round r + 1: words 1 and 3 are in the scratch registers; the products go
            // back into the state's words 3 and 1.
            "vpmuludq {a3}, {a0}, {m0}",
            "vpmuludq {a1}, {a2}, {m1}",
            "vpmuludq {b3}, {b0}, {m0}",
            "vpmuludq {b1}, {b2}, {m1}",
            "vpmuludq {c3}, {c0}, {m0}",
            "vpmuludq {c1}, {c2}, {m1}",
            "vpmuludq {d3}, {d0}, {m0}",
            "vpmuludq {d1}, {d2}, {m1}",
            "vpshufd {a0}, {a1}, 0xB1",
            "vpshufd {a2}, {a3}, 0xB1",
            "vpshufd {b0}, {b1}, 0xB1",
            "vpshufd {b2}, {b3}, 0xB1",
            "vpshufd {c0}, {c1}, 0xB1",
            "vpshufd {c2}, {c3}, 0xB1",
            "vpshufd {d0}, {d1}, 0xB1",
            "vpshufd {d2}, {d3}, 0xB1",
            "vpternlogq {a0}, {ta1}, qword ptr [{k} + 16]{{1to8}}, 0x96",
            "vpternlogq {a2}, {ta3}, qword ptr [{k} + 24]{{1to8}}, 0x96",
            "vpternlogq {b0}, {tb1}, qword ptr [{k} + 16]{{1to8}}, 0x96",
            "vpternlogq {b2}, {tb3}, qword ptr [{k} + 24]{{1to8}}, 0x96",
            "vpternlogq {c0}, {tc1}, qword ptr [{k} + 16]{{1to8}}, 0x96",
            "vpternlogq {c2}, {tc3}, qword ptr [{k} + 24]{{1to8}}, 0x96",
            "vpternlogq {d0}, {td1}, qword ptr [{k} + 16]{{1to8}}, 0x96",
            "vpternlogq {d2}, {td3}, qword ptr [{k} + 24]{{1to8}}, 0x96",
            a0 = inout(zmm_reg) a[0], a1 = inout(zmm_reg) a[1],
            a2 = inout(zmm_reg) a[2], a3 = inout(zmm_reg) a[3],
            b0 = inout(zmm_reg) b[0], b1 = inout(zmm_reg) b[1],
            b2 = inout(zmm_reg) b[2], b3 = inout(zmm_reg) b[3],
            c0 = inout(zmm_reg) c[0], c1 = inout(zmm_reg) c[1],
            c2 = inout(zmm_reg) c[2], c3 = inout(zmm_reg) c[3],
            d0 = inout(zmm_reg) d[0], d1 = inout(zmm_reg) d[1],
            d2 = inout(zmm_reg) d[2], d3 = inout(zmm_reg) d[3],
            // Named outputs, not `_`: with `_` LLVM 20 printed some as byte registers.
            ta3 = out(zmm_reg) _a3, ta1 = out(zmm_reg) _a1,
            tb3 = out(zmm_reg) _b3, tb1 = out(zmm_reg) _b1,
            tc3 = out(zmm_reg) _c3, tc1 = out(zmm_reg) _c1,
            td3 = out(zmm_reg) _d3, td1 = out(zmm_reg) _d1,
            m0 = in(zmm_reg) m0,
            m1 = in(zmm_reg) m1,
            k = in(reg) k,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
}

/// The keep bits of eight blocks (one 32-bit mask word, bit `4 * block + lane`): words
/// that are `>= t` keep.
///
/// # Safety
/// The CPU must support AVX-512 F and BMI2.
#[inline(always)]
unsafe fn keep_word(s: &Blocks8, t: __m512i) -> u32 {
    // SAFETY: the caller upholds this fn's contract: the CPU must support AVX-512 F and BMI2.
    unsafe {
        // Even bits of each compare: the low halves, one per block.
        let keeps = |v| u32::from(_mm512_cmpge_epu32_mask(v, t)) & 0x5555;
        // Bits 2i and 2i + 1: lanes 0 and 1 (then 2 and 3) of block i.
        let lanes01 = keeps(s[0]) | keeps(s[1]) << 1;
        let lanes23 = keeps(s[2]) | keeps(s[3]) << 1;
        _pdep_u32(lanes01, 0x3333_3333) | _pdep_u32(lanes23, 0xCCCC_CCCC)
    }
}

/// The keep words of decisions `4 * block .. 4 * block + 128` for counter words 2-3 from
/// `offset`, keys from [`RoundKeys`], keeping words `>= t` (`t` < 2^32 broadcast).
///
/// # Safety
/// The CPU must support AVX-512 F and BMI2.
#[inline(always)]
pub(crate) unsafe fn keep_words4(
    keys: &RoundKeys,
    offset: u64,
    block: u64,
    t: __m512i,
) -> [u32; 4] {
    // SAFETY: the caller upholds this fn's contract: the CPU must support AVX-512 F and BMI2.
    unsafe {
        let m0 = _mm512_set1_epi64(i64::from(M0));
        let m1 = _mm512_set1_epi64(i64::from(M1));
        let c2 = _mm512_set1_epi64((offset & 0xFFFF_FFFF) as i64);
        let c3 = _mm512_set1_epi64((offset >> 32) as i64);
        let lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
        // Set j: blocks block + 8j + lane; each lane's high half is ignored by `vpmuludq`,
        // so the 64-bit index serves as word 0 directly.
        let set = |j: u64| {
            let g = _mm512_add_epi64(_mm512_set1_epi64(block.wrapping_add(8 * j) as i64), lanes);
            [g, _mm512_srli_epi64::<32>(g), c2, c3]
        };
        let mut s = [set(0), set(1), set(2), set(3)];
        for pair in 0..5 {
            // In bounds: 4 * pair + 4 <= 20 keys.
            two_rounds(&mut s, m0, m1, keys.0.as_ptr().add(4 * pair));
        }
        // Written out: `array::map` would call a closure compiled without BMI2.
        [
            keep_word(&s[0], t),
            keep_word(&s[1], t),
            keep_word(&s[2], t),
            keep_word(&s[3], t),
        ]
    }
}
