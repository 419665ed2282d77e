//! tract backend (pure Rust). tract optimises a plan for one input shape, so plans are cached per batch size.

use super::Runtime;
use anyhow::{anyhow, Result};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::*;

type Plan = Arc<TypedRunnableModel>;

/// A model loaded in tract.
pub struct TractRuntime {
    model: InferenceModel,
    image_size: usize,
    plans: HashMap<usize, Plan>,
}

impl TractRuntime {
    /// Parses the model.
    pub fn open(model: &Path, image_size: usize) -> Result<Self> {
        let parsed = tract_onnx::onnx().model_for_path(model).map_err(|e| anyhow!("tract cannot load {}: {e:#}", model.display()))?;
        Ok(TractRuntime { model: parsed, image_size, plans: HashMap::new() })
    }

    fn plan(&mut self, n: usize) -> Result<Plan> {
        if let Some(plan) = self.plans.get(&n) {
            return Ok(plan.clone());
        }
        let s = self.image_size;
        let plan = self
            .model
            .clone()
            .with_input_fact(0, f32::fact([n, 3, s, s]).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| anyhow!("tract cannot plan the model for batch {n}: {e:#}"))?;
        self.plans.insert(n, plan.clone());
        Ok(plan)
    }
}

impl Runtime for TractRuntime {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&mut self, images: &[f32], n: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        let plan = self.plan(n)?;
        let s = self.image_size;
        let input = tract_onnx::prelude::Tensor::from_shape(&[n, 3, s, s], images).map_err(|e| anyhow!("tract input: {e:#}"))?;
        let outputs = plan.run(tvec!(input.into())).map_err(|e| anyhow!("tract run: {e:#}"))?;
        let view = outputs[0].to_plain_array_view::<f32>().map_err(|e| anyhow!("tract output: {e:#}"))?;
        Ok((view.shape().to_vec(), view.iter().copied().collect()))
    }
}
