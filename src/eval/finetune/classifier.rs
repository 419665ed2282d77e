//! The network being fine-tuned: one sub-network of a pre-trained run cut out as a stand-alone ViT — a
//! supergraph whose only sub-network is (W, D), its kept blocks renumbered 0..D, holding the weights `poac lower`
//! emits for that sub-network (first channels, α folded in; LayerScale stays a trainable parameter) — with a
//! linear classifier on the class token.

use crate::lower::Source;
use crate::model::{init_tensor, ElasticVit};
use crate::train::adamw::ParamGroup;
use crate::train::param_groups::{backbone_group, head_group};
use anyhow::{bail, Result};
use poac_ir::{build, Graph, Init, SubnetSpec, VitArch, Weights};
use poac_passes::add_head::{HEAD_BIAS, HEAD_WEIGHT};
use poac_passes::{dce::Dce, fold_alpha::FoldAlpha, specialise::Specialise, Pass};
use std::collections::HashMap;
use tch::{no_grad, Device, Kind, Tensor};

/// Standard deviation of the classifier's initial weights (MAE's fine-tuning head; the bias starts at 0): the
/// logits start near 0, so the first steps do not push large gradients into the pre-trained backbone.
const HEAD_INIT_STD: f32 = 2e-5;
/// Images per forward pass when evaluating.
const EVAL_BATCH: i64 = 250;

/// Sub-network `subnet` of `supergraph` as a stand-alone ViT: the supergraph of an elastic space holding only
/// (W, D), and its weights — read from `weights` through the views `specialise` and `fold-alpha` give them, so
/// they are the values `poac lower` writes, keyed by the stand-alone names (`blocks.0..D`).
pub fn standalone(supergraph: &Graph, weights: &impl Weights, subnet: SubnetSpec) -> Result<(Graph, HashMap<String, Tensor>)> {
    let mut sliced = supergraph.clone();
    for pass in [&Specialise { subnet } as &dyn Pass, &FoldAlpha, &Dce] {
        pass.run(&mut sliced)?;
    }
    let (width, depth) = (subnet.width, subnet.depth);
    let arch = VitArch { min_embed_dim: width, max_embed_dim: width, min_depth: depth, max_depth: depth, ..supergraph.arch.clone() };
    let graph = build::supergraph(&arch)?;
    if graph.params.len() != sliced.params.len() {
        bail!("internal error: {subnet} has {} parameters, its stand-alone ViT {}", sliced.params.len(), graph.params.len());
    }
    let mut named = HashMap::with_capacity(graph.params.len());
    // Both graphs list their parameters in the builder's order (stem, kept blocks in order, final norm).
    for (param, source) in graph.params.iter().zip(&sliced.params) {
        let shape = param.shape_at(width);
        if without_block(&param.name) != without_block(&source.name) || source.static_shape().as_ref() != Some(&shape) {
            bail!("internal error: stand-alone `{}` {shape:?} does not line up with `{}` {:?}", param.name, source.name, source.shape);
        }
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        named.insert(param.name.clone(), Tensor::from_slice(&weights.read(source)?).view(dims.as_slice()));
    }
    Ok((graph, named))
}

/// A weight name without its block: `blocks.7.attn.qkv.weight` → `attn.qkv.weight`; others unchanged.
fn without_block(name: &str) -> &str {
    name.strip_prefix("blocks.").and_then(|rest| rest.split_once('.')).map_or(name, |(_, rest)| rest)
}

/// A stand-alone ViT sub-network and its classifier.
pub struct Classifier {
    backbone: ElasticVit,
    /// `head.weight` `[classes, W]` and `head.bias` `[classes]`.
    head: [Tensor; 2],
    compute_kind: Kind,
}

impl Classifier {
    /// Sub-network `subnet` of `source` with a fresh classifier for `classes` classes, on `device`, tracking
    /// gradients.
    pub fn from_source(source: &Source, subnet: SubnetSpec, classes: usize, device: Device) -> Result<Self> {
        let (graph, named) = standalone(&source.supergraph, &source.weights, subnet)?;
        let backbone = ElasticVit::from_named(graph, named.into_iter().map(|(k, t)| (k, t.to_device(device))).collect())?;
        let (classes, width) = (classes as i64, subnet.width as i64);
        let head = [init_tensor(&[classes, width], Init::TruncNormal(HEAD_INIT_STD), device), init_tensor(&[classes], Init::Constant(0.0), device)];
        let mut model = Classifier { backbone, head, compute_kind: Kind::Float };
        model.set_requires_grad(true);
        Ok(model)
    }

