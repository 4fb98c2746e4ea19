//! candle forms of the rest of the single-input family (SPEC section 6): channel dropout
//! (`Dropout1d`/`2d`/`3d`), `DropPath`, `AlphaDropout` and `FeatureAlphaDropout`, each a
//! `candle_nn::ModuleT` over [`MaskOp`].
//!
//! Shapes are checked as dropkit's layers check them, with the same messages, in training
//! and in eval alike (a wrong rank is a usage error whatever the mode), and before any
//! offset is taken.

use super::op::{Grouping, Kept, MaskOp};
use super::{candle_layer, to_candle_error, train_call};
use crate::error::Error;
use crate::functional::GroupedKind;
use crate::layers::LayerCore;
use candle_core::Tensor;

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
        let group = sample.iter().product();
        if !train {
            return Ok(xs.clone());
        }
        train_call(&self.core, xs, |pos| {
            MaskOp::grouped(self.core.prob, pos, group, GroupedKind::Scale)
        })
    }
}

/// Alpha dropout for candle tensors (self-normalising SELU networks), the candle form of
/// [`crate::AlphaDropout`]: kept elements become a*x + b, dropped ones a*A + b with
/// A = -lambda*alpha of SELU; the identity with `train = false`. Its gradient is the
/// upstream gradient times a where kept, +0 where dropped.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::ModuleT;
/// use dropkit::{candle::AlphaDropout, Generator};
/// use std::sync::Arc;
///
/// let layer = AlphaDropout::new(0.2)?.with_generator(Arc::new(Generator::new(3)));
/// let x = Tensor::zeros(1000, DType::F64, &Device::Cpu)?;
/// let y = layer.forward_t(&x, true)?.to_vec1::<f64>()?;
/// // Two values only: b for kept zeros, a*A + b for dropped ones.
/// let kept = y.iter().copied().fold(f64::MIN, f64::max);
/// assert!(y.iter().all(|&v| v == kept || v < kept));
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct AlphaDropout {
    core: LayerCore,
}

candle_layer!(AlphaDropout);

impl candle_nn::ModuleT for AlphaDropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !train {
            return Ok(xs.clone());
        }
        train_call(&self.core, xs, |pos| {
            let (prob, all) = (self.core.prob, Grouping::Elementwise);
            MaskOp::new("dropkit-alpha-dropout", prob, pos, all, Kept::Alpha)
        })
    }
}

/// Alpha dropout with one decision per (sample, channel) of an (N, C, *spatial) candle
/// tensor (rank 2 or more), the candle form of [`crate::FeatureAlphaDropout`]: whole
/// feature maps take the dropped value. A rank below 2 is an error.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::ModuleT;
/// use dropkit::{candle::FeatureAlphaDropout, Generator};
/// use std::sync::Arc;
///
/// let layer = FeatureAlphaDropout::new(0.5)?.with_generator(Arc::new(Generator::new(3)));
/// let x = Tensor::zeros((4, 8, 16), DType::F32, &Device::Cpu)?;
/// let y = layer.forward_t(&x, true)?;
/// for map in y.flatten_all()?.to_vec1::<f32>()?.chunks(16) {
///     assert!(map.iter().all(|&v| v == map[0]));
/// }
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FeatureAlphaDropout {
    core: LayerCore,
}

candle_layer!(FeatureAlphaDropout);

impl candle_nn::ModuleT for FeatureAlphaDropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let dims = xs.dims();
        if dims.len() < 2 {
            return Err(to_candle_error(Error::InvalidShape {
                op: "FeatureAlphaDropout",
                shape: dims.to_vec(),
                reason: "expected (N, C, *spatial): rank 2 or more".into(),
            }));
        }
        let group = dims[2..].iter().product();
        if !train {
            return Ok(xs.clone());
        }
        train_call(&self.core, xs, |pos| {
            MaskOp::grouped(self.core.prob, pos, group, GroupedKind::Alpha)
        })
    }
}
