//! The fused dropout + add + norm backward's rows with AVX-512, for the types computed in
//! f32: the arithmetic of `cpu::norm_backward::backward` (docs/spec.md 6.3) on sixteen
//! lanes at a time, the same IEEE operations in the same order, so the same bits. The
//! f64 column partials (dgamma, dbeta, dbias) are added per column in row order, eight
//! lanes at a time, as the generic code adds them one at a time.

use super::norm_rows::{each_pair, same_type};
use super::{live, Lanes16};
use crate::cpu::rows::{bits_at, lane_tree};
use crate::element::Element;
use crate::plan::{Norm, ROW_SUM_LANES};
use half::{bf16, f16};
use std::arch::x86_64::*;

/// One column-sum block's rows: the inputs from the block's first element, its keep bits
/// from bit 0 (`None` in eval mode), its gradients and its f64 column partials.
pub(crate) struct BlockRows<'a, T, R> {
    pub dz: &'a [T],
    pub ds: Option<&'a [R]>,
    pub s: &'a [R],
    /// Mean and rstd of the block's rows.
    pub stats: &'a [f64],
    pub keep: Option<&'a [u32]>,
    pub dx: &'a mut [T],
    pub dres: Option<&'a mut [R]>,
    pub part_gamma: &'a mut [f64],
    pub part_beta: Option<&'a mut [f64]>,
    pub part_bias: Option<&'a mut [f64]>,
}

/// What every row shares: the norm, H, gamma widened to f32, the gradient factor 1/q and
/// H in f32.
pub(crate) struct BackwardConsts<'a, C> {
    pub norm: Norm,
    pub h: usize,
    pub gamma: &'a [C],
    pub scale: C,
    pub h_c: C,
}

