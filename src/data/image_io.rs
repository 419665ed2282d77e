//! Decoding images into RGB f32 planes, robust to what real folders contain.

use anyhow::{bail, Context, Result};
use image::{DynamicImage, ImageReader, Limits};
use std::path::Path;

/// Largest side accepted; larger images are refused rather than decoded into gigabytes.
pub const MAX_SIDE: u32 = 16_384;

/// An RGB image as three planes of f32 in [0, 1], row-major, `[3, height, width]`.
#[derive(Clone, Debug)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `3 × height × width` values.
    pub data: Vec<f32>,
}

/// Decodes any supported file (grayscale, 16-bit, CMYK JPEG, RGBA, ...) into RGB in [0, 1].
pub fn decode(path: &Path) -> Result<RgbImage> {
    let mut reader = ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let image = reader.decode().with_context(|| format!("{} is not a decodable image (corrupt, truncated, or larger than {MAX_SIDE} px)", path.display()))?;
    if image.width() == 0 || image.height() == 0 {
        bail!("{} is empty (0 pixels)", path.display());
    }
    Ok(from_dynamic(image))
}

fn from_dynamic(image: DynamicImage) -> RgbImage {
    let rgb = image.to_rgb32f();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    let mut data = vec![0.0; 3 * width * height];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            data[c * width * height + i] = px[c].clamp(0.0, 1.0);
        }
    }
    RgbImage { width, height, data }
}
