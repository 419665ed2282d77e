//! dinov2's grid of linear classifiers on frozen `last4` features: 4 feature settings (class tokens of the last
//! 1 or 4 blocks, with or without the mean patch token) × 13 learning rates = 52 classifiers, trained together.
//! The 13 classifiers of a setting are one `[d, 13·C]` linear layer, so one matmul serves them all; each
//! column block has its own learning rate in a hand-written SGD with momentum (PyTorch's semantics: dampening 0,
//! no Nesterov, weight decay 0) under a cosine schedule to 0.

use crate::shuffle::ShuffledPasses;
use indicatif::{ProgressBar, ProgressStyle};
use std::ops::Range;
use tch::{Kind, Tensor};

/// dinov2's learning rates, each scaled by batch size / 256.
pub const BASE_LRS: [f64; 13] = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1];
/// SGD momentum.
pub const MOMENTUM: f64 = 0.9;
/// Standard deviation of the initial weights (dinov2's; the biases start at 0).
pub const INIT_STD: f64 = 0.01;
/// Validation rows scored per matmul.
const EVAL_CHUNK: i64 = 1024;

/// Which part of the `[N, 5W]` `last4` features a classifier reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureSetting {
    /// Class tokens of this many last blocks (1 or 4).
    pub n_blocks: usize,
    /// Whether the mean patch token of the last block is appended.
    pub avgpool: bool,
}

impl FeatureSetting {
    /// dinov2's four settings: n_blocks ∈ {1, 4} × avgpool ∈ {false, true}.
    pub const ALL: [FeatureSetting; 4] = [
        FeatureSetting { n_blocks: 1, avgpool: false },
        FeatureSetting { n_blocks: 1, avgpool: true },
        FeatureSetting { n_blocks: 4, avgpool: false },
        FeatureSetting { n_blocks: 4, avgpool: true },
    ];

    /// The columns this setting reads: `last4` is the class tokens of the last 4 blocks (oldest first), then the
    /// mean patch token, each `width` wide, so every setting is one contiguous range.
    pub fn columns(self, width: usize) -> Range<usize> {
        let end = if self.avgpool { 5 * width } else { 4 * width };
        (4 - self.n_blocks) * width..end
    }

    /// This setting's input `[N, d]` from `last4` features `[N, 5·width]`.
    pub fn select(self, last4: &Tensor, width: usize) -> Tensor {
        let columns = self.columns(width);
        last4.narrow(1, columns.start as i64, columns.len() as i64)
    }
}

/// The 13 classifiers of one feature setting, and their momentum buffers.
struct HeadGroup {
    setting: FeatureSetting,
    /// `[d, 13·C]`: columns `[i·C, (i+1)·C)` are the classifier with learning rate `i`.
    weight: Tensor,
    /// `[13·C]`.
    bias: Tensor,
    weight_momentum: Tensor,
    bias_momentum: Tensor,
}

/// All 52 classifiers.
pub struct ClassifierGrid {
    width: usize,
    classes: usize,
    /// The learning rate of every weight column, `[13·C]` (each of [`BASE_LRS`] scaled, repeated `C` times).
    column_lrs: Tensor,
    groups: Vec<HeadGroup>,
}

impl ClassifierGrid {
    /// Classifiers of `classes` classes on `last4` features of sub-network width `width`, for mini-batches of
    /// `batch_size`, with weights drawn from N(0, `init_std`²) (0 gives zeros) and zero biases.
    pub fn new(width: usize, classes: usize, batch_size: usize, init_std: f64) -> Self {
        let lrs: Vec<f32> = Self::learning_rates(batch_size).iter().flat_map(|&lr| std::iter::repeat_n(lr as f32, classes)).collect();
        let outputs = (BASE_LRS.len() * classes) as i64;
        let groups = FeatureSetting::ALL
            .into_iter()
            .map(|setting| {
                let inputs = setting.columns(width).len() as i64;
                let weight = Tensor::randn([inputs, outputs], (Kind::Float, tch::Device::Cpu)) * init_std;
                let bias = Tensor::zeros([outputs], (Kind::Float, tch::Device::Cpu));
                HeadGroup {
                    setting,
                    weight_momentum: weight.zeros_like(),
                    bias_momentum: bias.zeros_like(),
                    weight: weight.set_requires_grad(true),
                    bias: bias.set_requires_grad(true),
                }
            })
            .collect();
        ClassifierGrid { width, classes, column_lrs: Tensor::from_slice(&lrs), groups }
    }

    /// The grid's learning rates for mini-batches of `batch_size`: [`BASE_LRS`] × batch size / 256.
    pub fn learning_rates(batch_size: usize) -> Vec<f64> {
        BASE_LRS.iter().map(|lr| lr * batch_size as f64 / 256.0).collect()
    }

    /// Every classifier's setting and learning rate, in the order of [`ClassifierGrid::accuracies`].
    pub fn classifiers(batch_size: usize) -> Vec<(FeatureSetting, f64)> {
        FeatureSetting::ALL.into_iter().flat_map(|s| Self::learning_rates(batch_size).into_iter().map(move |lr| (s, lr))).collect()
    }

