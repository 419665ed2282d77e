//! Fold LayerScale: `γ ⊙ (x·Wᵀ + b) = x·(γ ⊙ W)ᵀ + γ ⊙ b` (γ scaling the output rows of W), so the LayerScale
//! after a block's attention projection and its second MLP linear disappears from the lowered network.

use crate::pipeline::Pass;
use crate::rewrite::sole_linear_input;
use poac_ir::{error::Result, Fold, Graph, Op, TensorRef};
use std::collections::HashMap;

/// Folds every LayerScale whose input is a linear that feeds nothing else into that linear's weight and bias.
pub struct FoldLayerScale;

impl Pass for FoldLayerScale {
    fn name(&self) -> &'static str {
        "fold-layer-scale"
    }

    fn run(&self, g: &mut Graph) -> Result<bool> {
        let consumers = g.consumers();
        let mut replace = HashMap::new();
        for i in 0..g.nodes.len() {
            let Op::LayerScale { gamma } = g.nodes[i].op else { continue };
            let Some((weight, bias)) = sole_linear_input(g, i, &consumers) else { continue };
            let gamma = TensorRef::of(&g.params[gamma]);
            for p in std::iter::once(weight).chain(bias) {
                g.params[p].view.folds.push(Fold::ScaleByTensor { axis: 0, tensor: gamma.clone() });
            }
            replace.insert(i, g.nodes[i].inputs[0]);
        }
        g.bypass(&replace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pipeline::testing::tiny_supergraph, specialise::Specialise};
    use poac_ir::SubnetSpec;

    #[test]
    fn gamma_scales_the_rows_of_the_linear_before_it() {
        let mut g = tiny_supergraph();
        Specialise { subnet: SubnetSpec { width: 8, depth: 2 } }.run(&mut g).unwrap();
        assert!(FoldLayerScale.run(&mut g).unwrap());
        assert!(g.nodes.iter().all(|n| !matches!(n.op, Op::LayerScale { .. })));
        let proj = g.param_by_name("blocks.2.attn.proj.bias").unwrap();
        let Fold::ScaleByTensor { axis: 0, tensor } = &proj.view.folds[0] else { panic!("{:?}", proj.view.folds) };
        assert_eq!(tensor.name, "blocks.2.ls1.gamma");
        // The gamma's view is its kept slice: 8 of 12 channels.
        assert_eq!(tensor.view.axes, vec![vec![0..8]]);
        let fc2 = g.param_by_name("blocks.0.mlp.fc2.weight").unwrap();
        assert!(matches!(&fc2.view.folds[..], [Fold::ScaleByTensor { tensor, .. }] if tensor.name == "blocks.0.ls2.gamma"));
        // Each block's residual add now reads the linear directly.
        let add = g.nodes.iter().find(|n| n.name == "blocks.0.add1").unwrap();
        assert_eq!(g.nodes[add.inputs[1]].name, "blocks.0.attn.proj");
        g.validate().unwrap();
        assert!(!FoldLayerScale.run(&mut g).unwrap());
    }

    #[test]
    fn a_linear_read_elsewhere_keeps_its_layer_scale() {
        let mut g = tiny_supergraph();
        Specialise { subnet: SubnetSpec { width: 8, depth: 1 } }.run(&mut g).unwrap();
        let proj = g.nodes.iter().position(|n| n.name == "blocks.0.attn.proj").unwrap();
        g.output = proj;
        FoldLayerScale.run(&mut g).unwrap();
        assert!(g.nodes.iter().any(|n| n.name == "blocks.0.ls1"));
        assert!(g.param_by_name("blocks.0.attn.proj.weight").unwrap().view.folds.is_empty());
    }
}
