//! Grouped dropout of candle tensors (SPEC section 6): the stateless [`grouped_dropout`],
//! channel dropout (`Dropout1d`/`2d`/`3d`) and `DropPath`, each a `candle_nn::ModuleT` over
//! [`MaskOp`].
//!
//! Shapes are checked as dropkit's layers check them, with the same messages, in training
//! and in eval alike (a wrong rank is a usage error whatever the mode), and before any
//! offset is taken.

use super::op::{train_call, MaskOp};
use super::util::{candle_layer, to_candle_error};
use crate::error::Error;
use crate::layers::LayerCore;
use crate::mask::Probability;
use crate::plan::{GroupedKind, Grouping, StreamPos};
use candle_core::Tensor;

/// Dropout with one decision per `grouping.size` consecutive elements of a candle
/// tensor, like [`crate::functional::grouped_dropout`]: channel dropout
/// ([`Grouping::scale`] of the spatial size), DropPath (of one sample's size), or feature
/// alpha dropout ([`Grouping::alpha`]). The identity when `training` is false.
pub fn grouped_dropout(
    x: &Tensor,
    p: f64,
    training: bool,
    grouping: Grouping,
    pos: StreamPos,
) -> candle_core::Result<Tensor> {
    let prob = Probability::new(p).map_err(to_candle_error)?;
    if !training {
        return Ok(x.clone());
    }
    if grouping.size == 0 && x.elem_count() > 0 {
        return Err(to_candle_error(crate::error::Error::InvalidShape {
            op: "grouped dropout",
            shape: x.dims().to_vec(),
            reason: "a decision must cover at least one element".into(),
        }));
    }
    MaskOp::grouped(prob, pos, grouping.size, grouping.kind).apply(x)
}

/// Elements per decision for channel dropout (dropkit's rank check and message).
fn channel_group(shape: &[usize], spatial: usize, op: &'static str) -> candle_core::Result<usize> {
    crate::layers::channel::channel_group(shape, spatial, op).map_err(to_candle_error)
}

macro_rules! channel_dropout {
    ($name:ident, $spatial:expr, $doc_shape:literal, $example_shape:literal) => {
        #[doc = concat!(
            "Channel dropout for ", $doc_shape, " candle tensors, the candle form of ",
            "[`crate::", stringify!($name), "`]: in training each channel of each sample is ",
            "zeroed with probability p and the rest scaled by 1/q (one decision per (sample, ",
            "channel)); `forward_t(x, false)` is the identity. A wrong rank is an error, in ",
            "eval too. Each training call takes one offset from the layer's generator.\n\n",
            "```\n",
            "use candle_core::{DType, Device, Tensor};\n",
            "use candle_nn::ModuleT;\n",
            "use dropkit::Generator;\n",
            "use std::sync::Arc;\n\n",
            "let layer = dropkit::candle::", stringify!($name),
            "::new(0.5)?.with_generator(Arc::new(Generator::new(1)));\n",
            "let x = Tensor::ones(", $example_shape, ", DType::F32, &Device::Cpu)?;\n",
            "let y = layer.forward_t(&x, true)?;\n",
            "let per_channel: usize = x.dims()[2..].iter().product();\n",
            "for map in y.flatten_all()?.to_vec1::<f32>()?.chunks(per_channel) {\n",
            "    assert!(map.iter().all(|&v| v == map[0]) && (map[0] == 0.0 || map[0] == 2.0));\n",
            "}\n",
            "# Ok::<(), candle_core::Error>(())\n",
            "```"
        )]
        #[derive(Debug, Clone)]
        pub struct $name {
            core: LayerCore,
        }

        candle_layer!($name);

        impl candle_nn::ModuleT for $name {
            fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
                let group = channel_group(xs.dims(), $spatial, stringify!($name))?;
                if !train {
                    return Ok(xs.clone());
                }
                train_call(&self.core, xs, |pos| {
                    MaskOp::grouped(self.core.prob, pos, group, GroupedKind::Scale)
                })
            }
        }
    };
}

channel_dropout!(Dropout1d, 1, "(N, C, L) or (C, L)", "(2, 3, 4)");
channel_dropout!(Dropout2d, 2, "(N, C, H, W) or (C, H, W)", "(2, 3, 4, 5)");
channel_dropout!(
    Dropout3d,
    3,
    "(N, C, D, H, W) or (C, D, H, W)",
    "(2, 3, 2, 2, 2)"
);

/// Stochastic depth for candle tensors, the candle form of [`crate::DropPath`]: each
/// sample (index of the first dimension) is dropped with probability p and kept samples
/// are scaled by 1/q; the identity with `train = false`. A scalar (rank 0) input is an
/// error.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::ModuleT;
/// use dropkit::{candle::DropPath, Generator};
/// use std::sync::Arc;
///
/// let layer = DropPath::new(0.25)?.with_generator(Arc::new(Generator::new(5)));
/// let x = Tensor::ones((8, 3, 4), DType::F32, &Device::Cpu)?;
/// let y = layer.forward_t(&x, true)?;
/// for sample in y.flatten_all()?.to_vec1::<f32>()?.chunks(12) {
///     assert!(sample.iter().all(|&v| v == sample[0]));
///     assert!(sample[0] == 0.0 || sample[0] == 1.0 / 0.75);
/// }
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DropPath {
    core: LayerCore,
}

candle_layer!(DropPath);

impl candle_nn::ModuleT for DropPath {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let Some((_, sample)) = xs.dims().split_first() else {
            return Err(to_candle_error(Error::InvalidShape {
                op: "DropPath",
                shape: Vec::new(),
                reason: "expected (N, ...): at least one dimension".into(),
            }));
        };
        let group = crate::tensor::group_elements(sample);
        if !train {
            return Ok(xs.clone());
        }
        train_call(&self.core, xs, |pos| {
            MaskOp::grouped(self.core.prob, pos, group, GroupedKind::Scale)
        })
    }
}
