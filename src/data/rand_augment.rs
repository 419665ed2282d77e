//! RandAugment for fine-tuning (timm's `rand-m9`, as DeiT uses it), kept to the cheap operations that make sense
//! on small images: each image gets `ops` operations drawn uniformly (with replacement) from rotate, shear x/y,
//! translate x/y, brightness, contrast and solarise, each applied with probability 0.5 at the fixed `magnitude`
//! and a random sign — timm's recipe without its magnitude noise.

use super::augment::{adjust_brightness, adjust_contrast, solarize};
use super::image_io::RgbImage;
use rand::Rng;

/// At magnitude 10 (timm's scale): rotations up to 30°, shears up to 0.3, translations up to 45 % of the side,
/// brightness and contrast factors 1 ± 0.9, and solarisation of every value at or above 0.
const MAX_ROTATE_DEGREES: f32 = 30.0;
const MAX_SHEAR: f32 = 0.3;
const MAX_TRANSLATE: f32 = 0.45;
const MAX_ENHANCE: f32 = 0.9;

#[derive(Clone, Copy, Debug)]
enum Operation {
    Rotate,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Brightness,
    Contrast,
    Solarize,
}

const OPERATIONS: [Operation; 8] = [
    Operation::Rotate,
    Operation::ShearX,
    Operation::ShearY,
    Operation::TranslateX,
    Operation::TranslateY,
    Operation::Brightness,
    Operation::Contrast,
    Operation::Solarize,
];

/// How many operations each image gets, and how strong they are.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandAugment {
    /// Operations drawn per image.
    pub ops: usize,
    /// Strength of every operation, from 0 (none) to 10.
    pub magnitude: f32,
}

impl RandAugment {
    /// Applies the drawn operations to `img` (values in [0, 1], before normalisation).
    pub fn apply(&self, img: &mut RgbImage, rng: &mut impl Rng) {
        let level = self.magnitude / 10.0;
        for _ in 0..self.ops {
            let operation = OPERATIONS[rng.random_range(0..OPERATIONS.len())];
            let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            if !rng.random_bool(0.5) {
                continue;
            }
            let amount = |max: f32| sign * max * level;
            match operation {
                Operation::Rotate => {
                    let (sin, cos) = amount(MAX_ROTATE_DEGREES).to_radians().sin_cos();
                    *img = warp_affine(img, [cos, -sin, sin, cos], [0.0, 0.0]);
                }
                Operation::ShearX => *img = warp_affine(img, [1.0, amount(MAX_SHEAR), 0.0, 1.0], [0.0, 0.0]),
                Operation::ShearY => *img = warp_affine(img, [1.0, 0.0, amount(MAX_SHEAR), 1.0], [0.0, 0.0]),
                Operation::TranslateX => *img = warp_affine(img, [1.0, 0.0, 0.0, 1.0], [amount(MAX_TRANSLATE) * img.width as f32, 0.0]),
                Operation::TranslateY => *img = warp_affine(img, [1.0, 0.0, 0.0, 1.0], [0.0, amount(MAX_TRANSLATE) * img.height as f32]),
                Operation::Brightness => adjust_brightness(img, 1.0 + amount(MAX_ENHANCE)),
                Operation::Contrast => adjust_contrast(img, 1.0 + amount(MAX_ENHANCE)),
                Operation::Solarize => solarize(img, 1.0 - level),
            }
        }
    }
}

/// Bilinear resampling through an affine map about the image centre `c`: output pixel `p` reads the input at
/// `m·(p − c) + c + shift` (`m` a row-major 2×2 matrix, pixel units); outside the image reads 0 (black), as
/// torchvision's affine transforms fill.
pub fn warp_affine(img: &RgbImage, m: [f32; 4], shift: [f32; 2]) -> RgbImage {
    let (w, h) = (img.width, img.height);
    let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
    let plane = w * h;
    let mut data = vec![0.0f32; 3 * plane];
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            let (sx, sy) = (m[0] * dx + m[1] * dy + cx + shift[0], m[2] * dx + m[3] * dy + cy + shift[1]);
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let corners = [(0, 0, (1.0 - fx) * (1.0 - fy)), (1, 0, fx * (1.0 - fy)), (0, 1, (1.0 - fx) * fy), (1, 1, fx * fy)];
            for (ox, oy, weight) in corners {
                let (px, py) = (x0 as isize + ox, y0 as isize + oy);
                if weight == 0.0 || px < 0 || py < 0 || px >= w as isize || py >= h as isize {
                    continue;
                }
                let from = py as usize * w + px as usize;
                for c in 0..3 {
                    data[c * plane + y * w + x] += weight * img.data[c * plane + from];
                }
            }
        }
    }
    RgbImage { width: w, height: h, data }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A `w × h` image whose pixel `i` (row-major) is `i / 100` in every channel.
    fn numbered(w: usize, h: usize) -> RgbImage {
        let plane: Vec<f32> = (0..w * h).map(|i| i as f32 / 100.0).collect();
        RgbImage { width: w, height: h, data: [plane.clone(), plane.clone(), plane].concat() }
    }

    #[test]
    fn translation_shifts_and_fills_black() {
        let img = numbered(4, 3);
        // Reading at x − 1 moves the content one pixel right; column 0 comes from outside the image.
        let out = warp_affine(&img, [1.0, 0.0, 0.0, 1.0], [-1.0, 0.0]);
        for y in 0..3 {
            assert_eq!(out.data[y * 4], 0.0);
            for x in 1..4 {
                assert!((out.data[y * 4 + x] - img.data[y * 4 + x - 1]).abs() < 1e-6, "({x}, {y})");
            }
        }
        // Half a pixel: the mean of two neighbours.
        let half = warp_affine(&img, [1.0, 0.0, 0.0, 1.0], [0.5, 0.0]);
        assert!((half.data[1] - (img.data[1] + img.data[2]) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn a_quarter_turn_permutes_the_pixels() {
        // p − c = (dx, dy) reads (−dy, dx) + c: on a 3 × 3 image, out[y][x] = in[row x][column 2 − y].
        let img = numbered(3, 3);
        let out = warp_affine(&img, [0.0, -1.0, 1.0, 0.0], [0.0, 0.0]);
        for y in 0..3 {
            for x in 0..3 {
                assert!((out.data[y * 3 + x] - img.data[x * 3 + (2 - y)]).abs() < 1e-6, "({x}, {y})");
            }
        }
        assert_eq!(out.data[9..18], out.data[..9], "every channel is warped alike");
    }

    #[test]
    fn magnitude_zero_changes_nothing_but_solarisation() {
        // At magnitude 0 every geometric and enhance operation is the identity; solarising at threshold 1 inverts
        // only values of exactly 1, which this image has none of.
        let img = numbered(5, 5);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20 {
            let mut out = img.clone();
            RandAugment { ops: 3, magnitude: 0.0 }.apply(&mut out, &mut rng);
            assert!(out.data.iter().zip(&img.data).all(|(a, b)| (a - b).abs() < 1e-6));
        }
    }
}
