//! The graph: a list of nodes in topological order, each producing one value.

use crate::arch::VitArch;
use crate::error::{IrError, Result};
use crate::param::{Param, ParamId};
use crate::space::{ElasticSpace, SubnetSpec};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// A value is named by the index of the node that produces it.
pub type ValueId = usize;

/// The operations of a ViT, at the granularity a reader of the paper thinks in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// The graph input: images `[N, C, H, W]`, normalised by mean/std unless a [`Op::Normalize`] follows.
    Image,
    /// Per-channel input normalisation `(x - mean) / std` of raw `[0, 1]` pixels `[N, C, H, W]`; inserted by
    /// `normalize-input` (`--bake-normalize`) and folded into the patch embedding by `fold-normalize`.
    Normalize {
        /// Per-channel mean.
        mean: Vec<f32>,
        /// Per-channel standard deviation.
        std: Vec<f32>,
    },
    /// Non-overlapping `patch × patch` convolution, flattened to tokens `[N, P, D]`.
    PatchEmbed {
        /// Kernel `[D, C, patch, patch]`.
        weight: ParamId,
        /// Bias `[D]`.
        bias: ParamId,
        /// Patch side (kernel size and stride).
        patch: usize,
    },
    /// iBOT masking: patch tokens selected by a training-time mask are replaced by `mask_token`.
    MaskTokens {
        /// The learned mask token `[1, D]`.
        mask_token: ParamId,
    },
    /// Prepends the class token: `[N, P, D] → [N, 1 + P, D]`.
    PrependCls {
        /// The learned class token `[1, 1, D]`.
        cls_token: ParamId,
    },
    /// Adds the learned position embedding.
    AddPosEmbed {
        /// `[1, 1 + P, D]`.
        pos_embed: ParamId,
    },
    /// LayerNorm over the last axis.
    LayerNorm {
        /// Scale `[D]`.
        weight: ParamId,
        /// Shift `[D]`.
        bias: ParamId,
        /// Added to the variance.
        eps: f32,
    },
    /// `y = (alpha · x) · Wᵀ + b`; `alpha` is POA's width scaling factor, set by specialisation and folded
    /// into `W` by the `fold_alpha` pass.
    Linear {
        /// `[out, in]`.
        weight: ParamId,
        /// `[out]`, if any.
        bias: Option<ParamId>,
        /// Factor on the input.
        alpha: f32,
    },
    /// Multi-head self-attention core on packed qkv `[N, T, 3D] → [N, T, D]`, logits scaled by
    /// `head_dim^-0.5` — unless `q_scaled`, when that factor is already folded into the q rows of qkv.
    Attention {
        /// Channels per head (heads = D / head_dim).
        head_dim: usize,
        /// The attention scale is folded into q (by `fold-attention-scale`).
        #[serde(default, skip_serializing_if = "is_false")]
        q_scaled: bool,
    },
    /// Exact (erf) GELU.
    Gelu,
    /// LayerScale: multiplies by a learned per-channel `gamma`.
    LayerScale {
        /// `[D]`.
        gamma: ParamId,
    },
    /// Element-wise sum of two values (residual connection).
    Add,
    /// Takes the class token: `[N, T, D] → [N, D]`.
    ClsToken,
    /// Takes the patch tokens: `[N, 1 + P, D] → [N, P, D]`.
    PatchTokens,
    /// Mean over tokens (average pooling): `[N, P, D] → [N, D]`.
    MeanTokens,
    /// Concatenates two or more values on the last axis: `[N, Dᵢ] → [N, ΣDᵢ]`.
    Concat,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Op {
    /// The parameters the op reads.
    pub fn params(&self) -> Vec<ParamId> {
        self.clone().params_mut().into_iter().map(|p| *p).collect()
    }

    /// How many values the op reads; `None` for [`Op::Concat`], which reads two or more.
    pub fn arity(&self) -> Option<usize> {
        match self {
            Op::Image => Some(0),
            Op::Add => Some(2),
            Op::Concat => None,
            _ => Some(1),
        }
    }

    /// Mutable access to the parameter ids, for renumbering.
    pub fn params_mut(&mut self) -> Vec<&mut ParamId> {
        match self {
            Op::PatchEmbed { weight, bias, .. } | Op::LayerNorm { weight, bias, .. } => vec![weight, bias],
            Op::Linear { weight, bias, .. } => std::iter::once(weight).chain(bias.as_mut()).collect(),
            Op::MaskTokens { mask_token: p } | Op::PrependCls { cls_token: p } | Op::AddPosEmbed { pos_embed: p } => {
                vec![p]
            }
            Op::LayerScale { gamma } => vec![gamma],
            Op::Image
            | Op::Normalize { .. }
            | Op::Attention { .. }
            | Op::Gelu
            | Op::Add
            | Op::ClsToken
            | Op::PatchTokens
            | Op::MeanTokens
            | Op::Concat => Vec::new(),
        }
    }

    /// Short lower-case name used when printing a graph.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Image => "image",
            Op::Normalize { .. } => "normalize",
            Op::PatchEmbed { .. } => "patch_embed",
            Op::MaskTokens { .. } => "mask_tokens",
            Op::PrependCls { .. } => "prepend_cls",
            Op::AddPosEmbed { .. } => "add_pos_embed",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Linear { .. } => "linear",
            Op::Attention { .. } => "attention",
            Op::Gelu => "gelu",
            Op::LayerScale { .. } => "layer_scale",
            Op::Add => "add",
            Op::ClsToken => "cls_token",
            Op::PatchTokens => "patch_tokens",
            Op::MeanTokens => "mean_tokens",
            Op::Concat => "concat",
        }
    }
}

