//! The layers users hold: PyTorch-style modules with a train/eval mode and a generator.

pub mod dropout;

pub use dropout::Dropout;

use crate::generator::{default_generator, Generator};
use std::sync::Arc;

/// The mode, generator and shard position every layer of the family carries.
#[derive(Debug, Clone)]
pub(crate) struct LayerCore {
    pub training: bool,
    pub generator: Option<Arc<Generator>>,
    pub index_base: u64,
}

impl LayerCore {
    pub fn new() -> Self {
        Self {
            training: true,
            generator: None,
            index_base: 0,
        }
    }

    /// (seed, offset) for one training call, advancing the layer's generator.
    pub fn next_call(&self) -> (u64, u64) {
        self.generator
            .as_ref()
            .unwrap_or_else(|| default_generator())
            .next_call()
    }
}
