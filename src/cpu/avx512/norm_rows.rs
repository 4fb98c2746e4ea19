//! The fused dropout + add + norm forward's rows with AVX-512, for the types computed in
//! f32 (f32, bf16 and f16 inputs; a residual stream in the input's dtype or f32): the
//! arithmetic of `cpu::norm::forward` (docs/spec.md 6.3), each operation the same IEEE
//! operation in the same order on sixteen lanes at a time, so the same bits. A row's 32
//! row-sum lanes are two zmm accumulators; a partial last chunk of 32 columns runs under a
//! lane mask, so the lanes it does not reach are left as they are, as in the generic code.
//!
//! The generic code runs about ten cycles per element here (docs/PERFORMANCE.md, the CPU
//! norm run): its 32-column blocks go through the element conversions and the keep-bit
//! select one value at a time. This is the same three passes with the loads, the select
//! and the stores done as vectors.

use super::{live, Lanes16};
use crate::cpu::rows::{bits_at, lane_tree};
use crate::element::Element;
use crate::plan::{Norm, ROW_SUM_LANES};
use half::{bf16, f16};
use std::any::TypeId;
use std::arch::x86_64::*;

/// The rows of one forward task: `x` (and `residual`) of `rows * h` elements from the
/// task's first element, its keep bits from bit 0 (`None` in eval mode), and its outputs.
pub(crate) struct TaskRows<'a, T, R> {
    pub x: &'a [T],
    pub residual: Option<&'a [R]>,
    pub keep: Option<&'a [u32]>,
    pub z: &'a mut [T],
    pub s: &'a mut [R],
    /// Mean and rstd per row, widened to f64.
    pub stats: &'a mut [f64],
}

/// What every row of a call shares, in the compute type `C`.
pub(crate) struct RowConsts<'a, C> {
    pub norm: Norm,
    pub h: usize,
    pub bias: Option<&'a [C]>,
    pub gamma: &'a [C],
    pub beta: Option<&'a [C]>,
    pub scale: C,
    pub h_c: C,
    pub eps: C,
}

/// Runs `$then!(t, r)` for the pair `(t, r)` that `($T, $R)` is, among the (input,
/// residual stream) pairs with a kernel here: those computed in f32 (not f64, whose
/// compute type is f64). Nothing runs for another pair.
macro_rules! each_pair {
    ($T:ty, $R:ty, $then:ident) => {
        $crate::cpu::avx512::norm_rows::each_pair!(@one $T, $R, $then, f32, f32);
        $crate::cpu::avx512::norm_rows::each_pair!(@one $T, $R, $then, bf16, bf16);
        $crate::cpu::avx512::norm_rows::each_pair!(@one $T, $R, $then, bf16, f32);
        $crate::cpu::avx512::norm_rows::each_pair!(@one $T, $R, $then, f16, f16);
        $crate::cpu::avx512::norm_rows::each_pair!(@one $T, $R, $then, f16, f32);
    };
    (@one $T:ty, $R:ty, $then:ident, $t:ty, $r:ty) => {
        if std::any::TypeId::of::<$T>() == std::any::TypeId::of::<$t>()
            && std::any::TypeId::of::<$R>() == std::any::TypeId::of::<$r>()
        {
            $then!($t, $r);
        }
    };
}
pub(super) use each_pair;

/// `v` as `U`: the same type as `V` once the element parameters that differ in name have
/// been matched by their TypeIds.
///
/// # Safety
/// `U` must be `V` (the caller compared the TypeIds of the parameters that differ).
#[inline(always)]
pub(super) unsafe fn same_type<V, U>(v: V) -> U {
    debug_assert_eq!(std::mem::size_of::<V>(), std::mem::size_of::<U>());
    let v = std::mem::ManuallyDrop::new(v);
    // SAFETY: U is V (the caller's contract), so this reads a V as itself, once: `v` is
    // not dropped.
    unsafe { std::mem::transmute_copy::<V, U>(&v) }
}

/// Whether (T, R) has a kernel here ([`each_pair`]).
pub(crate) fn has_row_kernel<T: Element, R: Element>() -> bool {
    macro_rules! yes {
        ($t:ty, $r:ty) => {
            return true
        };
    }
    each_pair!(T, R, yes);
    false
}

