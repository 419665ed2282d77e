//! The elastic ViT on libtorch, constructed from the IR supergraph. A forward pass at sub-network `s` runs the
//! *same* `specialise` pass that `poac lower` runs, then interprets the specialised graph with views of the full
//! parameters, so training and deployment cannot drift apart.

use super::{init_tensor, view_of};
use anyhow::{bail, Result};
use poac_ir::{Graph, Op, SubnetSpec};
use poac_passes::{specialise::Specialise, Pass};
use std::cell::RefCell;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Elastic ViT parameters plus the supergraph that says how to use them.
pub struct ElasticVit {
    graph: Graph,
    params: Vec<Tensor>,
    specialised: RefCell<HashMap<SubnetSpec, Specialised>>,
    compute_kind: Kind,
}

/// A specialised graph, with the LayerScales that are folded into the linear before them at run time:
/// `γ ⊙ (x·Wᵀ + b) = x·(γ ⊙ W)ᵀ + γ ⊙ b` saves a pass over the activations, forward and backward.
struct Specialised {
    graph: Graph,
    /// `scaled_by[i]`: the gamma folded into linear node `i`.
    scaled_by: Vec<Option<usize>>,
    /// LayerScale nodes whose gamma is folded: they pass their input through.
    folded: Vec<bool>,
}

impl Specialised {
    fn new(mut graph: Graph, subnet: SubnetSpec) -> Self {
        Specialise { subnet }.run(&mut graph).expect("sub-networks are checked before forward");
        let n = graph.nodes.len();
        let mut consumers = vec![0usize; n];
        graph.nodes.iter().flat_map(|node| &node.inputs).for_each(|&v| consumers[v] += 1);
        let (mut scaled_by, mut folded) = (vec![None; n], vec![false; n]);
        for (i, node) in graph.nodes.iter().enumerate() {
            if let (Op::LayerScale { gamma }, [input]) = (&node.op, node.inputs.as_slice()) {
                if matches!(graph.nodes[*input].op, Op::Linear { .. }) && consumers[*input] == 1 {
                    scaled_by[*input] = Some(*gamma);
                    folded[i] = true;
                }
            }
        }
        Specialised { graph, scaled_by, folded }
    }
}

impl ElasticVit {
    /// Fresh parameters, initialised as the IR says.
    pub fn new(graph: Graph, device: Device) -> Self {
        let width = graph.space.max_width();
        let params = graph
            .params
            .iter()
            .map(|p| {
                let shape: Vec<i64> = p.shape_at(width).iter().map(|&d| d as i64).collect();
                init_tensor(&shape, p.init, device)
            })
            .collect();
        ElasticVit { graph, params, specialised: RefCell::default(), compute_kind: Kind::Float }
    }

    /// Parameters from named tensors (weight keys as in the IR); every parameter must be present with its
    /// supergraph shape.
    pub fn from_named(graph: Graph, mut named: HashMap<String, Tensor>) -> Result<Self> {
        let width = graph.space.max_width();
        let mut params = Vec::with_capacity(graph.params.len());
        for p in &graph.params {
            let Some(t) = named.remove(&p.name) else { bail!("the weights have no `{}`", p.name) };
            let expected: Vec<i64> = p.shape_at(width).iter().map(|&d| d as i64).collect();
            if t.size() != expected {
                bail!("`{}` has shape {:?}, the supergraph expects {:?}", p.name, t.size(), expected);
            }
            params.push(t);
        }
        Ok(ElasticVit { graph, params, specialised: RefCell::default(), compute_kind: Kind::Float })
    }

