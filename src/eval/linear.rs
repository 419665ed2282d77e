//! Linear probe (dinov2's protocol): features of a `--output last4` model extracted once (and cached), then
//! the grid of 52 linear classifiers of [`super::classifier_grid`] trained on the training split and scored on
//! the validation split; the best classifier is the result.

use super::classifier_grid::{ClassifierGrid, FeatureSetting, INIT_STD};
use super::feature_cache::{FeatureCache, SplitFeatures};
use super::record::EvaluatedModel;
use super::EvalTarget;
use crate::data::index::ClassInfo;
use crate::data::{DatasetIndex, Split};
use crate::lower::{model_info, ModelInfo};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::Path;
use tch::Tensor;

/// Seed of the classifiers' initial weights and of the mini-batch order.
const SEED: u64 = 0;
/// dinov2's training length in iterations (10 epochs of 1250), the default whatever the number of images.
pub const DEFAULT_ITERATIONS: usize = 12_500;

/// What to evaluate, and how to train the classifiers.
#[derive(Clone, Debug)]
pub struct LinearOptions {
    /// The model (lowered with `--output last4`), the data and the runtime.
    pub target: EvalTarget,
    /// Passes over the training features; `None` makes as many as [`DEFAULT_ITERATIONS`] iterations take.
    pub epochs: Option<usize>,
    /// Mini-batch size (the learning rates are scaled by it / 256).
    pub batch_size: usize,
}

/// One classifier of the grid and its validation accuracy.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ClassifierResult {
    /// Class tokens of this many last blocks.
    pub n_blocks: usize,
    /// Whether the mean patch token is appended.
    pub avgpool: bool,
    /// Learning rate (the grid's, scaled by batch size / 256).
    pub lr: f64,
    /// Top-1 accuracy (fraction) on the validation images.
    pub top1: f64,
}

/// The probe's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct LinearReport {
    /// Top-1 accuracy (fraction) of the best classifier.
    pub top1: f64,
    /// The best classifier (the first of the grid's order among equals).
    pub best: ClassifierResult,
    /// Every classifier, setting-major, learning rates ascending.
    pub results: Vec<ClassifierResult>,
    /// `ort` or `tract`.
    pub runtime: String,
    /// Training images used.
    pub train_images: usize,
    /// Validation images used.
    pub val_images: usize,
    /// Images that did not decode (left out).
    pub skipped_images: usize,
    /// Classes of the dataset.
    pub classes: usize,
    /// Passes over the training features.
    pub epochs: usize,
    /// SGD steps of every classifier (epochs × mini-batches per epoch).
    pub iterations: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// The model evaluated.
    #[serde(flatten)]
    pub evaluated: EvaluatedModel,
}

/// Extracts (or reads cached) features of both splits, trains the grid and scores it on the validation split.
pub fn linear_eval(options: &LinearOptions) -> Result<LinearReport> {
    if options.epochs == Some(0) || options.batch_size == 0 {
        bail!("--epochs and --batch-size must be at least 1");
    }
    let target = &options.target;
    let info = model_info(&target.model)?;
    check_last4(&info, &target.model)?;
    let index = DatasetIndex::open_labelled(&target.data)?;
    let train_entries = index.balanced(Split::Train, target.train_limit);
    let val_entries = index.balanced(Split::Val, target.val_limit);
    if train_entries.is_empty() || val_entries.is_empty() {
        bail!("the linear probe needs training and validation images; --train-limit / --val-limit select {} and {}", train_entries.len(), val_entries.len());
    }
    let mut cache = FeatureCache::new(index.root(), &target.model, target.runtime)?;
    let train = cache.features(Split::Train, target.train_limit, &train_entries, &info)?;
    let val = cache.features(Split::Val, target.val_limit, &val_entries, &info)?;
    for (split, features) in [(Split::Train, &train), (Split::Val, &val)] {
        check_split(split, features, &info, &target.data)?;
    }
    check_same_classes(&index.classes, &train.labels, &val.labels, target)?;

    let train_images = train.labels.size()[0] as usize;
    let batches_per_epoch = train_images.div_ceil(options.batch_size);
    let epochs = options.epochs.unwrap_or(default_epochs(train_images, options.batch_size));
    tch::manual_seed(SEED as i64);
    let mut grid = ClassifierGrid::new(info.width, index.classes.len(), options.batch_size, INIT_STD);
    grid.train(&train.features, &train.labels, epochs, options.batch_size, SEED);
    let results: Vec<ClassifierResult> = ClassifierGrid::classifiers(options.batch_size)
        .into_iter()
        .zip(grid.accuracies(&val.features, &val.labels))
        .map(|((setting, lr), top1)| ClassifierResult { n_blocks: setting.n_blocks, avgpool: setting.avgpool, lr, top1 })
        .collect();
    let best = *results.iter().reduce(|best, r| if r.top1 > best.top1 { r } else { best }).expect("the grid is not empty");
    Ok(LinearReport {
        top1: best.top1,
        best,
        results,
        runtime: target.runtime.name().into(),
        train_images,
        val_images: val.labels.size()[0] as usize,
        skipped_images: train.skipped + val.skipped,
        classes: index.classes.len(),
        epochs,
        iterations: epochs * batches_per_epoch,
        batch_size: options.batch_size,
        evaluated: EvaluatedModel::new(&target.model, &info),
    })
}

