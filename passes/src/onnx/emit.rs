//! Emission: a static, specialised graph and its weights → an ONNX model (opset 17, LayerNormalization).

use super::proto::*;
use poac_ir::{error::Result, Graph, IrError, Op, ParamId, Weights};
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

/// Emits a specialised graph as an ONNX model. Linear weights are written transposed (`[in, out]`) so that a
/// linear is one `MatMul` + `Add`.
pub fn emit(g: &Graph, weights: &dyn Weights, options: &EmitOptions) -> Result<ModelProto> {
    let subnet = g.subnet.ok_or_else(|| IrError::Malformed("emit needs a specialised graph; run specialise".into()))?;
    if let Some(clash) = g.nodes.iter().find(|n| g.param_by_name(&n.name).is_some()) {
        return Err(IrError::Malformed(format!("node `{}` has the name of a parameter; ONNX values must be unique", clash.name)));
    }
    let mut e = Emitter { g, weights, nodes: Vec::new(), initializers: Vec::new(), names: HashSet::new() };
    let mut values: Vec<String> = Vec::with_capacity(g.nodes.len());
    for node in &g.nodes {
        let name = e.lower_node(node, &values)?;
        values.push(name);
    }
    let batch = match options.batch {
        Batch::Dynamic => DimensionValue::DimParam("batch".into()),
        Batch::Static(n) => DimensionValue::DimValue(n as i64),
    };
    let a = &g.arch;
    let input = value_info(INPUT, vec![
        batch.clone(),
        DimensionValue::DimValue(a.in_chans as i64),
        DimensionValue::DimValue(a.img_size as i64),
        DimensionValue::DimValue(a.img_size as i64),
    ]);
    let output_dims = match g.nodes[g.output].op {
        Op::ClsToken => vec![batch, DimensionValue::DimValue(subnet.width as i64)],
        _ => vec![
            batch,
            DimensionValue::DimValue(a.num_patches() as i64 + 1),
            DimensionValue::DimValue(subnet.width as i64),
        ],
    };
    let output = value_info(&values[g.output], output_dims);
    let graph = GraphProto {
        node: e.nodes,
        name: format!("poac_vit_{subnet}"),
        initializer: e.initializers,
        input: vec![input],
        output: vec![output],
    };
    Ok(ModelProto {
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
    })
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
    weights: &'a dyn Weights,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
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

    /// Adds an initializer once (by name) and returns its name.
    fn constant(&mut self, tensor: TensorProto) -> String {
        let name = tensor.name.clone();
        if self.names.insert(name.clone()) {
            self.initializers.push(tensor);
        }
        name
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

    /// Writes a parameter as an initializer named after its weight key; `transpose` swaps a 2-D weight.
    fn param(&mut self, id: ParamId, transpose: bool) -> Result<String> {
        let param = &self.g.params[id];
        let shape = param
            .static_shape()
            .ok_or_else(|| IrError::Malformed(format!("`{}` still has elastic dims", param.name)))?;
        let mut values = self.weights.read(param)?;
        let expected: usize = shape.iter().product();
        if values.len() != expected {
            return Err(IrError::Weights(format!("`{}`: read {} values, expected {shape:?}", param.name, values.len())));
        }
        let dims = if transpose {
            let (rows, cols) = (shape[0], shape[1]);
            values = (0..cols).flat_map(|c| (0..rows).map(move |r| (r, c))).map(|(r, c)| values[r * cols + c]).collect();
            vec![cols, rows]
        } else {
            shape
        };
        Ok(self.constant(TensorProto::f32(&param.name, &dims, &values)))
    }

    fn lower_node(&mut self, node: &poac_ir::Node, values: &[String]) -> Result<String> {
        let input = |i: usize| values[node.inputs[i]].clone();
        let out = node.name.clone();
        let sub = |s: &str| format!("{}/{s}", node.name);
        let width = self.g.width() as i64;
        Ok(match node.op {
            Op::Image => INPUT.to_string(),
            Op::PatchEmbed { weight, bias, patch } => {
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
            Op::PrependCls { cls_token } => {
                let cls = self.param(cls_token, false)?;
                let x = input(0);
                let batch = self.op("Shape", &[&x], sub("batch"), vec![AttributeProto::int("end", 1)]);
                let rest = self.shape("one_by_width", &[1, width]);
                let target = self.op("Concat", &[&batch, &rest], sub("cls_shape"), vec![AttributeProto::int("axis", 0)]);
                let cls = self.op("Expand", &[&cls, &target], sub("cls"), vec![]);
                self.op("Concat", &[&cls, &x], out, vec![AttributeProto::int("axis", 1)])
            }
            Op::AddPosEmbed { pos_embed } => {
                let pos = self.param(pos_embed, false)?;
                self.op("Add", &[&input(0), &pos], out, vec![])
            }
            Op::LayerNorm { weight, bias, eps } => {
                let (w, b) = (self.param(weight, false)?, self.param(bias, false)?);
                let attrs = vec![AttributeProto::int("axis", -1), AttributeProto::float("epsilon", eps)];
                self.op("LayerNormalization", &[&input(0), &w, &b], out, attrs)
            }
            Op::Linear { weight, bias, alpha } => {
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
            Op::Attention { head_dim } => {
                let heads = width / head_dim as i64;
                let shape = self.shape(&format!("qkv_heads_{heads}x{head_dim}"), &[0, 0, 3, heads, head_dim as i64]);
                let split = self.op("Reshape", &[&input(0), &shape], sub("split_heads"), vec![]);
                // [N, T, 3, H, hd] → [3, N, H, T, hd]
                let packed = self.op("Transpose", &[&split], sub("qkv"), vec![AttributeProto::ints("perm", &[2, 0, 3, 1, 4])]);
                let axis0 = vec![AttributeProto::int("axis", 0)];
                let (i0, i1, i2) = (self.index(0), self.index(1), self.index(2));
                let q = self.op("Gather", &[&packed, &i0], sub("q"), axis0.clone());
                let k = self.op("Gather", &[&packed, &i1], sub("k"), axis0.clone());
                let v = self.op("Gather", &[&packed, &i2], sub("v"), axis0);
                let scale = self.scalar(&format!("const.attn_scale_{head_dim}"), (head_dim as f32).powf(-0.5));
                let q = self.op("Mul", &[&q, &scale], sub("q_scaled"), vec![]);
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
            Op::LayerScale { gamma } => {
                let gamma = self.param(gamma, false)?;
                self.op("Mul", &[&input(0), &gamma], out, vec![])
            }
            Op::Add => self.op("Add", &[&input(0), &input(1)], out, vec![]),
            Op::ClsToken => {
                let i0 = self.index(0);
                self.op("Gather", &[&input(0), &i0], out, vec![AttributeProto::int("axis", 1)])
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{lowering_pipeline, pipeline::testing::tiny_supergraph};
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

    #[test]
    fn emitted_weights_are_slices_times_alpha() {
        let super_graph = tiny_supergraph();
        let dir = temp_dir("slices");
        let weights = synthetic_weights(&super_graph, &dir);
        let mut g = super_graph.clone();
        lowering_pipeline(SubnetSpec { width: 4, depth: 1 }).run(&mut g, |_, _, _| {}).unwrap();
        let options = EmitOptions { batch: Batch::Dynamic, metadata: vec![("width".into(), "4".into())] };
        let model = emit(&g, &weights, &options).unwrap();
        let model = ModelProto::decode(model.encode_to_vec().as_slice()).unwrap();
        assert_eq!(model.metadata("width"), Some("4"));
        let graph = model.graph.unwrap();
        let init = |n: &str| graph.initializer.iter().find(|t| t.name == n).unwrap_or_else(|| panic!("{n}"));

        // qkv: stored [36, 12]; width 4 keeps rows 0..4, 12..16, 24..28 and columns 0..4, times α = 3,
        // written transposed as [4 in, 12 out].
        let qkv_index = super_graph.params.iter().position(|p| p.name == "blocks.0.attn.qkv.weight").unwrap() as f32;
        let qkv = init("blocks.0.attn.qkv.weight");
        assert_eq!(qkv.dims, vec![4, 12]);
        let values = qkv.to_f32();
        for (out_col, stored_row) in [0, 1, 2, 3, 12, 13, 14, 15, 24, 25, 26, 27].into_iter().enumerate() {
            for in_row in 0..4 {
                let expected = 3.0 * (qkv_index + (stored_row * 12 + in_row) as f32 / 1000.0);
                let got = values[in_row * 12 + out_col];
                assert!((got - expected).abs() < 1e-5, "qkv[{in_row},{out_col}] = {got}, expected {expected}");
            }
        }
        // The final norm is exported (the reference extractor drops it), unscaled.
        let norm_index = super_graph.params.iter().position(|p| p.name == "norm.weight").unwrap() as f32;
        assert_eq!(init("norm.weight").to_f32(), (0..4).map(|j| norm_index + j as f32 / 1000.0).collect::<Vec<_>>());
        assert!(graph.initializer.iter().all(|t| t.name != "mask_token" && !t.name.starts_with("blocks.1.")));
        assert_eq!(graph.output[0].name, "embedding");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn emit_refuses_an_elastic_graph() {
        let g = tiny_supergraph();
        let dir = temp_dir("elastic");
        let weights = synthetic_weights(&g, &dir);
        let options = EmitOptions { batch: Batch::Static(1), metadata: vec![] };
        assert!(emit(&g, &weights, &options).unwrap_err().to_string().contains("specialise"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
