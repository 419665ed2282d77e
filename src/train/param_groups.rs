//! Per-parameter optimisation settings of a ViT (dinov2's parameter groups): layer-wise lr decay, the
//! patch-embedding lr multiplier, and which parameters are weight-decayed.

use super::adamw::ParamGroup;

/// The group of backbone parameter `name` (timm/dinov2 keys) in a ViT of `blocks` blocks.
/// Block `i` trains at `layerwise_decay^(blocks − i)`; the embeddings (patch embed, class, mask and position
/// tokens) at `layerwise_decay^(blocks + 1)`, the patch embedding times `patch_embed_lr_mult` on top; anything
/// else (the final norm) at the full rate.
pub fn backbone_group(name: &str, blocks: usize, layerwise_decay: f64, patch_embed_lr_mult: f64) -> ParamGroup {
    let embedding = ["patch_embed", "cls_token", "pos_embed", "mask_token"].iter().any(|e| name.starts_with(e));
    let layer = if embedding {
        0
    } else {
        name.strip_prefix("blocks.").and_then(|rest| rest.split('.').next()).and_then(|i| i.parse::<usize>().ok()).map_or(blocks + 1, |i| i + 1)
    };
    let mut lr_mult = layerwise_decay.powi((blocks + 1 - layer) as i32);
    if name.starts_with("patch_embed") {
        lr_mult *= patch_embed_lr_mult;
    }
    ParamGroup { lr_mult, decay: decayed(name) }
}

/// The group of a projection-head parameter: the full lr.
pub fn head_group(name: &str) -> ParamGroup {
    ParamGroup { lr_mult: 1.0, decay: decayed(name) }
}

/// dinov2 does not weight-decay biases, norms and LayerScale gammas.
fn decayed(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("norm") || name.contains("gamma"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layerwise_decay_table() {
        // 4 blocks, rate 0.5, patch-embed ×0.2: exponents 5 (embeddings), 4..1 (blocks 0..3), 0 (final norm).
        let table: [(&str, f64, bool); 9] = [
            ("patch_embed.proj.weight", 0.5f64.powi(5) * 0.2, true),
            ("patch_embed.proj.bias", 0.5f64.powi(5) * 0.2, false),
            ("cls_token", 0.5f64.powi(5), true),
            ("pos_embed", 0.5f64.powi(5), true),
            ("blocks.0.attn.qkv.weight", 0.5f64.powi(4), true),
            ("blocks.1.norm1.weight", 0.5f64.powi(3), false),
            ("blocks.3.ls2.gamma", 0.5, false),
            ("blocks.3.mlp.fc2.bias", 0.5, false),
            ("norm.weight", 1.0, false),
        ];
        for (name, lr_mult, decay) in table {
            let g = backbone_group(name, 4, 0.5, 0.2);
            assert!((g.lr_mult - lr_mult).abs() < 1e-12 && g.decay == decay, "{name}: {g:?}");
        }
        assert_eq!(head_group("mlp.0.weight"), ParamGroup { lr_mult: 1.0, decay: true });
        assert_eq!(head_group("mlp.0.bias"), ParamGroup { lr_mult: 1.0, decay: false });
    }

    #[test]
    fn rate_one_is_uniform() {
        for name in ["cls_token", "blocks.2.attn.proj.weight", "norm.bias"] {
            assert_eq!(backbone_group(name, 8, 1.0, 1.0).lr_mult, 1.0);
        }
    }
}
