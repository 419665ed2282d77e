//! Evaluations of lowered models through a [`crate::runtime::Runtime`].

pub mod classifier_grid;
pub mod feature_cache;
pub mod features;
pub mod finetune;
pub mod knn;
pub mod linear;
pub mod record;

use crate::runtime::RuntimeKind;
use std::path::PathBuf;

/// What an evaluation of a lowered model reads: the model, the dataset and its subsets, and the runtime that
/// runs the model.
#[derive(Clone, Debug)]
pub struct EvalTarget {
    /// The ONNX model.
    pub model: PathBuf,
    /// Dataset root.
    pub data: PathBuf,
    /// Runtime to extract features with.
    pub runtime: RuntimeKind,
    /// Class-balanced subset of the training split.
    pub train_limit: Option<usize>,
    /// Class-balanced subset of the validation split.
    pub val_limit: Option<usize>,
}
