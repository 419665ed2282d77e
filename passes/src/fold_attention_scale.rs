//! Fold the attention scale: `softmax((q·s)·kᵀ)` with `q = x·W_qᵀ + b_q` equals `softmax(q'·kᵀ)` with
//! `q' = x·(s·W_q)ᵀ + s·b_q`, so `s = head_dim^-0.5` moves into the q rows (the first third) of qkv and the
//! lowered attention has no multiply.

use crate::pipeline::Pass;
use crate::rewrite::sole_linear_input;
use poac_ir::{error::Result, Fold, Graph, Op};

/// Folds every attention's scale into the qkv linear before it.
pub struct FoldAttentionScale;

impl Pass for FoldAttentionScale {
    fn name(&self) -> &'static str {
        "fold-attention-scale"
    }

    fn run(&self, g: &mut Graph) -> Result<bool> {
        let consumers = g.consumers();
        let mut changed = false;
        for i in 0..g.nodes.len() {
            let Op::Attention { head_dim, q_scaled: false } = g.nodes[i].op else { continue };
            let Some((weight, bias)) = sole_linear_input(g, i, &consumers) else { continue };
            let Some(rows) = g.params[weight].static_shape().map(|s| s[0]) else { continue };
            let fold = Fold::ScaleRange { axis: 0, range: 0..rows / 3, factor: (head_dim as f32).powf(-0.5) };
            for p in std::iter::once(weight).chain(bias) {
                g.params[p].view.folds.push(fold.clone());
            }
            g.nodes[i].op = Op::Attention { head_dim, q_scaled: true };
            changed = true;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pipeline::testing::tiny_supergraph, specialise::Specialise};
    use poac_ir::SubnetSpec;

    #[test]
    fn the_scale_multiplies_the_q_rows_only() {
        let mut g = tiny_supergraph();
        Specialise { subnet: SubnetSpec { width: 8, depth: 1 } }.run(&mut g).unwrap();
        assert!(FoldAttentionScale.run(&mut g).unwrap());
        // Width 8: qkv has 24 rows, q is rows 0..8; head_dim 4 gives s = 0.5.
        let expected = vec![Fold::ScaleRange { axis: 0, range: 0..8, factor: 0.5 }];
        assert_eq!(g.param_by_name("blocks.0.attn.qkv.weight").unwrap().view.folds, expected);
        assert_eq!(g.param_by_name("blocks.0.attn.qkv.bias").unwrap().view.folds, expected);
        assert!(g.nodes.iter().any(|n| n.op == Op::Attention { head_dim: 4, q_scaled: true }));
        assert!(!FoldAttentionScale.run(&mut g).unwrap(), "a folded scale is not folded twice");
    }

    #[test]
    fn an_elastic_graph_is_left_alone() {
        let mut g = tiny_supergraph();
        assert!(!FoldAttentionScale.run(&mut g).unwrap());
    }
}
