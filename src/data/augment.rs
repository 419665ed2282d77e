//! Image transforms on [`RgbImage`]: dinov2's multi-crop recipe (random-resized crops, flips, colour jitter,
//! grayscale, Gaussian blur, solarisation, normalisation) and the deterministic evaluation transform.

use super::image_io::RgbImage;
use super::resize::{resize_crop, Interpolation};
use rand::Rng;

/// Per-channel mean used to normalise inputs (ImageNet's, as dinov2); recorded in every lowered model.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel standard deviation used to normalise inputs.
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Samples a crop of `scale` × the image area and an aspect ratio in [3/4, 4/3] (log-uniform), resized to
/// `size` × `size`. After 10 failed tries it falls back as torchvision does: the whole image if its aspect ratio
/// is within the range, else the largest centred crop at the nearest ratio of the range.
pub fn random_resized_crop(img: &RgbImage, size: usize, scale: [f64; 2], interpolation: Interpolation, rng: &mut impl Rng) -> RgbImage {
    let area = (img.width * img.height) as f64;
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale[0]..=scale[1]);
        let ratio = rng.random_range(log_lo..=log_hi).exp();
        let cw = (target * ratio).sqrt().round() as usize;
        let ch = (target / ratio).sqrt().round() as usize;
        if cw > 0 && ch > 0 && cw <= img.width && ch <= img.height {
            let top = rng.random_range(0..=img.height - ch);
            let left = rng.random_range(0..=img.width - cw);
            return resize_crop(img, [left, top, cw, ch], size, interpolation);
        }
    }
    let (w, h) = (img.width as f64, img.height as f64);
    let (cw, ch) = if w / h < 3.0 / 4.0 {
        (img.width, ((w * 4.0 / 3.0).round() as usize).min(img.height))
    } else if w / h > 4.0 / 3.0 {
        (((h * 4.0 / 3.0).round() as usize).min(img.width), img.height)
    } else {
        (img.width, img.height)
    };
    resize_crop(img, [(img.width - cw) / 2, (img.height - ch) / 2, cw, ch], size, interpolation)
}

/// Mirrors the image left–right.
pub fn flip_horizontal(img: &mut RgbImage) {
    let w = img.width;
    for row in img.data.chunks_exact_mut(w) {
        row.reverse();
    }
}

fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

/// Replaces every pixel by its luma in all three channels.
pub fn grayscale(img: &mut RgbImage) {
    let plane = img.width * img.height;
    for i in 0..plane {
        let y = luma(img.data[i], img.data[plane + i], img.data[2 * plane + i]);
        for c in 0..3 {
            img.data[c * plane + i] = y;
        }
    }
}

/// Multiplies every value by `factor`, clamped to [0, 1] (torchvision's `adjust_brightness`).
pub fn adjust_brightness(img: &mut RgbImage, factor: f32) {
    img.data.iter_mut().for_each(|v| *v = (*v * factor).clamp(0.0, 1.0));
}

/// Scales every value's distance to the mean luma by `factor`, clamped to [0, 1] (torchvision's
/// `adjust_contrast`).
pub fn adjust_contrast(img: &mut RgbImage, factor: f32) {
    let plane = img.width * img.height;
    let mean = (0..plane).map(|i| luma(img.data[i], img.data[plane + i], img.data[2 * plane + i])).sum::<f32>() / plane as f32;
    img.data.iter_mut().for_each(|v| *v = (mean + (*v - mean) * factor).clamp(0.0, 1.0));
}

