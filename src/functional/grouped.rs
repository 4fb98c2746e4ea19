//! Grouped dropout (SPEC section 6): one decision per `group` consecutive elements, for
//! channel dropout, DropPath and FeatureAlphaDropout. Its backward is
//! [`super::dropout_backward`].

use super::dispatch::{
    check_index_range, run_forward, train_into, train_or_identity, CallArgs, ForwardOp, Operand,
    Placed, TrainResult,
};
use super::state::DropoutState;
use crate::backend::Forwarded;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::mask::Probability;
use crate::plan::{Decisions, GroupLayout, GroupedKind, Grouping, Kept, MaskMode, StreamPos};
use crate::shard::ShardLayout;
use crate::tensor::Tensor;
use std::sync::Arc;

/// A grouped dropout call: the drop probability, training or eval, and how elements share
/// decisions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupedConfig {
    /// The drop probability, in [0, 1].
    pub p: f64,
    /// Eval mode (false) is the identity.
    pub training: bool,
    /// Elements per decision, and what a kept or dropped element becomes.
    pub grouping: Grouping,
}

/// Dropout with one decision per `config.grouping.size` consecutive elements (SPEC
/// section 6): channel dropout ([`Grouping::scale`] of the spatial size), DropPath (of the
/// size of one sample) and FeatureAlphaDropout ([`Grouping::alpha`]). Shards use
/// `pos.index_base` as the element where they start.
pub fn grouped_dropout<T: Element>(
    x: &Tensor<T>,
    config: &GroupedConfig,
    pos: StreamPos,
    mode: MaskMode,
) -> Result<(Tensor<T>, DropoutState)> {
    let GroupedConfig {
        p,
        training,
        grouping,
    } = *config;
    train_or_identity(x, p, training, pos, mode, |x, prob, pos, mode| {
        grouped_train(x, prob, grouping.size, grouping.kind, pos, mode)
    })
}

/// [`grouped_dropout`] writing into preallocated buffers, as [`super::dropout_into`] (the
/// regenerate form keeps its decision mask as scratch in the state, to draw into again).
pub fn grouped_dropout_into<T: Element>(
    x: &Tensor<T>,
    out: &mut Tensor<T>,
    state: &mut DropoutState,
    config: &GroupedConfig,
    pos: StreamPos,
    mode: MaskMode,
) -> Result<()> {
    let GroupedConfig {
        p,
        training,
        grouping,
    } = *config;
    let call = CallArgs {
        p,
        training,
        pos,
        mode,
    };
    train_into(x, (out, state), call, |x, prob, pos, mode| {
        grouped_train(x, prob, grouping.size, grouping.kind, pos, mode)
    })
}

/// One grouped training forward over the decisions of `layout`.
struct Grouped<'a> {
    prob: &'a Probability,
    pos: StreamPos,
    layout: GroupLayout,
    kept: Kept<f64>,
}

impl<T: Element> ForwardOp<T> for Grouped<'_> {
    fn run<B: Placed>(self, x: B::Operand<'_, T>) -> Result<Forwarded<B, T>> {
        let kept = self.kept.for_element::<T>();
        B::grouped_forward(x, self.pos, self.prob, &self.layout, kept)
    }
}

pub(crate) fn grouped_train<T: Element>(
    x: Operand<'_, T>,
    prob: &Probability,
    group: usize,
    kind: GroupedKind,
    pos: StreamPos,
    mode: MaskMode,
) -> TrainResult<T> {
    let n = x.tensor().len();
    check_index_range(pos.index_base, n)?;
    if group == 0 && n > 0 {
        return Err(Error::InvalidShape {
            op: "grouped dropout",
            shape: x.tensor().shape().to_vec(),
            reason: "a decision must cover at least one element".into(),
        });
    }
    let layout = GroupLayout::new(group, pos.index_base, n);
    let kept = Kept::grouped(kind, prob);
    let op = Grouped {
        prob,
        pos,
        layout,
        kept,
    };
    let (out, mask) = run_forward(x, op)?;
    let decisions = Decisions::Grouped(layout);
    let grad = kept.grad_factor();
    let state = DropoutState::trained_grouped(&out, mask, pos, prob, mode, decisions, grad);
    Ok((out.output, state))
}

/// A grouped training forward of a shard placed by `layout` (checked by the caller): the
/// first `lead_axes` axes index the decisions ((sample, channel) for channel dropout and
/// FeatureAlphaDropout, the sample for DropPath), the rest are one decision's elements. A
/// contiguous shard takes [`grouped_train`] at its first element with the whole tensor's
/// group size; any other draws its decisions through the leading axes' layout, then
/// applies them to groups of its own spatial size.
pub(crate) fn grouped_shard_train<T: Element>(
    x: Operand<'_, T>,
    prob: &Probability,
    lead_axes: usize,
    kind: GroupedKind,
    pos: StreamPos,
    mode: MaskMode,
    layout: &ShardLayout,
) -> TrainResult<T> {
    let k = lead_axes.min(layout.shape().len());
    if let Some(start) = layout.contiguous_start() {
        let group = crate::tensor::group_elements(&layout.global_shape()[k..]);
        return grouped_train(x, prob, group, kind, pos.with_index_base(start), mode);
    }
    let decisions = layout.leading(k)?;
    let n = x.tensor().len();
    let local = GroupLayout::new(crate::tensor::group_elements(&layout.shape()[k..]), 0, n);
    let kept = Kept::grouped(kind, prob);
    let op = GroupedShard {
        prob,
        pos,
        kept,
        decisions: &decisions,
        local,
    };
    let (out, mask) = run_forward(x, op)?;
    let mask = mask.filter(|_| mode == MaskMode::Bits);
    let grouping = Decisions::Grouped(local);
    let mut state = DropoutState::trained(&out, mask, pos, prob, grouping, kept.grad_factor());
    state.shard = Some(Arc::new(decisions));
    Ok((out.output, state))
}

/// A grouped forward of a shard that is not one range: the decisions' bits through their
/// layout, then the kept map by groups of the shard's own spatial size.
struct GroupedShard<'a> {
    prob: &'a Probability,
    pos: StreamPos,
    kept: Kept<f64>,
    decisions: &'a ShardLayout,
    local: GroupLayout,
}

impl<T: Element> ForwardOp<T> for GroupedShard<'_> {
    fn run<B: Placed>(self, x: B::Operand<'_, T>) -> Result<Forwarded<B, T>> {
        let bits = B::shard_keep_bits(&x, self.pos, self.prob, self.decisions)?;
        let kept = self.kept.for_element::<T>();
        let y = B::apply_grouped_bits(x, &bits, &self.local, kept)?;
        Ok((y, Some(bits)))
    }
}
