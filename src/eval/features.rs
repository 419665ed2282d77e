//! Feature extraction: images of a split through a runtime, in batches, with a progress bar.

use crate::data::loader::EvalBatches;
use crate::runtime::Runtime;
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tch::Tensor;

/// Images per runtime call.
pub const BATCH: usize = 256;

/// The model's output `[n, D]` for every image that decodes, and which images those are (`kept[i]`).
pub fn extract(runtime: &mut dyn Runtime, images: &EvalBatches, image_size: usize, what: &str) -> Result<(Tensor, Vec<bool>)> {
    let n = images.len();
    let bar = ProgressBar::new(n as u64).with_style(ProgressStyle::with_template(&format!("{what} [{}] {{bar:30}} {{pos}}/{{len}} [{{elapsed}}<{{eta}}]", runtime.name())).unwrap());
    let mut features = Vec::new();
    let mut kept = Vec::with_capacity(n);
    let mut dim = 0;
    for start in (0..n).step_by(BATCH) {
        let end = (start + BATCH).min(n);
        let (pixels, decoded) = images.load(start..end);
        let (shape, values) = runtime.run(&pixels, [end - start, 3, image_size, image_size])?;
        if shape.len() != 2 || shape[0] != end - start {
            bail!("the model returns {shape:?}; evaluation needs one feature vector per image ([N, D]), as `poac lower` writes");
        }
        dim = shape[1];
        for (row, ok) in values.chunks(dim).zip(&decoded) {
            if *ok {
                features.extend_from_slice(row);
            }
        }
        kept.extend(decoded);
        bar.inc((end - start) as u64);
    }
    bar.finish_and_clear();
    let rows = kept.iter().filter(|k| **k).count() as i64;
    Ok((Tensor::from_slice(&features).view([rows, dim as i64]), kept))
}
