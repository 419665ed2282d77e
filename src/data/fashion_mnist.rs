//! Import of Fashion-MNIST (the IDX files of Debian's `dataset-fashion-mnist`) into the ImageNet layout:
//! `train/<class>/*.JPEG`, `val/<class>/*.JPEG`, `labels.txt` (`<dir>,<name>`).

use anyhow::{bail, Context, Result};
use flate2::read::GzDecoder;
use image::{codecs::jpeg::JpegEncoder, ExtendedColorType};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Class directories (sorted order = label order) and names.
pub const CLASSES: [(&str, &str); 10] = [
    ("0_tshirt_top", "T-shirt/top"),
    ("1_trouser", "Trouser"),
    ("2_pullover", "Pullover"),
    ("3_dress", "Dress"),
    ("4_coat", "Coat"),
    ("5_sandal", "Sandal"),
    ("6_shirt", "Shirt"),
    ("7_sneaker", "Sneaker"),
    ("8_bag", "Bag"),
    ("9_ankle_boot", "Ankle boot"),
];

/// Where the IDX files are looked for when `--source` is not given: `$POAC_FASHION_MNIST`, the set-up cache
/// recorded at build time, then Debian's install path.
pub fn default_source() -> Option<PathBuf> {
    let candidates = [
        std::env::var("POAC_FASHION_MNIST").ok(),
        option_env!("POAC_FASHION_MNIST").map(String::from),
        Some("/usr/share/datasets/fashion-mnist".into()),
    ];
    candidates.into_iter().flatten().map(PathBuf::from).find(|p| p.join("train-images-idx3-ubyte.gz").exists())
}

/// Reads a gzipped IDX file, checking its magic number and dimensions; returns (dims, bytes).
fn read_idx(path: &Path, expected_dims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    GzDecoder::new(file).read_to_end(&mut bytes).with_context(|| format!("{} is not gzip", path.display()))?;
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] as usize != expected_dims {
        bail!("{} is not an IDX file of unsigned bytes with {expected_dims} dims", path.display());
    }
    let header = 4 + 4 * expected_dims;
    if bytes.len() < header {
        bail!("{} is truncated", path.display());
    }
    let dims: Vec<usize> = (0..expected_dims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let elements = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if elements.and_then(|e| e.checked_add(header)) != Some(bytes.len()) {
        bail!("{}: size does not match its header {:?}", path.display(), dims);
    }
    Ok((dims, bytes.split_off(header)))
}

/// Writes one split (`train` from `train-*`, `val` from `t10k-*`) as grayscale JPEGs; returns the image count.
fn write_split(source: &Path, prefix: &str, split_dir: &Path, bar: &ProgressBar) -> Result<usize> {
    let (dims, pixels) = read_idx(&source.join(format!("{prefix}-images-idx3-ubyte.gz")), 3)?;
    let (label_dims, labels) = read_idx(&source.join(format!("{prefix}-labels-idx1-ubyte.gz")), 1)?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    if label_dims[0] != n {
        bail!("{prefix}: {n} images but {} labels", label_dims[0]);
    }
    for (dir, _) in CLASSES {
        std::fs::create_dir_all(split_dir.join(dir))?;
    }
    let mut jpeg = Vec::new();
    for i in 0..n {
        let label = labels[i] as usize;
        let Some((dir, _)) = CLASSES.get(label) else { bail!("{prefix}: label {label} of image {i} is not in 0..10") };
        jpeg.clear();
        JpegEncoder::new_with_quality(&mut jpeg, 95).encode(&pixels[i * h * w..(i + 1) * h * w], w as u32, h as u32, ExtendedColorType::L8)?;
        std::fs::write(split_dir.join(dir).join(format!("{prefix}_{i:05}.JPEG")), &jpeg)?;
        bar.inc(1);
    }
    Ok(n)
}

/// Converts the IDX files in `source` into an ImageNet-layout dataset in `out`. Idempotent: a finished import
/// (marked by `labels.txt`, written last) is left alone.
pub fn import(source: &Path, out: &Path) -> Result<bool> {
    if out.join("labels.txt").exists() {
        return Ok(false);
    }
    let bar = ProgressBar::new(70_000).with_style(
        ProgressStyle::with_template("importing Fashion-MNIST {bar:40} {pos}/{len} [{elapsed}<{eta}]").unwrap(),
    );
    let train = write_split(source, "train", &out.join("train"), &bar)?;
    let val = write_split(source, "t10k", &out.join("val"), &bar)?;
    bar.finish_and_clear();
    let labels: String = CLASSES.iter().map(|(dir, name)| format!("{dir},{name}\n")).collect();
    let tmp = out.join("labels.txt.tmp");
    std::fs::write(&tmp, labels)?;
    std::fs::rename(tmp, out.join("labels.txt"))?;
    eprintln!("imported Fashion-MNIST: {train} train + {val} val images into {}", out.display());
    Ok(true)
}
