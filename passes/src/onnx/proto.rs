//! The ONNX protobuf messages poac writes and reads, as prost structs. Field numbers follow the ONNX IR
//! specification (`onnx.proto`); fields we never use are left out, which protobuf allows.

/// Element types of tensors (`TensorProto.DataType`).
pub mod data_type {
    /// 32-bit float.
    pub const FLOAT: i32 = 1;
    /// 64-bit signed integer.
    pub const INT64: i32 = 7;
}

/// Attribute kinds (`AttributeProto.AttributeType`).
pub mod attribute_type {
    /// One float in `f`.
    pub const FLOAT: i32 = 1;
    /// One integer in `i`.
    pub const INT: i32 = 2;
    /// Integers in `ints`.
    pub const INTS: i32 = 7;
}

/// A whole model: graph, opsets and metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// ONNX IR version of the file.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// Tool that wrote the model.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// Version of that tool.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// Human-readable description.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// The computation.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Operator sets the graph uses.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// Free-form key/value metadata.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// An operator set the model uses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// Operator domain (empty: the default ONNX domain).
    #[prost(string, tag = "1")]
    pub domain: String,
    /// Version of the operator set.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// A key/value pair of metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    /// Metadata key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Metadata value, or the dimension of an axis.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// The computation: nodes, initializers, inputs and outputs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// Nodes in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Name (unique within its kind).
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors (weights).
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Inputs (graph) or input value names (node).
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Outputs (graph) or output value names (node).
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// One operator application.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// Inputs (graph) or input value names (node).
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Outputs (graph) or output value names (node).
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Name (unique within its kind).
    #[prost(string, tag = "3")]
    pub name: String,
    /// Operator, e.g. `MatMul`.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// Attributes of the operator.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Operator domain (empty: the default ONNX domain).
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// A named attribute of a node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// Name (unique within its kind).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Float value (`FLOAT` attributes).
    #[prost(float, tag = "2")]
    pub f: f32,
    /// Integer value (`INT` attributes).
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// Integer list (`INTS` attributes).
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    /// Kind of attribute, or type of a value.
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

/// A constant tensor (initializer), data little-endian in `raw_data`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// Shape.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// Element type (see [`data_type`]).
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// Name (unique within its kind).
    #[prost(string, tag = "8")]
    pub name: String,
    /// Little-endian element bytes.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

/// Name and type of a graph input or output.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    /// Name (unique within its kind).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Kind of attribute, or type of a value.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// A type; poac only uses tensor types.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// Tensor type (the only kind poac writes).
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

/// Element type and shape of a tensor value (`TypeProto.Tensor`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorTypeProto {
    /// Element type (see [`data_type`]).
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    /// Shape, possibly symbolic.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// A shape: one entry per axis.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// One entry per axis.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// One axis: a fixed size or a symbolic name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    /// The size of the axis.
    #[prost(oneof = "DimensionValue", tags = "1, 2")]
    pub value: Option<DimensionValue>,
}

/// The size of an axis.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DimensionValue {
    /// A fixed size.
    #[prost(int64, tag = "1")]
    DimValue(i64),
    /// A symbolic size, e.g. `batch`.
    #[prost(string, tag = "2")]
    DimParam(String),
}

impl TensorProto {
    /// An f32 tensor.
    pub fn f32(name: impl Into<String>, dims: &[usize], values: &[f32]) -> Self {
        TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type::FLOAT,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// An i64 tensor.
    pub fn i64(name: impl Into<String>, dims: &[usize], values: &[i64]) -> Self {
        TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type::INT64,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The values of an f32 tensor.
    pub fn to_f32(&self) -> Vec<f32> {
        self.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

impl AttributeProto {
    /// An integer attribute.
    pub fn int(name: &str, value: i64) -> Self {
        AttributeProto { name: name.into(), i: value, r#type: attribute_type::INT, ..Default::default() }
    }

    /// A float attribute.
    pub fn float(name: &str, value: f32) -> Self {
        AttributeProto { name: name.into(), f: value, r#type: attribute_type::FLOAT, ..Default::default() }
    }

    /// An integer-list attribute.
    pub fn ints(name: &str, values: &[i64]) -> Self {
        AttributeProto { name: name.into(), ints: values.to_vec(), r#type: attribute_type::INTS, ..Default::default() }
    }
}

impl ModelProto {
    /// The value of a metadata key, if present.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata_props.iter().find(|p| p.key == key).map(|p| p.value.as_str())
    }
}
