//! Fine-tuning one sub-network of a pre-trained run (POA_SPEC §8): the sub-network is cut out of the supergraph
//! as a stand-alone ViT with the weights `poac lower` would emit, gets a linear classifier on its class token,
//! and is trained with DeiT's recipe (see [`config`]). The best weights on the validation images — of the model
//! or its EMA, after any epoch — are written as a run folder `poac lower` accepts (`OUTPUT/checkpoint/`, with
//! `head.weight` / `head.bias`) and lowered to `OUTPUT/model.onnx`, which returns `logits [N, classes]`; that
//! model is run on ONNX Runtime and tract and compared with libtorch.

pub mod classifier;
pub mod config;
pub mod data;
pub mod export;
pub mod mixup;
pub mod train;

use crate::data::augment::{MEAN, STD};
use crate::data::loader::EvalBatches;
use crate::data::{DatasetIndex, Split};
use crate::lower::{Source, SubnetChoice};
use crate::train::checkpoint::Progress;
use anyhow::{bail, Context, Result};
use self::classifier::Classifier;
use self::config::FinetuneConfig;
use self::data::{TrainImages, TrainTransform};
use self::export::RuntimeCheck;
use self::train::{top1, Candidate, EpochRecord, ValImages};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use tch::Device;

/// File name of the lowered model in the output folder.
pub const ONNX: &str = "model.onnx";

/// What to fine-tune, on what.
#[derive(Clone, Debug)]
pub struct FinetuneOptions {
    /// Run (or checkpoint) folder of the pre-trained network.
    pub run: PathBuf,
    /// The sub-network.
    pub subnet: SubnetChoice,
    /// Dataset root with labelled train/ and val/ splits.
    pub data: PathBuf,
    /// YAML file of [`FinetuneConfig`] keys; the defaults without one.
    pub config: Option<PathBuf>,
    /// `key=value` overrides of the config.
    pub overrides: Vec<String>,
    /// Overrides the config's `epochs`.
    pub epochs: Option<usize>,
    /// Class-balanced subset of the training split.
    pub train_limit: Option<usize>,
    /// Class-balanced subset of the validation split.
    pub val_limit: Option<usize>,
    /// Output run folder; default `RUN/finetune/wW-dD`.
    pub output: Option<PathBuf>,
    /// Where to train.
    pub device: Device,
}

/// The result of a fine-tune.
#[derive(Clone, Debug, Serialize)]
pub struct FinetuneReport {
    /// The pre-trained run, as given.
    pub source_run: String,
    /// Its checkpoint folder, resolved (as lowered models record it).
    pub source_checkpoint: String,
    /// Width of the sub-network.
    pub width: usize,
    /// Its depth.
    pub depth: usize,
    /// Backbone parameters of the sub-network.
    pub params: usize,
    /// Its FLOPs per image.
    pub flops: u64,
    /// Classes of the dataset.
    pub classes: usize,
    /// Epochs trained.
    pub epochs: usize,
    /// Training images used (those that decode).
    pub train_images: usize,
    /// Validation images used (those that decode).
    pub val_images: usize,
    /// Validation top-1 (fraction) of the exported weights in libtorch (f32): the best of the model and its EMA
    /// over the epochs.
    pub top1: f64,
    /// Best validation top-1 of the model over the epochs.
    pub top1_model: f64,
    /// Best validation top-1 of the model EMA.
    pub top1_ema: f64,
    /// Whose weights were exported: the model's or the EMA's, whichever scored best.
    pub exported: Candidate,
    /// After which epoch.
    pub exported_epoch: usize,
    /// The runtime `top1_ort` is measured on: `ort`.
    pub runtime: &'static str,
    /// The exported model on ONNX Runtime and tract.
    #[serde(flatten)]
    pub runtimes: RuntimeCheck,
    /// The lowered model (logits).
    pub onnx: String,
    /// The fine-tuned run folder (`poac lower` accepts it).
    pub output: String,
    /// Training seconds (evaluation excluded).
    pub train_seconds: f64,
    /// Seconds of the whole command.
    pub wall_seconds: f64,
    /// Every epoch.
    pub history: Vec<EpochRecord>,
}

