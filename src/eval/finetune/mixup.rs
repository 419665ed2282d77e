//! Mixup and CutMix with label smoothing, as timm's `Mixup` in batch mode (DeiT's fine-tuning): a batch is mixed
//! with itself reversed, by a weight λ ~ Beta(α, α) — Mixup blends the images, CutMix pastes a box of the other
//! image whose area is a 1 − λ share (λ then corrected to the box actually pasted) — and the smoothed one-hot
//! targets are mixed by the same λ.

use super::config::FinetuneConfig;
use rand::Rng;
use tch::{Kind, Tensor};

/// A box of the reversed batch pasted into every image, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasteBox {
    /// First row.
    pub top: i64,
    /// First column.
    pub left: i64,
    /// Rows.
    pub height: i64,
    /// Columns.
    pub width: i64,
}

impl PasteBox {
    /// timm's `rand_bbox`: a box of sides `√(1 − λ)` of the image's, centred on a uniformly drawn pixel and
    /// clipped to the image.
    fn draw(height: i64, width: i64, lambda: f64, rng: &mut impl Rng) -> Self {
        let ratio = (1.0 - lambda).sqrt();
        let (cut_h, cut_w) = ((height as f64 * ratio) as i64, (width as f64 * ratio) as i64);
        let (cy, cx) = (rng.random_range(0..height), rng.random_range(0..width));
        let (top, bottom) = ((cy - cut_h / 2).clamp(0, height), (cy + cut_h / 2).clamp(0, height));
        let (left, right) = ((cx - cut_w / 2).clamp(0, width), (cx + cut_w / 2).clamp(0, width));
        PasteBox { top, left, height: bottom - top, width: right - left }
    }
}

/// How one batch is mixed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mix {
    /// Not mixed: the targets are the smoothed labels.
    None,
    /// Mixup: `λ·x + (1 − λ)·x_reversed`.
    Blend {
        /// Weight of each image's own image and label.
        lambda: f64,
    },
    /// CutMix: the box of the reversed batch's image pasted in.
    Paste(PasteBox),
}

impl Mix {
    /// The weight of each image's own label for `height × width` images: Mixup's λ, or CutMix's share of the
    /// image left unpasted.
    pub fn lambda(&self, height: i64, width: i64) -> f64 {
        match self {
            Mix::None => 1.0,
            Mix::Blend { lambda } => *lambda,
            Mix::Paste(b) => 1.0 - (b.height * b.width) as f64 / (height * width) as f64,
        }
    }
}

/// The mixing settings of a fine-tune.
#[derive(Clone, Debug)]
pub struct Mixer {
    mixup: f64,
    cutmix: f64,
    prob: f64,
    switch_prob: f64,
    smoothing: f64,
    classes: i64,
}

impl Mixer {
    /// The config's Mixup/CutMix settings for `classes` classes.
    pub fn new(config: &FinetuneConfig, classes: usize) -> Self {
        Mixer {
            mixup: config.mixup,
            cutmix: config.cutmix,
            prob: config.mixup_prob,
            switch_prob: config.mixup_switch_prob,
            smoothing: config.smoothing,
            classes: classes as i64,
        }
    }

    /// Draws how a batch of `height × width` images is mixed: with probability `mixup_prob`, CutMix (with
    /// probability `mixup_switch_prob` when both are on) or Mixup.
    pub fn draw(&self, height: i64, width: i64, rng: &mut impl Rng) -> Mix {
        if (self.mixup <= 0.0 && self.cutmix <= 0.0) || !rng.random_bool(self.prob) {
            return Mix::None;
        }
        let use_cutmix = if self.mixup > 0.0 && self.cutmix > 0.0 { rng.random_bool(self.switch_prob) } else { self.cutmix > 0.0 };
        if use_cutmix {
            let lambda = beta(self.cutmix, self.cutmix, rng);
            Mix::Paste(PasteBox::draw(height, width, lambda, rng))
        } else {
            Mix::Blend { lambda: beta(self.mixup, self.mixup, rng) }
        }
    }

