//! Size and cost of a (sub-)network: parameter count and FLOPs per image.

use crate::graph::{Graph, Op};

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

/// Floating-point operations (2 per multiply-add) of one image through the matmuls and convolutions; norms
/// and element-wise ops are a rounding error and not counted.
pub fn flops_per_image(g: &Graph) -> u64 {
    let width = g.width();
    let patches = g.arch.num_patches() as u64;
    let tokens = patches + 1;
    let mut flops = 0u64;
    for node in &g.nodes {
        match node.op {
            Op::PatchEmbed { weight, .. } => {
                let w = g.params[weight].shape_at(width);
                flops += 2 * patches * w.iter().product::<usize>() as u64;
            }
            Op::Linear { weight, .. } => {
                let w = g.params[weight].shape_at(width);
                flops += 2 * tokens * (w[0] * w[1]) as u64;
            }
            Op::Attention { .. } => flops += 2 * 2 * tokens * tokens * width as u64,
            _ => {}
        }
    }
    flops
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
        let gflops = flops_per_image(&g) as f64 / 1e9;
        assert!((gflops - 9.2).abs() < 0.1, "{gflops}");
    }
}
