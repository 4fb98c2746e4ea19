//! Grouped dropout (SPEC section 6): one decision per `group` consecutive elements, for
//! channel dropout, DropPath and FeatureAlphaDropout. Its backward is
//! [`super::dropout_backward`].

use super::dispatch::{
    check_index_range, run_forward, train_or_identity, ForwardOp, Operand, Placed, TrainResult,
};
use super::state::DropoutState;
use crate::backend::Forwarded;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::mask::Probability;
use crate::plan::{Decisions, GroupLayout, GroupedKind, Kept, MaskMode, StreamPos};
use crate::tensor::Tensor;

/// Dropout with one decision per `group` consecutive elements (SPEC section 6): channel
/// dropout (group = the spatial size), DropPath (group = the size of one sample) and
/// FeatureAlphaDropout. Shards use `pos.index_base` as the element where they start.
pub fn grouped_dropout<T: Element>(
    x: &Tensor<T>,
    p: f64,
    training: bool,
    group: usize,
    kind: GroupedKind,
    pos: StreamPos,
    mode: MaskMode,
) -> Result<(Tensor<T>, DropoutState)> {
    train_or_identity(x, p, training, pos, mode, |x, prob, pos, mode| {
        grouped_train(x, prob, group, kind, pos, mode)
    })
}

/// One grouped training forward over the decisions of `layout`.
struct Grouped<'a> {
    prob: &'a Probability,
    pos: StreamPos,
    mode: MaskMode,
    layout: GroupLayout,
    kept: Kept<f64>,
}

impl<T: Element> ForwardOp<T> for Grouped<'_> {
    fn run<B: Placed>(self, x: B::Operand<'_, T>) -> Result<Forwarded<B, T>> {
        let kept = self.kept.for_element::<T>();
        B::grouped_forward(x, self.pos, self.prob, &self.layout, kept, self.mode)
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
        mode,
        layout,
        kept,
    };
    let (out, mask) = run_forward(x, op)?;
    let decisions = Decisions::Grouped(layout);
    let state = DropoutState::trained(&out, mask, pos, prob, decisions, kept.grad_factor());
    Ok((out.output, state))
}
