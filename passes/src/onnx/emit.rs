//! Emission: a static, specialised graph and its weights → an ONNX model (opset 17, LayerNormalization).

use super::proto::*;
use poac_ir::{error::Result, shape, Graph, IrError, Op, Param, ParamId};
use std::collections::HashSet;

/// ONNX opset the emitter targets.
pub const OPSET: i64 = 17;
/// ONNX IR version matching opset 17.
pub const IR_VERSION: i64 = 8;
/// Name of the model's input.
pub const INPUT: &str = "image";

/// Batch axis of the emitted model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// Any batch size (symbolic `batch`).
    Dynamic,
    /// A fixed batch size.
    Static(usize),
}

/// What to write besides the graph.
#[derive(Clone, Debug)]
pub struct EmitOptions {
    /// The batch axis.
    pub batch: Batch,
    /// `metadata_props` of the model (width, depth, normalisation, source checkpoint, ...).
    pub metadata: Vec<(String, String)>,
}

/// An emitted model: the ONNX protobuf with each parameter's initializer still empty (no `raw_data`), and for
/// each of those the parameter whose values belong there. [`OnnxModel::write`] streams the values into the
/// file one parameter at a time; [`OnnxModel::encoded_len`] is the file's size without reading any weight.
pub struct OnnxModel {
    /// The model; parameter initializers have dims, type and name but no data yet.
    pub proto: ModelProto,
    /// One entry per initializer of `proto`'s graph: where its data comes from, `None` when it is inline.
    pub(crate) sources: Vec<Option<ParamSource>>,
}

/// The values of one parameter initializer: the parameter (with its view and folds), optionally transposed.
pub(crate) struct ParamSource {
    pub(crate) param: Param,
    pub(crate) transpose: bool,
}

impl ParamSource {
    /// Bytes of the initializer's data (f32).
    pub(crate) fn byte_len(&self) -> usize {
        4 * self.param.static_shape().expect("checked at emission").iter().product::<usize>()
    }
}

impl OnnxModel {
    /// Bytes of parameter data in the model (what dominates its size).
    pub fn weight_bytes(&self) -> usize {
        self.sources.iter().flatten().map(ParamSource::byte_len).sum()
    }
}

/// Emits a specialised, shape-checked graph as an ONNX model. Linear weights are written transposed
/// (`[in, out]`) so that a linear is one `MatMul` + `Add`.
pub fn emit(g: &Graph, options: &EmitOptions) -> Result<OnnxModel> {
    let subnet = g.subnet.ok_or_else(|| IrError::Malformed("emit needs a specialised graph; run specialise".into()))?;
    if let Some(clash) = g.nodes.iter().find(|n| g.param_by_name(&n.name).is_some()) {
        return Err(IrError::Malformed(format!("node `{}` has the name of a parameter; ONNX values must be unique", clash.name)));
    }
    let shapes = shape::infer(g)?;
    let mut e = Emitter { g, nodes: Vec::new(), initializers: Vec::new(), sources: Vec::new(), names: HashSet::new() };
    let mut values: Vec<String> = Vec::with_capacity(g.nodes.len());
    for node in &g.nodes {
        let name = e.lower_node(node, &values)?;
        values.push(name);
    }
    let batch = match options.batch {
        Batch::Dynamic => DimensionValue::DimParam("batch".into()),
        Batch::Static(n) => DimensionValue::DimValue(n as i64),
    };
    let dims = |shape: &[usize]| {
        std::iter::once(batch.clone()).chain(shape.iter().map(|&d| DimensionValue::DimValue(d as i64))).collect()
    };
    let image = g.nodes.iter().position(|n| matches!(n.op, Op::Image)).ok_or_else(|| IrError::Malformed("no image input".into()))?;
    let graph = GraphProto {
        node: e.nodes,
        name: format!("poac_vit_{subnet}"),
        initializer: e.initializers,
        input: vec![value_info(INPUT, dims(&shapes[image]))],
        output: vec![value_info(&values[g.output], dims(&shapes[g.output]))],
    };
    let proto = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "poac".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("POA elastic ViT sub-network {subnet}, lowered by poac"),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        metadata_props: options
            .metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto { key: k.clone(), value: v.clone() })
            .collect(),
    };
    Ok(OnnxModel { proto, sources: e.sources })
}

