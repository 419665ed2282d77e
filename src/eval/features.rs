//! Feature extraction: images of a split through a runtime, in batches, with a progress bar.

use crate::data::loader::EvalBatches;
use crate::runtime::Runtime;
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tch::Tensor;

/// Images per runtime call.
pub const BATCH: usize = 256;

/// The model's output for every image, `[n, D]`, and the number of images that did not decode.
pub fn extract(runtime: &mut dyn Runtime, images: &EvalBatches, what: &str) -> Result<(Tensor, usize)> {
    let n = images.len();
    let bar = ProgressBar::new(n as u64).with_style(ProgressStyle::with_template(&format!("{what} [{}] {{bar:30}} {{pos}}/{{len}} [{{elapsed}}<{{eta}}]", runtime.name())).unwrap());
    let mut features = Vec::new();
    let mut dim = 0;
    let mut skipped = 0;
    for start in (0..n).step_by(BATCH) {
        let end = (start + BATCH).min(n);
        let (pixels, failed) = images.load(start..end);
        skipped += failed;
        let (shape, values) = runtime.run(&pixels, end - start)?;
        if shape.len() != 2 || shape[0] != end - start {
            bail!("the model returns {shape:?}; k-NN needs one feature vector per image ([N, D]), as `poac lower` writes");
        }
        dim = shape[1];
        features.extend(values);
        bar.inc((end - start) as u64);
    }
    bar.finish_and_clear();
    Ok((Tensor::from_slice(&features).view([n as i64, dim as i64]), skipped))
}
