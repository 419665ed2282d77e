//! Bicubic random-resized crops against PIL, the library dinov2's torchvision transforms run on: the crop of an
//! 8-bit image resized with `Image.BICUBIC` (upsampling, downsampling with its widened kernel, odd aspect ratios).

mod common;

use common::python;
use poac::data::image_io::RgbImage;
use poac::data::resize::{resize_crop, CropBox, Interpolation};

/// PIL's `img.crop(box).resize((size, size), Image.BICUBIC)` of an 8-bit RGB image, as 8-bit values.
fn pil_bicubic(pixels: &[u8], width: usize, height: usize, cases: &[(CropBox, usize)]) -> Vec<Vec<u8>> {
    let script = format!(
        "import numpy as np\nfrom PIL import Image\n\
         img = Image.fromarray(np.array({pixels:?}, dtype=np.uint8).reshape({height}, {width}, 3))\n\
         for (l, t, w, h), s in {cases:?}:\n    \
             out = np.asarray(img.crop((l, t, l + w, t + h)).resize((s, s), Image.BICUBIC))\n    \
             print(' '.join(str(v) for v in out.transpose(2, 0, 1).ravel()))"
    );
    let images: Vec<Vec<u8>> = python(&script, &[]).lines().map(|l| l.split(' ').map(|v| v.parse().unwrap()).collect()).collect();
    assert_eq!(images.len(), cases.len());
    for (image, (_, size)) in images.iter().zip(cases) {
        assert_eq!(image.len(), 3 * size * size);
    }
    images
}

/// Largest and mean |ours − PIL| in 8-bit steps.
fn errors(ours: &RgbImage, pil: &[u8]) -> (f32, f32) {
    let diffs: Vec<f32> = ours.data.iter().zip(pil).map(|(a, &b)| (a * 255.0 - b as f32).abs()).collect();
    (diffs.iter().cloned().fold(0.0, f32::max), diffs.iter().sum::<f32>() / diffs.len() as f32)
}

#[test]
fn bicubic_crops_equal_pil_up_to_its_8_bit_rounding() {
    let (width, height) = (28, 23);
    // Deterministic texture: a sawtooth ramp (a sharp edge where it wraps) plus hashed noise of up to 63 steps.
    let pixels: Vec<u8> = (0..width * height * 3)
        .map(|i| {
            let (p, c) = (i / 3, i % 3);
            let (x, y) = (p % width, p / width);
            let noise = (i as u32).wrapping_mul(2_654_435_761) >> 26;
            ((x * 7 + y * 5 + c * 40) as u32 % 192 + noise) as u8
        })
        .collect();
    let planar: Vec<f32> = (0..3).flat_map(|c| pixels.iter().skip(c).step_by(3).map(|&v| v as f32 / 255.0).collect::<Vec<_>>()).collect();
    let img = RgbImage { width, height, data: planar };
    let cases: Vec<(CropBox, usize)> = vec![
        ([0, 0, 28, 23], 32),  // whole image, upsampled
        ([3, 2, 9, 13], 32),   // small crop, strong upsampling, not square
        ([5, 4, 20, 17], 16),  // shrink: kernel widened
        ([0, 0, 28, 23], 7),   // shrink by 4×
        ([10, 6, 6, 5], 16),   // a local crop
    ];
    let pil = pil_bicubic(&pixels, width, height, &cases);
    let mut bilinear_worst = 0.0f32;
    for ((crop, size), expected) in cases.iter().zip(&pil) {
        let (max, mean) = errors(&resize_crop(&img, *crop, *size, Interpolation::Bicubic), expected);
        // PIL rounds both passes to 8 bits: at most half a step after the second, plus half a step after the first
        // weighted by the second's Σ|w| (at most 1.25, upsampling at phase ½: −1/16, 9/16, 9/16, −1/16): 1.125.
        // Rounding errors average out: a systematic error in the weights would show in the mean.
        assert!(max <= 1.13 && mean <= 0.35, "{crop:?} -> {size}: max {max}, mean {mean}");
        bilinear_worst = bilinear_worst.max(errors(&resize_crop(&img, *crop, *size, Interpolation::Bilinear), expected).0);
    }
    assert!(bilinear_worst > 5.0, "the cases should tell bicubic from bilinear (bilinear max error {bilinear_worst})");
}