/// One node: an op applied to earlier values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Readable name, unique in the graph (e.g. `blocks.3.attn.qkv`).
    pub name: String,
    /// What the node computes.
    pub op: Op,
    /// Values it reads, all produced by earlier nodes.
    pub inputs: Vec<ValueId>,
    /// The transformer block the node belongs to, if any.
    pub block: Option<usize>,
}

/// A transformer block as a whole: the value entering it and the value leaving it. Dropping a block (elastic
/// depth) rewires every use of `output` to `input`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSpan {
    /// Index of the block in the supergraph (kept through specialisation, so weight names stay meaningful).
    pub index: usize,
    /// The residual stream entering the block.
    pub input: ValueId,
    /// The residual stream leaving the block.
    pub output: ValueId,
}

/// An elastic supergraph, or, once `subnet` is set, one static sub-network of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Hyper-parameters the graph was built from.
    pub arch: VitArch,
    /// The elastic space of the supergraph.
    pub space: ElasticSpace,
    /// `Some` once the graph is specialised to one sub-network (then every dim is fixed).
    pub subnet: Option<SubnetSpec>,
    /// Parameters, referenced by index from ops.
    pub params: Vec<Param>,
    /// Nodes in topological order; node `i` produces value `i`.
    pub nodes: Vec<Node>,
    /// The transformer blocks, in order.
    pub blocks: Vec<BlockSpan>,
    /// The value the graph returns.
    pub output: ValueId,
}

impl Graph {
    /// Width the graph computes at: the sub-network's, or the largest of the space.
    pub fn width(&self) -> usize {
        self.subnet.map_or(self.space.max_width(), |s| s.width)
    }

    /// Looks a parameter up by its weight name.
    pub fn param_by_name(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Checks that every node reads as many values as its op takes, all from earlier nodes, and that every
    /// parameter id exists.
    pub fn validate(&self) -> Result<()> {
        for (i, node) in self.nodes.iter().enumerate() {
            let arity_ok = match node.op.arity() {
                Some(n) => node.inputs.len() == n,
                None => node.inputs.len() >= 2,
            };
            if !arity_ok {
                let takes = node.op.arity().map_or("two or more".to_string(), |n| n.to_string());
                return Err(IrError::Malformed(format!("node {} ({}) reads {} values, its op takes {takes}", i, node.name, node.inputs.len())));
            }
            if let Some(bad) = node.inputs.iter().find(|&&v| v >= i) {
                return Err(IrError::Malformed(format!("node {} ({}) reads %{bad}, not an earlier value", i, node.name)));
            }
            if let Some(bad) = node.op.params().into_iter().find(|&p| p >= self.params.len()) {
                return Err(IrError::Malformed(format!("node {} reads param #{bad}, of {}", node.name, self.params.len())));
            }
        }
        if self.output >= self.nodes.len() {
            return Err(IrError::Malformed(format!("output %{} does not exist", self.output)));
        }
        Ok(())
    }

    /// Removes the nodes for which `keep` is false. Every use of a removed value `v` is redirected to
    /// `replace[v]` (followed transitively), so removed nodes must have a replacement if they are used.
    pub fn remove_nodes(&mut self, keep: &[bool], replace: &HashMap<ValueId, ValueId>) -> Result<()> {
        let resolve = |mut v: ValueId| {
            while let Some(&r) = replace.get(&v) {
                v = r;
            }
            v
        };
        let mut new_id = vec![usize::MAX; self.nodes.len()];
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for (i, mut node) in std::mem::take(&mut self.nodes).into_iter().enumerate() {
            if !keep[i] {
                continue;
            }
            for input in &mut node.inputs {
                let target = new_id[resolve(*input)];
                if target == usize::MAX {
                    return Err(IrError::Malformed(format!("{} reads a removed value %{input}", node.name)));
                }
                *input = target;
            }
            new_id[i] = nodes.len();
            nodes.push(node);
        }
        self.nodes = nodes;
        let remap = |v: ValueId| new_id[resolve(v)];
        self.output = remap(self.output);
        self.blocks = self
            .blocks
            .iter()
            .filter(|b| keep[b.output])
            .map(|b| BlockSpan { index: b.index, input: remap(b.input), output: remap(b.output) })
            .collect();
        if self.output == usize::MAX {
            return Err(IrError::Malformed("the graph output was removed".into()));
        }
        Ok(())
    }

    /// Removes each node that is a key of `bypass`, every use of it now reading `bypass[node]` instead (which
    /// must be an earlier value). Returns whether anything was removed.
    pub fn bypass(&mut self, bypass: &HashMap<ValueId, ValueId>) -> Result<bool> {
        if bypass.is_empty() {
            return Ok(false);
        }
        let keep: Vec<bool> = (0..self.nodes.len()).map(|i| !bypass.contains_key(&i)).collect();
        self.remove_nodes(&keep, bypass)?;
        Ok(true)
    }

    /// How many times each value is read: by nodes, and once more if it is the graph output.
    pub fn consumers(&self) -> Vec<usize> {
        let mut count = vec![0usize; self.nodes.len()];
        self.nodes.iter().flat_map(|n| &n.inputs).for_each(|&v| count[v] += 1);
        count[self.output] += 1;
        count
    }

    /// Inserts a node `op` reading `value` right after it, and makes every other reader of `value` (nodes, the
    /// output, block spans) read the new node instead. Returns the new node's value.
    pub fn insert_after(&mut self, value: ValueId, name: impl Into<String>, op: Op) -> ValueId {
        let new = value + 1;
        let shift = |v: ValueId| if v == value { new } else if v > value { v + 1 } else { v };
        for node in &mut self.nodes {
            node.inputs.iter_mut().for_each(|v| *v = shift(*v));
        }
        for block in &mut self.blocks {
            *block = BlockSpan { index: block.index, input: shift(block.input), output: shift(block.output) };
        }
        self.output = shift(self.output);
        let block = self.nodes[value].block;
        self.nodes.insert(new, Node { name: name.into(), op, inputs: vec![value], block });
        new
    }

    /// Appends a node reading `inputs` and returns its value.
    pub fn push(&mut self, name: impl Into<String>, op: Op, inputs: Vec<ValueId>, block: Option<usize>) -> ValueId {
        self.nodes.push(Node { name: name.into(), op, inputs, block });
        self.nodes.len() - 1
    }

    /// Adds a parameter and returns its id.
    pub fn add_param(&mut self, param: Param) -> ParamId {
        self.params.push(param);
        self.params.len() - 1
    }

    /// Serialises the graph as JSON (the `supergraph.json` of a checkpoint).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a graph always serialises")
    }