    /// One SGD step of every classifier on a mini-batch (`last4` `[B, 5W]`, `labels` `[B]`), each classifier
    /// minimising its own mean cross-entropy, at `lr_factor` × its learning rate.
    pub fn step(&mut self, last4: &Tensor, labels: &Tensor, lr_factor: f64) {
        let batch = labels.size()[0];
        let heads = BASE_LRS.len() as i64;
        let targets = labels.view([batch, 1, 1]).expand([batch, heads, 1], false);
        let losses: Vec<Tensor> = self
            .groups
            .iter()
            .map(|group| {
                let logits = group.setting.select(last4, self.width).matmul(&group.weight) + &group.bias;
                let log_probs = logits.view([batch, heads, self.classes as i64]).log_softmax(-1, Kind::Float);
                -log_probs.gather(2, &targets, false).sum(Kind::Float) / batch as f64
            })
            .collect();
        let parameters: Vec<&Tensor> = self.groups.iter().flat_map(|g| [&g.weight, &g.bias]).collect();
        let gradients = Tensor::run_backward(&[Tensor::stack(&losses, 0).sum(Kind::Float)], &parameters, false, false);
        let lrs = &self.column_lrs * lr_factor;
        tch::no_grad(|| {
            for (group, gradient) in self.groups.iter_mut().zip(gradients.chunks(2)) {
                for (parameter, momentum, gradient) in [(&mut group.weight, &mut group.weight_momentum, &gradient[0]), (&mut group.bias, &mut group.bias_momentum, &gradient[1])] {
                    let _ = momentum.g_mul_scalar_(MOMENTUM).g_add_(gradient);
                    let _ = parameter.g_sub_(&(&*momentum * &lrs));
                }
            }
        });
    }

    /// Trains every classifier for `epochs` shuffled passes over `last4` `[N, 5W]` / `labels` `[N]` in
    /// mini-batches of `batch_size` (the last of a pass may be smaller), the learning rates following a cosine
    /// from their value to 0 over all iterations.
    pub fn train(&mut self, last4: &Tensor, labels: &Tensor, epochs: usize, batch_size: usize, seed: u64) {
        let rows = labels.size()[0] as usize;
        let per_epoch = rows.div_ceil(batch_size);
        let total = epochs * per_epoch;
        let bar = ProgressBar::new(total as u64).with_style(ProgressStyle::with_template("linear classifiers {bar:30} {pos}/{len} [{elapsed}<{eta}]").unwrap());
        let mut order = ShuffledPasses::new((0..rows as i64).collect(), seed);
        for epoch in 0..epochs {
            let pass = Tensor::from_slice(order.pass(epoch as u64));
            for (b, start) in (0..rows).step_by(batch_size).enumerate() {
                let picked = pass.narrow(0, start as i64, batch_size.min(rows - start) as i64);
                let iteration = epoch * per_epoch + b;
                self.step(&last4.index_select(0, &picked), &labels.index_select(0, &picked), cosine_factor(iteration, total));
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
    }

    /// Every classifier's logits for `last4` `[N, 5W]`: `[N, 4 settings, 13 learning rates, C]`.
    pub fn logits(&self, last4: &Tensor) -> Tensor {
        let rows = last4.size()[0];
        tch::no_grad(|| {
            let per_group: Vec<Tensor> = self.groups.iter().map(|g| (g.setting.select(last4, self.width).matmul(&g.weight) + &g.bias).view([rows, BASE_LRS.len() as i64, self.classes as i64])).collect();
            Tensor::stack(&per_group, 1)
        })
    }

    /// Top-1 accuracy (fraction) of every classifier on `last4` / `labels`, setting-major as
    /// [`ClassifierGrid::classifiers`] lists them.
    pub fn accuracies(&self, last4: &Tensor, labels: &Tensor) -> Vec<f64> {
        let rows = labels.size()[0];
        let mut correct = Tensor::zeros([(FeatureSetting::ALL.len() * BASE_LRS.len()) as i64], (Kind::Int64, tch::Device::Cpu));
        for start in (0..rows).step_by(EVAL_CHUNK as usize) {
            let len = EVAL_CHUNK.min(rows - start);
            let predicted = self.logits(&last4.narrow(0, start, len)).argmax(-1, false);
            let truth = labels.narrow(0, start, len).view([len, 1, 1]);
            correct += predicted.eq_tensor(&truth).sum_dim_intlist(0, false, Kind::Int64).flatten(0, 1);
        }
        Vec::<i64>::try_from(&correct).expect("an int64 vector").into_iter().map(|c| c as f64 / rows as f64).collect()
    }
}

/// The cosine schedule's factor at iteration `t` of `total` (PyTorch's `CosineAnnealingLR` to 0, stepped after
/// each iteration): 1 at the first iteration, ½ halfway.
pub fn cosine_factor(t: usize, total: usize) -> f64 {
    0.5 * (1.0 + (std::f64::consts::PI * t as f64 / total as f64).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_starts_at_one_halves_midway_and_nears_zero_at_the_end() {
        assert_eq!(cosine_factor(0, 100), 1.0);
        assert!((cosine_factor(50, 100) - 0.5).abs() < 1e-12);
        // cos(π·99/100) = −0.99951, so the last step runs at 2.47e-4 of the learning rate.
        assert!((cosine_factor(99, 100) - 2.467e-4).abs() < 1e-6);
    }
}
