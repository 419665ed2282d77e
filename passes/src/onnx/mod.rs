//! ONNX: our own prost message types for the part of the ONNX IR we write and read, and the emitter.

pub mod emit;
pub mod proto;

pub use emit::{emit, Batch, EmitOptions};
