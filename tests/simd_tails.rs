//! The unaligned and tail cases of the CPU backend's vector paths (issue 13), against the
//! independent scalar reference in `spec_ref`: every length 0..=70, lengths around
//! multiples of 32 (one mask word), 64, 256 and the 32768-element parallel chunk, decision
//! indices that start off a Philox block (`index_base % 4 != 0`, so the 4-word blocks
//! straddle mask words), sub-ranges of a tensor as shards, in-place calls, and all four
//! dtypes (f16 and bf16 go through their F16C / AVX2 block conversions).
//!
//! The backend picks AVX2 or the portable code at run time (src/cpu/mod.rs
//! `run_chunk_dispatch`, src/mask.rs `keep_word` / `fill_keep_bits`, src/philox.rs
//! `words32`, the block conversions in src/element.rs). A switch that forces one path (an
//! environment variable read there) would let CI run this same file once per path; until
//! then it covers the path this CPU takes.

mod spec_ref;

use dropkit::functional::{
    alpha_dropout, bias_dropout_residual, dropout, dropout_backward, grouped_dropout,
    GroupedConfig, GroupedKind, Grouping, ResidualInputs,
};
use dropkit::{Dropout, Generator, MaskMode, StreamPos, Tensor};
use half::{bf16, f16};
use spec_ref::{Arith, RefFloat};
use std::sync::Arc;

const SEED: u64 = 0x7A11_5EED;
const OFFSET: u64 = 0x1_0000_0003;

/// Every length up to 70, then the neighbours of 32, 64, 256 and 32768 multiples.
fn lengths() -> Vec<usize> {
    let mut v: Vec<usize> = (0..=70).collect();
    for m in [
        95, 96, 97, 127, 128, 129, 255, 256, 257, 511, 512, 513, 1023, 1024, 1025,
    ] {
        v.push(m);
    }
    v
}

/// Lengths that cross the 32768-element chunks the backend runs in parallel.
const CHUNK_LENGTHS: [usize; 4] = [32_767, 32_768, 32_769, 65_536 + 33];

/// Index bases on and off Philox blocks (multiples of 4) and mask words (of 32), around
/// 2^32 (the counter's low word carries) and near the end of the u64 range.
fn index_bases(n: usize) -> Vec<u64> {
    let mut v = vec![0, 1, 2, 3, 5, 31, 33, (1 << 32) - 3, (1 << 32) + 2];
    v.push(u64::MAX - n as u64 - 6);
    v
}

fn check_same<T: RefFloat>(got: &[T], want: &[T], what: &str) {
    if let Some(i) = spec_ref::first_difference(got, want) {
        panic!(
            "{what}: element {i} of {} is {:?}, spec {:?}",
            want.len(),
            got.get(i),
            want.get(i)
        );
    }
}

/// Elementwise dropout and alpha dropout, out of place and in place, both mask forms and
/// the backward from each.
fn elementwise<T: RefFloat>(n: usize, index_base: u64, p: f64) {
    let x_data = spec_ref::data::<T>(n, n as u64 ^ index_base, true);
    let x = Tensor::from_vec(x_data.clone(), &[n]).unwrap();
    let dy_data = spec_ref::data::<T>(n, 77, false);
    let dy = Tensor::from_vec(dy_data.clone(), &[n]).unwrap();
    let t = spec_ref::threshold(p);
    let pos = StreamPos::new(SEED, OFFSET).with_index_base(index_base);
    let keep: Vec<bool> = (0..n)
        .map(|i| spec_ref::kept(SEED, OFFSET, index_base + i as u64, t))
        .collect();
    let want_bits = spec_ref::keep_bits(SEED, OFFSET, index_base, n, t);
    let what = |op: &str, mode| format!("{op} {} n={n} base={index_base} p={p} {mode:?}", T::DTYPE);
    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
        for arith in [Arith::Scale, Arith::Alpha] {
            let (y, state) = match arith {
                Arith::Scale => dropout(&x, p, true, pos, mode).unwrap(),
                Arith::Alpha => alpha_dropout(&x, p, true, pos, mode).unwrap(),
            };
            let want: Vec<T> = (0..n)
                .map(|i| spec_ref::forward_elem(x_data[i], keep[i], t, arith))
                .collect();
            check_same(&y.to_vec().unwrap(), &want, &what("forward", mode));
            assert_eq!(
                state.keep_bits().unwrap().unwrap(),
                want_bits,
                "{}",
                what("bits", mode)
            );
            let dx = dropout_backward(&dy, &state).unwrap();
            let want_dx: Vec<T> = (0..n)
                .map(|i| spec_ref::backward_elem(dy_data[i], keep[i], t, arith))
                .collect();
            check_same(&dx.to_vec().unwrap(), &want_dx, &what("backward", mode));
        }
        // In place: the layer writes over its input (the backend's `Source::Output`).
        let gen = Arc::new(Generator::new(SEED));
        gen.set_offset(OFFSET);
        let layer = Dropout::new(p)
            .unwrap()
            .with_generator(gen)
            .with_mask_mode(mode)
            .with_index_base(index_base);
        let mut inplace = x.try_clone().unwrap();
        layer.forward_in_place(&mut inplace).unwrap();
        let want: Vec<T> = (0..n)
            .map(|i| spec_ref::forward_elem(x_data[i], keep[i], t, Arith::Scale))
            .collect();
        check_same(&inplace.to_vec().unwrap(), &want, &what("in place", mode));
    }
}

