//! Bit-for-bit checks of the AVX-512 kernels against the generic CPU path and `half`.

use super::bf16_convert::narrow_bf16;
use super::*;
use crate::cpu::dropout::{backward_bits_words, forward_words};
use crate::cpu::CHUNK;
use crate::element::{to_compute_f64, ComputeFloat};
use crate::mask::{keep_bits_from, mask_words};
use crate::plan::StreamPos;

/// Whether `test` must skip: the CPU lacks the AVX-512 path (a failure instead under
/// `DROPKIT_REQUIRE_SIMD=avx512`).
fn skip(test: &str) -> bool {
    crate::host::simd::skip_without("avx512", crate::host::simd::has_avx512(), test)
}

/// f32 bit patterns that exercise every conversion edge: zeros, subnormals of f32 and
/// of f16, rounding ties of bf16 and f16, the largest finite values, infinities, quiet
/// and signalling NaNs with payloads, and a spread of ordinary values.
fn edge_patterns() -> Vec<u32> {
    let mut v = vec![
        0x0000_0000,
        0x8000_0000,
        0x0000_0001,
        0x8000_0001,
        0x007F_FFFF,
        0x807F_FFFF,
        0x0040_0000,
        0x0000_8000,
        0x0001_8000,
        0x0080_0000,
        0x0080_8000,
        0x0081_7FFF,
        0x3F80_8000,
        0x3F81_8000,
        0x3F80_7FFF,
        0x3F80_8001,
        0x3380_0000,
        0x3380_0001,
        0x3300_0000,
        0x477F_E000,
        0x477F_F000,
        0x7F7F_FFFF,
        0xFF7F_FFFF,
        0x7F7F_8000,
        0x7F80_0000,
        0xFF80_0000,
        0x7F80_0001,
        0x7FC0_0000,
        0xFFC0_0001,
        0x7FBF_FFFF,
        0xFF80_4321,
        0x7F81_0000,
    ];
    let mut h = 0x1234_5678_9ABC_DEF0u64;
    for _ in 0..2000 {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        v.push(h as u32);
    }
    v
}

fn inputs<T: Element>() -> Vec<T> {
    let mut v: Vec<T> = Vec::new();
    for &p in &edge_patterns() {
        let f = f32::from_bits(p);
        v.push(match T::DTYPE {
            crate::element::DType::F64 => T::from_f64(f64::from(f) * 1.000_000_123),
            // Through the element type's own narrowing: exercises its NaNs too.
            _ => T::from_f64(f64::from(f)),
        });
    }
    // Raw f16 / bf16 patterns, signalling NaNs and subnormals among them.
    if T::DTYPE.size() == 2 {
        for bits in (0..=u16::MAX)
            .step_by(37)
            .chain([0x7C01, 0x7F81, 0xFF81, 0x0001])
        {
            let f = match T::DTYPE {
                crate::element::DType::F16 => f16::from_bits(bits).to_f64(),
                _ => bf16::from_bits(bits).to_f64(),
            };
            if !f.is_nan() {
                v.push(T::from_f64(f));
            }
        }
    }
    v
}

fn same_bits<T: Element>(a: &[T], b: &[T], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(
            x.to_bits_u64(),
            y.to_bits_u64(),
            "{what}: element {i}: {x:?} vs {y:?}"
        );
    }
}

