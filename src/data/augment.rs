//! Image transforms on [`RgbImage`]: random-resized crops, flips, colour jitter, grayscale, normalisation
//! (dinov2's multi-crop recipe without blur and solarisation), and the deterministic evaluation transform.

use super::image_io::RgbImage;
use rand::Rng;

/// Per-channel mean used to normalise inputs (ImageNet's, as dinov2); recorded in every lowered model.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel standard deviation used to normalise inputs.
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Samples a crop of `scale` × the image area and an aspect ratio in [3/4, 4/3] (log-uniform), resized to
/// `size` × `size`; falls back to the largest centred crop after 10 tries (as torchvision does).
pub fn random_resized_crop(img: &RgbImage, size: usize, scale: [f64; 2], rng: &mut impl Rng) -> RgbImage {
    let (w, h) = (img.width as f64, img.height as f64);
    let area = w * h;
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale[0]..=scale[1]);
        let ratio = rng.random_range(log_lo..=log_hi).exp();
        let cw = (target * ratio).sqrt().round() as usize;
        let ch = (target / ratio).sqrt().round() as usize;
        if cw > 0 && ch > 0 && cw <= img.width && ch <= img.height {
            let top = rng.random_range(0..=img.height - ch);
            let left = rng.random_range(0..=img.width - cw);
            return resize_region(img, left as f64, top as f64, cw as f64, ch as f64, size);
        }
    }
    let side = w.min(h);
    resize_region(img, (w - side) / 2.0, (h - side) / 2.0, side, side, size)
}

/// The evaluation transform: the largest centred square, resized to `size` × `size`.
pub fn center_square(img: &RgbImage, size: usize) -> RgbImage {
    let (w, h) = (img.width as f64, img.height as f64);
    let side = w.min(h);
    resize_region(img, (w - side) / 2.0, (h - side) / 2.0, side, side, size)
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
            0 => {
                let f = rng.random_range(1.0 - brightness..=1.0 + brightness);
                img.data.iter_mut().for_each(|v| *v = (*v * f).clamp(0.0, 1.0));
            }
            1 => {
                let f = rng.random_range(1.0 - contrast..=1.0 + contrast);
                let mean = (0..plane).map(|i| luma(img.data[i], img.data[plane + i], img.data[2 * plane + i])).sum::<f32>() / plane as f32;
                img.data.iter_mut().for_each(|v| *v = (mean + (*v - mean) * f).clamp(0.0, 1.0));
            }
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

/// One crop of the multi-crop recipe: random-resized crop, flip (p 0.5), colour jitter (p 0.8),
/// grayscale (p 0.2), normalisation.
pub fn augmented_crop(img: &RgbImage, size: usize, scale: [f64; 2], rng: &mut impl Rng) -> RgbImage {
    let mut crop = random_resized_crop(img, size, scale, rng);
    if rng.random_bool(0.5) {
        flip_horizontal(&mut crop);
    }
    if rng.random_bool(0.8) {
        color_jitter(&mut crop, 0.4, 0.4, 0.2, 0.1, rng);
    }
    if rng.random_bool(0.2) {
        grayscale(&mut crop);
    }
    normalize(&mut crop, MEAN, STD);
    crop
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

    #[test]
    fn crops_have_the_requested_size_and_are_seeded() {
        let img = ramp(28, 28);
        let a = augmented_crop(&img, 16, [0.05, 0.32], &mut rand_chacha::ChaCha8Rng::seed_from_u64(3));
        let b = augmented_crop(&img, 16, [0.05, 0.32], &mut rand_chacha::ChaCha8Rng::seed_from_u64(3));
        assert_eq!((a.width, a.height, a.data.len()), (16, 16, 3 * 256));
        assert_eq!(a.data, b.data);
    }
}