/// torchvision-style colour jitter: brightness, contrast, saturation (factors in [1−s, 1+s]) and hue (shift in
/// [−h, h] turns), applied in a random order.
pub fn color_jitter(img: &mut RgbImage, brightness: f32, contrast: f32, saturation: f32, hue: f32, rng: &mut impl Rng) {
    let plane = img.width * img.height;
    let mut order = [0, 1, 2, 3];
    for i in (1..4).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    for step in order {
        match step {
            0 => adjust_brightness(img, rng.random_range(1.0 - brightness..=1.0 + brightness)),
            1 => adjust_contrast(img, rng.random_range(1.0 - contrast..=1.0 + contrast)),
            2 => {
                let f = rng.random_range(1.0 - saturation..=1.0 + saturation);
                for i in 0..plane {
                    let y = luma(img.data[i], img.data[plane + i], img.data[2 * plane + i]);
                    for c in 0..3 {
                        let v = &mut img.data[c * plane + i];
                        *v = (y + (*v - y) * f).clamp(0.0, 1.0);
                    }
                }
            }
            _ => {
                let shift = rng.random_range(-hue..=hue);
                for i in 0..plane {
                    let (h, s, v) = rgb_to_hsv(img.data[i], img.data[plane + i], img.data[2 * plane + i]);
                    let (r, g, b) = hsv_to_rgb((h + shift).rem_euclid(1.0), s, v);
                    (img.data[i], img.data[plane + i], img.data[2 * plane + i]) = (r, g, b);
                }
            }
        }
    }
}

fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let s = if max > 0.0 { delta / max } else { 0.0 };
    let h = if delta == 0.0 {
        0.0
    } else if max == r {
        ((g - b) / delta).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / delta + 2.0) / 6.0
    } else {
        ((r - g) / delta + 4.0) / 6.0
    };
    (h, s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    let sector = h6.floor() as i32 % 6;
    let f = h6 - h6.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match sector {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Normalises in place: `(x − mean[c]) / std[c]` per channel.
pub fn normalize(img: &mut RgbImage, mean: [f32; 3], std: [f32; 3]) {
    let plane = img.width * img.height;
    for c in 0..3 {
        img.data[c * plane..(c + 1) * plane].iter_mut().for_each(|v| *v = (*v - mean[c]) / std[c]);
    }
}

/// Pixels at or above this value are inverted by [`solarize`]: dinov2's 128 of 255. An 8-bit pixel is at least
/// 128 exactly when the value in [0, 1] it rounds from is at least 0.5.
pub const SOLARIZE_THRESHOLD: f32 = 0.5;

/// dinov2 blurs with a 9-tap kernel (radius 4) at its 224 px global crop size.
const REFERENCE_BLUR: (usize, usize) = (4, 224);

/// Gaussian blur as dinov2 applies it: a standard deviation drawn uniformly from `sigma` for every blurred
/// crop, and a separable kernel of `2·radius + 1` taps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlurSpec {
    /// Range of the standard deviation, in pixels.
    pub sigma: [f32; 2],
    /// Kernel radius in pixels.
    pub radius: usize,
}

impl BlurSpec {
    /// dinov2's kernel (radius 4 for 224 px global crops, used for the local crops too), its radius scaled to a
    /// smaller `global_size` and kept in [1, 4]: 32 px images get radius 1, as 9 taps of 224 px cover 1.3 px of
    /// 32.
    pub fn for_global_size(sigma: [f32; 2], global_size: usize) -> Self {
        let (radius, size) = REFERENCE_BLUR;
        let scaled = (radius * global_size + size / 2) / size;
        BlurSpec { sigma, radius: scaled.clamp(1, radius) }
    }
}

/// How one crop of the multi-crop recipe is made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropRecipe {
    /// Side of the crop in pixels.
    pub size: usize,
    /// Range of the crop's area as a fraction of the image.
    pub scale: [f64; 2],
    /// Probability of a Gaussian blur.
    pub blur_probability: f64,
    /// Probability of solarisation (after the blur).
    pub solarize_probability: f64,
    /// The blur, when applied.
    pub blur: BlurSpec,
    /// How the crop is resampled to `size`.
    pub interpolation: Interpolation,
}

/// One crop of the multi-crop recipe: random-resized crop, flip (p 0.5), colour jitter (p 0.8), grayscale
/// (p 0.2), then [`blur_and_solarize`] with the recipe's probabilities, and normalisation.
pub fn augmented_crop(img: &RgbImage, recipe: &CropRecipe, rng: &mut impl Rng) -> RgbImage {
    let mut crop = random_resized_crop(img, recipe.size, recipe.scale, recipe.interpolation, rng);
    if rng.random_bool(0.5) {
        flip_horizontal(&mut crop);
    }
    if rng.random_bool(0.8) {
        color_jitter(&mut crop, 0.4, 0.4, 0.2, 0.1, rng);
    }
    if rng.random_bool(0.2) {
        grayscale(&mut crop);
    }
    blur_and_solarize(&mut crop, recipe, rng);
    normalize(&mut crop, MEAN, STD);
    crop
}

