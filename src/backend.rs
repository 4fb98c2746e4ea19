//! The interface of a backend: what the functional layer asks of the code that holds a
//! tensor's data, as traits: [`Backend`] (its buffer, mask and operand types) and one
//! trait per operation family ([`DropoutKernels`], [`GroupedKernels`],
//! [`ResidualKernels`], [`NormKernels`]).
//!
//! `cpu::Cpu` and `cuda::Cuda` implement each in the file of that family (`cpu/dropout.rs`,
//! `cuda/dropout.rs`, ...), and the functional layer is written once, generic over the
//! backend, after one match on where the tensors live. Without the `cuda` feature, the
//! stand-in in `cuda_off.rs` implements the same traits over types that have no values, so
//! the compiler checks that the two agree: there is no hand-kept copy of a signature. A new
//! op is one trait here and its impl in each backend's file for it (the stand-in's is one
//! unreachable line per method, which the compiler asks for).
//!
//! The argument and result types of the row ops (the fused add + norm) live here too,
//! generic over the backend, for the same reason.

// Without the `cuda` feature only the stand-in, whose methods cannot be called, reads the
// fields below.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use crate::element::Element;
use crate::error::Result;
use crate::mask::Probability;
use crate::plan::{Decisions, GroupLayout, Kept, MaskMode, NormCall, StreamPos};
use crate::shard::ShardLayout;

/// A forward's new output (`None` in place) and its saved mask (`None` for the
/// regenerate form).
pub(crate) type Forwarded<B, T> = (
    Option<<B as Backend>::Buffer<T>>,
    Option<<B as Backend>::Mask>,
);

/// The decisions a backward reads: bits saved by the backend, or the stream position to
/// regenerate them from.
pub(crate) enum SavedMask<'a, M> {
    Bits(&'a M),
    Regenerate(StreamPos),
}

/// Where the fused bias + dropout + residual backward writes: dx, dbias and the column
/// sums' f64 block partials.
pub(crate) struct ResidualGradsInto<'a, B: Backend + ?Sized, T: Element> {
    pub dx: &'a mut B::Buffer<T>,
    pub db: &'a mut B::Buffer<T>,
    pub partial: &'a mut B::Buffer<f64>,
}

/// The fused add + norm forward's inputs on the device.
pub(crate) struct NormBuffers<'a, B: Backend + ?Sized, T: Element, R: Element> {
    pub x: &'a B::Buffer<T>,
    pub bias: Option<&'a B::Buffer<T>>,
    pub residual: Option<&'a B::Buffer<R>>,
    pub gamma: &'a B::Buffer<T>,
    pub beta: Option<&'a B::Buffer<T>>,
}

/// Its results: z, s, the row statistics and the mask (bits form).
pub(crate) struct NormForward<B: Backend + ?Sized, T: Element, R: Element> {
    pub z: B::Buffer<T>,
    pub s: B::Buffer<R>,
    pub stats: B::Buffer<f64>,
    pub mask: Option<B::Mask>,
}

/// The backward's inputs on the device; `mask` is the forward's (bits form) or `None`.
pub(crate) struct NormGradBuffers<'a, B: Backend + ?Sized, T: Element, R: Element> {
    pub dz: &'a B::Buffer<T>,
    pub ds: Option<&'a B::Buffer<R>>,
    pub s: &'a B::Buffer<R>,
    pub gamma: &'a B::Buffer<T>,
    pub stats: &'a B::Buffer<f64>,
    pub mask: Option<&'a B::Mask>,
}

/// Where the `_into` forward writes: z, s, the row statistics, and the mask of an earlier
/// call to draw into (its bits, or a regenerate form's scratch), if any.
pub(crate) struct NormForwardInto<'a, B: Backend + ?Sized, T: Element, R: Element> {
    pub z: &'a mut B::Buffer<T>,
    pub s: &'a mut B::Buffer<R>,
    pub stats: &'a mut B::Buffer<f64>,
    pub mask: Option<B::Mask>,
}

