//! poac-ir: the intermediate representation of an elastic vision transformer.
//!
//! A [`Graph`] is a small SSA program over tokens (one op a node, each node one value) whose parameters have
//! *elastic* dimensions. Together with its [`ElasticSpace`] it is the supergraph that `poac pretrain` trains and
//! that `poac lower` specialises into one static sub-network. Nothing here depends on libtorch or a runtime.

#![warn(missing_docs)]

pub mod arch;
pub mod build;
pub mod error;
pub mod graph;
pub mod param;
pub mod shape;
pub mod space;
pub mod stats;
pub mod weights;

pub use arch::VitArch;
pub use error::IrError;
pub use graph::{BlockSpan, Graph, Node, Op, ValueId};
pub use param::{Dim, Fold, Init, Param, ParamId, TensorRef, WeightView};
pub use space::{ElasticSpace, SubnetSpec, WidthChoice};
pub use weights::{read_view, write_f32s, write_safetensors, TensorEntry, WeightFile, Weights};
