//! Shape inference: the static shape of every value of a graph at the configured image size, checked against
//! the shapes of the parameters each op reads. A mismatch is a typed error naming the node.

use crate::error::{IrError, Result};
use crate::graph::{Graph, Node, Op};
use crate::param::ParamId;

/// Shape of a value without its leading batch axis (every value has one): `[C, H, W]` for images, `[T, D]` for
/// token sequences, `[D]` for pooled features.
pub type Shape = Vec<usize>;

/// The shape of every value of `g` (indexed like its nodes), or the first mismatch.
pub fn infer(g: &Graph) -> Result<Vec<Shape>> {
    let width = g.width();
    let mut shapes: Vec<Shape> = Vec::with_capacity(g.nodes.len());
    for node in &g.nodes {
        let param = |id: ParamId| g.params[id].shape_at(width);
        let shape = infer_node(g, node, &shapes, &param).map_err(|message| IrError::Shape { node: node.name.clone(), message })?;
        shapes.push(shape);
    }
    Ok(shapes)
}

type Check<T> = std::result::Result<T, String>;

fn expect(ok: bool, message: impl FnOnce() -> String) -> Check<()> {
    if ok {
        Ok(())
    } else {
        Err(message())
    }
}

/// The last axis of `shape`, which must exist.
fn channels(shape: &Shape) -> Check<usize> {
    shape.last().copied().ok_or_else(|| "a scalar input where channels were expected".to_string())
}

/// Checks that `shape` is a token sequence `[T, D]`.
fn tokens(shape: &Shape) -> Check<(usize, usize)> {
    match shape.as_slice() {
        &[t, d] => Ok((t, d)),
        _ => Err(format!("expected tokens [T, D], got {shape:?}")),
    }
}