/// Where the `_into` backward writes (the optional gradients as the forward's inputs call
/// for), the column sums' f64 block partials (ceil(rows / R) * H), and the regenerate
/// form's scratch mask to redraw the decisions into.
pub(crate) struct NormBackwardInto<'a, B: Backend + ?Sized, T: Element, R: Element> {
    pub x: &'a mut B::Buffer<T>,
    pub residual: Option<&'a mut B::Buffer<R>>,
    pub bias: Option<&'a mut B::Buffer<T>>,
    pub gamma: &'a mut B::Buffer<T>,
    pub beta: Option<&'a mut B::Buffer<T>>,
    pub partial: &'a mut B::Buffer<f64>,
    pub scratch: Option<&'a mut B::Mask>,
}

/// Which optional gradients the forward's inputs call for.
pub(crate) struct Wanted {
    pub residual: bool,
    pub bias: bool,
}

/// The backward's results.
pub(crate) struct NormBackward<B: Backend + ?Sized, T: Element, R: Element> {
    pub x: B::Buffer<T>,
    pub residual: Option<B::Buffer<R>>,
    pub bias: Option<B::Buffer<T>>,
    pub gamma: B::Buffer<T>,
    pub beta: Option<B::Buffer<T>>,
}

/// A backend's types: what its tensors, masks and forward operands are. Each operation
/// family is a trait over it below, implemented in the backend's file for that family. Every call is validated before (shapes, dtypes, devices, p, index
/// ranges): a backend only queues work and allocates.
pub(crate) trait Backend {
    /// Elements of `T` in the backend's memory.
    type Buffer<T: Element>;
    /// Packed keep bits in the backend's memory (one u32 word per 32 decisions).
    type Mask;
    /// The operand of a forward: a separate input, or the output itself (in place).
    type Operand<'a, T: Element>;

    /// The mask's words, copied to the host.
    fn download_mask(mask: &Self::Mask) -> Result<Vec<u32>>;

    /// A buffer as the separate input of a forward.
    fn input<T: Element>(b: &Self::Buffer<T>) -> Self::Operand<'_, T>;
}

/// Elementwise dropout and alpha dropout, and the backward of every layer.
pub(crate) trait DropoutKernels: Backend {
    /// Elementwise forward (dropout's scale or alpha dropout's affine map).
    fn dropout_forward<T: Element>(
        x: Self::Operand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        kept: Kept<T::Compute>,
        mode: MaskMode,
    ) -> Result<Forwarded<Self, T>>;

    /// The backward of every layer: `dx = kept ? dy * scale : +0` through the saved mask,
    /// into a new dx for an input operand (returned), or the operand's output.
    fn dropout_backward<T: Element>(
        dy: Self::Operand<'_, T>,
        saved: SavedMask<'_, Self::Mask>,
        prob: &Probability,
        decisions: &Decisions,
        scale: T::Compute,
    ) -> Result<Option<Self::Buffer<T>>>;

    /// The packed keep bits, in local order, of the shard that `layout` places (each
    /// element decides by its index in the whole tensor; `pos`'s seed and offset), made by
    /// the backend that holds `like`.
    fn shard_keep_bits<T: Element>(
        like: &Self::Operand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        layout: &ShardLayout,
    ) -> Result<Self::Mask>;

    /// Elementwise forward from given keep bits (local order): kept elements become `kept`
    /// of themselves. Returns the new output (`None` in place).
    fn apply_bits<T: Element>(
        x: Self::Operand<'_, T>,
        bits: &Self::Mask,
        kept: Kept<T::Compute>,
    ) -> Result<Option<Self::Buffer<T>>>;
}

/// Grouped dropout: channel dropout, DropPath, feature alpha dropout.
pub(crate) trait GroupedKernels: Backend {
    /// Grouped forward (channel dropout, DropPath, feature alpha dropout). The decision
    /// mask is returned in both forms: the regenerate form keeps it only as scratch, for
    /// a later `_into` call to draw into without allocating.
    fn grouped_forward<T: Element>(
        x: Self::Operand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        layout: &GroupLayout,
        kept: Kept<T::Compute>,
    ) -> Result<Forwarded<Self, T>>;

    /// Draws the `layout.count` decisions of `pos` into `mask` (the scratch of an earlier
    /// forward of this layout), on the backend that holds `like`.
    fn grouped_keep_bits_into<T: Element>(
        like: &Self::Operand<'_, T>,
        mask: &mut Self::Mask,
        pos: StreamPos,
        prob: &Probability,
        layout: &GroupLayout,
    ) -> Result<()>;