/// dinov2's last two steps of a crop: a Gaussian blur with the recipe's probability, then solarisation with
/// its probability. A probability of 0 draws no random number, so a recipe without them reproduces the crops
/// of one that never had them.
pub fn blur_and_solarize(img: &mut RgbImage, recipe: &CropRecipe, rng: &mut impl Rng) {
    if chance(recipe.blur_probability, rng) {
        let [lo, hi] = recipe.blur.sigma;
        let sigma = lo + (hi - lo) * rng.random::<f32>();
        gaussian_blur(img, sigma, recipe.blur.radius);
    }
    if chance(recipe.solarize_probability, rng) {
        solarize(img, SOLARIZE_THRESHOLD);
    }
}

/// True with probability `p`; 0 (or less) and 1 (or more) are decided without drawing.
fn chance(p: f64, rng: &mut impl Rng) -> bool {
    p >= 1.0 || (p > 0.0 && rng.random_bool(p))
}

/// Inverts (`v → 1 − v`) every value at or above `threshold`.
pub fn solarize(img: &mut RgbImage, threshold: f32) {
    img.data.iter_mut().filter(|v| **v >= threshold).for_each(|v| *v = 1.0 - *v);
}

/// The normalised Gaussian `exp(−x² / 2σ²)` at `x = −radius..=radius`.
pub fn gaussian_kernel(sigma: f32, radius: usize) -> Vec<f32> {
    let weight = |x: f32| if x == 0.0 { 1.0 } else { (-x * x / (2.0 * sigma * sigma)).exp() };
    let kernel: Vec<f32> = (0..=2 * radius).map(|i| weight(i as f32 - radius as f32)).collect();
    let sum: f32 = kernel.iter().sum();
    kernel.into_iter().map(|w| w / sum).collect()
}

/// Index `i` of a line of `n` values, mirrored at its ends without repeating the edge (`−1 → 1`), as
/// torchvision pads its blur.
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m < n as isize { m } else { period - m }) as usize
}