fn infer_node(g: &Graph, node: &Node, shapes: &[Shape], param: &dyn Fn(ParamId) -> Vec<usize>) -> Check<Shape> {
    let input = |i: usize| &shapes[node.inputs[i]];
    let per_channel = |name: &str, id: ParamId, d: usize| {
        let p = param(id);
        expect(p == [d], || format!("{name} is {p:?}, the input has {d} channels"))
    };
    Ok(match &node.op {
        Op::Image => vec![g.arch.in_chans, g.arch.img_size, g.arch.img_size],
        Op::Normalize { mean, std } => {
            let x = input(0);
            expect(x.len() == 3 && mean.len() == x[0] && std.len() == x[0], || {
                format!("{} means and {} stds for an image of shape {x:?}", mean.len(), std.len())
            })?;
            expect(std.iter().all(|s| *s > 0.0), || format!("std {std:?} must be positive"))?;
            x.clone()
        }
        Op::PatchEmbed { weight, bias, patch } => {
            let (x, w) = (input(0), param(*weight));
            expect(x.len() == 3, || format!("expected an image [C, H, W], got {x:?}"))?;
            expect(w.len() == 4 && w[1] == x[0] && w[2] == *patch && w[3] == *patch, || {
                format!("kernel {w:?} does not fit {} channels and {patch}×{patch} patches", x[0])
            })?;
            expect(x[1] % patch == 0 && x[2] % patch == 0, || format!("image {}×{} is not a multiple of patch {patch}", x[1], x[2]))?;
            per_channel("bias", *bias, w[0])?;
            vec![(x[1] / patch) * (x[2] / patch), w[0]]
        }
        Op::MaskTokens { mask_token } => {
            let (_, d) = tokens(input(0))?;
            let m = param(*mask_token);
            expect(m == [1, d], || format!("mask token is {m:?}, tokens have {d} channels"))?;
            input(0).clone()
        }
        Op::PrependCls { cls_token } => {
            let (p, d) = tokens(input(0))?;
            let c = param(*cls_token);
            expect(c == [1, 1, d], || format!("class token is {c:?}, tokens have {d} channels"))?;
            vec![p + 1, d]
        }
        Op::AddPosEmbed { pos_embed } => {
            let (t, d) = tokens(input(0))?;
            let pos = param(*pos_embed);
            expect(pos == [1, t, d], || format!("position embedding is {pos:?}, tokens are [{t}, {d}]"))?;
            input(0).clone()
        }
        Op::LayerNorm { weight, bias, .. } => {
            let d = channels(input(0))?;
            per_channel("weight", *weight, d)?;
            per_channel("bias", *bias, d)?;
            input(0).clone()
        }
        Op::Linear { weight, bias, .. } => {
            let (x, w) = (input(0), param(*weight));
            let d = channels(x)?;
            expect(w.len() == 2 && w[1] == d, || format!("weight {w:?} does not take {d} input channels"))?;
            if let Some(bias) = bias {
                per_channel("bias", *bias, w[0])?;
            }
            let mut out = x.clone();
            *out.last_mut().expect("checked above") = w[0];
            out
        }
        Op::Attention { head_dim, .. } => {
            let (t, packed) = tokens(input(0))?;
            expect(packed % (3 * head_dim) == 0, || format!("packed qkv of {packed} channels is not 3 × heads × {head_dim}"))?;
            vec![t, packed / 3]
        }
        Op::Gelu => input(0).clone(),
        Op::LayerScale { gamma } => {
            per_channel("gamma", *gamma, channels(input(0))?)?;
            input(0).clone()
        }
        Op::Add => {
            expect(input(0) == input(1), || format!("adds {:?} to {:?}", input(0), input(1)))?;
            input(0).clone()
        }
        Op::ClsToken | Op::MeanTokens => {
            let (t, d) = tokens(input(0))?;
            expect(t >= 1, || "no tokens".into())?;
            vec![d]
        }
        Op::PatchTokens => {
            let (t, d) = tokens(input(0))?;
            expect(t >= 2, || format!("{t} tokens hold no patch token"))?;
            vec![t - 1, d]
        }
        Op::Concat => {
            let first = input(0);
            let lead = &first[..first.len().saturating_sub(1)];
            let mut total = 0;
            for i in 0..node.inputs.len() {
                let x = input(i);
                expect(x.len() == first.len() && &x[..lead.len()] == lead && !x.is_empty(), || {
                    format!("cannot concatenate {x:?} with {first:?} on the last axis")
                })?;
                total += channels(x)?;
            }
            lead.iter().copied().chain([total]).collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build::supergraph, VitArch};

    fn tiny() -> Graph {
        supergraph(&VitArch { max_depth: 2, ..crate::build::tests::tiny() }).unwrap()
    }

    #[test]
    fn a_supergraph_has_the_shapes_of_its_largest_network() {
        let g = tiny();
        let shapes = infer(&g).unwrap();
        let of = |name: &str| &shapes[g.nodes.iter().position(|n| n.name == name).unwrap()];
        assert_eq!(of("image"), &vec![3, 8, 8]);
        assert_eq!(of("patch_embed"), &vec![4, 12]);
        assert_eq!(of("prepend_cls"), &vec![5, 12]);
        assert_eq!(of("blocks.0.attn.qkv"), &vec![5, 36]);
        assert_eq!(of("blocks.0.attn"), &vec![5, 12]);
        assert_eq!(of("blocks.1.mlp.fc1"), &vec![5, 48]);
        assert_eq!(shapes[g.output], vec![5, 12]);
    }

    #[test]
    fn mismatches_name_the_node() {
        let mut g = tiny();
        g.arch.img_size = 12; // 9 patches + 1 tokens, but the position embedding holds 5.
        let err = infer(&g).unwrap_err().to_string();
        assert!(err.contains("add_pos_embed") && err.contains("[1, 5, 12]"), "{err}");

        let mut g = tiny();
        let fc2 = g.nodes.iter().position(|n| n.name == "blocks.0.mlp.fc2").unwrap();
        let act = g.nodes[fc2].inputs[0];
        g.nodes[fc2].inputs[0] = g.nodes[act].inputs[0] - 1; // fc2 now reads the 12-channel norm2 output.
        let err = infer(&g).unwrap_err().to_string();
        assert!(err.contains("blocks.0.mlp.fc2") && err.contains("12 input channels"), "{err}");
    }
}