    /// Runs the matmuls and convolutions in `kind` (e.g. `BFloat16` for mixed precision: parameters, norms
    /// and the residual stream stay f32, as autocast does). `Float` is exact f32.
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute_kind = kind;
    }

    /// The supergraph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Parameters in IR order.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// `(weight key, tensor)` pairs, for checkpoints.
    pub fn named_params(&self) -> Vec<(String, &Tensor)> {
        self.graph.params.iter().map(|p| p.name.clone()).zip(&self.params).collect()
    }

    /// Turns gradient tracking on or off for every parameter.
    pub fn set_requires_grad(&mut self, on: bool) {
        self.params = self.params.iter().map(|p| p.detach().set_requires_grad(on)).collect();
    }

    /// Final-normed tokens `[N, 1 + P, w]` of sub-network `subnet` on `images` `[N, 3, H, W]`. `masks` `[N, P]`
    /// (bool) replaces masked patch tokens by the mask token (iBOT). Images smaller than the configured size
    /// (local crops) get a bicubically resized position embedding.
    pub fn forward(&self, images: &Tensor, subnet: SubnetSpec, masks: Option<&Tensor>) -> Tensor {
        self.forward_train(images, subnet, masks, 0.0)
    }

    /// [`ElasticVit::forward`] with stochastic depth for training: each residual branch of each block is
    /// dropped per sample with probability `drop_path` and the kept ones scaled by `1 / (1 − drop_path)`
    /// (uniform over blocks, as POA configures dinov2's drop-path). Draws from libtorch's generator.
    pub fn forward_train(&self, images: &Tensor, subnet: SubnetSpec, masks: Option<&Tensor>, drop_path: f64) -> Tensor {
        let mut cache = self.specialised.borrow_mut();
        let plan = cache.entry(subnet).or_insert_with(|| Specialised::new(self.graph.clone(), subnet));
        let graph = &plan.graph;
        let param = |id: usize| view_of(&self.params[id], &graph.params[id].view);
        let kind = self.compute_kind;
        let low = |t: &Tensor| if t.kind() == kind { t.shallow_clone() } else { t.to_kind(kind) };
        let mut values: Vec<Tensor> = Vec::with_capacity(graph.nodes.len());
        for (index, node) in graph.nodes.iter().enumerate() {
            let x = |i: usize| &values[node.inputs[i]];
            let out = match node.op {
                Op::Image => images.shallow_clone(),
                Op::PatchEmbed { weight, bias, patch } => {
                    let p = patch as i64;
                    let patches = low(x(0)).conv2d(&low(&param(weight)), Some(low(&param(bias))), [p, p], [0, 0], [1, 1], 1);
                    patches.flatten(2, 3).transpose(1, 2).to_kind(Kind::Float)
                }
                Op::MaskTokens { mask_token } => match masks {
                    Some(m) => param(mask_token).where_self(&m.unsqueeze(-1), x(0)),
                    None => x(0).shallow_clone(),
                },
                Op::PrependCls { cls_token } => {
                    let (n, w) = (x(0).size()[0], subnet.width as i64);
                    Tensor::cat(&[param(cls_token).expand([n, 1, w], false), x(0).shallow_clone()], 1)
                }
                Op::AddPosEmbed { pos_embed } => x(0) + resized_pos_embed(&param(pos_embed), x(0).size()[1] - 1),
                Op::LayerNorm { weight, bias, eps } => {
                    x(0).layer_norm([subnet.width as i64], Some(param(weight)), Some(param(bias)), eps as f64, false)
                }
                Op::Linear { weight, bias, alpha } => {
                    // (α·x)·Wᵀ computed as x·(α·W)ᵀ: the weight is far smaller than the activations.
                    let mut weight = if alpha != 1.0 { param(weight) * alpha as f64 } else { param(weight) };
                    let mut bias = bias.map(param);
                    if let Some(gamma) = plan.scaled_by[index].map(param) {
                        weight = weight * gamma.unsqueeze(1);
                        bias = bias.map(|b| b * gamma);
                    }
                    low(x(0)).linear(&low(&weight), bias.map(|b| low(&b)))
                }
                Op::Attention { head_dim, q_scaled } => attention(x(0), head_dim as i64, q_scaled),
                Op::Gelu => x(0).gelu("none"),
                Op::LayerScale { .. } if plan.folded[index] => x(0).shallow_clone(),
                Op::LayerScale { gamma } => x(0) * param(gamma),
                Op::Add if drop_path > 0.0 && node.block.is_some() => {
                    // A residual add inside a block: `x + branch`, the branch dropped per sample.
                    let n = x(1).size()[0];
                    let keep = Tensor::empty([n, 1, 1], (Kind::Float, x(1).device())).bernoulli_float_(1.0 - drop_path) / (1.0 - drop_path);
                    x(0) + x(1) * keep
                }
                Op::Add => x(0) + x(1),
                Op::ClsToken => x(0).select(1, 0),
                Op::Normalize { .. } | Op::PatchTokens | Op::MeanTokens | Op::Concat => {
                    unreachable!("{} is added by lowering passes, never by specialise", node.op.kind())
                }
            };
            values.push(out);
        }
        values.swap_remove(graph.output)
    }
}

/// Multi-head self-attention on packed qkv `[N, T, 3w]` (`q_scaled`: q already carries `head_dim^-0.5`).
fn attention(qkv: &Tensor, head_dim: i64, q_scaled: bool) -> Tensor {
    let size = qkv.size();
    let (n, t, width) = (size[0], size[1], size[2] / 3);
    let qkv = qkv.view([n, t, 3, width / head_dim, head_dim]).permute([2, 0, 3, 1, 4]);
    let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
    let scale = if q_scaled { 1.0 } else { (head_dim as f64).powf(-0.5) };
    // Softmax in f32 whatever the compute kind (as autocast does); libtorch's fused CPU attention is as fast in
    // f32 but far slower in bf16 backward, so the three steps are spelled out.
    let probs = (&q * scale).matmul(&k.transpose(-2, -1)).softmax(-1, Kind::Float).to_kind(q.kind());
    let out = probs.matmul(&v);
    out.transpose(1, 2).reshape([n, t, width])
}

/// The position embedding `[1, 1 + P, w]` for `patches` patch tokens: itself, or its patch grid resized
/// bicubically (as dinov2 does for local crops).
fn resized_pos_embed(pos: &Tensor, patches: i64) -> Tensor {
    let size = pos.size();
    let (stored, width) = (size[1] - 1, size[2]);
    if stored == patches {
        return pos.shallow_clone();
    }
    let (from, to) = ((stored as f64).sqrt() as i64, (patches as f64).sqrt() as i64);
    let grid = pos.narrow(1, 1, stored).reshape([1, from, from, width]).permute([0, 3, 1, 2]);
    let resized = grid.upsample_bicubic2d([to, to], false, None, None).permute([0, 2, 3, 1]).reshape([1, to * to, width]);
    Tensor::cat(&[pos.narrow(1, 0, 1), resized], 1)
}
