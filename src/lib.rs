//! poac: pre-train one elastic ViT with POA on libtorch, then lower any of its sub-networks to ONNX and
//! evaluate it on ONNX Runtime or tract. The binary's verbs live in [`cli`]; everything else is a library so
//! that integration tests can drive the same code.

pub mod cli;
pub mod config;
pub mod data;
pub mod dist;
pub mod eval;
pub mod lower;
pub mod model;
pub mod report;
pub mod runtime;
pub mod shuffle;
pub mod train;
