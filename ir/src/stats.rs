//! Size and cost of a (sub-)network: parameter count and FLOPs per image.

use crate::error::Result;
use crate::graph::{Graph, Op};
use crate::shape;

/// Number of scalar parameters the graph computes with (at its width; the mask token, a training-only
/// parameter, is not counted).
pub fn param_count(g: &Graph) -> usize {
    let width = g.width();
    let mut seen = vec![false; g.params.len()];
    g.nodes
        .iter()
        .filter(|n| !matches!(n.op, Op::MaskTokens { .. }))
        .flat_map(|n| n.op.params())
        .filter(|&p| !std::mem::replace(&mut seen[p], true))
        .map(|p| g.params[p].shape_at(width).iter().product::<usize>())
        .sum()
}

/// Floating-point operations (2 per multiply-add) of one image through the matmuls and convolutions, from the
/// inferred shapes; norms and element-wise ops are a rounding error and not counted.
pub fn flops_per_image(g: &Graph) -> Result<u64> {
    let shapes = shape::infer(g)?;
    let mut flops = 0u64;
    for (node, out) in g.nodes.iter().zip(&shapes) {
        let elements = |s: &[usize]| s.iter().product::<usize>() as u64;
        flops += match node.op {
            // Each output element of a conv or linear is one dot product over the kernel (minus its out axis).
            Op::PatchEmbed { weight, .. } | Op::Linear { weight, .. } => {
                let kernel = g.params[weight].shape_at(g.width());
                2 * elements(out) * elements(&kernel[1..])
            }
            // q·kᵀ and probs·v: T·T·D multiply-adds each.
            Op::Attention { .. } => 2 * 2 * (out[0] * out[0] * out[1]) as u64,
            _ => 0,
        };
    }
    Ok(flops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build::supergraph, VitArch};

    #[test]
    fn vit_s16_counts_match_known_figures() {
        // ViT-S/16 at 224 px: 4.6 GMACs as usually quoted, i.e. 9.2 GFLOPs at 2 FLOPs per multiply-add.
        let arch = VitArch {
            min_embed_dim: 384,
            max_embed_dim: 384,
            min_depth: 12,
            max_depth: 12,
            ..VitArch::default()
        };
        let g = supergraph(&arch).unwrap();
        let params = param_count(&g);
        // timm's vit_small_patch16_224 backbone has 21,665,664 params + 384·2 for LayerScale gammas ×12 blocks.
        assert_eq!(params, 21_665_664 + 12 * 2 * 384);
        let gflops = flops_per_image(&g).unwrap() as f64 / 1e9;
        assert!((gflops - 9.2).abs() < 0.1, "{gflops}");
    }
}
