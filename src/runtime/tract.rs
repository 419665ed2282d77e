//! tract backend (pure Rust). tract optimises a plan for one input shape, so plans are cached per shape.

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
    plans: HashMap<[usize; 4], Plan>,
}

impl TractRuntime {
    /// Parses the model.
    pub fn open(model: &Path) -> Result<Self> {
        let parsed = tract_onnx::onnx().model_for_path(model).map_err(|e| anyhow!("tract cannot load {}: {e:#}", model.display()))?;
        Ok(TractRuntime { model: parsed, plans: HashMap::new() })
    }

    fn plan(&mut self, shape: [usize; 4]) -> Result<Plan> {
        if let Some(plan) = self.plans.get(&shape) {
            return Ok(plan.clone());
        }
        let plan = self
            .model
            .clone()
            .with_input_fact(0, f32::fact(shape).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| anyhow!("tract cannot plan the model for input {shape:?}: {e:#}"))?;
        self.plans.insert(shape, plan.clone());
        Ok(plan)
    }
}

impl Runtime for TractRuntime {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&mut self, images: &[f32], shape: [usize; 4]) -> Result<(Vec<usize>, Vec<f32>)> {
        let plan = self.plan(shape)?;
        let input = tract_onnx::prelude::Tensor::from_shape(&shape, images).map_err(|e| anyhow!("tract input: {e:#}"))?;
        let outputs = plan.run(tvec!(input.into())).map_err(|e| anyhow!("tract run: {e:#}"))?;
        let view = outputs[0].to_plain_array_view::<f32>().map_err(|e| anyhow!("tract output: {e:#}"))?;
        Ok((view.shape().to_vec(), view.iter().copied().collect()))
    }
}