/// Passes over `train_images` in mini-batches of `batch_size` that make at least [`DEFAULT_ITERATIONS`] iterations.
pub fn default_epochs(train_images: usize, batch_size: usize) -> usize {
    DEFAULT_ITERATIONS.div_ceil(train_images.div_ceil(batch_size))
}

/// The best classifier of each feature setting, in [`FeatureSetting::ALL`]'s order.
pub fn best_per_setting(results: &[ClassifierResult]) -> Vec<ClassifierResult> {
    FeatureSetting::ALL
        .iter()
        .filter_map(|s| results.iter().filter(|r| r.n_blocks == s.n_blocks && r.avgpool == s.avgpool).copied().reduce(|best, r| if r.top1 > best.top1 { r } else { best }))
        .collect()
}

/// Errors unless the model returns dinov2's `last4` features.
fn check_last4(info: &ModelInfo, model: &Path) -> Result<()> {
    let run = info.source_checkpoint.as_deref().unwrap_or("RUN");
    let lower_hint = format!("lower it with `poac lower {run} --width {} --depth {} --output last4 -o MODEL.onnx`", info.width, info.depth);
    if info.has_head {
        bail!("{} ends in a classifier head (it returns logits); the linear probe needs features: {lower_hint} (without --with-head)", model.display());
    }
    match info.output.as_deref() {
        Some("last4") => Ok(()),
        output => bail!(
            "{} returns `{}` features; the linear probe needs dinov2's `last4` features [N, 5W] (class tokens of the last 4 blocks and the mean patch token): {lower_hint}",
            model.display(),
            output.unwrap_or("cls")
        ),
    }
}

/// Errors if no image of the split decoded or the features are not `[n, 5W]`.
fn check_split(split: Split, extracted: &SplitFeatures, info: &ModelInfo, data: &Path) -> Result<()> {
    if extracted.labels.size()[0] == 0 {
        bail!("no {} image of {} decodes (the {} split is empty)", split.dir(), data.display(), split.dir());
    }
    let dim = extracted.features.size()[1] as usize;
    if dim != 5 * info.width {
        bail!("the model returns {dim} features per image; `last4` of width {} has {} — lower it again with --output last4", info.width, 5 * info.width);
    }
    Ok(())
}

/// Errors naming every class that has training images but no validation images, or the reverse.
fn check_same_classes(classes: &[ClassInfo], train: &Tensor, val: &Tensor, target: &EvalTarget) -> Result<()> {
    let count = |labels: &Tensor| {
        let mut per_class = vec![0usize; classes.len()];
        Vec::<i64>::try_from(labels).expect("int64 labels").into_iter().for_each(|l| per_class[l as usize] += 1);
        per_class
    };
    let (train, val) = (count(train), count(val));
    let differing: Vec<String> = classes
        .iter()
        .zip(train.iter().zip(&val))
        .filter(|(_, (&t, &v))| (t == 0) != (v == 0))
        .map(|(class, (&t, &v))| format!("`{}` (folder {}) has {t} train and {v} val images", class.name, class.dir))
        .collect();
    if differing.is_empty() {
        return Ok(());
    }
    let limited = [target.train_limit, target.val_limit].into_iter().flatten().any(|l| l < classes.len());
    let hint = if limited { format!(" (a --train-limit / --val-limit below the {} classes leaves classes out)", classes.len()) } else { String::new() };
    bail!("train and val do not hold the same classes: {}; every class needs images that decode in both splits{hint}", differing.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_length_is_dinov2s_12500_iterations_whatever_the_split_size() {
        // 10,000 images: 40 batches of 256 a pass, 313 passes = 12,520 iterations; 60,000: 235 a pass, 54 passes.
        assert_eq!(default_epochs(10_000, 256), 313);
        assert_eq!(default_epochs(60_000, 256), 54);
        assert_eq!(default_epochs(36, 256), 12_500);
    }
}
