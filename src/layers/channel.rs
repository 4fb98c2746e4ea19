//! Channel dropout, `Dropout1d` / `Dropout2d` / `Dropout3d`: one decision per (sample,
//! channel), the whole feature map kept or zeroed (SPEC section 6, decision j = n*C + c).

use super::core::{grouped, layer_common, shard_builder, LayerCore};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::functional::DropoutState;
use crate::plan::GroupedKind;
use crate::tensor::Tensor;

/// Elements per decision for an input with `spatial` trailing spatial dimensions, batched
/// (N, C, *spatial) or not (C, *spatial); any other rank is an error.
pub(crate) fn channel_group(shape: &[usize], spatial: usize, op: &'static str) -> Result<usize> {
    if shape.len() != spatial + 1 && shape.len() != spatial + 2 {
        return Err(Error::InvalidShape {
            op,
            shape: shape.to_vec(),
            reason: format!(
                "expected (N, C{s}) or (C{s}): rank {} or {}",
                spatial + 2,
                spatial + 1,
                s = ", spatial".repeat(spatial)
            ),
        });
    }
    Ok(crate::tensor::group_elements(
        &shape[shape.len() - spatial..],
    ))
}

macro_rules! channel_dropout {
    ($name:ident, $spatial:expr, $doc_shape:literal, $example_shape:expr) => {
        #[doc = concat!(
            "Channel dropout for ", $doc_shape, " inputs: each channel of each sample is ",
            "zeroed with probability p, the rest scaled by 1/q; the identity in eval mode. ",
            "The saved mask holds one bit per channel.\n\n",
            "```\n",
            "use dropkit::{Device, Generator, Tensor, ", stringify!($name), "};\n",
            "use std::sync::Arc;\n\n",
            "let layer = ", stringify!($name), "::new(0.5)?.with_generator(Arc::new(Generator::new(1)));\n",
            "let shape = ", stringify!($example_shape), ";\n",
            "let x = Tensor::<f32>::ones(&shape, &Device::Cpu)?;\n",
            "let (y, state) = layer.forward(&x)?;\n",
            "let per_channel: usize = shape[2..].iter().product();\n",
            "for map in y.to_vec()?.chunks(per_channel) {\n",
            "    assert!(map.iter().all(|&v| v == map[0]) && (map[0] == 0.0 || map[0] == 2.0));\n",
            "}\n",
            "let dx = layer.backward(&Tensor::<f32>::ones(&shape, &Device::Cpu)?, &state)?;\n",
            "assert_eq!(dx.to_vec()?, y.to_vec()?);\n",
            "# Ok::<(), dropkit::Error>(())\n",
            "```"
        )]
        #[derive(Debug, Clone)]
        pub struct $name {
            core: LayerCore,
        }

        layer_common!($name, backward);
        shard_builder!($name);

        impl $name {
            fn group(x: &[usize]) -> Result<usize> {
                channel_group(x, $spatial, stringify!($name))
            }

            /// Forward; a wrong rank is an error.
            pub fn forward<T: Element>(&self, x: &Tensor<T>) -> Result<(Tensor<T>, DropoutState)> {
                let (group, lead) = (Self::group(x.shape())?, x.shape().len() - $spatial);
                self.core.forward(x, grouped(&self.core, group, lead, GroupedKind::Scale))
            }

            /// Forward writing the output over `x` (same bits as `forward`).
            pub fn forward_in_place<T: Element>(&self, x: &mut Tensor<T>) -> Result<DropoutState> {
                let (group, lead) = (Self::group(x.shape())?, x.shape().len() - $spatial);
                let train = grouped(&self.core, group, lead, GroupedKind::Scale);
                self.core.forward_in_place(x, train)
            }

            /// Forward into preallocated buffers, as [`crate::Dropout::forward_into`].
            pub fn forward_into<T: Element>(
                &self,
                x: &Tensor<T>,
                out: &mut Tensor<T>,
                state: &mut DropoutState,
            ) -> Result<()> {
                let (group, lead) = (Self::group(x.shape())?, x.shape().len() - $spatial);
                let train = grouped(&self.core, group, lead, GroupedKind::Scale);
                self.core.forward_into(x, out, state, train)
            }

        }
    };
}

channel_dropout!(Dropout1d, 1, "(N, C, L) or (C, L)", [2usize, 3, 4]);
channel_dropout!(Dropout2d, 2, "(N, C, H, W) or (C, H, W)", [2usize, 3, 4, 5]);
channel_dropout!(
    Dropout3d,
    3,
    "(N, C, D, H, W) or (C, D, H, W)",
    [2usize, 3, 2, 2, 2]
);
