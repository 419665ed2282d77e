//! Builds the elastic ViT supergraph from its architecture (dinov2's ViT with LayerScale, pre-norm blocks).

use crate::arch::VitArch;
use crate::error::{IrError, Result};
use crate::graph::{BlockSpan, Graph, Op};
use crate::param::{Dim, Init, Param};
use crate::space::ElasticSpace;

const W: Dim = Dim::Elastic { segments: 1, per_width: 1 };
const STD: Init = Init::TruncNormal(0.02);
const ZEROS: Init = Init::Constant(0.0);
const ONES: Init = Init::Constant(1.0);

/// The supergraph of an elastic ViT: every parameter at its largest size, with elastic dims marked, weight names
/// as in dinov2/timm (`patch_embed.proj.weight`, `blocks.3.attn.qkv.weight`, `blocks.3.ls1.gamma`, `norm.weight`).
/// Its output is the final-normed token sequence `[N, 1 + P, W]`.
pub fn supergraph(arch: &VitArch) -> Result<Graph> {
    arch.validate()?;
    let space = ElasticSpace::of(arch);
    let mut g = Graph {
        arch: arch.clone(),
        space,
        subnet: None,
        params: Vec::new(),
        nodes: Vec::new(),
        blocks: Vec::new(),
        output: 0,
    };
    let mlp = Dim::Elastic { segments: 1, per_width: arch.mlp_ratio };
    let qkv = Dim::Elastic { segments: 3, per_width: 1 };
    let p = arch.patch_size;
    let tokens = arch.num_patches() + 1;

    let image = g.push("image", Op::Image, vec![], None);
    let weight = g.add_param(Param::new(
        "patch_embed.proj.weight",
        vec![W, Dim::Fixed(arch.in_chans), Dim::Fixed(p), Dim::Fixed(p)],
        STD,
    ));
    let bias = g.add_param(Param::new("patch_embed.proj.bias", vec![W], ZEROS));
    let mut x = g.push("patch_embed", Op::PatchEmbed { weight, bias, patch: p }, vec![image], None);
    let mask_token = g.add_param(Param::new("mask_token", vec![Dim::Fixed(1), W], ZEROS));
    x = g.push("mask_tokens", Op::MaskTokens { mask_token }, vec![x], None);
    let cls_token = g.add_param(Param::new("cls_token", vec![Dim::Fixed(1), Dim::Fixed(1), W], Init::TruncNormal(1e-6)));
    x = g.push("prepend_cls", Op::PrependCls { cls_token }, vec![x], None);
    let pos_embed = g.add_param(Param::new("pos_embed", vec![Dim::Fixed(1), Dim::Fixed(tokens), W], STD));
    x = g.push("add_pos_embed", Op::AddPosEmbed { pos_embed }, vec![x], None);

    for b in 0..arch.max_depth {
        let block_input = x;
        let block = Some(b);
        let name = |s: &str| format!("blocks.{b}.{s}");
        let layer_norm = |g: &mut Graph, key: &str, input| {
            let weight = g.add_param(Param::new(name(&format!("{key}.weight")), vec![W], ONES));
            let bias = g.add_param(Param::new(name(&format!("{key}.bias")), vec![W], ZEROS));
            g.push(name(key), Op::LayerNorm { weight, bias, eps: arch.norm_eps }, vec![input], block)
        };
        let linear = |g: &mut Graph, key: &str, out: Dim, inp: Dim, input| {
            let weight = g.add_param(Param::new(name(&format!("{key}.weight")), vec![out, inp], STD));
            let bias = Some(g.add_param(Param::new(name(&format!("{key}.bias")), vec![out], ZEROS)));
            g.push(name(key), Op::Linear { weight, bias, alpha: 1.0 }, vec![input], block)
        };
        let layer_scale = |g: &mut Graph, key: &str, input| {
            let gamma = g.add_param(Param::new(name(&format!("{key}.gamma")), vec![W], Init::Constant(arch.layerscale_init)));
            g.push(name(key), Op::LayerScale { gamma }, vec![input], block)
        };

        let h = layer_norm(&mut g, "norm1", x);
        let h = linear(&mut g, "attn.qkv", qkv, W, h);
        let h = g.push(name("attn"), Op::Attention { head_dim: arch.head_dim, q_scaled: false }, vec![h], block);
        let h = linear(&mut g, "attn.proj", W, W, h);
        let h = layer_scale(&mut g, "ls1", h);
        x = g.push(name("add1"), Op::Add, vec![x, h], block);
        let h = layer_norm(&mut g, "norm2", x);
        let h = linear(&mut g, "mlp.fc1", mlp, W, h);
        let h = g.push(name("mlp.act"), Op::Gelu, vec![h], block);
        let h = linear(&mut g, "mlp.fc2", W, mlp, h);
        let h = layer_scale(&mut g, "ls2", h);
        x = g.push(name("add2"), Op::Add, vec![x, h], block);
        g.blocks.push(BlockSpan { index: b, input: block_input, output: x });
    }
    let weight = g.add_param(Param::new("norm.weight", vec![W], ONES));
    let bias = g.add_param(Param::new("norm.bias", vec![W], ZEROS));
    g.output = g.push("norm", Op::LayerNorm { weight, bias, eps: arch.norm_eps }, vec![x], None);
    g.validate()?;
    Ok(g)
}

