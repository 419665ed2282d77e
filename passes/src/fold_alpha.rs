//! Fold α: `(α·x)·Wᵀ = x·(α·W)ᵀ`, so the width scaling factor moves into the weight's view and the static
//! network has no extra multiply (POA_SPEC §3).

use crate::pipeline::Pass;
use crate::rewrite::exclusive;
use poac_ir::{error::Result, Graph, IrError, Op};

/// Multiplies each linear's weight by its α and resets α to 1.
pub struct FoldAlpha;

impl Pass for FoldAlpha {
    fn name(&self) -> &'static str {
        "fold-alpha"
    }

    fn run(&self, g: &mut Graph) -> Result<bool> {
        let mut changed = false;
        for i in 0..g.nodes.len() {
            let Op::Linear { weight, alpha, .. } = g.nodes[i].op else { continue };
            if alpha == 1.0 {
                continue;
            }
            if !exclusive(g, weight) {
                let name = &g.params[weight].name;
                return Err(IrError::Malformed(format!("cannot fold α into `{name}`: the weight is shared")));
            }
            g.params[weight].view.scale *= alpha;
            if let Op::Linear { alpha, .. } = &mut g.nodes[i].op {
                *alpha = 1.0;
            }
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
    fn alpha_moves_into_the_weight_scale() {
        let mut g = tiny_supergraph();
        Specialise { subnet: SubnetSpec { width: 4, depth: 1 } }.run(&mut g).unwrap();
        assert!(FoldAlpha.run(&mut g).unwrap());
        let scale = |n: &str| g.param_by_name(n).unwrap().view.scale;
        assert_eq!(scale("blocks.0.attn.qkv.weight"), 3.0);
        assert_eq!(scale("blocks.0.mlp.fc2.weight"), 3.0);
        // Biases and norms are not scaled: α multiplies the input, not the output.
        assert_eq!(scale("blocks.0.attn.qkv.bias"), 1.0);
        assert_eq!(scale("patch_embed.proj.weight"), 1.0);
        assert!(!FoldAlpha.run(&mut g).unwrap());
    }

    #[test]
    fn a_shared_weight_is_an_error() {
        let mut g = tiny_supergraph();
        Specialise { subnet: SubnetSpec { width: 4, depth: 1 } }.run(&mut g).unwrap();
        let qkv = g.nodes.iter().position(|n| n.name == "blocks.0.attn.qkv").unwrap();
        let proj = g.nodes.iter().position(|n| n.name == "blocks.0.attn.proj").unwrap();
        let qkv_weight = g.nodes[qkv].op.params()[0];
        if let Op::Linear { weight, .. } = &mut g.nodes[proj].op {
            *weight = qkv_weight;
        }
        assert!(FoldAlpha.run(&mut g).unwrap_err().to_string().contains("shared"));
    }
}
