//! poac-passes: IR → IR passes that turn the elastic supergraph into one static, folded sub-network, and the
//! emission of that sub-network as ONNX. Pure functions of the IR; no libtorch, no runtime.

#![warn(missing_docs)]

pub mod add_head;
pub mod dce;
pub mod fold_alpha;
pub mod fold_attention_scale;
pub mod fold_layer_scale;
pub mod fold_normalize;
pub mod normalize_input;
pub mod onnx;
pub mod pipeline;
pub mod rewrite;
pub mod select_output;
pub mod shape_check;
pub mod specialise;
pub mod strip_training;

pub use pipeline::{lowering_pipeline, LoweringOptions, Pass, Pipeline};
pub use select_output::OutputKind;
