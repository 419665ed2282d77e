//! Batch loaders: multi-crop training batches built on worker threads in a reproducible order, and plain
//! evaluation batches.

use super::augment::{augmented_crop, normalize, BlurSpec, CropRecipe};
use super::image_io::{decode, RgbImage};
use super::index::Entry;
use super::mask::batch_masks;
use super::resize::center_square;
use super::par_map;
use crate::config::Config;
use crate::shuffle::ShuffledPasses;
use anyhow::{anyhow, bail, Result};
use crossbeam_channel::{bounded, Receiver};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tch::Tensor;

/// What a multi-crop batch looks like.
#[derive(Clone, Debug)]
pub struct MultiCropSpec {
    /// Images per batch.
    pub batch_size: usize,
    /// How the two global crops are made (dinov2 blurs and solarises them differently).
    pub global: [CropRecipe; 2],
    /// Number of local crops.
    pub local_number: usize,
    /// How the local crops are made.
    pub local: CropRecipe,
    /// Patch side (for the mask grid).
    pub patch_size: usize,
    /// Fraction of global crops that are masked.
    pub mask_probability: f64,
    /// Masking-ratio range of masked crops.
    pub mask_ratio: [f64; 2],
}

impl MultiCropSpec {
    /// The batches `config` asks for; a blur or solarisation probability outside [0, 1], or a blur sigma range
    /// that is not `0 < min <= max`, is an error naming its key.
    pub fn from_config(config: &Config) -> Result<Self> {
        let crops = &config.crops;
        let probabilities: [(&str, &[f64]); 3] = [
            ("crops.global_crops_blur_probability", &crops.global_crops_blur_probability),
            ("crops.global_crops_solarize_probability", &crops.global_crops_solarize_probability),
            ("crops.local_crops_blur_probability", std::slice::from_ref(&crops.local_crops_blur_probability)),
        ];
        for (key, values) in probabilities {
            if !values.iter().all(|p| (0.0..=1.0).contains(p)) {
                bail!("{key} {values:?} must be within [0, 1]");
            }
        }
        let [lo, hi] = crops.blur_sigma;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            bail!("crops.blur_sigma [{lo}, {hi}] must satisfy 0 < min <= max");
        }
        let blur = BlurSpec::for_global_size([lo as f32, hi as f32], crops.global_crops_size);
        let interpolation = crops.interpolation()?;
        let global = |k: usize| CropRecipe {
            size: crops.global_crops_size,
            scale: crops.global_crops_scale,
            blur_probability: crops.global_crops_blur_probability[k],
            solarize_probability: crops.global_crops_solarize_probability[k],
            blur,
            interpolation,
        };
        let local = CropRecipe {
            size: crops.local_crops_size,
            scale: crops.local_crops_scale,
            blur_probability: crops.local_crops_blur_probability,
            solarize_probability: 0.0,
            blur,
            interpolation,
        };
        Ok(MultiCropSpec {
            batch_size: config.train.batch_size,
            global: [global(0), global(1)],
            local_number: crops.local_crops_number,
            local,
            patch_size: config.student.patch_size,
            mask_probability: config.ibot.mask_sample_probability,
            mask_ratio: config.ibot.mask_ratio_min_max,
        })
    }
}

/// One training batch. Crops are crop-major: `global[k·B + i]` is global crop `k` of image `i`.
pub struct CropBatch {
    /// `[2B, 3, G, G]`, normalised.
    pub global: Tensor,
    /// `[nL·B, 3, L, L]`, normalised.
    pub local: Tensor,
    /// `[2B, P]` iBOT masks of the global crops.
    pub masks: Tensor,
    /// Images that failed to decode and were replaced in this batch.
    pub skipped: usize,
}

/// Which part of each global batch this process trains on: with `ranks` data-parallel processes a global
/// batch holds `ranks × batch_size` images and rank `rank` takes the `rank`-th run of `batch_size` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This process's rank.
    pub rank: usize,
    /// Number of processes.
    pub ranks: usize,
}

impl Shard {
    /// The whole batch: one process.
    pub const WHOLE: Shard = Shard { rank: 0, ranks: 1 };
}

