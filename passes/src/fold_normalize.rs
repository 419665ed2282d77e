//! Fold normalize into the patch embedding: a convolution of `(x - m) / s` (per input channel `c`) is
//! `Σ W[o,c,i,j]·(x - m_c)/s_c + b[o] = Σ W'[o,c,i,j]·x + b'[o]` with `W' = W / s_c` and
//! `b' = b - Σ_{c,i,j} W'[o,c,i,j]·m_c` — exact, since a patch embedding has no padding.

use crate::pipeline::Pass;
use crate::rewrite::{exclusive, sole_reader};
use poac_ir::{error::Result, Fold, Graph, Op, TensorRef};
use std::collections::HashMap;

/// Folds a [`Op::Normalize`] read only by a patch embedding into that embedding's weight and bias.
pub struct FoldNormalize;

impl Pass for FoldNormalize {
    fn name(&self) -> &'static str {
        "fold-normalize"
    }

    fn run(&self, g: &mut Graph) -> Result<bool> {
        let consumers = g.consumers();
        let mut replace = HashMap::new();
        for i in 0..g.nodes.len() {
            let Op::Normalize { mean, std } = &g.nodes[i].op else { continue };
            let (mean, std) = (mean.clone(), std.clone());
            let Some(reader) = sole_reader(g, i, &consumers) else { continue };
            let Op::PatchEmbed { weight, bias, .. } = g.nodes[reader].op else { continue };
            if !exclusive(g, weight) || !exclusive(g, bias) {
                continue;
            }
            let inverse_std = std.iter().map(|s| 1.0 / s).collect();
            g.params[weight].view.folds.push(Fold::ScaleEach { axis: 1, factors: inverse_std });
            let scaled_weight = TensorRef::of(&g.params[weight]);
            let coefficients = mean.iter().map(|m| -m).collect();
            g.params[bias].view.folds.push(Fold::AddContraction { tensor: scaled_weight, coefficients });
            replace.insert(i, g.nodes[i].inputs[0]);
        }
        g.bypass(&replace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{normalize_input::NormalizeInput, pipeline::testing::tiny_supergraph, specialise::Specialise};
    use poac_ir::SubnetSpec;

    #[test]
    fn normalisation_moves_into_the_patch_embedding() {
        let mut g = tiny_supergraph();
        Specialise { subnet: SubnetSpec { width: 8, depth: 1 } }.run(&mut g).unwrap();
        NormalizeInput { mean: vec![0.5, 0.25, 0.0], std: vec![0.5, 0.25, 2.0] }.run(&mut g).unwrap();
        assert!(FoldNormalize.run(&mut g).unwrap());
        assert!(g.nodes.iter().all(|n| !matches!(n.op, Op::Normalize { .. })));
        let weight = g.param_by_name("patch_embed.proj.weight").unwrap();
        assert_eq!(weight.view.folds, vec![Fold::ScaleEach { axis: 1, factors: vec![2.0, 4.0, 0.5] }]);
        let bias = g.param_by_name("patch_embed.proj.bias").unwrap();
        let [Fold::AddContraction { tensor, coefficients }] = &bias.view.folds[..] else { panic!("{:?}", bias.view.folds) };
        assert_eq!(coefficients, &vec![-0.5, -0.25, -0.0]);
        // The contraction reads the weight already divided by std.
        assert_eq!((&tensor.name, &tensor.view), (&weight.name, &weight.view));
        let embed = g.nodes.iter().find(|n| matches!(n.op, Op::PatchEmbed { .. })).unwrap();
        assert_eq!(g.nodes[embed.inputs[0]].op, Op::Image);
        assert!(!FoldNormalize.run(&mut g).unwrap());
    }
}