    /// The mixed images `[N, C, H, W]` and their soft targets `[N, classes]` (each row sums to 1).
    pub fn apply(&self, mix: &Mix, images: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
        let size = images.size();
        let lambda = mix.lambda(size[2], size[3]);
        let targets = smoothed_targets(labels, self.classes, self.smoothing);
        let reversed = images.flip([0]);
        let mixed = match mix {
            Mix::None => return (images.shallow_clone(), targets),
            Mix::Blend { .. } => images * lambda + reversed * (1.0 - lambda),
            Mix::Paste(b) => {
                let out = images.copy();
                let region = |t: &Tensor| t.narrow(2, b.top, b.height).narrow(3, b.left, b.width);
                region(&out).copy_(&region(&reversed));
                out
            }
        };
        (mixed, &targets * lambda + targets.flip([0]) * (1.0 - lambda))
    }
}

/// One-hot targets `[N, classes]` of `labels` `[N]` with label smoothing: `1 − smoothing + smoothing / classes`
/// on the label, `smoothing / classes` elsewhere.
pub fn smoothed_targets(labels: &Tensor, classes: i64, smoothing: f64) -> Tensor {
    labels.one_hot(classes).to_kind(Kind::Float) * (1.0 - smoothing) + smoothing / classes as f64
}

