//! Features of a dataset split, extracted once through a runtime and kept on disk in
//! `ROOT/extra/features/<model>-<runtime>-<split>-<limit>-<selection>.safetensors`: `<model>` is a SHA-256 of the
//! model file's bytes, `<selection>` one of the images chosen (paths and classes), so a re-lowered model, another
//! runtime, another limit or a re-indexed dataset each get their own file. A later call with the same four
//! reads the file instead of running the model.

use super::features::extract;
use crate::data::index::Entry;
use crate::data::loader::EvalBatches;
use crate::data::Split;
use crate::lower::ModelInfo;
use crate::runtime::{Runtime, RuntimeKind};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Folder of a dataset root that holds the cached features.
const CACHE_DIR: &str = "extra/features";
/// Tensor names in a cache file: the features `[n, D]` of the images that decoded, and which of the selected
/// images those are (`[selected]`, 1 = decoded).
const FEATURES: &str = "features";
const KEPT: &str = "kept";

/// The features of the images of a split that decoded, and their classes.
pub struct SplitFeatures {
    /// `[n, D]`, one row per image that decoded.
    pub features: Tensor,
    /// `[n]` class ids.
    pub labels: Tensor,
    /// Images of the selection that did not decode (left out).
    pub skipped: usize,
}

/// Extracts features of one model through one runtime, or reads them from the dataset's cache. The model is
/// only opened in the runtime when something is missing from the cache.
pub struct FeatureCache {
    data_root: PathBuf,
    model: PathBuf,
    model_digest: String,
    kind: RuntimeKind,
    runtime: Option<Box<dyn Runtime>>,
}

impl FeatureCache {
    /// The cache of `model`'s features through `kind` under the dataset root `data_root`.
    pub fn new(data_root: &Path, model: &Path, kind: RuntimeKind) -> Result<Self> {
        let model_digest = file_digest(model)?;
        Ok(FeatureCache { data_root: data_root.to_path_buf(), model: model.to_path_buf(), model_digest, kind, runtime: None })
    }

    /// The features of `entries`, the images of `split` chosen with `limit`, at the model's input size.
    pub fn features(&mut self, split: Split, limit: Option<usize>, entries: &[Entry], info: &ModelInfo) -> Result<SplitFeatures> {
        let path = self.path(split, limit, entries);
        let what = format!("{} features", split.dir());
        let (features, kept) = match read(&path, entries.len()) {
            Some(cached) => {
                eprintln!("{what}: cached in {}", path.display());
                cached
            }
            None => {
                if self.runtime.is_none() {
                    self.runtime = Some(self.kind.open(&self.model)?);
                }
                let runtime = self.runtime.as_deref_mut().expect("opened above");
                let images = EvalBatches::new(&self.data_root, entries.to_vec(), info.image_size, info.mean, info.std);
                let extracted = extract(runtime, &images, info.image_size, &what)?;
                if let Err(e) = write(&path, &extracted) {
                    eprintln!("warning: could not cache {what} in {}: {e:#} (they will be extracted again next time)", path.display());
                }
                extracted
            }
        };
        let labels: Vec<i64> = entries.iter().zip(&kept).filter(|(_, k)| **k).map(|(e, _)| e.class as i64).collect();
        Ok(SplitFeatures { features, skipped: entries.len() - labels.len(), labels: Tensor::from_slice(&labels) })
    }

    fn path(&self, split: Split, limit: Option<usize>, entries: &[Entry]) -> PathBuf {
        let mut selection = Sha256::new();
        for entry in entries {
            selection.update(format!("{}\t{}\n", entry.path, entry.class));
        }
        let limit = limit.map_or("all".to_string(), |l| l.to_string());
        let selection = hex(&selection.finalize())[..8].to_string();
        self.data_root.join(CACHE_DIR).join(format!("{}-{}-{}-{limit}-{selection}.safetensors", &self.model_digest[..16], self.kind.name(), split.dir()))
    }
}

/// SHA-256 of a file's bytes, as hex.
fn file_digest(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read model {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).with_context(|| format!("cannot read model {}", path.display()))?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buffer[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cached features at `path` and which of the `selected` images they are, if present and consistent.
fn read(path: &Path, selected: usize) -> Option<(Tensor, Vec<bool>)> {
    let tensors = Tensor::read_safetensors(path).ok()?;
    let get = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone());
    let (features, kept) = (get(FEATURES)?, get(KEPT)?);
    let kept: Vec<bool> = Vec::<u8>::try_from(&kept).ok()?.into_iter().map(|k| k != 0).collect();
    let rows = kept.iter().filter(|k| **k).count() as i64;
    let consistent = kept.len() == selected && features.dim() == 2 && features.size()[0] == rows && features.kind() == Kind::Float;
    consistent.then_some((features, kept))
}

/// Writes features and which images they are to `path`, through a temporary file and a rename.
fn write(path: &Path, (features, kept): &(Tensor, Vec<bool>)) -> Result<()> {
    let dir = path.parent().context("the cache path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("safetensors.tmp");
    let kept = Tensor::from_slice(&kept.iter().map(|&k| k as u8).collect::<Vec<u8>>());
    Tensor::write_safetensors(&[(FEATURES, features), (KEPT, &kept)], &tmp)?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
