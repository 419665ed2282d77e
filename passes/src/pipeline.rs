//! The pass trait and a pipeline of named passes that can show the graph after each one.

use crate::{dce::Dce, fold_alpha::FoldAlpha, select_output::SelectOutput, specialise::Specialise};
use crate::strip_training::StripTraining;
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

/// The passes `poac lower` runs: specialise to `subnet`, drop training-only ops, return the class token, fold
/// α into the weights, drop what the output does not need.
pub fn lowering_pipeline(subnet: SubnetSpec) -> Pipeline {
    Pipeline::default()
        .with(Specialise { subnet })
        .with(StripTraining)
        .with(SelectOutput::ClsToken)
        .with(FoldAlpha)
        .with(Dce)
}

#[cfg(test)]
pub(crate) mod testing {
    use poac_ir::{build::supergraph, Graph, VitArch};

    /// A tiny elastic ViT: widths 4, 8, 12 (head_dim 4), depths 1..=3, 8 px images in 4 px patches.
    pub fn tiny_supergraph() -> Graph {
        supergraph(&VitArch {
            img_size: 8,
            patch_size: 4,
            head_dim: 4,
            min_embed_dim: 4,
            max_embed_dim: 12,
            min_depth: 1,
            max_depth: 3,
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
    fn lowering_yields_a_static_cls_graph() {
        let mut g = testing::tiny_supergraph();
        let mut seen = Vec::new();
        lowering_pipeline(SubnetSpec { width: 8, depth: 2 })
            .run(&mut g, |name, changed, _| seen.push((name.to_string(), changed)))
            .unwrap();
        assert_eq!(seen.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), [
            "specialise",
            "strip-training",
            "select-output",
            "fold-alpha",
            "dce"
        ]);
        assert!(seen.iter().all(|(_, changed)| *changed));
        assert!(matches!(g.nodes[g.output].op, Op::ClsToken));
        assert!(g.params.iter().all(|p| p.static_shape().is_some()));
        assert!(g.nodes.iter().all(|n| !matches!(n.op, Op::MaskTokens { .. })));
        assert!(g.nodes.iter().all(|n| !matches!(n.op, Op::Linear { alpha, .. } if alpha != 1.0)));
        assert_eq!(g.blocks.iter().map(|b| b.index).collect::<Vec<_>>(), vec![0, 2]);
    }
}