/// Checks that `g` is exactly the supergraph poac builds for `g.arch` — an elastic ViT poac knows, not a
/// graph of another architecture or a hand-edited one — and names the first difference otherwise.
pub fn check_known(g: &Graph) -> Result<()> {
    let expected = supergraph(&g.arch)?;
    let differ = |what: String| Err(IrError::Malformed(format!("not a poac elastic ViT supergraph: {what}")));
    if g.subnet.is_some() {
        return differ("it is already specialised to one sub-network".into());
    }
    if let Some((got, want)) = g.params.iter().zip(&expected.params).find(|(a, b)| a != b) {
        return differ(format!("parameter `{}` {:?} where the ViT has `{}` {:?}", got.name, got.shape, want.name, want.shape));
    }
    if let Some((got, want)) = g.nodes.iter().zip(&expected.nodes).find(|(a, b)| a != b) {
        return differ(format!("node `{}` ({}) where the ViT has `{}` ({})", got.name, got.op.kind(), want.name, want.op.kind()));
    }
    if (g.params.len(), g.nodes.len()) != (expected.params.len(), expected.nodes.len()) || g != &expected {
        return differ(format!(
            "{} nodes and {} parameters where the ViT has {} and {}",
            g.nodes.len(),
            g.params.len(),
            expected.nodes.len(),
            expected.params.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny elastic ViT: widths 4, 8, 12 (head_dim 4), depths 1..=3, 8 px images in 4 px patches.
    pub(crate) fn tiny() -> VitArch {
        VitArch {
            img_size: 8,
            patch_size: 4,
            head_dim: 4,
            min_embed_dim: 4,
            max_embed_dim: 12,
            min_depth: 1,
            max_depth: 3,
            ..VitArch::default()
        }
    }

    #[test]
    fn supergraph_has_timm_names_and_max_shapes() {
        let g = supergraph(&tiny()).unwrap();
        let shape = |n: &str| g.param_by_name(n).unwrap_or_else(|| panic!("{n}")).shape_at(12);
        assert_eq!(shape("patch_embed.proj.weight"), vec![12, 3, 4, 4]);
        assert_eq!(shape("pos_embed"), vec![1, 5, 12]);
        assert_eq!(shape("blocks.2.attn.qkv.weight"), vec![36, 12]);
        assert_eq!(shape("blocks.0.mlp.fc1.weight"), vec![48, 12]);
        assert_eq!(shape("blocks.0.mlp.fc2.weight"), vec![12, 48]);
        assert_eq!(shape("blocks.1.ls2.gamma"), vec![12]);
        assert_eq!(shape("norm.bias"), vec![12]);
        assert_eq!(g.blocks.len(), 3);
        // Per block: 2 norms × 2, 4 linears × 2, 2 gammas = 14 params; plus 5 stem + 2 final.
        assert_eq!(g.params.len(), 3 * 14 + 5 + 2);
    }

    #[test]
    fn supergraph_round_trips_through_json() {
        let g = supergraph(&tiny()).unwrap();
        assert_eq!(Graph::from_json(&g.to_json()).unwrap(), g);
        assert!(Graph::from_json("{\"nodes\": 3}").is_err());
    }

    #[test]
    fn only_the_known_vit_passes_the_check() {
        let g = supergraph(&tiny()).unwrap();
        check_known(&g).unwrap();
        let mut renamed = g.clone();
        renamed.params[3].name = "stem.conv.weight".into();
        assert!(check_known(&renamed).unwrap_err().to_string().contains("stem.conv.weight"));
        let mut fewer = g.clone();
        fewer.nodes.pop();
        assert!(check_known(&fewer).unwrap_err().to_string().contains("nodes"));
        let mut relu = g;
        let gelu = relu.nodes.iter().position(|n| n.op == Op::Gelu).unwrap();
        relu.nodes[gelu].op = Op::Add;
        assert!(check_known(&relu).unwrap_err().to_string().contains("(add)"));
    }

    #[test]
    fn invalid_arch_is_an_error() {
        let arch = VitArch { max_embed_dim: 10, ..tiny() };
        let err = supergraph(&arch).unwrap_err().to_string();
        assert!(err.contains("multiple of head_dim"), "{err}");
    }
}
