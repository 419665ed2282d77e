//! Decoding images into RGB f32 planes, robust to what real folders contain: grayscale, palette, 16-bit,
//! alpha and CMYK images are converted to RGB; empty, corrupt, truncated, unsupported and huge files are
//! refused with a [`SkipReason`] before they can cost more than a bounded amount of memory.

use image::{DynamicImage, ImageDecoder, ImageError, ImageReader, Limits};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Largest image decoded, in pixels (a 40-megapixel photo); larger ones are skipped. As f32 planes an image
/// takes 12 bytes a pixel, so this bounds one decode to about half a gigabyte.
pub const MAX_PIXELS: u64 = 40_000_000;
/// Largest file read: JPEG decoding reads the whole file before looking at it.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Most bytes a decoder may allocate: the pixels of the largest image at 8 bytes a pixel (16-bit RGBA).
const MAX_DECODER_BYTES: u64 = 8 * MAX_PIXELS;

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

/// Why a file is left out of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The file has zero bytes.
    Empty,
    /// The bytes are not a valid image of the format: corrupt, truncated, or not an image at all.
    Corrupt,
    /// A valid file using a feature the decoders do not support (e.g. arithmetic-coded JPEG).
    Unsupported,
    /// Larger than [`MAX_PIXELS`] or [`MAX_FILE_BYTES`].
    TooLarge,
    /// The file cannot be opened or read (permissions, a dangling link, an I/O error).
    Unreadable,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipReason::Empty => "empty",
            SkipReason::Corrupt => "corrupt or truncated",
            SkipReason::Unsupported => "unsupported",
            SkipReason::TooLarge => "too large",
            SkipReason::Unreadable => "unreadable",
        })
    }
}

/// A file that did not decode: the reason and what the decoder said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// The kind of failure.
    pub reason: SkipReason,
    /// A human-readable explanation.
    pub detail: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for DecodeError {}

impl DecodeError {
    fn new(reason: SkipReason, detail: impl Into<String>) -> Self {
        let detail: String = detail.into();
        DecodeError { reason, detail: detail.trim_end().to_string() }
    }
}

/// A truncated file reads as an early end of file; anything else failing to read is an unreadable file.
fn io_reason(kind: std::io::ErrorKind) -> SkipReason {
    if kind == std::io::ErrorKind::UnexpectedEof {
        SkipReason::Corrupt
    } else {
        SkipReason::Unreadable
    }
}

impl From<std::io::Error> for DecodeError {
    fn from(e: std::io::Error) -> Self {
        DecodeError::new(io_reason(e.kind()), e.to_string())
    }
}

impl From<ImageError> for DecodeError {
    fn from(e: ImageError) -> Self {
        let reason = match &e {
            ImageError::Limits(_) => SkipReason::TooLarge,
            ImageError::Unsupported(_) => SkipReason::Unsupported,
            ImageError::IoError(io) => io_reason(io.kind()),
            ImageError::Decoding(_) | ImageError::Parameter(_) | ImageError::Encoding(_) => SkipReason::Corrupt,
        };
        DecodeError::new(reason, e.to_string())
    }
}

/// Decodes any supported file (grayscale, palette, 16-bit, RGBA, CMYK JPEG, ...) into RGB in [0, 1]; alpha is
/// dropped, as torchvision's loader does.
pub fn decode(path: &Path) -> Result<RgbImage, DecodeError> {
    let bytes = std::fs::metadata(path)?.len();
    if bytes == 0 {
        return Err(DecodeError::new(SkipReason::Empty, "the file has 0 bytes"));
    }
    if bytes > MAX_FILE_BYTES {
        return Err(DecodeError::new(SkipReason::TooLarge, format!("{bytes} bytes, more than {MAX_FILE_BYTES}")));
    }
    let mut reader = ImageReader::open(path)?.with_guessed_format()?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODER_BYTES);
    reader.limits(limits);
    let decoder = reader.into_decoder()?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        let megapixels = MAX_PIXELS / 1_000_000;
        return Err(DecodeError::new(SkipReason::TooLarge, format!("{width}×{height} px, more than {megapixels} megapixels")));
    }
    if width == 0 || height == 0 {
        return Err(DecodeError::new(SkipReason::Corrupt, format!("{width}×{height} px")));
    }
    Ok(to_planes(DynamicImage::from_decoder(decoder)?))
}

/// RGB planes of an image at its own bit depth (no intermediate f32 copy of the interleaved pixels).
fn to_planes(image: DynamicImage) -> RgbImage {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let data = match image {
        DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA16(_) | DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgba16(_) => {
            planes(&image.into_rgb16(), |v| f32::from(v) / 65535.0)
        }
        DynamicImage::ImageRgb32F(_) | DynamicImage::ImageRgba32F(_) => planes(&image.into_rgb32f(), |v| v.clamp(0.0, 1.0)),
        _ => planes(&image.into_rgb8(), |v| f32::from(v) / 255.0),
    };
    RgbImage { width, height, data }
}

/// Interleaved RGB values as three planes, each value mapped to [0, 1].
fn planes<T: Copy>(rgb: &[T], to_unit: impl Fn(T) -> f32) -> Vec<f32> {
    let plane = rgb.len() / 3;
    let mut data = vec![0.0; 3 * plane];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            data[c * plane + i] = to_unit(v);
        }
    }
    data
}
