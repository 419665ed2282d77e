//! The fine-tuning loop: per step a batch of fresh training views, Mixup/CutMix, soft-target cross-entropy
//! with drop-path, AdamW with layer-wise lr decay under a warm-up + cosine lr, and the model EMA; after every
//! epoch the top-1 of the model and of its EMA on the validation images, the best of either kept.

use super::classifier::Classifier;
use super::config::FinetuneConfig;
use super::data::TrainImages;
use super::mixup::Mixer;
use crate::data::loader::EpochOrder;
use crate::train::adamw::AdamW;
use crate::train::losses::cross_entropy;
use crate::train::schedule::Cosine;
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::io::Write;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Validation images `[n, 3, S, S]` (normalised) and their classes `[n]`, on the training device.
pub struct ValImages {
    /// The images.
    pub images: Tensor,
    /// Their classes.
    pub labels: Tensor,
}

/// One epoch, as logged.
#[derive(Clone, Debug, Serialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss (soft-target cross-entropy on the mixed batches).
    pub loss: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Validation top-1 of the model (fraction).
    pub top1: f64,
    /// Validation top-1 of its EMA.
    pub top1_ema: f64,
    /// Training seconds of the epoch (evaluation excluded).
    pub seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
}

/// Which weights scored best on the validation images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Candidate {
    /// The trained model.
    Model,
    /// Its exponential moving average.
    Ema,
}

/// What training produced.
pub struct Trained {
    /// The best weights on the validation images (of the model or its EMA, after any epoch).
    pub best: Classifier,
    /// Whose they are.
    pub best_of: Candidate,
    /// After which epoch (1-based).
    pub best_epoch: usize,
    /// Best validation top-1 of the model over the epochs.
    pub top1_model: f64,
    /// Best validation top-1 of the EMA.
    pub top1_ema: f64,
    /// Every epoch.
    pub history: Vec<EpochRecord>,
    /// Optimiser steps taken.
    pub steps: u64,
}

/// The EMA decay at update `t` (1-based): `min(decay, (1 + t) / (10 + t))`, timm's warm-up.
fn ema_decay(decay: f64, t: i64) -> f64 {
    decay.min((1.0 + t as f64) / (10.0 + t as f64))
}

/// Top-1 accuracy (fraction) of `logits` `[n, C]` against `labels` `[n]`.
pub fn top1(logits: &Tensor, labels: &Tensor) -> f64 {
    logits.argmax(-1, false).eq_tensor(labels).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

/// Fine-tunes `model` on `train` for `config.epochs` epochs, logging each epoch to `metrics` (JSON lines).
pub fn train(config: &FinetuneConfig, mut model: Classifier, train: &TrainImages, val: &ValImages, classes: usize, metrics: &mut dyn Write, device: Device) -> Result<Trained> {
    let mut order = EpochOrder::new(train.len(), config.batch_size, config.seed);
    let steps = order.batches_per_epoch();
    let total = steps * config.epochs as u64;
    let warmup = ((config.warmup_epochs * steps as f64).round() as u64).min(total);
    let schedule = Cosine { base: config.lr(), end: config.min_lr, warmup_start: 0.0, warmup, total };
    let mixer = Mixer::new(config, classes);
    let side = model.graph().arch.img_size as i64;
    model.set_compute_kind(crate::config::compute_kind(&config.compute_precision));
    let (params, groups) = (model.params(), model.param_groups(config.layer_decay));
    let mut adam = AdamW::new(&params, 0.9, 0.999);
    let mut ema = model.snapshot();
    let best = model.snapshot();
    let (mut best_top1, mut best_of, mut best_epoch) = (f64::NEG_INFINITY, Candidate::Model, 0);
    let (mut top1_model, mut top1_ema) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let mut history = Vec::with_capacity(config.epochs);
    for epoch in 1..=config.epochs {
        let style = ProgressStyle::with_template(&format!("finetune epoch {epoch}/{} {{bar:30}} {{pos}}/{{len}} [{{elapsed}}<{{eta}}] {{msg}}", config.epochs)).unwrap();
        let bar = ProgressBar::new(steps).with_style(style);
        let started = Instant::now();
        let (mut loss_sum, mut lr) = (0.0, 0.0);
        for k in 0..steps {
            let step = (epoch as u64 - 1) * steps + k;
            // The step's augmentations, mixing and drop-path depend only on the seed and the step.
            let mut rng = ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(1).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ step);
            tch::manual_seed((config.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)) as i64);
            let (images, labels) = train.batch(&order.batch(step), &mut rng);
            let mix = mixer.draw(side, side, &mut rng);
            let (images, targets) = mixer.apply(&mix, &images.to_device(device), &labels.to_device(device));
            let loss = cross_entropy(&targets, &model.logits(&images, config.drop_path), 1.0);
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                bail!("the fine-tuning loss is not finite ({value}) at step {step}; try a smaller blr");
            }
            loss.backward();
            lr = schedule.at(step);
            adam.step(&params, &groups, lr, config.weight_decay);
            for p in &params {
                p.shallow_clone().zero_grad();
            }
            ema.update_towards(&model, ema_decay(config.model_ema_decay, adam.step));
            loss_sum += value;
            bar.inc(1);
            bar.set_message(format!("loss {value:.3} | lr {lr:.2e}"));
        }
        bar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        let record = EpochRecord {
            epoch,
            loss: loss_sum / steps as f64,
            lr,
            top1: top1(&model.eval_logits(&val.images), &val.labels),
            top1_ema: top1(&ema.eval_logits(&val.images), &val.labels),
            seconds,
            images_per_second: (steps as usize * config.batch_size) as f64 / seconds.max(1e-9),
        };
        for (weights, score, source) in [(Candidate::Model, record.top1, &model), (Candidate::Ema, record.top1_ema, &ema)] {
            if score > best_top1 {
                (best_top1, best_of, best_epoch) = (score, weights, epoch);
                best.copy_from(source);
            }
        }
        top1_model = top1_model.max(record.top1);
        top1_ema = top1_ema.max(record.top1_ema);
        eprintln!(
            "epoch {epoch}/{}: loss {:.4} | val top-1 {:.2} % | EMA {:.2} % | {:.0} s, {:.0} img/s",
            config.epochs,
            record.loss,
            100.0 * record.top1,
            100.0 * record.top1_ema,
            record.seconds,
            record.images_per_second
        );
        writeln!(metrics, "{}", serde_json::to_string(&record)?)?;
        history.push(record);
    }
    Ok(Trained { best, best_of, best_epoch, top1_model, top1_ema, history, steps: total })
}