fn value_info(name: &str, dims: Vec<DimensionValue>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto { dim: dims.into_iter().map(|d| Dimension { value: Some(d) }).collect() }),
            }),
        }),
    }
}

struct Emitter<'a> {
    g: &'a Graph,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    sources: Vec<Option<ParamSource>>,
    names: HashSet<String>,
}

impl Emitter<'_> {
    /// Appends one ONNX node and returns the name of its output.
    fn op(&mut self, op_type: &str, inputs: &[&str], output: String, attribute: Vec<AttributeProto>) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: output.clone(),
            op_type: op_type.into(),
            attribute,
            domain: String::new(),
        });
        output
    }

    /// Adds an initializer once (by name), with where its data comes from, and returns its name.
    fn initializer(&mut self, tensor: TensorProto, source: Option<ParamSource>) -> String {
        let name = tensor.name.clone();
        if self.names.insert(name.clone()) {
            self.initializers.push(tensor);
            self.sources.push(source);
        }
        name
    }

    fn constant(&mut self, tensor: TensorProto) -> String {
        self.initializer(tensor, None)
    }

    fn scalar(&mut self, name: &str, value: f32) -> String {
        self.constant(TensorProto::f32(name, &[], &[value]))
    }

    fn index(&mut self, value: i64) -> String {
        self.constant(TensorProto::i64(format!("const.index{value}"), &[], &[value]))
    }

    fn shape(&mut self, name: &str, values: &[i64]) -> String {
        self.constant(TensorProto::i64(format!("const.{name}"), &[values.len()], values))
    }

    /// A parameter's initializer, named after its weight key, its data left to [`OnnxModel::write`];
    /// `transpose` swaps a 2-D weight.
    fn param(&mut self, id: ParamId, transpose: bool) -> Result<String> {
        let param = &self.g.params[id];
        let shape = param
            .static_shape()
            .ok_or_else(|| IrError::Malformed(format!("`{}` still has elastic dims", param.name)))?;
        let dims = match (transpose, shape.as_slice()) {
            (true, &[rows, cols]) => vec![cols, rows],
            (true, _) => return Err(IrError::Malformed(format!("`{}` is not 2-D and cannot be transposed", param.name))),
            (false, _) => shape,
        };
        let tensor = TensorProto::f32(&param.name, &dims, &[]);
        Ok(self.initializer(tensor, Some(ParamSource { param: param.clone(), transpose })))
    }

    fn lower_node(&mut self, node: &poac_ir::Node, values: &[String]) -> Result<String> {
        let input = |i: usize| values[node.inputs[i]].clone();
        let out = node.name.clone();
        let sub = |s: &str| format!("{}/{s}", node.name);
        let width = self.g.width() as i64;
        Ok(match &node.op {
            Op::Image => INPUT.to_string(),
            Op::Normalize { mean, std } => {
                let channels = [1, mean.len(), 1, 1];
                let m = self.constant(TensorProto::f32(sub("mean"), &channels, mean));
                let s = self.constant(TensorProto::f32(sub("std"), &channels, std));
                let centred = self.op("Sub", &[&input(0), &m], sub("centred"), vec![]);
                self.op("Div", &[&centred, &s], out, vec![])
            }
            &Op::PatchEmbed { weight, bias, patch } => {
                let (w, b) = (self.param(weight, false)?, self.param(bias, false)?);
                let p = patch as i64;
                let attrs = vec![AttributeProto::ints("kernel_shape", &[p, p]), AttributeProto::ints("strides", &[p, p])];
                let conv = self.op("Conv", &[&input(0), &w, &b], sub("conv"), attrs);
                let shape = self.shape("channels_by_positions", &[0, width, -1]);
                let flat = self.op("Reshape", &[&conv, &shape], sub("flatten"), vec![]);
                self.op("Transpose", &[&flat], out, vec![AttributeProto::ints("perm", &[0, 2, 1])])
            }
            Op::MaskTokens { .. } => {
                return Err(IrError::Malformed("mask tokens are training-only; run strip-training before emit".into()))
            }
            &Op::PrependCls { cls_token } => {
                let cls = self.param(cls_token, false)?;
                let x = input(0);
                let batch = self.op("Shape", &[&x], sub("batch"), vec![AttributeProto::int("end", 1)]);
                let rest = self.shape("one_by_width", &[1, width]);
                let target = self.op("Concat", &[&batch, &rest], sub("cls_shape"), vec![AttributeProto::int("axis", 0)]);
                let cls = self.op("Expand", &[&cls, &target], sub("cls"), vec![]);
                self.op("Concat", &[&cls, &x], out, vec![AttributeProto::int("axis", 1)])
            }
            &Op::AddPosEmbed { pos_embed } => {
                let pos = self.param(pos_embed, false)?;
                self.op("Add", &[&input(0), &pos], out, vec![])
            }
            &Op::LayerNorm { weight, bias, eps } => {
                let (w, b) = (self.param(weight, false)?, self.param(bias, false)?);
                let attrs = vec![AttributeProto::int("axis", -1), AttributeProto::float("epsilon", eps)];
                self.op("LayerNormalization", &[&input(0), &w, &b], out, attrs)
            }
            &Op::Linear { weight, bias, alpha } => {
                let mut x = input(0);
                if alpha != 1.0 {
                    let a = self.scalar(&format!("{}.alpha", node.name), alpha);
                    x = self.op("Mul", &[&x, &a], sub("alpha"), vec![]);
                }
                let w = self.param(weight, true)?;
                match bias {
                    Some(bias) => {
                        let mm = self.op("MatMul", &[&x, &w], sub("matmul"), vec![]);
                        let b = self.param(bias, false)?;
                        self.op("Add", &[&mm, &b], out, vec![])
                    }
                    None => self.op("MatMul", &[&x, &w], out, vec![]),
                }
            }
            &Op::Attention { head_dim, q_scaled } => {
                let heads = width / head_dim as i64;
                let shape = self.shape(&format!("qkv_heads_{heads}x{head_dim}"), &[0, 0, 3, heads, head_dim as i64]);
                let split = self.op("Reshape", &[&input(0), &shape], sub("split_heads"), vec![]);
                // [N, T, 3, H, hd] → [3, N, H, T, hd]
                let packed = self.op("Transpose", &[&split], sub("qkv"), vec![AttributeProto::ints("perm", &[2, 0, 3, 1, 4])]);
                let axis0 = vec![AttributeProto::int("axis", 0)];
                let (i0, i1, i2) = (self.index(0), self.index(1), self.index(2));
                let mut q = self.op("Gather", &[&packed, &i0], sub("q"), axis0.clone());
                let k = self.op("Gather", &[&packed, &i1], sub("k"), axis0.clone());
                let v = self.op("Gather", &[&packed, &i2], sub("v"), axis0);
                if !q_scaled {
                    let scale = self.scalar(&format!("const.attn_scale_{head_dim}"), (head_dim as f32).powf(-0.5));
                    q = self.op("Mul", &[&q, &scale], sub("q_scaled"), vec![]);
                }
                let kt = self.op("Transpose", &[&k], sub("k_t"), vec![AttributeProto::ints("perm", &[0, 1, 3, 2])]);
                let logits = self.op("MatMul", &[&q, &kt], sub("logits"), vec![]);
                let probs = self.op("Softmax", &[&logits], sub("probs"), vec![AttributeProto::int("axis", -1)]);
                let heads_out = self.op("MatMul", &[&probs, &v], sub("context"), vec![]);
                let merged =
                    self.op("Transpose", &[&heads_out], sub("merge"), vec![AttributeProto::ints("perm", &[0, 2, 1, 3])]);
                let shape = self.shape("tokens_by_width", &[0, 0, width]);
                self.op("Reshape", &[&merged, &shape], out, vec![])
            }
            Op::Gelu => {
                let x = input(0);
                let sqrt2 = self.scalar("const.sqrt2", std::f32::consts::SQRT_2);
                let one = self.scalar("const.one", 1.0);
                let half = self.scalar("const.half", 0.5);
                let scaled = self.op("Div", &[&x, &sqrt2], sub("div"), vec![]);
                let erf = self.op("Erf", &[&scaled], sub("erf"), vec![]);
                let shifted = self.op("Add", &[&erf, &one], sub("add"), vec![]);
                let gated = self.op("Mul", &[&x, &shifted], sub("mul"), vec![]);
                self.op("Mul", &[&gated, &half], out, vec![])
            }
            &Op::LayerScale { gamma } => {
                let gamma = self.param(gamma, false)?;
                self.op("Mul", &[&input(0), &gamma], out, vec![])
            }
            Op::Add => self.op("Add", &[&input(0), &input(1)], out, vec![]),
            Op::ClsToken => {
                let i0 = self.index(0);
                self.op("Gather", &[&input(0), &i0], out, vec![AttributeProto::int("axis", 1)])
            }
            Op::PatchTokens => {
                let (start, end, axis) = (self.shape("start1", &[1]), self.shape("end_all", &[i64::MAX]), self.shape("axis1", &[1]));
                self.op("Slice", &[&input(0), &start, &end, &axis], out, vec![])
            }
            Op::MeanTokens => {
                let attrs = vec![AttributeProto::ints("axes", &[1]), AttributeProto::int("keepdims", 0)];
                self.op("ReduceMean", &[&input(0)], out, attrs)
            }
            Op::Concat => {
                let parts: Vec<String> = (0..node.inputs.len()).map(input).collect();
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                self.op("Concat", &parts, out, vec![AttributeProto::int("axis", -1)])
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::tiny_supergraph;
    use crate::{lowering_pipeline, LoweringOptions, OutputKind};
    use poac_ir::{SubnetSpec, WeightFile};
    use prost::Message;
    use safetensors::{tensor::TensorView, Dtype};

    /// Writes every supergraph parameter `i` as `i + flat index / 1000` to a safetensors file and opens it.
    fn synthetic_weights(g: &Graph, dir: &std::path::Path) -> WeightFile {
        let width = g.space.max_width();
        let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = g
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let shape = p.shape_at(width);
                let n: usize = shape.iter().product();
                let bytes = (0..n).flat_map(|j| (i as f32 + j as f32 / 1000.0).to_le_bytes()).collect();
                (p.name.clone(), shape, bytes)
            })
            .collect();
        let views = tensors
            .iter()
            .map(|(name, shape, bytes)| (name.as_str(), TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap()));
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("weights.safetensors");
        safetensors::serialize_to_file(views, None, &path).unwrap();
        WeightFile::open(&path).unwrap()
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("poac-emit-{tag}-{}", std::process::id()))
    }

    fn lowered(subnet: SubnetSpec, options: &LoweringOptions) -> Graph {
        let mut g = tiny_supergraph();
        lowering_pipeline(subnet, options).run(&mut g, |_, _, _| {}).unwrap();
        g
    }

    /// Streams the model into memory and decodes it.
    fn written(model: &OnnxModel, weights: &WeightFile) -> (Vec<u8>, ModelProto) {
        let mut bytes = Vec::new();
        let n = model.write(weights, &mut bytes).unwrap();
        assert_eq!((n, bytes.len()), (model.encoded_len(), model.encoded_len()));
        let decoded = ModelProto::decode(bytes.as_slice()).unwrap();
        (bytes, decoded)
    }

    #[test]
    fn streamed_bytes_equal_prosts_encoding_of_the_whole_model() {
        let dir = temp_dir("stream");
        let weights = synthetic_weights(&tiny_supergraph(), &dir);
        for output in OutputKind::ALL.into_iter().filter(|k| *k != OutputKind::Last4) {
            let g = lowered(SubnetSpec { width: 8, depth: 2 }, &LoweringOptions { output, ..Default::default() });
            let model = emit(&g, &EmitOptions { batch: Batch::Static(2), metadata: vec![("k".into(), "v".into())] }).unwrap();
            let (bytes, decoded) = written(&model, &weights);
            assert_eq!(decoded.encode_to_vec(), bytes, "{output}");
            let graph = decoded.graph.unwrap();
            let data: usize = graph.initializer.iter().filter(|t| t.data_type == data_type::FLOAT).map(|t| t.raw_data.len()).sum();
            assert!(data >= model.weight_bytes() && model.weight_bytes() > 0);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn emitted_weights_are_slices_times_alpha() {
        let super_graph = tiny_supergraph();
        let dir = temp_dir("slices");
        let weights = synthetic_weights(&super_graph, &dir);
        let g = lowered(SubnetSpec { width: 4, depth: 1 }, &LoweringOptions::default());
        let options = EmitOptions { batch: Batch::Dynamic, metadata: vec![("width".into(), "4".into())] };
        let (_, model) = written(&emit(&g, &options).unwrap(), &weights);
        assert_eq!(model.metadata("width"), Some("4"));
        let graph = model.graph.unwrap();
        let init = |n: &str| graph.initializer.iter().find(|t| t.name == n).unwrap_or_else(|| panic!("{n}"));
        let index = |n: &str| super_graph.params.iter().position(|p| p.name == n).unwrap() as f32;
        // Stored value of parameter `n` at flat index `j`.
        let stored = |n: &str, j: usize| index(n) + j as f32 / 1000.0;

        // qkv: stored [36, 12]; width 4 keeps rows 0..4, 12..16, 24..28 and columns 0..4, times α = 3, the q rows
        // (the first 4) times the attention scale 4^-0.5 = 0.5; written transposed as [4 in, 12 out].
        let qkv = init("blocks.0.attn.qkv.weight");
        assert_eq!(qkv.dims, vec![4, 12]);
        let values = qkv.to_f32();
        for (out_col, stored_row) in [0, 1, 2, 3, 12, 13, 14, 15, 24, 25, 26, 27].into_iter().enumerate() {
            let q_scale = if out_col < 4 { 0.5 } else { 1.0 };
            for in_row in 0..4 {
                let expected = 3.0 * q_scale * stored("blocks.0.attn.qkv.weight", stored_row * 12 + in_row);
                let got = values[in_row * 12 + out_col];
                assert!((got - expected).abs() < 1e-5, "qkv[{in_row},{out_col}] = {got}, expected {expected}");
            }
        }
        // fc2: stored [12, 48]; keeps rows 0..4, columns 0..16, α = 3, and LayerScale ls2's gamma (stored values
        // `index + j / 1000`, first 4) on the output rows; transposed to [16, 4].
        let fc2 = init("blocks.0.mlp.fc2.weight").to_f32();
        let fc2_bias = init("blocks.0.mlp.fc2.bias").to_f32();
        for out in 0..4 {
            let gamma = stored("blocks.0.ls2.gamma", out);
            for inp in 0..16 {
                let expected = 3.0 * gamma * stored("blocks.0.mlp.fc2.weight", out * 48 + inp);
                assert!((fc2[inp * 4 + out] - expected).abs() < 1e-4 * expected.abs(), "fc2[{inp},{out}]");
            }
            let expected = gamma * stored("blocks.0.mlp.fc2.bias", out);
            assert!((fc2_bias[out] - expected).abs() < 1e-5 * expected.abs());
        }
        // The final norm is exported (the reference extractor drops it), unscaled.
        assert_eq!(init("norm.weight").to_f32(), (0..4).map(|j| stored("norm.weight", j)).collect::<Vec<_>>());
        assert!(graph.initializer.iter().all(|t| !t.name.contains("gamma") && t.name != "mask_token" && !t.name.starts_with("blocks.1.")));
        assert!(graph.node.iter().all(|n| n.op_type != "Mul" || n.name.contains("mlp.act")), "only GELU multiplies");
        assert_eq!(graph.output[0].name, "embedding");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn emit_refuses_an_elastic_graph() {
        let g = tiny_supergraph();
        let options = EmitOptions { batch: Batch::Static(1), metadata: vec![] };
        assert!(emit(&g, &options).err().unwrap().to_string().contains("specialise"));
    }
}
