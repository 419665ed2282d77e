//! `poac bench augment`: what dinov2's blur and solarisation cost on the training thread. One batch of the
//! config's multi-crop recipe (2 global + N local crops per image, each random-resized, flipped, colour-jittered,
//! grayscaled, blurred and solarised with the recipe's probabilities, normalised) is built `--repeats` times,
//! once as configured and once with blur and solarisation on every crop (the worst case), in the same run.
//! The source images are seeded noise of `--image-size` pixels: a crop's cost depends on sizes, not content.

use crate::config::Config;
use crate::data::augment::{augmented_crop, CropRecipe};
use crate::data::image_io::RgbImage;
use crate::data::loader::MultiCropSpec;
use crate::lower::write_atomically;
use anyhow::{ensure, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// `poac bench augment`'s flags.
#[derive(Args)]
pub struct BenchAugmentArgs {
    /// Pre-training config whose crops and batch size are measured.
    #[arg(long, default_value = "configs/fashion_mnist_vit.yaml")]
    config: PathBuf,
    /// Side of the square source images in pixels (Fashion-MNIST: 28).
    #[arg(long, default_value_t = 28)]
    image_size: usize,
    /// Batches built per case; the table gives the fastest and the median.
    #[arg(long, default_value_t = 20)]
    repeats: usize,
    /// Write the figures as JSON to this file (they are printed either way).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The time of one case, in milliseconds per batch.
#[derive(Serialize)]
struct CaseTime {
    case: &'static str,
    best_ms: f64,
    median_ms: f64,
}

/// Runs `poac bench augment`.
pub fn bench_augment(args: BenchAugmentArgs) -> Result<()> {
    ensure!(args.repeats > 0, "--repeats must be at least 1");
    ensure!(args.image_size > 0, "--image-size must be at least 1");
    let spec = MultiCropSpec::from_config(&Config::load(&args.config)?)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let side = args.image_size;
    let images: Vec<RgbImage> = (0..spec.batch_size)
        .map(|_| RgbImage { width: side, height: side, data: (0..3 * side * side).map(|_| rng.random::<f32>()).collect() })
        .collect();
    let always = |recipe: CropRecipe| CropRecipe { blur_probability: 1.0, solarize_probability: 1.0, ..recipe };
    let worst = MultiCropSpec { global: spec.global.map(always), local: always(spec.local), ..spec.clone() };
    let cases = [
        time_batches("as configured", &spec, &images, args.repeats, &mut rng),
        time_batches("blur and solarise on every crop", &worst, &images, args.repeats, &mut rng),
    ];
    let ratio = cases[1].median_ms / cases[0].median_ms;
    let crops = spec.batch_size * (spec.global.len() + spec.local_number);
    println!(
        "{} images × ({} global crops of {} px + {} local of {} px) = {crops} crops per batch, from {side} px sources:",
        spec.batch_size,
        spec.global.len(),
        spec.global[0].size,
        spec.local_number,
        spec.local.size
    );
    for case in &cases {
        println!("  {:<34} best {:8.2} ms   median {:8.2} ms per batch", case.case, case.best_ms, case.median_ms);
    }
    println!("  every crop blurred and solarised: {ratio:.2}× the configured recipe (medians)");
    if let Some(path) = args.out {
        let report = serde_json::json!({
            "config": args.config,
            "batch_size": spec.batch_size,
            "crops_per_batch": crops,
            "source_image_size": side,
            "repeats": args.repeats,
            "method": "one thread builds every crop of one batch with augmented_crop (crop, flip, jitter, grayscale, blur, solarise, normalise); wall time per batch",
            "cases": cases,
            "worst_over_configured": ratio,
        });
        write_atomically(&path, |w| Ok(serde_json::to_writer_pretty(w, &report)?))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Builds every crop of one batch of `images` under `spec`, `repeats` times.
fn time_batches(case: &'static str, spec: &MultiCropSpec, images: &[RgbImage], repeats: usize, rng: &mut ChaCha8Rng) -> CaseTime {
    let recipes: Vec<&CropRecipe> = spec.global.iter().chain(std::iter::repeat_n(&spec.local, spec.local_number)).collect();
    let mut ms: Vec<f64> = (0..repeats)
        .map(|_| {
            let started = Instant::now();
            for image in images {
                for recipe in &recipes {
                    std::hint::black_box(augmented_crop(image, recipe, rng));
                }
            }
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    CaseTime { case, best_ms: ms[0], median_ms: ms[ms.len() / 2] }
}
