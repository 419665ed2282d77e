//! The training images of a fine-tune: decoded once and kept in memory (small images: 10,000 Fashion-MNIST
//! images take 94 MB), and augmented anew for every batch on the training thread — DeiT's random-resized crop,
//! horizontal flip and RandAugment, a few milliseconds a batch at 32 px.

use super::config::FinetuneConfig;
use crate::data::augment::{flip_horizontal, normalize, random_resized_crop, MEAN, STD};
use crate::data::image_io::RgbImage;
use crate::data::index::Entry;
use crate::data::loader::decode_or_warn;
use crate::data::par_map;
use crate::data::rand_augment::RandAugment;
use crate::data::resize::Interpolation;
use rand::Rng;
use std::path::Path;
use tch::Tensor;

/// How a training image becomes a training view.
#[derive(Clone, Copy, Debug)]
pub struct TrainTransform {
    /// Side of the view (the model's image size).
    pub size: usize,
    /// Area range of the random-resized crop.
    pub scale: [f64; 2],
    /// Probability of a horizontal flip.
    pub hflip: f64,
    /// RandAugment after the crop and flip.
    pub rand_augment: RandAugment,
}

impl TrainTransform {
    /// The config's transform at `size` pixels.
    pub fn new(config: &FinetuneConfig, size: usize) -> Self {
        let rand_augment = RandAugment { ops: config.rand_augment_ops, magnitude: config.rand_augment_magnitude as f32 };
        TrainTransform { size, scale: config.scale, hflip: config.hflip, rand_augment }
    }

    /// Random-resized crop (bilinear: the fine-tuning figures were measured with it), flip, RandAugment, then
    /// normalisation (the mean and std every lowered model records).
    pub fn apply(&self, img: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let mut view = random_resized_crop(img, self.size, self.scale, Interpolation::Bilinear, rng);
        if rng.random_bool(self.hflip) {
            flip_horizontal(&mut view);
        }
        self.rand_augment.apply(&mut view, rng);
        normalize(&mut view, MEAN, STD);
        view
    }
}

/// Decoded training images with their classes.
pub struct TrainImages {
    images: Vec<RgbImage>,
    labels: Vec<i64>,
    transform: TrainTransform,
}

impl TrainImages {
    /// Decodes `entries` of the dataset at `root` on all cores; an image that does not decode is left out with a
    /// warning.
    pub fn decode(root: &Path, entries: &[Entry], transform: TrainTransform) -> Self {
        let decoded = par_map(entries, |entry| decode_or_warn(root, entry));
        let (images, labels) = decoded.into_iter().zip(entries).filter_map(|(image, entry)| Some((image?, entry.class as i64))).unzip();
        TrainImages { images, labels, transform }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// True when no image decoded.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Fresh training views of images `indices`, `[B, 3, S, S]` (normalised), and their classes `[B]`.
    pub fn batch(&self, indices: &[usize], rng: &mut impl Rng) -> (Tensor, Tensor) {
        let side = self.transform.size;
        let mut pixels = Vec::with_capacity(indices.len() * 3 * side * side);
        for &i in indices {
            pixels.extend(self.transform.apply(&self.images[i], rng).data);
        }
        let labels: Vec<i64> = indices.iter().map(|&i| self.labels[i]).collect();
        let (n, side) = (indices.len() as i64, side as i64);
        (Tensor::from_slice(&pixels).view([n, 3, side, side]), Tensor::from_slice(&labels))
    }
}