    /// The grouped forward from given decision bits (local order): local element i takes
    /// decision `(layout.lead + i) / layout.group`. Returns the new output (`None` in
    /// place).
    fn apply_grouped_bits<T: Element>(
        x: Self::Operand<'_, T>,
        bits: &Self::Mask,
        layout: &GroupLayout,
        kept: Kept<T::Compute>,
    ) -> Result<Option<Self::Buffer<T>>>;
}

/// The fused bias + dropout + residual and its bias gradient.
pub(crate) trait ResidualKernels: Backend {
    /// Fused `residual + dropout(x + bias)`, written over the residual operand's output.
    fn residual_forward<T: Element>(
        x: &Self::Buffer<T>,
        bias: &Self::Buffer<T>,
        residual: Self::Operand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        scale: T::Compute,
        mode: MaskMode,
    ) -> Result<Forwarded<Self, T>>;

    /// The fused forward from given keep bits in local order (a shard of any layout):
    /// local element i keeps iff bit i, with bias column `i % hidden`. Returns the new
    /// output (`None` in place or into).
    fn residual_forward_bits<T: Element>(
        x: &Self::Buffer<T>,
        bias: &Self::Buffer<T>,
        residual: Self::Operand<'_, T>,
        bits: &Self::Mask,
        scale: T::Compute,
    ) -> Result<Option<Self::Buffer<T>>>;

    /// Column sums of a (rows, hidden) gradient in the fixed row blocks of the spec.
    fn column_sum<T: Element>(g: &Self::Buffer<T>, hidden: usize) -> Result<Self::Buffer<T>>;

    /// The fused layer's backward into preallocated buffers (same bits as
    /// [`Self::residual_backward`], nothing allocated): dx into `grads.dx`, dbias into
    /// `grads.db`, through the f64 block partial sums in `grads.partial` (at least
    /// ceil(rows / R) * hidden). `saved` is `None` in eval mode: dx is then dy itself.
    fn residual_backward_into<T: Element>(
        dy: &Self::Buffer<T>,
        grads: ResidualGradsInto<'_, Self, T>,
        saved: Option<SavedMask<'_, Self::Mask>>,
        prob: &Probability,
        scale: T::Compute,
        hidden: usize,
    ) -> Result<()>;

    /// The fused layer's one-pass backward: (dx, dbias).
    fn residual_backward<T: Element>(
        dy: &Self::Buffer<T>,
        saved: SavedMask<'_, Self::Mask>,
        prob: &Probability,
        scale: T::Compute,
        hidden: usize,
    ) -> Result<(Self::Buffer<T>, Self::Buffer<T>)>;
}

/// The fused dropout + add + LayerNorm / RMSNorm.
pub(crate) trait NormKernels: Backend {
    /// The fused dropout + add + norm forward (docs/spec.md 6.3).
    fn norm_forward<T: Element, R: Element<Compute = T::Compute>>(
        b: NormBuffers<'_, Self, T, R>,
        call: &NormCall,
        mode: MaskMode,
    ) -> Result<NormForward<Self, T, R>>;

    /// Its backward.
    fn norm_backward<T: Element, R: Element<Compute = T::Compute>>(
        b: NormGradBuffers<'_, Self, T, R>,
        call: &NormCall,
        want: Wanted,
    ) -> Result<NormBackward<Self, T, R>>;

    /// The forward into preallocated buffers (same bits; on CUDA nothing allocated when
    /// `out.mask` fits). Returns the mask drawn: the bits form's saved mask, or a
    /// regenerate form's scratch (`None` where the backend keeps none, and in eval mode).
    fn norm_forward_into<T: Element, R: Element<Compute = T::Compute>>(
        b: NormBuffers<'_, Self, T, R>,
        call: &NormCall,
        mode: MaskMode,
        out: NormForwardInto<'_, Self, T, R>,
    ) -> Result<Option<Self::Mask>>;

    /// The backward into preallocated buffers (same bits; on CUDA nothing allocated when
    /// the regenerate form has its scratch).
    fn norm_backward_into<T: Element, R: Element<Compute = T::Compute>>(
        b: NormGradBuffers<'_, Self, T, R>,
        call: &NormCall,
        out: NormBackwardInto<'_, Self, T, R>,
    ) -> Result<()>;
}
