//! poac-passes: IR → IR passes that turn the elastic supergraph into one static, folded sub-network, and the
//! emission of that sub-network as ONNX. Pure functions of the IR; no libtorch, no runtime.

#![warn(missing_docs)]

pub mod dce;
pub mod fold_alpha;
pub mod onnx;
pub mod pipeline;
pub mod select_output;
pub mod specialise;
pub mod strip_training;

pub use pipeline::{lowering_pipeline, Pass, Pipeline};
