//! Resampling a crop of an image to a square of a given side: bilinear, or bicubic as PIL does it (the library
//! under dinov2's torchvision transforms). Used by the training crops and by the evaluation transform.

use super::image_io::RgbImage;

/// How a crop is resampled to its output size (`crops.interpolation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// Bilinear with half-pixel centres; at the crop's edges it reads the image pixels just outside it.
    Bilinear,
    /// PIL's bicubic (a = −0.5, the kernel widened when shrinking), within the crop: what dinov2's
    /// `RandomResizedCrop(interpolation=BICUBIC)` does to its PIL images.
    Bicubic,
}

impl Interpolation {
    /// The names `crops.interpolation` accepts, default first.
    pub const NAMES: [&str; 2] = ["bicubic", "bilinear"];

    /// The interpolation a config calls `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "bicubic" => Some(Interpolation::Bicubic),
            "bilinear" => Some(Interpolation::Bilinear),
            _ => None,
        }
    }
}

/// A crop of an image, in whole pixels: `[left, top, width, height]`.
pub type CropBox = [usize; 4];

/// The crop `[left, top, width, height]` of `img`, resampled to `size` × `size`.
pub fn resize_crop(img: &RgbImage, crop: CropBox, size: usize, interpolation: Interpolation) -> RgbImage {
    let [left, top, cw, ch] = crop;
    match interpolation {
        Interpolation::Bilinear => resize_region(img, left as f64, top as f64, cw as f64, ch as f64, size),
        Interpolation::Bicubic => resize_bicubic(img, crop, size),
    }
}

/// The evaluation transform: the largest centred square, resized to `size` × `size`.
pub fn center_square(img: &RgbImage, size: usize) -> RgbImage {
    let (w, h) = (img.width as f64, img.height as f64);
    let side = w.min(h);
    resize_region(img, (w - side) / 2.0, (h - side) / 2.0, side, side, size)
}

/// PIL's bicubic kernel, a = −0.5.
fn bicubic_kernel(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// PIL's resampling taps along one axis, from `len` input pixels to `out`: for each output pixel the first input
/// pixel of its window and the window's weights. When shrinking, the kernel is widened by the factor
/// (antialiasing); windows are cut at the edges and their weights renormalised to sum to 1.
fn bicubic_taps(len: usize, out: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = len as f64 / out as f64;
    let widen = scale.max(1.0);
    let support = 2.0 * widen;
    (0..out)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            // PIL truncates toward zero, then clips to the input.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).clamp(0, len as i64) as usize;
            let weights: Vec<f64> = (first..end).map(|x| bicubic_kernel((x as f64 - center + 0.5) / widen)).collect();
            let sum: f64 = weights.iter().sum();
            let norm = if sum == 0.0 { 1.0 } else { sum };
            (first, weights.iter().map(|w| (w / norm) as f32).collect())
        })
        .collect()
}

/// Bicubic resampling of the crop to `size²` as PIL does it on 8-bit images, up to their rounding: a horizontal
/// pass, then a vertical one, each result clipped to [0, 1] (PIL stores both passes in 8 bits).
fn resize_bicubic(img: &RgbImage, [left, top, cw, ch]: CropBox, size: usize) -> RgbImage {
    let plane = img.width * img.height;
    let (columns, rows) = (bicubic_taps(cw, size), bicubic_taps(ch, size));
    let mut data = vec![0.0f32; 3 * size * size];
    let mut wide = vec![0.0f32; ch * size];
    for c in 0..3 {
        let p = &img.data[c * plane..(c + 1) * plane];
        for y in 0..ch {
            let row = &p[(top + y) * img.width + left..][..cw];
            for (x, (first, weights)) in columns.iter().enumerate() {
                let v: f32 = weights.iter().zip(&row[*first..]).map(|(w, v)| w * v).sum();
                wide[y * size + x] = v.clamp(0.0, 1.0);
            }
        }
        let out = &mut data[c * size * size..(c + 1) * size * size];
        for (y, (first, weights)) in rows.iter().enumerate() {
            for x in 0..size {
                let v: f32 = weights.iter().enumerate().map(|(k, w)| w * wide[(first + k) * size + x]).sum();
                out[y * size + x] = v.clamp(0.0, 1.0);
            }
        }
    }
    RgbImage { width: size, height: size, data }
}