/// A sub-range [a, b) of a tensor, as a shard with its own index base, gives exactly that
/// range of the whole tensor's output.
fn sub_ranges<T: RefFloat>(n: usize, index_base: u64) {
    let x_data = spec_ref::data::<T>(n, 5, false);
    let x = Tensor::from_vec(x_data.clone(), &[n]).unwrap();
    let pos = StreamPos::new(SEED, OFFSET).with_index_base(index_base);
    let (whole, _) = dropout(&x, 0.4, true, pos, MaskMode::Bits).unwrap();
    let whole = whole.to_vec().unwrap();
    for (a, b) in [
        (0, n),
        (1, n),
        (3, n.saturating_sub(1)),
        (n / 3, n / 2),
        (n / 2, n),
    ] {
        if a > b {
            continue;
        }
        let shard = Tensor::from_vec(x_data[a..b].to_vec(), &[b - a]).unwrap();
        let (y, state) = dropout(
            &shard,
            0.4,
            true,
            pos.with_index_base(index_base + a as u64),
            MaskMode::Bits,
        )
        .unwrap();
        check_same(
            &y.to_vec().unwrap(),
            &whole[a..b],
            &format!("{} shard [{a}, {b}) of {n} at base {index_base}", T::DTYPE),
        );
        let t = spec_ref::threshold(0.4);
        let want = spec_ref::keep_bits(SEED, OFFSET, index_base + a as u64, b - a, t);
        assert_eq!(state.keep_bits().unwrap().unwrap(), want);
    }
}

/// Grouped decisions with group sizes around the 32-bit mask word and starts inside a
/// group (`index_base % group != 0`).
fn grouped<T: RefFloat>(n: usize, index_base: u64) {
    let x_data = spec_ref::data::<T>(n, 9, true);
    let x = Tensor::from_vec(x_data.clone(), &[n]).unwrap();
    let p = 0.37;
    let t = spec_ref::threshold(p);
    let pos = StreamPos::new(SEED, OFFSET).with_index_base(index_base);
    for group in [1usize, 2, 3, 7, 31, 32, 33, 64, 100] {
        for (kind, arith) in [
            (GroupedKind::Scale, Arith::Scale),
            (GroupedKind::Alpha, Arith::Alpha),
        ] {
            let (y, _) = grouped_dropout(
                &x,
                &GroupedConfig {
                    p,
                    training: true,
                    grouping: Grouping { size: group, kind },
                },
                pos,
                MaskMode::Regenerate,
            )
            .unwrap();
            let want: Vec<T> = (0..n)
                .map(|i| {
                    let j = spec_ref::decision_index(index_base, i, group as u64);
                    spec_ref::forward_elem(x_data[i], spec_ref::kept(SEED, OFFSET, j, t), t, arith)
                })
                .collect();
            check_same(
                &y.to_vec().unwrap(),
                &want,
                &format!(
                    "{} grouped {kind:?} group={group} n={n} base={index_base}",
                    T::DTYPE
                ),
            );
        }
    }
}

/// The fused layer with hidden sizes that do and do not divide a mask word.
fn fused<T: RefFloat>(n: usize, index_base: u64) {
    let p = 0.25;
    let t = spec_ref::threshold(p);
    for hidden in [1usize, 3, 32, 33] {
        if !n.is_multiple_of(hidden) {
            continue;
        }
        let shape = [n / hidden, hidden];
        let x_data = spec_ref::data::<T>(n, 1, true);
        let r_data = spec_ref::data::<T>(n, 2, false);
        let b_data = spec_ref::data::<T>(hidden, 3, false);
        let x = Tensor::from_vec(x_data.clone(), &shape).unwrap();
        let residual = Tensor::from_vec(r_data.clone(), &shape).unwrap();
        let bias = Tensor::from_vec(b_data.clone(), &[hidden]).unwrap();
        let pos = StreamPos::new(SEED, OFFSET).with_index_base(index_base);
        let (out, _) = bias_dropout_residual(
            ResidualInputs {
                x: &x,
                bias: &bias,
                residual: &residual,
            },
            p,
            true,
            pos,
            MaskMode::Bits,
        )
        .unwrap();
        let want: Vec<T> = (0..n)
            .map(|i| {
                let e = index_base + i as u64;
                let keep = spec_ref::kept(SEED, OFFSET, e, t);
                let col = (e % hidden as u64) as usize;
                spec_ref::fused_elem(x_data[i], b_data[col], r_data[i], keep, t)
            })
            .collect();
        check_same(
            &out.to_vec().unwrap(),
            &want,
            &format!("{} fused H={hidden} n={n} base={index_base}", T::DTYPE),
        );
    }
}

fn all_cases<T: RefFloat>() {
    for n in lengths() {
        for index_base in index_bases(n) {
            for p in [0.0, 0.3, 1.0] {
                elementwise::<T>(n, index_base, p);
            }
            grouped::<T>(n, index_base);
            fused::<T>(n, index_base);
        }
        sub_ranges::<T>(n, 6);
    }
    for n in CHUNK_LENGTHS {
        for index_base in [0, 3, (1 << 32) - 1] {
            elementwise::<T>(n, index_base, 0.3);
            sub_ranges::<T>(n, index_base);
        }
    }
}

#[test]
fn f32_tails_and_unaligned_starts() {
    all_cases::<f32>();
}

#[test]
fn f64_tails_and_unaligned_starts() {
    all_cases::<f64>();
}

#[test]
fn f16_tails_and_unaligned_starts() {
    all_cases::<f16>();
}

#[test]
fn bf16_tails_and_unaligned_starts() {
    all_cases::<bf16>();
}
