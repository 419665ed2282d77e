//! ONNX: our own prost message types for the part of the ONNX IR we write and read, the emitter, and the
//! streaming writer.

pub mod emit;
pub mod proto;
pub mod write;

pub use emit::{emit, Batch, EmitOptions, OnnxModel};