/// Bilinear resampling (half-pixel centres) of the region `[left, left+cw) × [top, top+ch)` to `size²`.
fn resize_region(img: &RgbImage, left: f64, top: f64, cw: f64, ch: f64, size: usize) -> RgbImage {
    let plane = img.width * img.height;
    let mut data = vec![0.0f32; 3 * size * size];
    let axis = |out: usize, start: f64, len: f64, max: usize| -> (usize, usize, f32) {
        let src = (start + (out as f64 + 0.5) * len / size as f64 - 0.5).clamp(0.0, (max - 1) as f64);
        let i0 = src.floor() as usize;
        (i0, (i0 + 1).min(max - 1), (src - i0 as f64) as f32)
    };
    let cols: Vec<_> = (0..size).map(|x| axis(x, left, cw, img.width)).collect();
    for y in 0..size {
        let (y0, y1, fy) = axis(y, top, ch, img.height);
        for (x, &(x0, x1, fx)) in cols.iter().enumerate() {
            for c in 0..3 {
                let p = &img.data[c * plane..(c + 1) * plane];
                let top_row = p[y0 * img.width + x0] * (1.0 - fx) + p[y0 * img.width + x1] * fx;
                let bottom_row = p[y1 * img.width + x0] * (1.0 - fx) + p[y1 * img.width + x1] * fx;
                data[c * size * size + y * size + x] = top_row * (1.0 - fy) + bottom_row * fy;
            }
        }
    }
    RgbImage { width: size, height: size, data }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn ramp(w: usize, h: usize) -> RgbImage {
        let plane: Vec<f32> = (0..w * h).map(|i| (i % w) as f32 / (w - 1) as f32).collect();
        RgbImage { width: w, height: h, data: [plane.clone(), plane.clone(), plane].concat() }
    }

    fn gray(w: usize, h: usize, values: &[f32]) -> RgbImage {
        RgbImage { width: w, height: h, data: values.repeat(3) }
    }

    fn noise(w: usize, h: usize, seed: u64) -> RgbImage {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        RgbImage { width: w, height: h, data: (0..3 * w * h).map(|_| rng.random::<f32>()).collect() }
    }

    #[test]
    fn resizing_a_ramp_keeps_it_linear() {
        // A horizontal ramp i/3 over 4 pixels, resized to 8: source x = (x + 0.5) / 2 - 0.5, clamped to [0, 3].
        let out = center_square(&ramp(4, 4), 8);
        let row: Vec<f32> = out.data[..8].to_vec();
        let third = 1.0 / 3.0;
        let expected = [0.0, 0.25 * third, 0.75 * third, 1.25 * third, 1.75 * third, 2.25 * third, 2.75 * third, 1.0];
        for (a, b) in row.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{row:?}");
        }
    }

    #[test]
    fn bicubic_taps_sum_to_one_and_a_same_size_crop_is_copied() {
        for (len, out) in [(7, 32), (28, 32), (32, 16), (9, 4), (5, 5)] {
            for (first, weights) in bicubic_taps(len, out) {
                assert!(first + weights.len() <= len);
                assert!((weights.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{len} -> {out}: {weights:?}");
            }
        }
        let img = noise(6, 5, 3);
        let copy = resize_crop(&img, [1, 0, 5, 5], 5, Interpolation::Bicubic);
        for c in 0..3 {
            for y in 0..5 {
                for x in 0..5 {
                    assert_eq!(copy.data[c * 25 + y * 5 + x], img.data[c * 30 + y * 6 + x + 1]);
                }
            }
        }
    }

    #[test]
    fn bicubic_keeps_a_constant_and_stays_within_range() {
        let flat = gray(9, 7, &[0.3; 63]);
        for size in [4, 9, 20] {
            let out = resize_crop(&flat, [1, 1, 7, 5], size, Interpolation::Bicubic);
            assert!(out.data.iter().all(|v| (v - 0.3).abs() < 1e-6));
        }
        // The cubic overshoots at an edge (bilinear does not) ...
        let step = gray(4, 4, &[0.2, 0.2, 0.9, 0.9].repeat(4));
        let sharp = resize_crop(&step, [0, 0, 4, 4], 16, Interpolation::Bicubic);
        assert!(sharp.data.iter().any(|&v| v > 0.92) && sharp.data.iter().any(|&v| v < 0.18));
        let smooth = resize_crop(&step, [0, 0, 4, 4], 16, Interpolation::Bilinear);
        assert!(smooth.data.iter().all(|&v| (0.2 - 1e-6..=0.9 + 1e-6).contains(&v)));
        // ... and the passes clip to [0, 1], as PIL's 8-bit ones do, where it would leave the range.
        let edge = gray(4, 4, &[0.0, 0.0, 1.0, 1.0].repeat(4));
        let out = resize_crop(&edge, [0, 0, 4, 4], 16, Interpolation::Bicubic);
        assert!(out.data.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}
