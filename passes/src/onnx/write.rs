//! Streaming the model to a file: the protobuf is encoded by hand around each parameter's `raw_data`, so the
//! weights pass through memory one parameter at a time and the file is never held whole. Fields are written in
//! tag order, which makes the bytes identical to prost's encoding of the complete message.

use super::emit::{OnnxModel, ParamSource};
use super::proto::{GraphProto, ModelProto, TensorProto};
use poac_ir::{error::Result, write_f32s, IrError, Weights};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, message, WireType};
use prost::Message;
use std::io::Write;

/// `ModelProto.graph`, `GraphProto.initializer` and `TensorProto.raw_data`.
const MODEL_GRAPH: u32 = 7;
const GRAPH_INITIALIZER: u32 = 5;
const TENSOR_RAW_DATA: u32 = 9;
/// Protobuf messages cannot exceed 2 GiB.
const PROTOBUF_LIMIT: usize = i32::MAX as usize;

impl OnnxModel {
    /// Size in bytes of the encoded model, weights included, without reading them.
    pub fn encoded_len(&self) -> usize {
        let (head, tail) = self.model_parts();
        let graph = self.graph_len();
        head.encoded_len() + key_len(MODEL_GRAPH) + encoded_len_varint(graph as u64) + graph + tail.encoded_len()
    }

    /// Writes the model to `out`, reading each parameter from `weights` just before its bytes are due; returns
    /// the bytes written. Models beyond protobuf's 2 GiB limit are refused.
    pub fn write(&self, weights: &dyn Weights, out: &mut dyn Write) -> Result<usize> {
        let total = self.encoded_len();
        if total > PROTOBUF_LIMIT {
            return Err(IrError::Malformed(format!("the model is {total} bytes, beyond protobuf's 2 GiB limit for one ONNX file")));
        }
        let io = |e: std::io::Error| IrError::Weights(format!("cannot write the model: {e}"));
        let graph = self.graph();
        let (head, tail) = self.model_parts();
        let mut buf = head.encode_to_vec();
        encode_key(MODEL_GRAPH, WireType::LengthDelimited, &mut buf);
        encode_varint(self.graph_len() as u64, &mut buf);
        for node in &graph.node {
            message::encode(1, node, &mut buf);
        }
        if !graph.name.is_empty() {
            prost::encoding::string::encode(2, &graph.name, &mut buf);
        }
        out.write_all(&buf).map_err(io)?;
        for (tensor, source) in graph.initializer.iter().zip(&self.sources) {
            buf.clear();
            match source {
                None => message::encode(GRAPH_INITIALIZER, tensor, &mut buf),
                Some(source) => {
                    encode_key(GRAPH_INITIALIZER, WireType::LengthDelimited, &mut buf);
                    encode_varint(streamed_tensor_len(tensor, source) as u64, &mut buf);
                    tensor.encode_raw(&mut buf);
                    encode_key(TENSOR_RAW_DATA, WireType::LengthDelimited, &mut buf);
                    encode_varint(source.byte_len() as u64, &mut buf);
                }
            }
            out.write_all(&buf).map_err(io)?;
            if let Some(source) = source {
                write_param(weights, source, out)?;
            }
        }
        buf.clear();
        for value in &graph.input {
            message::encode(11, value, &mut buf);
        }
        for value in &graph.output {
            message::encode(12, value, &mut buf);
        }
        tail.encode_raw(&mut buf);
        out.write_all(&buf).map_err(io)?;
        Ok(total)
    }

    fn graph(&self) -> &GraphProto {
        self.proto.graph.as_ref().expect("emit always sets the graph")
    }

    /// The model's fields before the graph (tags 1–6) and after it (8, 14).
    fn model_parts(&self) -> (ModelProto, ModelProto) {
        let p = &self.proto;
        let head = ModelProto {
            ir_version: p.ir_version,
            producer_name: p.producer_name.clone(),
            producer_version: p.producer_version.clone(),
            doc_string: p.doc_string.clone(),
            ..Default::default()
        };
        let tail = ModelProto { opset_import: p.opset_import.clone(), metadata_props: p.metadata_props.clone(), ..Default::default() };
        (head, tail)
    }

    fn graph_len(&self) -> usize {
        let g = self.graph();
        let initializers: usize = g
            .initializer
            .iter()
            .zip(&self.sources)
            .map(|(t, source)| match source {
                None => message::encoded_len(GRAPH_INITIALIZER, t),
                Some(s) => {
                    let len = streamed_tensor_len(t, s);
                    key_len(GRAPH_INITIALIZER) + encoded_len_varint(len as u64) + len
                }
            })
            .sum();
        let nodes = prost::encoding::message::encoded_len_repeated(1, &g.node);
        let name = if g.name.is_empty() { 0 } else { prost::encoding::string::encoded_len(2, &g.name) };
        let io = message::encoded_len_repeated(11, &g.input) + message::encoded_len_repeated(12, &g.output);
        nodes + name + initializers + io
    }
}

/// Encoded length of an initializer whose `raw_data` is streamed.
fn streamed_tensor_len(tensor: &TensorProto, source: &ParamSource) -> usize {
    let data = source.byte_len();
    tensor.encoded_len() + key_len(TENSOR_RAW_DATA) + encoded_len_varint(data as u64) + data
}

/// Reads one parameter (sliced, scaled, folded), transposes it if asked, and writes its bytes.
fn write_param(weights: &dyn Weights, source: &ParamSource, out: &mut dyn Write) -> Result<()> {
    let param = &source.param;
    let shape = param.static_shape().expect("checked at emission");
    let values = weights.read(param)?;
    if values.len() != shape.iter().product::<usize>() {
        return Err(IrError::Weights(format!("`{}`: read {} values, expected {shape:?}", param.name, values.len())));
    }
    let written = if source.transpose { write_transposed(out, &values, shape[0], shape[1]) } else { write_f32s(out, &values) };
    written.map_err(|e| IrError::Weights(format!("cannot write `{}`: {e}", param.name)))
}

/// Writes the transpose of the row-major `rows × cols` matrix `values` as little-endian bytes, `TILE` output
/// rows at a time; each `TILE × TILE` block goes through a small local array, so that reads and writes both run
/// along cache lines.
fn write_transposed(out: &mut dyn Write, values: &[f32], rows: usize, cols: usize) -> std::io::Result<()> {
    const TILE: usize = 16;
    let mut tile = vec![0u8; 4 * TILE * rows];
    for c0 in (0..cols).step_by(TILE) {
        let width = TILE.min(cols - c0);
        for r0 in (0..rows).step_by(TILE) {
            let height = TILE.min(rows - r0);
            let mut block = [[0f32; TILE]; TILE];
            for (i, line) in block.iter_mut().enumerate().take(height) {
                let start = (r0 + i) * cols + c0;
                line[..width].copy_from_slice(&values[start..start + width]);
            }
            for k in 0..width {
                let start = 4 * (k * rows + r0);
                let column = &mut tile[start..start + 4 * height];
                for (bytes, line) in column.chunks_exact_mut(4).zip(&block) {
                    bytes.copy_from_slice(&line[k].to_le_bytes());
                }
            }
        }
        out.write_all(&tile[..4 * width * rows])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_transpose_any_shape() {
        for (rows, cols) in [(37, 70), (3, 1), (16, 32)] {
            let values: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let mut bytes = Vec::new();
            write_transposed(&mut bytes, &values, rows, cols).unwrap();
            let t: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            assert_eq!(t.len(), values.len());
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], values[r * cols + c]);
                }
            }
        }
    }
}