/// The forward of a task's rows when (T, R) has a kernel here ([`has_row_kernel`]),
/// returning true; false, with nothing written, for any other pair.
///
/// # Safety
/// [`has_avx512`](crate::host::simd::has_avx512) must be true; the slices must have the
/// lengths [`TaskRows`] states for `consts.h`, and `consts`' vectors `h` elements each.
pub(crate) unsafe fn forward_rows_any<T: Element, R: Element<Compute = T::Compute>>(
    task: TaskRows<'_, T, R>,
    consts: &RowConsts<'_, T::Compute>,
) -> bool {
    macro_rules! run {
        ($t:ty, $r:ty) => {{
            // SAFETY: T is $t and R is $r (each_pair compared their TypeIds), and T::Compute
            // is then f32; the caller checked `has_avx512` and the lengths; BF16 is checked
            // here.
            unsafe {
                let task = same_type::<_, TaskRows<'_, $t, $r>>(task);
                let consts = same_type::<_, &RowConsts<'_, f32>>(consts);
                if super::hardware_bf16() {
                    rows_avx512_bf16::<$t, $r>(task, consts);
                } else {
                    rows_avx512::<$t, $r>(task, consts);
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
/// As [`forward_rows_any`], with the types matched.
unsafe fn rows_avx512<T: Lanes16, R: Lanes16>(task: TaskRows<'_, T, R>, c: &RowConsts<'_, f32>) {
    // SAFETY: as the caller's.
    unsafe { rows::<T, R, false>(task, c) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,f16c,bmi2,avx512bf16")]
/// # Safety
/// As [`forward_rows_any`], with the types matched, and the CPU must have AVX-512 BF16.
unsafe fn rows_avx512_bf16<T: Lanes16, R: Lanes16>(
    task: TaskRows<'_, T, R>,
    c: &RowConsts<'_, f32>,
) {
    // SAFETY: as the caller's.
    unsafe { rows::<T, R, true>(task, c) }
}

/// Every row of the task: pass 1 (s, and the lane sums of v or v * v), the variance pass
/// (LayerNorm), pass 3 (z); v, the row of s in f32, stays in a scratch row between them.
///
/// # Safety
/// As [`rows_avx512`] (and AVX-512 BF16 when `HW_BF16`).
#[inline(always)]
unsafe fn rows<T: Lanes16, R: Lanes16, const HW_BF16: bool>(
    task: TaskRows<'_, T, R>,
    c: &RowConsts<'_, f32>,
) {
    let h = c.h;
    let mut v = vec![0f32; h];
    // to_C of a bf16 is a shift that keeps a signalling NaN signalling; where no operation
    // follows it before s is stored in f32, multiply by 1 (exact for every other value)
    // to quiet it as the conversion of the generic code does.
    let quiet = TypeId::of::<T>() == TypeId::of::<bf16>()
        && c.bias.is_none()
        && task.keep.is_none()
        && task.residual.is_none();
    let s_is_v = TypeId::of::<R>() == TypeId::of::<f32>();
    for (r, ((zr, sr), st)) in task
        .z
        .chunks_mut(h)
        .zip(task.s.chunks_mut(h))
        .zip(task.stats.chunks_mut(2))
        .enumerate()
    {
        let e0 = r * h;
        let x = task.x[e0..e0 + h].as_ptr();
        let res = task.residual.map(|rs| rs[e0..e0 + h].as_ptr());
        // SAFETY: every pointer below covers h elements from its row's start, the lanes
        // of a partial chunk are masked, and the caller checked the CPU features.
        let (mean, rstd) = unsafe {
            let (one, scale) = (_mm512_set1_ps(1.0), _mm512_set1_ps(c.scale));
            let mut acc = [_mm512_setzero_ps(); 2];
            let mut c0 = 0;
            while c0 < h {
                let m = live((h - c0).min(ROW_SUM_LANES));
                let word = task.keep.map(|k| bits_at(k, e0 + c0));
                for (half, acc) in acc.iter_mut().enumerate() {
                    let (lanes, off) = ((m >> (16 * half)) as u16, c0 + 16 * half);
                    let mut a = T::load16(x.add(off), lanes);
                    if quiet {
                        a = _mm512_mul_ps(a, one);
                    }
                    if let Some(b) = c.bias {
                        a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(lanes, b.as_ptr().add(off)));
                    }
                    if let Some(w) = word {
                        a = _mm512_maskz_mul_ps((w >> (16 * half)) as u16, a, scale);
                    }
                    if let Some(rp) = res {
                        a = _mm512_add_ps(R::load16(rp.add(off), lanes), a);
                    }
                    let sp = sr.as_mut_ptr().add(off);
                    R::store16::<HW_BF16>(sp, lanes, a);
                    // v = to_C(s): exact (a itself when s is f32).
                    let vv = if s_is_v { a } else { R::round16::<HW_BF16>(a) };
                    _mm512_mask_storeu_ps(v.as_mut_ptr().add(off), lanes, vv);
                    let term = match c.norm {
                        Norm::LayerNorm => vv,
                        Norm::RmsNorm => _mm512_mul_ps(vv, vv),
                    };
                    *acc = _mm512_mask_add_ps(*acc, lanes, *acc, term);
                }
                c0 += ROW_SUM_LANES;
            }
            let sum = lane_tree(lanes_of(acc));
            match c.norm {
                Norm::LayerNorm => {
                    let mean = sum / c.h_c;
                    let mean_v = _mm512_set1_ps(mean);
                    let mut acc2 = [_mm512_setzero_ps(); 2];
                    let mut c0 = 0;
                    while c0 < h {
                        let m = live((h - c0).min(ROW_SUM_LANES));
                        for (half, acc) in acc2.iter_mut().enumerate() {
                            let (lanes, off) = ((m >> (16 * half)) as u16, c0 + 16 * half);
                            let vv = _mm512_maskz_loadu_ps(lanes, v.as_ptr().add(off));
                            let d = _mm512_sub_ps(vv, mean_v);
                            *acc = _mm512_mask_add_ps(*acc, lanes, *acc, _mm512_mul_ps(d, d));
                        }
                        c0 += ROW_SUM_LANES;
                    }
                    let var = lane_tree(lanes_of(acc2)) / c.h_c;
                    (mean, 1.0 / (var + c.eps).sqrt())
                }
                Norm::RmsNorm => (0.0, 1.0 / (sum / c.h_c + c.eps).sqrt()),
            }
        };
        // SAFETY: as above.
        unsafe {
            let (mean_v, rstd_v) = (_mm512_set1_ps(mean), _mm512_set1_ps(rstd));
            let mut c0 = 0;
            while c0 < h {
                let m = live((h - c0).min(ROW_SUM_LANES));
                for half in 0..2 {
                    let (lanes, off) = ((m >> (16 * half)) as u16, c0 + 16 * half);
                    let vv = _mm512_maskz_loadu_ps(lanes, v.as_ptr().add(off));
                    let g = _mm512_maskz_loadu_ps(lanes, c.gamma.as_ptr().add(off));
                    let mut a = match c.norm {
                        Norm::LayerNorm => {
                            _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(vv, mean_v), rstd_v), g)
                        }
                        Norm::RmsNorm => _mm512_mul_ps(_mm512_mul_ps(vv, rstd_v), g),
                    };
                    if let Some(b) = c.beta {
                        a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(lanes, b.as_ptr().add(off)));
                    }
                    T::store16::<HW_BF16>(zr.as_mut_ptr().add(off), lanes, a);
                }
                c0 += ROW_SUM_LANES;
            }
        }
        st[0] = f64::from(mean);
        st[1] = f64::from(rstd);
    }
}

/// The 32 row-sum lanes of two accumulators, lane l of the row in element l.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[inline(always)]
pub(super) unsafe fn lanes_of(acc: [__m512; 2]) -> [f32; ROW_SUM_LANES] {
    let mut out = [0f32; ROW_SUM_LANES];
    // SAFETY: the caller's CPU has AVX-512 F; out holds 32 f32, two unaligned 16-lane
    // stores.
    unsafe {
        _mm512_storeu_ps(out.as_mut_ptr(), acc[0]);
        _mm512_storeu_ps(out.as_mut_ptr().add(16), acc[1]);
    }
    out
}
