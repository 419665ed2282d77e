//! Inference runtimes behind one trait: ONNX Runtime (`ort`) and `tract`. Evaluations only see [`Runtime`].

mod onnxruntime;
mod tract;

use anyhow::{bail, Result};
use std::path::Path;

/// Runs a lowered model: images `[N, 3, H, W]` (normalised) in, one output tensor out.
pub trait Runtime {
    /// `ort` or `tract`.
    fn name(&self) -> &'static str;
    /// The model's first output, and its shape, for `images` of shape `shape` (row-major).
    fn run(&mut self, images: &[f32], shape: [usize; 4]) -> Result<(Vec<usize>, Vec<f32>)>;
}

/// Which runtime to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// ONNX Runtime through the `ort` crate (shared library from the set-up cache).
    Ort,
    /// tract, pure Rust.
    Tract,
}

impl RuntimeKind {
    /// Opens `model` in this runtime.
    pub fn open(self, model: &Path) -> Result<Box<dyn Runtime>> {
        if !model.exists() {
            bail!("model {} does not exist", model.display());
        }
        Ok(match self {
            RuntimeKind::Ort => Box::new(onnxruntime::OrtRuntime::open(model)?),
            RuntimeKind::Tract => Box::new(tract::TractRuntime::open(model)?),
        })
    }

    /// The runtime's name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Ort => "ort",
            RuntimeKind::Tract => "tract",
        }
    }
}