/// Separable Gaussian blur of every channel with `2·radius + 1` taps, edges mirrored.
pub fn gaussian_blur(img: &mut RgbImage, sigma: f32, radius: usize) {
    let kernel = gaussian_kernel(sigma, radius);
    let (w, h) = (img.width, img.height);
    let r = radius as isize;
    let columns: Vec<usize> = (-r..(w as isize + r)).map(|x| reflect(x, w)).collect();
    let mut padded = vec![0.0f32; w + 2 * radius];
    let mut rows = vec![0.0f32; w * h];
    for plane in img.data.chunks_exact_mut(w * h) {
        for (row, out) in plane.chunks_exact(w).zip(rows.chunks_exact_mut(w)) {
            padded.iter_mut().zip(&columns).for_each(|(p, &x)| *p = row[x]);
            out.fill(0.0);
            for (k, &weight) in kernel.iter().enumerate() {
                out.iter_mut().zip(&padded[k..k + w]).for_each(|(o, &v)| *o += weight * v);
            }
        }
        for (y, out) in plane.chunks_exact_mut(w).enumerate() {
            out.fill(0.0);
            for (k, &weight) in kernel.iter().enumerate() {
                let source = reflect(y as isize + k as isize - r, h);
                out.iter_mut().zip(&rows[source * w..(source + 1) * w]).for_each(|(o, &v)| *o += weight * v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ramp(w: usize, h: usize) -> RgbImage {
        let plane: Vec<f32> = (0..w * h).map(|i| (i % w) as f32 / (w - 1) as f32).collect();
        RgbImage { width: w, height: h, data: [plane.clone(), plane.clone(), plane].concat() }
    }

    #[test]
    fn hsv_round_trips_and_flip_mirrors() {
        for (r, g, b) in [(0.2, 0.5, 0.9), (0.9, 0.1, 0.3), (0.4, 0.4, 0.4)] {
            let (h, s, v) = rgb_to_hsv(r, g, b);
            let (r2, g2, b2) = hsv_to_rgb(h, s, v);
            assert!((r - r2).abs() < 1e-6 && (g - g2).abs() < 1e-6 && (b - b2).abs() < 1e-6);
        }
        let mut img = ramp(3, 1);
        flip_horizontal(&mut img);
        assert_eq!(&img.data[..3], &[1.0, 0.5, 0.0]);
    }

    fn recipe(size: usize, blur_probability: f64, solarize_probability: f64, sigma: [f32; 2]) -> CropRecipe {
        CropRecipe { size, scale: [0.05, 0.32], blur_probability, solarize_probability, blur: BlurSpec { sigma, radius: 1 }, interpolation: Interpolation::Bicubic }
    }

    /// A single plane of `w × h` values, repeated in all three channels.
    fn gray(w: usize, h: usize, values: &[f32]) -> RgbImage {
        RgbImage { width: w, height: h, data: values.repeat(3) }
    }

    /// Values in [0, 1) from a seeded generator.
    fn noise(w: usize, h: usize, seed: u64) -> RgbImage {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        RgbImage { width: w, height: h, data: (0..3 * w * h).map(|_| rng.random::<f32>()).collect() }
    }

    fn assert_close(got: &[f32], expected: &[f32]) {
        assert_eq!(got.len(), expected.len());
        for (i, (a, b)) in got.iter().zip(expected).enumerate() {
            assert!((a - b).abs() < 1e-6, "at {i}: {a} vs {b}\n{got:?}");
        }
    }

    #[test]
    fn crops_have_the_requested_size_and_are_seeded() {
        let img = ramp(28, 28);
        let r = recipe(16, 0.5, 0.2, [0.1, 2.0]);
        let a = augmented_crop(&img, &r, &mut rand_chacha::ChaCha8Rng::seed_from_u64(3));
        let b = augmented_crop(&img, &r, &mut rand_chacha::ChaCha8Rng::seed_from_u64(3));
        assert_eq!((a.width, a.height, a.data.len()), (16, 16, 3 * 256));
        assert_eq!(a.data, b.data);
    }

    #[test]
    fn gaussian_kernel_matches_hand_computed_weights() {
        // sigma 1, radius 1: [e^-1/2, 1, e^-1/2] / (1 + 2 e^-1/2), e^-1/2 = 0.60653066.
        assert_close(&gaussian_kernel(1.0, 1), &[0.27406862, 0.45186276, 0.27406862]);
        // A vanishing sigma keeps the centre only.
        assert_close(&gaussian_kernel(0.0, 2), &[0.0, 0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn blur_of_an_impulse_is_the_outer_product_of_the_kernel() {
        let mut impulse = vec![0.0; 25];
        impulse[12] = 1.0;
        let mut img = gray(5, 5, &impulse);
        gaussian_blur(&mut img, 1.0, 1);
        let (corner, edge, centre) = (0.27406862f32 * 0.27406862, 0.27406862f32 * 0.45186276, 0.45186276f32 * 0.45186276);
        #[rustfmt::skip]
        let expected = [
            0.0, 0.0, 0.0, 0.0, 0.0,
            0.0, corner, edge, corner, 0.0,
            0.0, edge, centre, edge, 0.0,
            0.0, corner, edge, corner, 0.0,
            0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        assert_close(&img.data, &expected.repeat(3));
    }

    #[test]
    fn blur_mirrors_the_edges_without_repeating_them() {
        // One row [1, 0, 0, 0] padded by reflection is [0 | 1, 0, 0, 0 | 0]; a single row blurs vertically
        // into itself.
        let mut img = gray(4, 1, &[1.0, 0.0, 0.0, 0.0]);
        gaussian_blur(&mut img, 1.0, 1);
        assert_close(&img.data, &[0.45186276, 0.27406862, 0.0, 0.0].repeat(3));
        let mirrored: Vec<usize> = (-3..8).map(|i| reflect(i, 4)).collect();
        assert_eq!(mirrored, [3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1]);
        assert_eq!(reflect(-2, 1), 0);
    }

    #[test]
    fn blur_of_a_constant_image_is_the_same_constant() {
        for (w, h, radius) in [(7, 5, 2), (3, 3, 4), (1, 1, 1), (16, 16, 1)] {
            let mut img = gray(w, h, &vec![0.3; w * h]);
            gaussian_blur(&mut img, 1.7, radius);
            assert_close(&img.data, &vec![0.3; 3 * w * h]);
        }
    }

    #[test]
    fn blur_preserves_the_mean_of_content_away_from_the_borders() {
        // Noise in the middle 8 × 8 of a 16 × 16 image, 4 pixels (≥ 2 radii) from every edge: no weight is
        // mirrored back, so the mean is exactly kept, while the pixels change.
        let inner = noise(8, 8, 5);
        let mut values = vec![0.0f32; 256];
        for (i, &v) in inner.data[..64].iter().enumerate() {
            values[(4 + i / 8) * 16 + 4 + i % 8] = v;
        }
        let mut img = gray(16, 16, &values);
        gaussian_blur(&mut img, 2.0, 2);
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        assert!((mean(&img.data[..256]) - mean(&values)).abs() < 1e-6);
        assert!(img.data[..256].iter().zip(&values).any(|(a, b)| (a - b).abs() > 0.01));
    }

    #[test]
    fn solarize_inverts_exactly_the_values_at_or_above_the_threshold() {
        let mut img = gray(6, 1, &[0.0, 0.2, 0.4999, 0.5, 0.75, 1.0]);
        solarize(&mut img, SOLARIZE_THRESHOLD);
        assert_close(&img.data, &[0.0, 0.2, 0.4999, 0.5, 0.25, 0.0].repeat(3));
    }

    #[test]
    fn probabilities_zero_and_one_do_what_they_say() {
        let sigma = [1.5, 1.5];
        for seed in 0..50 {
            let img = noise(8, 8, seed);
            let run = |blur: f64, solarize: f64| {
                let (mut out, mut rng) = (img.clone(), rand_chacha::ChaCha8Rng::seed_from_u64(seed));
                blur_and_solarize(&mut out, &recipe(8, blur, solarize, sigma), &mut rng);
                (out.data, rng.random::<u64>())
            };
            let untouched_rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed).random::<u64>();
            // Probability 0: the image is untouched and no random number is drawn.
            assert_eq!(run(0.0, 0.0), (img.data.clone(), untouched_rng));
            let mut blurred = img.clone();
            gaussian_blur(&mut blurred, 1.5, 1);
            assert_eq!(run(1.0, 0.0).0, blurred.data);
            let mut solarized = img.clone();
            solarize(&mut solarized, SOLARIZE_THRESHOLD);
            assert_eq!(run(0.0, 1.0).0, solarized.data);
            solarize(&mut blurred, SOLARIZE_THRESHOLD);
            assert_eq!(run(1.0, 1.0).0, blurred.data, "blur comes before solarisation");
        }
    }

    #[test]
    fn blur_and_solarize_happen_about_as_often_as_asked() {
        // 2000 seeded draws of p = 0.1 and 0.2: binomial means 200 and 400, standard deviations 13.4 and 17.9.
        let img = noise(8, 8, 1);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let count = |blur: f64, solarize: f64, rng: &mut rand_chacha::ChaCha8Rng| {
            (0..2000)
                .filter(|_| {
                    let mut out = img.clone();
                    blur_and_solarize(&mut out, &recipe(8, blur, solarize, [0.1, 2.0]), rng);
                    out.data != img.data
                })
                .count()
        };
        let blurred = count(0.1, 0.0, &mut rng);
        let solarized = count(0.0, 0.2, &mut rng);
        assert!((150..250).contains(&blurred), "{blurred}");
        assert!((330..470).contains(&solarized), "{solarized}");
    }

    #[test]
    fn blur_radius_scales_dinov2s_kernel_to_the_image_size() {
        let radius = |size| BlurSpec::for_global_size([0.1, 2.0], size).radius;
        assert_eq!([radius(224), radius(518), radius(140), radius(96), radius(32), radius(8)], [4, 4, 3, 2, 1, 1]);
    }
}