/// The backward of a block's rows when (T, R) has a kernel here
/// ([`super::norm_rows::has_row_kernel`]), returning true; false, with nothing written,
/// for any other pair.
///
/// # Safety
/// [`has_avx512`](crate::host::simd::has_avx512) must be true; the slices must hold the
/// block's rows of `consts.h` elements (the partials and gamma `h` each, the stats two per
/// row).
pub(crate) unsafe fn backward_rows_any<T: Element, R: Element<Compute = T::Compute>>(
    block: BlockRows<'_, T, R>,
    consts: &BackwardConsts<'_, T::Compute>,
) -> bool {
    macro_rules! run {
        ($t:ty, $r:ty) => {{
            // SAFETY: T is $t and R is $r (each_pair compared their TypeIds), and T::Compute
            // is then f32; the caller checked `has_avx512` and the lengths; BF16 is checked
            // here.
            unsafe {
                let block = same_type::<_, BlockRows<'_, $t, $r>>(block);
                let consts = same_type::<_, &BackwardConsts<'_, f32>>(consts);
                if super::hardware_bf16() {
                    block_avx512_bf16::<$t, $r>(block, consts);
                } else {
                    block_avx512::<$t, $r>(block, consts);
                }
            }
            return true;
        }};
    }
    each_pair!(T, R, run);
    false
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,f16c,bmi2")]
/// # Safety
/// As [`backward_rows_any`], with the types matched.
unsafe fn block_avx512<T: Lanes16, R: Lanes16>(
    block: BlockRows<'_, T, R>,
    c: &BackwardConsts<'_, f32>,
) {
    // SAFETY: as the caller's.
    unsafe { rows::<T, R, false>(block, c) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,f16c,bmi2,avx512bf16")]
/// # Safety
/// As [`backward_rows_any`], with the types matched, and the CPU must have AVX-512 BF16.
unsafe fn block_avx512_bf16<T: Lanes16, R: Lanes16>(
    block: BlockRows<'_, T, R>,
    c: &BackwardConsts<'_, f32>,
) {
    // SAFETY: as the caller's.
    unsafe { rows::<T, R, true>(block, c) }
}

/// `p[0..8) += widen(v)` for the lanes of `k` (f64 adds, p first).
///
/// # Safety
/// AVX-512 F and DQ; `p` valid for the lanes of `k`.
#[inline(always)]
unsafe fn add_f64(p: *mut f64, k: __mmask8, v: __m256) {
    // SAFETY: as the caller's.
    unsafe {
        let sum = _mm512_add_pd(_mm512_maskz_loadu_pd(k, p), _mm512_cvtps_pd(v));
        _mm512_mask_storeu_pd(p, k, sum);
    }
}

/// The sixteen f32 lanes of `v`, widened, added to the f64 partials at `p` under `lanes`.
///
/// # Safety
/// AVX-512 F and DQ; `p` valid for the lanes set in `lanes`.
#[inline(always)]
unsafe fn add_partials(p: *mut f64, lanes: u16, v: __m512) {
    // SAFETY: as the caller's.
    unsafe {
        add_f64(p, lanes as u8, _mm512_castps512_ps256(v));
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        add_f64(p.add(8), (lanes >> 8) as u8, hi);
    }
}

/// Every row of the block: pass 1 (y, g, and the lane sums of g * y and g), pass 2 (the
/// gradients and the column partials); y and g stay in scratch rows between them.
///
/// # Safety
/// As [`block_avx512`] (and AVX-512 BF16 when `HW_BF16`).
#[inline(always)]
unsafe fn rows<T: Lanes16, R: Lanes16, const HW_BF16: bool>(
    block: BlockRows<'_, T, R>,
    c: &BackwardConsts<'_, f32>,
) {
    let h = c.h;
    let (mut y, mut g) = (vec![0f32; h], vec![0f32; h]);
    let BlockRows {
        dz,
        ds,
        s,
        stats,
        keep,
        dx,
        mut dres,
        part_gamma,
        mut part_beta,
        mut part_bias,
    } = block;
    for (r, dxr) in dx.chunks_mut(h).enumerate() {
        let e0 = r * h;
        // The saved statistics are compute-type values widened to f64: exact back to f32.
        let (mean, rstd) = (stats[2 * r] as f32, stats[2 * r + 1] as f32);
        let (sp, dzp) = (s[e0..e0 + h].as_ptr(), dz[e0..e0 + h].as_ptr());
        // SAFETY: every pointer below covers h elements (the partials and gamma h, y and g
        // h) from its row's start, the lanes of a partial chunk are masked, and the caller
        // checked the CPU features.
        let (c1, c2) = unsafe {
            let (mean_v, rstd_v) = (_mm512_set1_ps(mean), _mm512_set1_ps(rstd));
            let (mut acc1, mut acc2) = ([_mm512_setzero_ps(); 2], [_mm512_setzero_ps(); 2]);
            let mut c0 = 0;
            while c0 < h {
                let m = live((h - c0).min(ROW_SUM_LANES));
                for half in 0..2 {
                    let (lanes, off) = ((m >> (16 * half)) as u16, c0 + 16 * half);
                    let v = R::load16(sp.add(off), lanes);
                    let d = T::load16(dzp.add(off), lanes);
                    let yv = match c.norm {
                        Norm::LayerNorm => _mm512_mul_ps(_mm512_sub_ps(v, mean_v), rstd_v),
                        Norm::RmsNorm => _mm512_mul_ps(v, rstd_v),
                    };
                    let gm = _mm512_maskz_loadu_ps(lanes, c.gamma.as_ptr().add(off));
                    let gv = _mm512_mul_ps(d, gm);
                    _mm512_mask_storeu_ps(y.as_mut_ptr().add(off), lanes, yv);
                    _mm512_mask_storeu_ps(g.as_mut_ptr().add(off), lanes, gv);
                    let (a1, a2) = (&mut acc1[half], &mut acc2[half]);
                    *a1 = _mm512_mask_add_ps(*a1, lanes, *a1, _mm512_mul_ps(gv, yv));
                    *a2 = _mm512_mask_add_ps(*a2, lanes, *a2, gv);
                }
                c0 += ROW_SUM_LANES;
            }
            let c1 = lane_tree(lanes_of(acc1)) / c.h_c;
            let c2 = match c.norm {
                Norm::LayerNorm => lane_tree(lanes_of(acc2)) / c.h_c,
                Norm::RmsNorm => 0.0,
            };
            (c1, c2)
        };
        // SAFETY: as above.
        unsafe {
            let (c1_v, c2_v) = (_mm512_set1_ps(c1), _mm512_set1_ps(c2));
            let (rstd_v, scale) = (_mm512_set1_ps(rstd), _mm512_set1_ps(c.scale));
            let mut c0 = 0;
            while c0 < h {
                let m = live((h - c0).min(ROW_SUM_LANES));
                let word = keep.map(|k| bits_at(k, e0 + c0));
                for half in 0..2 {
                    let (lanes, off) = ((m >> (16 * half)) as u16, c0 + 16 * half);
                    let yv = _mm512_maskz_loadu_ps(lanes, y.as_ptr().add(off));
                    let gv = _mm512_maskz_loadu_ps(lanes, g.as_ptr().add(off));
                    let t = _mm512_sub_ps(gv, _mm512_mul_ps(yv, c1_v));
                    let mut u = match c.norm {
                        Norm::LayerNorm => _mm512_mul_ps(_mm512_sub_ps(t, c2_v), rstd_v),
                        Norm::RmsNorm => _mm512_mul_ps(t, rstd_v),
                    };
                    if let Some(ds) = ds {
                        u = _mm512_add_ps(u, R::load16(ds.as_ptr().add(e0 + off), lanes));
                    }
                    if let Some(dr) = dres.as_deref_mut() {
                        R::store16::<HW_BF16>(dr.as_mut_ptr().add(e0 + off), lanes, u);
                    }
                    if let Some(w) = word {
                        u = _mm512_maskz_mul_ps((w >> (16 * half)) as u16, u, scale);
                    }
                    T::store16::<HW_BF16>(dxr.as_mut_ptr().add(off), lanes, u);
                    let d = T::load16(dzp.add(off), lanes);
                    add_partials(
                        part_gamma.as_mut_ptr().add(off),
                        lanes,
                        _mm512_mul_ps(d, yv),
                    );
                    if let Some(pb) = part_beta.as_deref_mut() {
                        add_partials(pb.as_mut_ptr().add(off), lanes, d);
                    }
                    if let Some(pb) = part_bias.as_deref_mut() {
                        // The rounded dx, widened again: the column sums add what dx holds.
                        add_partials(pb.as_mut_ptr().add(off), lanes, T::round16::<HW_BF16>(u));
                    }
                }
                c0 += ROW_SUM_LANES;
            }
        }
    }
}

/// The 32 row-sum lanes of two accumulators, lane l of the row in element l.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[inline(always)]
unsafe fn lanes_of(acc: [__m512; 2]) -> [f32; ROW_SUM_LANES] {
    // SAFETY: as the caller's.
    unsafe { super::norm_rows::lanes_of(acc) }
}
