//! The pass trait and a pipeline of named passes that can show the graph after each one.

use crate::add_head::AddHead;
use crate::normalize_input::NormalizeInput;
use crate::select_output::{OutputKind, SelectOutput};
use crate::{dce::Dce, fold_alpha::FoldAlpha, fold_attention_scale::FoldAttentionScale};
use crate::{fold_layer_scale::FoldLayerScale, fold_normalize::FoldNormalize, shape_check::ShapeCheck};
use crate::{specialise::Specialise, strip_training::StripTraining};
use poac_ir::{error::Result, Graph, SubnetSpec};

/// One transformation of a graph.
pub trait Pass {
    /// Short name shown by `poac lower --dump-ir`.
    fn name(&self) -> &'static str;
    /// Transforms the graph in place; returns whether anything changed.
    fn run(&self, graph: &mut Graph) -> Result<bool>;
}

/// Passes run in order.
#[derive(Default)]
pub struct Pipeline {
    passes: Vec<Box<dyn Pass>>,
}

impl Pipeline {
    /// Appends a pass.
    pub fn with(mut self, pass: impl Pass + 'static) -> Self {
        self.passes.push(Box::new(pass));
        self
    }

    /// Names of the passes, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name()).collect()
    }

    /// Runs every pass; `observe` sees the graph after each, with the pass's name and whether it changed.
    pub fn run(&self, graph: &mut Graph, mut observe: impl FnMut(&str, bool, &Graph)) -> Result<()> {
        for pass in &self.passes {
            let changed = pass.run(graph)?;
            graph.validate()?;
            observe(pass.name(), changed, graph);
        }
        Ok(())
    }
}

/// What a lowered model computes besides the sub-network itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoweringOptions {
    /// The features it returns.
    pub output: OutputKind,
    /// A classifier head on those features: the stored `head.weight` shape `[classes, features]`.
    pub head: Option<[usize; 2]>,
    /// Per-channel (mean, std) to fold into the model, which then takes raw `[0, 1]` pixels.
    pub normalize: Option<(Vec<f32>, Vec<f32>)>,
}

/// The passes `poac lower` runs: specialise to `subnet`, drop training-only ops, build the requested output (and
/// head, and input normalisation), fold α, LayerScale, the attention scale and the normalisation into weights,
/// drop what the output does not need, and check every shape.
pub fn lowering_pipeline(subnet: SubnetSpec, options: &LoweringOptions) -> Pipeline {
    let mut pipeline = Pipeline::default()
        .with(Specialise { subnet })
        .with(StripTraining)
        .with(SelectOutput { kind: options.output });
    if let Some(weight_shape) = options.head {
        pipeline = pipeline.with(AddHead { weight_shape });
    }
    if let Some((mean, std)) = &options.normalize {
        pipeline = pipeline.with(NormalizeInput { mean: mean.clone(), std: std.clone() });
    }
    pipeline
        .with(FoldAlpha)
        .with(FoldLayerScale)
        .with(FoldAttentionScale)
        .with(FoldNormalize)
        .with(Dce)
        .with(ShapeCheck)
}

#[cfg(test)]
pub(crate) mod testing {
    use poac_ir::{build::supergraph, Graph, VitArch};

    /// A tiny elastic ViT: widths 4, 8, 12 (head_dim 4), depths 1..=3, 8 px images in 4 px patches.
    pub fn tiny_supergraph() -> Graph {
        supergraph_with_depth(3)
    }

    /// The tiny elastic ViT with depths 1..=`max_depth`.
    pub fn supergraph_with_depth(max_depth: usize) -> Graph {
        supergraph(&VitArch {
            img_size: 8,
            patch_size: 4,
            head_dim: 4,
            min_embed_dim: 4,
            max_embed_dim: 12,
            min_depth: 1,
            max_depth,
            ..VitArch::default()
        })
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poac_ir::Op;

    #[test]
    fn lowering_yields_a_static_folded_graph() {
        let mut g = testing::tiny_supergraph();
        let mut seen = Vec::new();
        let options = LoweringOptions { normalize: Some((vec![0.5; 3], vec![0.25; 3])), ..Default::default() };
        lowering_pipeline(SubnetSpec { width: 8, depth: 2 }, &options)
            .run(&mut g, |name, changed, _| seen.push((name.to_string(), changed)))
            .unwrap();
        assert_eq!(seen.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), [
            "specialise",
            "strip-training",
            "select-output",
            "normalize-input",
            "fold-alpha",
            "fold-layer-scale",
            "fold-attention-scale",
            "fold-normalize",
            "dce",
            "shape-check",
        ]);
        assert!(seen.iter().all(|(name, changed)| *changed == (name != "shape-check")), "{seen:?}");
        assert!(matches!(g.nodes[g.output].op, Op::ClsToken));
        assert!(g.params.iter().all(|p| p.static_shape().is_some()));
        // What is left computes with weights only: no α, no LayerScale, no attention scale, no normalisation.
        assert!(g.nodes.iter().all(|n| match n.op {
            Op::MaskTokens { .. } | Op::LayerScale { .. } | Op::Normalize { .. } => false,
            Op::Linear { alpha, .. } => alpha == 1.0,
            Op::Attention { q_scaled, .. } => q_scaled,
            _ => true,
        }));
        assert!(g.param_by_name("blocks.0.ls1.gamma").is_none(), "folded gammas are dropped as parameters");
        assert_eq!(g.blocks.iter().map(|b| b.index).collect::<Vec<_>>(), vec![0, 2]);
        let head = lowering_pipeline(SubnetSpec { width: 8, depth: 2 }, &LoweringOptions { head: Some([3, 8]), ..Default::default() });
        assert!(head.names().contains(&"add-head") && !head.names().contains(&"normalize-input"));
    }
}