    /// Reads a graph written by [`Graph::to_json`] and validates it.
    pub fn from_json(text: &str) -> Result<Self> {
        let graph: Graph =
            serde_json::from_str(text).map_err(|e| IrError::Malformed(format!("not a poac supergraph: {e}")))?;
        graph.arch.validate()?;
        if graph.space != ElasticSpace::of(&graph.arch) {
            return Err(IrError::Malformed("the elastic space does not match the architecture".into()));
        }
        graph.validate()?;
        crate::build::check_known(&graph)?;
        Ok(graph)
    }
}

impl fmt::Display for Graph {
    /// One op a line, with its parameters (elastic dims as `W`, folded constants after them) and the shape of
    /// its value (batch `N`): `%7 = linear blocks.0.attn.qkv (%6) weight[576, 192]×0.5 bias[576] : [N, 65, 576]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.subnet {
            Some(s) => format!("sub-network {s}"),
            None => format!("elastic supergraph, widths {:?}, depths {:?}", self.space.widths, self.space.depths),
        };
        writeln!(f, "graph ({what}), {} nodes, {} params", self.nodes.len(), self.params.len())?;
        let shapes = crate::shape::infer(self).ok();
        for (i, node) in self.nodes.iter().enumerate() {
            let inputs: Vec<String> = node.inputs.iter().map(|v| format!("%{v}")).collect();
            write!(f, "  %{i} = {} {} ({})", node.op.kind(), node.name, inputs.join(", "))?;
            for p in node.op.params() {
                let param = &self.params[p];
                let dims: Vec<String> = param.shape.iter().map(|d| d.to_string()).collect();
                let key = param.name.rsplit('.').next().unwrap_or("");
                write!(f, " {key}[{}]", dims.join(", "))?;
                if param.view.scale != 1.0 {
                    write!(f, "×{}", param.view.scale)?;
                }
                for fold in &param.view.folds {
                    write!(f, " {fold}")?;
                }
            }
            match &node.op {
                Op::Linear { alpha, .. } if *alpha != 1.0 => write!(f, " α={alpha}")?,
                Op::Attention { head_dim, q_scaled } => {
                    write!(f, " head_dim={head_dim}{}", if *q_scaled { " (scale folded into q)" } else { "" })?
                }
                Op::Normalize { mean, std } => write!(f, " mean={mean:?} std={std:?}")?,
                _ => {}
            }
            if let Some(shape) = shapes.as_ref().map(|s| &s[i]) {
                let dims: Vec<String> = std::iter::once("N".to_string()).chain(shape.iter().map(|d| d.to_string())).collect();
                write!(f, " : [{}]", dims.join(", "))?;
            }
            writeln!(f)?;
        }
        write!(f, "  return %{}", self.output)
    }
}