/// Fine-tunes, exports and checks; see the module documentation.
pub fn finetune(options: &FinetuneOptions) -> Result<FinetuneReport> {
    let started = Instant::now();
    let mut overrides = options.overrides.clone();
    overrides.extend(options.epochs.map(|e| format!("epochs={e}")));
    let config = FinetuneConfig::load(options.config.as_deref(), &overrides)?;
    let source = Source::open(&options.run)?;
    let subnet = options.subnet.resolve(&source.supergraph)?;
    let index = DatasetIndex::open_labelled(&options.data)?;
    let root = index.root();
    let classes = index.classes.len();
    let val_entries = index.balanced(Split::Val, options.val_limit);
    if val_entries.is_empty() {
        bail!("the validation subset of {} is empty (--val-limit 0): fine-tuning needs validation images to report top-1", root.display());
    }
    let size = source.supergraph.arch.img_size;
    let train_images = TrainImages::decode(root, &index.balanced(Split::Train, options.train_limit), TrainTransform::new(&config, size));
    if train_images.len() < config.batch_size {
        bail!("{} training images decode, fewer than batch_size {} (raise --train-limit or lower batch_size)", train_images.len(), config.batch_size);
    }
    let (images, labels) = EvalBatches::new(root, val_entries.clone(), size, MEAN, STD).load_all();
    if images.size()[0] == 0 {
        bail!("no validation image of {} decodes", root.display());
    }
    let val = ValImages { images: images.to_device(options.device), labels: labels.to_device(options.device) };

    let output = options.output.clone().unwrap_or_else(|| options.run.join("finetune").join(subnet.to_string()));
    std::fs::create_dir_all(&output).with_context(|| format!("cannot create {}", output.display()))?;
    std::fs::write(output.join("config.yaml"), serde_yaml::to_string(&config)?)?;
    let metrics_path = output.join("metrics.jsonl");
    let mut metrics = std::fs::File::create(&metrics_path).with_context(|| format!("cannot create {}", metrics_path.display()))?;
    tch::manual_seed(config.seed as i64);
    let model = Classifier::from_source(&source, subnet, classes, options.device)?;
    let trained = self::train::train(&config, model, &train_images, &val, classes, &mut metrics, options.device)?;

    let train_seconds: f64 = trained.history.iter().map(|e| e.seconds).sum();
    let progress = Progress { iteration: trained.steps, total_iters: trained.steps, adam_step: trained.steps as i64, seed: config.seed, elapsed_s: train_seconds, world_size: 1 };
    export::save(&output, &trained.best, &progress)?;
    let onnx = output.join(ONNX);
    let lowered = export::lower_with_head(&output, &onnx)?;
    let mut best = trained.best;
    let tch_logits = best.eval_logits(&val.images);
    let runtimes = export::check_runtimes(&onnx, root, &val_entries, &tch_logits, &val.labels)?;
    Ok(FinetuneReport {
        source_run: options.run.display().to_string(),
        source_checkpoint: std::fs::canonicalize(&source.dir).unwrap_or_else(|_| source.dir.clone()).display().to_string(),
        width: subnet.width,
        depth: subnet.depth,
        params: lowered.params,
        flops: lowered.flops,
        classes,
        epochs: config.epochs,
        train_images: train_images.len(),
        val_images: val.labels.size()[0] as usize,
        top1: top1(&tch_logits, &val.labels),
        top1_model: trained.top1_model,
        top1_ema: trained.top1_ema,
        exported: trained.best_of,
        exported_epoch: trained.best_epoch,
        runtime: "ort",
        runtimes,
        onnx: onnx.display().to_string(),
        output: output.display().to_string(),
        train_seconds,
        wall_seconds: started.elapsed().as_secs_f64(),
        history: trained.history,
    })
}