    /// The stand-alone supergraph.
    pub fn graph(&self) -> &Graph {
        self.backbone.graph()
    }

    /// The (only) sub-network of the stand-alone ViT.
    pub fn subnet(&self) -> SubnetSpec {
        self.graph().space.intact()
    }

    /// Logits `[N, classes]` of `images`, with stochastic depth `drop_path` (0 to evaluate).
    pub fn logits(&self, images: &Tensor, drop_path: f64) -> Tensor {
        let tokens = self.backbone.forward_train(images, self.subnet(), None, drop_path);
        tokens.select(1, 0).linear(&self.head[0], Some(&self.head[1]))
    }

    /// f32 logits of `images` in batches, without gradients, whatever the training precision.
    pub fn eval_logits(&mut self, images: &Tensor) -> Tensor {
        self.backbone.set_compute_kind(Kind::Float);
        let chunks: Vec<Tensor> = no_grad(|| images.split(EVAL_BATCH, 0).iter().map(|x| self.logits(x, 0.0)).collect());
        self.backbone.set_compute_kind(self.compute_kind);
        Tensor::cat(&chunks, 0)
    }

    /// Runs the backbone's training matmuls in `kind` (see `ElasticVit::set_compute_kind`).
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute_kind = kind;
        self.backbone.set_compute_kind(kind);
    }

    /// `(key, tensor)` of every parameter — the backbone's timm keys, then `head.weight` and `head.bias` — as the
    /// checkpoint stores them.
    pub fn named_params(&self) -> Vec<(String, &Tensor)> {
        let mut named = self.backbone.named_params();
        named.extend([HEAD_WEIGHT, HEAD_BIAS].into_iter().map(String::from).zip(&self.head));
        named
    }

    /// The parameters in [`Classifier::named_params`] order.
    pub fn params(&self) -> Vec<Tensor> {
        self.named_params().into_iter().map(|(_, t)| t.shallow_clone()).collect()
    }

    /// AdamW groups in [`Classifier::named_params`] order: layer-wise lr decay over the D blocks of the
    /// stand-alone ViT (block `i` at `layer_decay^(D − i)`, embeddings at `layer_decay^(D + 1)`, no extra
    /// patch-embedding factor), the final norm and the classifier at the full lr.
    pub fn param_groups(&self, layer_decay: f64) -> Vec<ParamGroup> {
        let blocks = self.subnet().depth;
        self.named_params()
            .iter()
            .map(|(name, _)| if [HEAD_WEIGHT, HEAD_BIAS].contains(&name.as_str()) { head_group(name) } else { backbone_group(name, blocks, layer_decay, 1.0) })
            .collect()
    }

    /// A copy of the parameters that tracks no gradients and evaluates in f32 (the EMA, the best weights).
    pub fn snapshot(&self) -> Self {
        let named = self.backbone.named_params().into_iter().map(|(k, t)| (k, t.detach().copy())).collect();
        let backbone = ElasticVit::from_named(self.graph().clone(), named).expect("a model's own parameters fit its graph");
        Classifier { backbone, head: self.head.each_ref().map(|t| t.detach().copy()), compute_kind: Kind::Float }
    }

    /// The model EMA's update towards `model`: `p ← decay·p + (1 − decay)·q` for every parameter.
    pub fn update_towards(&self, model: &Classifier, decay: f64) {
        no_grad(|| {
            for (p, q) in self.params().iter().zip(model.params()) {
                let _ = p.shallow_clone().lerp_(&q, 1.0 - decay);
            }
        });
    }

    /// Overwrites every parameter with `model`'s.
    pub fn copy_from(&self, model: &Classifier) {
        no_grad(|| {
            for (p, q) in self.params().iter().zip(model.params()) {
                p.shallow_clone().copy_(&q);
            }
        });
    }

    fn set_requires_grad(&mut self, on: bool) {
        self.backbone.set_requires_grad(on);
        self.head = self.head.each_ref().map(|t| t.detach().set_requires_grad(on));
    }
}