fn check_dtype<T: Avx512Element>() {
    let data = inputs::<T>();
    let ps = [0.0, 1e-9, 0.1, 0.5, 1.0];
    // Lengths around word and chunk edges; starts inside a word (unaligned slices),
    // index bases inside a Philox block and near the top of the index space.
    let lens = [
        0usize,
        1,
        17,
        31,
        32,
        33,
        100,
        1000,
        CHUNK + 45,
        2 * CHUNK + 64,
        3 * CHUNK + 5,
    ];
    let starts = [0usize, 1, 7];
    let bases = [0u64, 4, 1, 3, u64::MAX - 4 * CHUNK as u64 - 3];
    for (case, &p) in ps.iter().enumerate() {
        let prob = Probability::new(p).unwrap();
        let s = to_compute_f64::<T>(prob.scale_f64());
        let (a, b) = (to_compute_f64::<T>(1.0507), to_compute_f64::<T>(-0.25));
        let dropped = to_compute_f64::<T>(-1.7580993408473766).mul(a).add(b);
        for &len in &lens {
            let start = starts[(case + len) % starts.len()];
            let base = bases[(case + len) % bases.len()];
            let pos = StreamPos::new(0x5EED ^ len as u64, case as u64).with_index_base(base);
            let buf: Vec<T> = (0..start + len)
                .map(|i| data[(i * 7 + case) % data.len()])
                .collect();
            let x = &buf[start..];
            let what = format!("{} p {p} len {len} start {start} base {base}", T::DTYPE);
            let keep = Regenerate::new(pos.seed, pos.offset, pos.index_base, &prob);
            for op in [Kept::Scale(s), Kept::Affine { a, b, dropped }] {
                let (mut want, mut want_bits) = (vec![T::ZERO; len], vec![7u32; mask_words(len)]);
                forward_words(
                    Source::Slice(x),
                    &mut want,
                    Some(&mut want_bits),
                    pos,
                    &prob,
                    op,
                );
                assert_eq!(
                    want_bits,
                    keep_bits_from(pos.seed, pos.offset, base, &prob, len).unwrap()
                );
                let (mut got, mut got_bits) = (vec![T::ONE; len], vec![9u32; mask_words(len)]);
                // SAFETY: checked by `skip`.
                unsafe {
                    map_elementwise(Source::Slice(x), &mut got, Some(&mut got_bits), &keep, op)
                };
                same_bits(&got, &want, &what);
                assert_eq!(got_bits, want_bits, "{what}");
                // Streaming forced, into outputs that start at different alignments. A
                // length that runs as one piece longer than CHUNK (CHUNK + 45) must take the
                // ordinary path (the guard in chunk_body: the stream's mask buffer holds one
                // chunk): the regression test of that guard. The real trigger is
                // `streaming_trigger_every_dtype`.
                let mut out = vec![T::ONE; len + 16];
                for shift in [0, 3, 9] {
                    let y = &mut out[shift..shift + len];
                    let mut stream_bits = vec![9u32; mask_words(len)];
                    // SAFETY: checked by `skip`.
                    unsafe {
                        let bits = Some(&mut stream_bits[..]);
                        map_elementwise_with(Source::Slice(x), y, bits, &keep, op, true)
                    };
                    same_bits(y, &want, &format!("{what} streaming at +{shift}"));
                    assert_eq!(stream_bits, want_bits, "{what} streaming at +{shift}");
                }
                // In place, without bits.
                let mut inplace = x.to_vec();
                // SAFETY: as above.
                unsafe { map_elementwise(Source::Output, &mut inplace, None, &keep, op) };
                same_bits(&inplace, &want, &format!("{what} in place"));
            }
            // Backward from the bits.
            let bits = keep_bits_from(pos.seed, pos.offset, base, &prob, len).unwrap();
            let mut want = vec![T::ZERO; len];
            backward_bits_words(Source::Slice(x), &mut want, &bits, s);
            let mut got = vec![T::ONE; len];
            // SAFETY: as above.
            unsafe {
                map_elementwise(
                    Source::Slice(x),
                    &mut got,
                    None,
                    &Saved(&bits),
                    Kept::Scale(s),
                )
            };
            same_bits(&got, &want, &format!("{what} backward"));
            // Streaming stores (f32; the other types store as usual), shifted outputs.
            let mut out = vec![T::ONE; len + 16];
            for shift in [0, 5] {
                let y = &mut out[shift..shift + len];
                let (keep, op) = (Saved(&bits), Kept::Scale(s));
                // SAFETY: as above.
                unsafe { map_elementwise_with(Source::Slice(x), y, None, &keep, op, true) };
                same_bits(y, &want, &format!("{what} backward streaming at +{shift}"));
            }
        }
    }
}

#[test]
fn f32_matches_the_generic_path() {
    if !skip("f32_matches_the_generic_path") {
        check_dtype::<f32>();
    }
}

#[test]
fn f64_matches_the_generic_path() {
    if !skip("f64_matches_the_generic_path") {
        check_dtype::<f64>();
    }
}

#[test]
fn f16_matches_the_generic_path() {
    if !skip("f16_matches_the_generic_path") {
        check_dtype::<f16>();
    }
}

#[test]
fn bf16_matches_the_generic_path() {
    if !skip("bf16_matches_the_generic_path") {
        check_dtype::<bf16>();
    }
}

/// The real streaming trigger (`stream::worth_it`: an output of 16 MiB or more), at it and
/// one element past it, through `map_elementwise`, which decides for itself: forward with
/// bits and backward from them, into outputs at three alignments, against the generic
/// path; the elements after each output must be untouched (a store past the end shows).
/// The types whose `STREAMS` is false take the ordinary path at the same sizes.
fn check_stream_trigger<T: Avx512Element>() {
    let at = super::stream::STREAM_MIN_BYTES / std::mem::size_of::<T>();
    let data = inputs::<T>();
    let prob = Probability::new(0.3).unwrap();
    let s = to_compute_f64::<T>(prob.scale_f64());
    const SENTINEL: usize = 16;
    for len in [at, at + 1] {
        let x: Vec<T> = (0..len).map(|i| data[(i * 13) % data.len()]).collect();
        let pos = StreamPos::new(0x57EA, len as u64).with_index_base(3);
        let keep = Regenerate::new(pos.seed, pos.offset, pos.index_base, &prob);
        let (mut want, mut want_bits) = (vec![T::ZERO; len], vec![0u32; mask_words(len)]);
        let op = Kept::Scale(s);
        forward_words(
            Source::Slice(&x),
            &mut want,
            Some(&mut want_bits),
            pos,
            &prob,
            op,
        );
        let mut want_dx = vec![T::ZERO; len];
        backward_bits_words(Source::Slice(&x), &mut want_dx, &want_bits, s);
        let mut out = vec![T::ONE; len + SENTINEL];
        for shift in [0, 3, 9] {
            let what = format!("{} len {len} output at +{shift}", T::DTYPE);
            out.fill(T::ONE);
            let y = &mut out[shift..shift + len];
            assert!(super::stream::worth_it(y), "{what}: below the trigger");
            let mut bits = vec![9u32; mask_words(len)];
            // SAFETY: checked by `skip`.
            unsafe { map_elementwise(Source::Slice(&x), y, Some(&mut bits), &keep, op) };
            same_bits(y, &want, &format!("{what} forward"));
            assert_eq!(bits, want_bits, "{what} bits");
            let untouched = |out: &[T]| {
                let (before, after) = (&out[..shift], &out[shift + len..]);
                before
                    .iter()
                    .chain(after)
                    .all(|v| v.to_bits_u64() == T::ONE.to_bits_u64())
            };
            assert!(untouched(&out), "{what}: forward wrote outside its output");
            out.fill(T::ONE);
            let y = &mut out[shift..shift + len];
            // SAFETY: as above.
            unsafe { map_elementwise(Source::Slice(&x), y, None, &Saved(&want_bits), op) };
            same_bits(y, &want_dx, &format!("{what} backward"));
            assert!(untouched(&out), "{what}: backward wrote outside its output");
        }
    }
}

