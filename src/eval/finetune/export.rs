//! The fine-tuned network as a run folder `poac lower` accepts (written atomically, as pre-training writes its
//! checkpoints), lowered to ONNX with its classifier, and checked: the logits of ONNX Runtime and tract against
//! libtorch's, and the accuracy through ONNX Runtime against libtorch's.

use super::classifier::Classifier;
use super::train::top1;
use crate::data::index::Entry;
use crate::data::loader::EvalBatches;
use crate::eval::features::extract;
use crate::lower::{lower, model_info, LowerOptions, Lowered, SubnetChoice};
use crate::runtime::RuntimeKind;
use crate::train::checkpoint::{self, Progress};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Validation images run through tract (slower than ONNX Runtime) to compare its logits with libtorch's.
pub const TRACT_IMAGES: usize = 256;

/// Writes `model` as the checkpoint of run folder `dir`: the stand-alone supergraph, and every weight —
/// backbone and classifier — in the file `poac lower` reads.
pub fn save(dir: &Path, model: &Classifier, progress: &Progress) -> Result<()> {
    checkpoint::save(dir, model.graph(), &model.named_params(), &[], progress)
}

/// Lowers the checkpoint of `dir` with its classifier: the model returns `logits` `[N, classes]`.
pub fn lower_with_head(dir: &Path, out: &Path) -> Result<Lowered> {
    lower(dir, &SubnetChoice::default(), &LowerOptions { with_head: true, ..Default::default() }, out, |_, _, _| {})
}

/// How the lowered model's outputs compare with libtorch's.
#[derive(Clone, Debug, Serialize)]
pub struct RuntimeCheck {
    /// Validation top-1 through ONNX Runtime (fraction).
    pub top1_ort: f64,
    /// Validation images whose ONNX Runtime prediction differs from libtorch's.
    pub ort_tch_disagreements: i64,
    /// Largest absolute difference of a logit, ONNX Runtime against libtorch, over the validation images.
    pub max_logit_error_ort: f64,
    /// The same for tract, over the first [`TRACT_IMAGES`] validation images.
    pub max_logit_error_tract: f64,
    /// Validation images run through tract.
    pub tract_images: i64,
}

/// Runs the model `onnx` on validation `entries` of the dataset at `root` through ONNX Runtime (all of them)
/// and tract (the first [`TRACT_IMAGES`]), and compares with libtorch's logits `[n, classes]` of the ones that
/// decode and their `labels`.
pub fn check_runtimes(onnx: &Path, root: &Path, entries: &[Entry], tch_logits: &Tensor, labels: &Tensor) -> Result<RuntimeCheck> {
    let info = model_info(onnx)?;
    let (tch_logits, labels) = (tch_logits.to_device(Device::Cpu), labels.to_device(Device::Cpu));
    let logits_on = |runtime: RuntimeKind, entries: &[Entry]| -> Result<Tensor> {
        let images = EvalBatches::new(root, entries.to_vec(), info.image_size, info.mean, info.std);
        Ok(extract(runtime.open(onnx)?.as_mut(), &images, info.image_size, "val logits")?.0)
    };
    let ort = logits_on(RuntimeKind::Ort, entries)?;
    if ort.size() != tch_logits.size() {
        bail!("{} returns logits {:?} where libtorch has {:?}", onnx.display(), ort.size(), tch_logits.size());
    }
    let tract = logits_on(RuntimeKind::Tract, &entries[..entries.len().min(TRACT_IMAGES)])?;
    let tract_images = tract.size()[0];
    let max_error = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    Ok(RuntimeCheck {
        top1_ort: top1(&ort, &labels),
        ort_tch_disagreements: ort.argmax(-1, false).ne_tensor(&tch_logits.argmax(-1, false)).sum(Kind::Int64).int64_value(&[]),
        max_logit_error_ort: max_error(&ort, &tch_logits),
        max_logit_error_tract: max_error(&tract, &tch_logits.narrow(0, 0, tract_images)),
        tract_images,
    })
}