/// A draw of Beta(a, b) by Jöhnk's method — `X = U^(1/a)`, `Y = V^(1/b)` for uniform `U`, `V`, kept when
/// `X + Y ≤ 1`, then `X / (X + Y)` — exact for every `a, b > 0` and a few tries for Mixup's and CutMix's α ≤ 1;
/// in logarithms, so that a small α does not underflow.
pub fn beta(a: f64, b: f64, rng: &mut impl Rng) -> f64 {
    loop {
        // 1 − [0, 1) is (0, 1]: the logarithm is finite.
        let log_x = (1.0 - rng.random::<f64>()).ln() / a;
        let log_y = (1.0 - rng.random::<f64>()).ln() / b;
        let (high, low) = if log_x > log_y { (log_x, log_y) } else { (log_y, log_x) };
        let log_sum = high + (low - high).exp().ln_1p();
        if log_sum <= 0.0 {
            return (log_x - log_sum).exp();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn mixer(mixup: f64, cutmix: f64, switch_prob: f64, smoothing: f64) -> Mixer {
        Mixer { mixup, cutmix, prob: 1.0, switch_prob, smoothing, classes: 3 }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::try_from(t.flatten(0, -1)).unwrap()
    }

    /// Two 1-channel 4 × 4 images, all 0 and all 1, of classes 0 and 2.
    fn batch() -> (Tensor, Tensor) {
        let images = Tensor::cat(&[Tensor::zeros([1, 1, 4, 4], (Kind::Float, tch::Device::Cpu)), Tensor::ones([1, 1, 4, 4], (Kind::Float, tch::Device::Cpu))], 0);
        (images, Tensor::from_slice(&[0i64, 2]))
    }

    #[test]
    fn smoothing_puts_the_rest_of_the_mass_on_the_label() {
        let targets = values(&smoothed_targets(&Tensor::from_slice(&[1i64, 0]), 4, 0.1));
        // 0.1 / 4 = 0.025 off the label, 0.9 + 0.025 on it.
        let expected = [0.025, 0.925, 0.025, 0.025, 0.925, 0.025, 0.025, 0.025];
        assert!(targets.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6), "{targets:?}");
    }

    #[test]
    fn cutmix_lambda_is_the_unpasted_area_and_targets_sum_to_one() {
        let (images, labels) = batch();
        // Rows 1..3, columns 0..3: 6 of 16 pixels pasted, λ = 10 / 16 = 0.625.
        let mix = Mix::Paste(PasteBox { top: 1, left: 0, height: 2, width: 3 });
        assert_eq!(mix.lambda(4, 4), 0.625);
        let (mixed, targets) = mixer(0.8, 1.0, 0.5, 0.0).apply(&mix, &images, &labels);
        let pixels = values(&mixed);
        // Image 0 (zeros) got six ones inside the box, image 1 (ones) six zeros.
        let inside = |i: usize| i / 4 >= 1 && i / 4 < 3 && i % 4 < 3;
        assert!(pixels[..16].iter().enumerate().all(|(i, &v)| v == if inside(i) { 1.0 } else { 0.0 }), "{pixels:?}");
        assert!(pixels[16..].iter().enumerate().all(|(i, &v)| v == if inside(i) { 0.0 } else { 1.0 }), "{pixels:?}");
        assert_eq!(values(&targets), [0.625f32, 0.0, 0.375, 0.375, 0.0, 0.625]);
        // With smoothing 0.3 the rows still sum to 1: 0.625·(0.8, 0.1, 0.1) + 0.375·(0.1, 0.1, 0.8).
        let (_, smoothed) = mixer(0.8, 1.0, 0.5, 0.3).apply(&mix, &images, &labels);
        let row: Vec<f32> = values(&smoothed)[..3].to_vec();
        let expected = [0.625 * 0.8 + 0.375 * 0.1, 0.1, 0.625 * 0.1 + 0.375 * 0.8];
        assert!(row.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6), "{row:?}");
    }

    #[test]
    fn mixup_blends_images_and_targets_by_lambda() {
        let (images, labels) = batch();
        let (mixed, targets) = mixer(0.8, 0.0, 0.5, 0.0).apply(&Mix::Blend { lambda: 0.3 }, &images, &labels);
        let pixels = values(&mixed);
        assert!(pixels[..16].iter().all(|&v| (v - 0.7).abs() < 1e-6) && pixels[16..].iter().all(|&v| (v - 0.3).abs() < 1e-6));
        let t = values(&targets);
        assert!(t.iter().zip([0.3, 0.0, 0.7, 0.7, 0.0, 0.3]).all(|(a, b)| (a - b).abs() < 1e-6), "{t:?}");
    }

    #[test]
    fn drawn_mixes_keep_targets_normalised_and_follow_the_switch() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (images, labels) = batch();
        let both = mixer(0.8, 1.0, 0.5, 0.1);
        let mut pasted = 0;
        for _ in 0..400 {
            let mix = both.draw(4, 4, &mut rng);
            if let Mix::Paste(b) = mix {
                pasted += 1;
                assert!(b.top >= 0 && b.left >= 0 && b.top + b.height <= 4 && b.left + b.width <= 4, "{b:?}");
            }
            let (_, targets) = both.apply(&mix, &images, &labels);
            let sums = values(&targets.sum_dim_intlist(1, false, Kind::Float));
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6), "{mix:?}: {sums:?}");
        }
        assert!((160..240).contains(&pasted), "switch probability 0.5 pasted {pasted} of 400");
        assert!((0..50).all(|_| matches!(mixer(0.8, 0.0, 0.5, 0.1).draw(8, 8, &mut rng), Mix::Blend { .. })));
        assert!((0..50).all(|_| matches!(mixer(0.0, 1.0, 0.0, 0.1).draw(8, 8, &mut rng), Mix::Paste(_))));
        assert_eq!(mixer(0.0, 0.0, 0.5, 0.1).draw(8, 8, &mut rng), Mix::None);
    }

    #[test]
    fn beta_draws_have_the_beta_moments() {
        // Beta(a, b): mean a / (a + b), variance ab / ((a + b)²(a + b + 1)).
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (a, b) in [(0.8, 0.8), (1.0, 1.0), (0.2, 0.2), (2.0, 5.0)] {
            let n = 20_000;
            let draws: Vec<f64> = (0..n).map(|_| beta(a, b, &mut rng)).collect();
            assert!(draws.iter().all(|x| (0.0..=1.0).contains(x)));
            let mean = draws.iter().sum::<f64>() / n as f64;
            let variance = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            let (m, v) = (a / (a + b), a * b / ((a + b).powi(2) * (a + b + 1.0)));
            assert!((mean - m).abs() < 0.01 && (variance - v).abs() < 0.01, "Beta({a}, {b}): mean {mean} (want {m}), variance {variance} (want {v})");
        }
    }
}