#[test]
fn streaming_trigger_every_dtype() {
    if skip("streaming_trigger_every_dtype") {
        return;
    }
    check_stream_trigger::<f32>();
    check_stream_trigger::<f64>();
    check_stream_trigger::<f16>();
    check_stream_trigger::<bf16>();
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and BF16.
unsafe fn narrow_both(src: &[f32; 16]) -> ([u16; 16], [u16; 16]) {
    // SAFETY: the caller upholds this fn's contract: the CPU must support AVX-512 F, BW, VL and
    // BF16.
    unsafe {
        let r = _mm512_loadu_ps(src.as_ptr());
        let (mut hw, mut int) = ([0u16; 16], [0u16; 16]);
        _mm256_storeu_si256(hw.as_mut_ptr() as *mut __m256i, narrow_bf16::<true>(r));
        _mm256_storeu_si256(int.as_mut_ptr() as *mut __m256i, narrow_bf16::<false>(r));
        (hw, int)
    }
}

/// Both bf16 narrowings against `half` on every class of f32: a stride through all bit
/// patterns and the neighbourhoods of the rounding and subnormal edges. A lone
/// subnormal lane among normal ones must take the exact path.
#[test]
fn bf16_narrowing_matches_half() {
    if skip("bf16_narrowing_matches_half")
        || crate::host::simd::skip_without(
            "avx512bf16",
            hardware_bf16(),
            "bf16_narrowing_matches_half",
        )
    {
        return;
    }
    let mut patterns: Vec<u32> = (0..=u32::MAX).step_by(4099).collect();
    for base in [
        0u32,
        0x7F_0000,
        0x7F_FFF0,
        0x7F7F_0000,
        0x7F80_0000,
        0x3F80_0000,
        0x8000,
    ] {
        for d in 0..0x2_0000u32 {
            patterns.push(base.wrapping_add(d));
            patterns.push(base.wrapping_add(d) | 0x8000_0000);
        }
    }
    patterns.extend(edge_patterns());
    for chunk in patterns.chunks(16) {
        let mut f = [1.5f32; 16];
        for (v, &p) in f.iter_mut().zip(chunk) {
            *v = f32::from_bits(p);
        }
        // SAFETY: the CPU supports all of it, checked above.
        let (hw, int) = unsafe { narrow_both(&f) };
        for k in 0..16 {
            let want = bf16::from_f32(f[k]).to_bits();
            assert_eq!(hw[k], want, "hardware path {:#010x}", f[k].to_bits());
            assert_eq!(int[k], want, "integer path {:#010x}", f[k].to_bits());
        }
    }
}

/// The mask alone equals the reference mask for lengths around the four-word groups
/// and the chunks, shards that start inside a Philox block, and every kind of p.
#[test]
fn fill_keep_bits_matches_the_reference_mask() {
    if skip("fill_keep_bits_matches_the_reference_mask") {
        return;
    }
    for p in [0.0, 0.1, 0.5, 1.0] {
        let prob = Probability::new(p).unwrap();
        for len in [0, 1, 31, 32, 33, 127, 128, 129, 4000, CHUNK * 32 * 2 + 77] {
            for base in [0u64, 3, 128, (1 << 32) - 5, u64::MAX - len as u64] {
                let pos = StreamPos::new(0x0123_4567_89AB_CDEF, 42).with_index_base(base);
                let want = keep_bits_from(pos.seed, pos.offset, base, &prob, len).unwrap();
                let mut got = vec![0xA5A5_A5A5u32; mask_words(len)];
                let keep = Regenerate::new(pos.seed, pos.offset, base, &prob);
                // SAFETY: checked by `skip`.
                unsafe { fill_keep_bits(&mut got, &keep, len) };
                assert_eq!(got, want, "p {p} len {len} base {base}");
            }
        }
    }
}