/// Streams training batches for iterations `start..`; batch `t` depends only on the seed and `t`, so a resumed
/// run sees the same data as an uninterrupted one, and each image's crops and masks depend only on its position
/// in the global batch, so any split across ranks sees the same crops as one process.
pub struct TrainLoader {
    /// Set when batches are built on the calling thread (`workers == 0`).
    inline: Option<(Arc<Source>, EpochOrder)>,
    receiver: Receiver<(u64, Result<CropBatch>)>,
    pending: BTreeMap<u64, Result<CropBatch>>,
    next: u64,
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Images skipped so far because they did not decode.
    pub skipped_total: Arc<AtomicUsize>,
}

impl TrainLoader {
    /// Starts `workers` threads producing batches from iteration `start`. With `workers == 0` batches are built
    /// on the calling thread when asked for: on a machine with as many cores as libtorch threads, a loader
    /// thread preempts libtorch's spinning workers and costs far more than the few milliseconds it computes.
    pub fn start(root: &Path, entries: Vec<Entry>, spec: MultiCropSpec, seed: u64, start: u64, workers: usize, shard: Shard) -> Self {
        let (sender, receiver) = bounded(2 * workers.max(1) + 2);
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(start));
        let skipped_total = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Source { root: root.to_path_buf(), entries, spec, seed, shard });
        if workers == 0 {
            let inline = Some((shared.clone(), shared.order()));
            return TrainLoader { inline, receiver, pending: BTreeMap::new(), next: start, stop, workers: Vec::new(), skipped_total };
        }
        let handles = (0..workers)
            .map(|_| {
                let (sender, stop, counter, shared) = (sender.clone(), stop.clone(), counter.clone(), shared.clone());
                std::thread::spawn(move || {
                    lower_priority();
                    let mut order = shared.order();
                    while !stop.load(Ordering::Relaxed) {
                        let iteration = counter.fetch_add(1, Ordering::Relaxed);
                        let batch = shared.build_batch(order.batch(iteration), iteration);
                        if sender.send((iteration, batch)).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        TrainLoader { inline: None, receiver, pending: BTreeMap::new(), next: start, stop, workers: handles, skipped_total }
    }

    /// The batch of the next iteration, in order; an error if no image of the dataset decodes any more.
    pub fn next_batch(&mut self) -> Result<CropBatch> {
        let batch = if let Some((shared, order)) = &mut self.inline {
            shared.build_batch(order.batch(self.next), self.next)?
        } else {
            loop {
                if let Some(batch) = self.pending.remove(&self.next) {
                    break batch?;
                }
                let (iteration, batch) = self.receiver.recv().map_err(|_| anyhow!("the data loader threads stopped"))?;
                self.pending.insert(iteration, batch);
            }
        };
        self.next += 1;
        self.skipped_total.fetch_add(batch.skipped, Ordering::Relaxed);
        Ok(batch)
    }
}

impl Drop for TrainLoader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while self.receiver.try_recv().is_ok() {}
        for worker in self.workers.drain(..) {
            // Unblock a worker waiting on a full channel, then join it.
            while !worker.is_finished() {
                while self.receiver.try_recv().is_ok() {}
                std::thread::yield_now();
            }
            let _ = worker.join();
        }
    }
}

/// Makes the calling loader thread yield to libtorch's workers: they spin at their barriers, so a loader that
/// preempts one of them stalls the whole step; at the lowest priority it runs in the gaps instead.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on the calling thread (Linux threads are tasks; `who = 0` is this one).
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

/// The order of images: a fresh seeded permutation per epoch, cut into full batches (the last partial batch of
/// an epoch is dropped).
pub struct EpochOrder {
    batch: usize,
    epochs: ShuffledPasses<usize>,
}

impl EpochOrder {
    /// The order for `len` images in batches of `batch`.
    pub fn new(len: usize, batch: usize, seed: u64) -> Self {
        EpochOrder { batch, epochs: ShuffledPasses::new((0..len.max(1)).collect(), seed) }
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> u64 {
        (self.epochs.len() / self.batch).max(1) as u64
    }

    /// Indices of the images of iteration `iteration`.
    pub fn batch(&mut self, iteration: u64) -> Vec<usize> {
        let per_epoch = self.batches_per_epoch();
        let (epoch, k) = (iteration / per_epoch, (iteration % per_epoch) as usize);
        let batch = self.batch;
        let order = self.epochs.pass(epoch);
        (0..batch).map(|i| order[(k * batch + i) % order.len()]).collect()
    }
}

/// What a loader builds its batches from.
struct Source {
    root: PathBuf,
    entries: Vec<Entry>,
    spec: MultiCropSpec,
    seed: u64,
    shard: Shard,
}

impl Source {
    /// The order of the global batches.
    fn order(&self) -> EpochOrder {
        EpochOrder::new(self.entries.len(), self.spec.batch_size * self.shard.ranks, self.seed)
    }

    /// This shard's part of the global batch `global` (image indices) of `iteration`: image `j` of the global
    /// batch is cropped with a generator of its own, seeded by the seed, the iteration and `j`; the masks are
    /// drawn for the whole global batch, as one process would, and this shard's rows taken.
    fn build_batch(&self, global: Vec<usize>, iteration: u64) -> Result<CropBatch> {
        let spec = &self.spec;
        let b = spec.batch_size;
        let first = self.shard.rank * b;
        let (g, l) = (spec.global[0].size, spec.local.size);
        let mut global_crops = vec![0.0f32; 2 * b * 3 * g * g];
        let mut local = vec![0.0f32; spec.local_number * b * 3 * l * l];
        let mut skipped = 0;
        for (i, &index) in global[first..first + b].iter().enumerate() {
            let mut rng = self.rng(iteration, Some(first + i));
            let image = decode_or_next(&self.root, &self.entries, index, &mut skipped)?;
            for (k, recipe) in spec.global.iter().enumerate() {
                let crop = augmented_crop(&image, recipe, &mut rng);
                let at = (k * b + i) * 3 * g * g;
                global_crops[at..at + 3 * g * g].copy_from_slice(&crop.data);
            }
            for k in 0..spec.local_number {
                let crop = augmented_crop(&image, &spec.local, &mut rng);
                let at = (k * b + i) * 3 * l * l;
                local[at..at + 3 * l * l].copy_from_slice(&crop.data);
            }
        }
        let side = g / spec.patch_size;
        let all_masks = batch_masks(2 * global.len(), side, spec.mask_probability, spec.mask_ratio, &mut self.rng(iteration, None));
        let masks: Vec<bool> = (0..2).flat_map(|k| all_masks[k * global.len() + first..][..b].concat()).collect();
        Ok(CropBatch {
            global: Tensor::from_slice(&global_crops).view([2 * b as i64, 3, g as i64, g as i64]),
            local: Tensor::from_slice(&local).view([(spec.local_number * b) as i64, 3, l as i64, l as i64]),
            masks: Tensor::from_slice(&masks).view([2 * b as i64, (side * side) as i64]),
            skipped,
        })
    }

    /// The generator of image `position` of the global batch of `iteration`, or of its masks (`None`).
    fn rng(&self, iteration: u64, position: Option<usize>) -> ChaCha8Rng {
        let stream = position.map_or(0, |p| p as u64 + 1);
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(1).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ iteration);
        rng.set_stream(stream);
        rng
    }
}

/// Decodes entry `index`, or the next ones that decode (files can change after indexing); every failure is
/// counted and warned about.
fn decode_or_next(root: &Path, entries: &[Entry], index: usize, skipped: &mut usize) -> Result<RgbImage> {
    for offset in 0..entries.len() {
        match decode_or_warn(root, &entries[(index + offset) % entries.len()]) {
            Some(image) => return Ok(image),
            None => *skipped += 1,
        }
    }
    bail!("no image of {} decodes any more (they did when it was indexed; run `poac data index` again)", root.display())
}

/// Decodes and transforms evaluation images (centred square, resize, normalise) on all cores, in batches.
pub struct EvalBatches {
    root: PathBuf,
    entries: Vec<Entry>,
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
}

impl EvalBatches {
    /// Evaluation batches of `entries` at `size` pixels with the given normalisation.
    pub fn new(root: &Path, entries: Vec<Entry>, size: usize, mean: [f32; 3], std: [f32; 3]) -> Self {
        EvalBatches { root: root.to_path_buf(), entries, size, mean, std }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Class ids in order.
    pub fn labels(&self) -> Vec<i64> {
        self.entries.iter().map(|e| e.class as i64).collect()
    }

    /// Images `range` as one `[n, 3, size, size]` buffer, and which of them decoded (those that did not are
    /// zeros, to be dropped by the caller).
    pub fn load(&self, range: std::ops::Range<usize>) -> (Vec<f32>, Vec<bool>) {
        let per = 3 * self.size * self.size;
        let images = par_map(&self.entries[range], |entry| {
            decode_or_warn(&self.root, entry).map(|image| {
                let mut img = center_square(&image, self.size);
                normalize(&mut img, self.mean, self.std);
                img.data
            })
        });
        let decoded = images.iter().map(Option::is_some).collect();
        let pixels = images.into_iter().flat_map(|img| img.unwrap_or_else(|| vec![0.0; per])).collect();
        (pixels, decoded)
    }

    /// Every image that decodes, as one `[n, 3, size, size]` tensor, and their class ids `[n]`; the others are
    /// left out (with a warning each).
    pub fn load_all(&self) -> (Tensor, Tensor) {
        let (pixels, decoded) = self.load(0..self.len());
        let keep: Vec<i64> = decoded.iter().enumerate().filter(|(_, ok)| **ok).map(|(i, _)| i as i64).collect();
        let keep = Tensor::from_slice(&keep);
        let side = self.size as i64;
        let images = Tensor::from_slice(&pixels).view([self.len() as i64, 3, side, side]).index_select(0, &keep);
        let labels = Tensor::from_slice(&self.labels()).index_select(0, &keep);
        (images, labels)
    }
}

/// Decodes `entry` of the dataset at `root`, or warns naming it and returns `None`.
pub fn decode_or_warn(root: &Path, entry: &Entry) -> Option<RgbImage> {
    decode(&root.join(&entry.path)).map_err(|e| eprintln!("warning: skipping {}: {e:#}", entry.path)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_recipes_follow_dinov2_per_crop() {
        let spec = MultiCropSpec::from_config(&Config::default()).unwrap();
        let [first, second] = spec.global;
        assert_eq!((first.size, first.blur_probability, first.solarize_probability), (224, 1.0, 0.0));
        assert_eq!((second.size, second.blur_probability, second.solarize_probability), (224, 0.1, 0.2));
        assert_eq!((spec.local.size, spec.local.blur_probability, spec.local.solarize_probability), (96, 0.5, 0.0));
        assert_eq!(spec.local.blur, BlurSpec { sigma: [0.1, 2.0], radius: 4 });
    }

    #[test]
    fn bad_crop_probabilities_are_errors_naming_the_key() {
        let with = |edit: fn(&mut Config)| {
            let mut config = Config::default();
            edit(&mut config);
            MultiCropSpec::from_config(&config).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(with(|c| c.crops.global_crops_solarize_probability[1] = 1.5).contains("crops.global_crops_solarize_probability"));
        assert!(with(|c| c.crops.local_crops_blur_probability = f64::NAN).contains("crops.local_crops_blur_probability"));
        assert!(with(|c| c.crops.blur_sigma = [2.0, 0.1]).contains("crops.blur_sigma"));
        assert!(with(|c| c.crops.blur_sigma = [0.0, 1.0]).contains("crops.blur_sigma"));
        assert_eq!(with(|c| c.crops.global_crops_blur_probability = [0.0, 1.0]), "");
    }

    #[test]
    fn epoch_order_is_a_permutation_and_reproducible() {
        let mut a = EpochOrder::new(10, 3, 7);
        let mut b = EpochOrder::new(10, 3, 7);
        assert_eq!(a.batches_per_epoch(), 3);
        let first: Vec<usize> = (0..3).flat_map(|t| a.batch(t)).collect();
        let mut sorted = first.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 9);
        // Jumping straight to iteration 4 (as a resumed run does) gives the same batch.
        assert_eq!(b.batch(4), a.batch(4));
        assert_ne!(a.batch(3), a.batch(0));
    }
}
