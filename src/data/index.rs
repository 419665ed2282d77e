//! The dataset index: which images exist in an ImageNet-layout root, with their classes, checked once and
//! written to `ROOT/extra/index.json` so that later runs start at once.

use super::{image_io, par_map};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Version of the index format; an index of another version is rebuilt.
const INDEX_VERSION: u32 = 1;
const IMAGE_EXTENSIONS: [&str; 3] = ["jpeg", "jpg", "png"];

/// `train` or `val`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training images.
    Train,
    /// The validation images.
    Val,
}

impl Split {
    /// The folder name of the split.
    pub fn dir(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// A class: its folder and human name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// Folder name under `train/` and `val/` (a WordNet id for ImageNet).
    pub dir: String,
    /// Human-readable name from `labels.txt`.
    pub name: String,
}

/// One image: path relative to the root, and class id (index into `classes`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the dataset root.
    pub path: String,
    /// Class id.
    pub class: u32,
}

/// Everything the loaders need to know about a dataset.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatasetIndex {
    version: u32,
    /// Classes in label order.
    pub classes: Vec<ClassInfo>,
    /// Training images that decode.
    pub train: Vec<Entry>,
    /// Validation images that decode.
    pub val: Vec<Entry>,
    /// Images that did not decode, with the reason; left out of the splits.
    pub skipped: Vec<(String, String)>,
    #[serde(skip)]
    root: PathBuf,
}

impl DatasetIndex {
    /// The index at `root/extra/index.json`, built (and written) first if absent, of another version or
    /// inconsistent. Images added after indexing are not seen until `poac data index ROOT` runs again.
    pub fn open(root: &Path) -> Result<Self> {
        check_root(root)?;
        let path = root.join("extra").join("index.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(mut index) = serde_json::from_str::<DatasetIndex>(&text) {
                let classes = index.classes.len() as u32;
                let consistent = index.train.iter().chain(&index.val).all(|e| e.class < classes);
                if index.version == INDEX_VERSION && consistent {
                    index.root = root.to_path_buf();
                    return Ok(index);
                }
            }
        }
        let index = Self::build(root)?;
        if let Err(e) = index.write() {
            eprintln!("warning: could not write {}: {e:#} (the index will be rebuilt next time)", path.display());
        }
        Ok(index)
    }

    /// Scans `root`, decoding every image once to leave out those that do not decode.
    pub fn build(root: &Path) -> Result<Self> {
        check_root(root)?;
        let classes = read_labels(root)?;
        let mut candidates = Vec::new();
        for split in [Split::Train, Split::Val] {
            for (class, info) in classes.iter().enumerate() {
                let dir = root.join(split.dir()).join(&info.dir);
                let files = list_images(&dir)?;
                if files.is_empty() {
                    bail!("class folder {} has no images (.jpeg, .jpg, .png)", dir.display());
                }
                candidates.extend(files.into_iter().map(|f| (split, Entry { path: format!("{}/{}/{f}", split.dir(), info.dir), class: class as u32 })));
            }
        }
        let ok = check_decodable(root, &candidates);
        let mut index = DatasetIndex { version: INDEX_VERSION, classes, train: Vec::new(), val: Vec::new(), skipped: Vec::new(), root: root.to_path_buf() };
        for ((split, entry), status) in candidates.into_iter().zip(ok) {
            match (status, split) {
                (Ok(()), Split::Train) => index.train.push(entry),
                (Ok(()), Split::Val) => index.val.push(entry),
                (Err(reason), _) => index.skipped.push((entry.path, reason)),
            }
        }
        if !index.skipped.is_empty() {
            eprintln!("warning: skipped {} image(s) that do not decode, e.g. {}: {}", index.skipped.len(), index.skipped[0].0, index.skipped[0].1);
        }
        for split in [Split::Train, Split::Val] {
            if index.split(split).is_empty() {
                bail!("{} has no decodable images", root.join(split.dir()).display());
            }
        }
        Ok(index)
    }

    /// Writes the index to `root/extra/index.json` atomically.
    pub fn write(&self) -> Result<()> {
        let dir = self.root.join("extra");
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("index.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, dir.join("index.json"))?;
        Ok(())
    }

    /// The dataset root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The entries of a split.
    pub fn split(&self, split: Split) -> &[Entry] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// Up to `limit` entries of a split with as many of each class as possible (the first ones in file order),
    /// or the whole split when `limit` is `None`.
    pub fn balanced(&self, split: Split, limit: Option<usize>) -> Vec<Entry> {
        let entries = self.split(split);
        let Some(limit) = limit.filter(|&l| l < entries.len()) else { return entries.to_vec() };
        let mut by_class: Vec<Vec<&Entry>> = vec![Vec::new(); self.classes.len()];
        entries.iter().for_each(|e| by_class[e.class as usize].push(e));
        let mut taken = Vec::with_capacity(limit);
        let mut round = 0;
        while taken.len() < limit {
            let before = taken.len();
            for class in &by_class {
                if let Some(e) = class.get(round) {
                    if taken.len() < limit {
                        taken.push((*e).clone());
                    }
                }
            }
            if taken.len() == before {
                break;
            }
            round += 1;
        }
        taken
    }
}

fn check_root(root: &Path) -> Result<()> {
    if !root.is_dir() {
        bail!("dataset folder {} does not exist (expected train/<class>/*.JPEG, val/<class>/*.JPEG, labels.txt; `poac data fashion-mnist --out DIR` makes one)", root.display());
    }
    Ok(())
}

/// Classes from `labels.txt` (`<dir>,<name>` per line), or the sorted folders of `train/` when it is absent.
fn read_labels(root: &Path) -> Result<Vec<ClassInfo>> {
    let labels = root.join("labels.txt");
    let classes: Vec<ClassInfo> = if labels.exists() {
        std::fs::read_to_string(&labels)
            .with_context(|| format!("cannot read {}", labels.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let (dir, name) = l.split_once(',').unwrap_or((l, l));
                ClassInfo { dir: dir.trim().to_string(), name: name.trim().to_string() }
            })
            .collect()
    } else {
        let train = root.join("train");
        let mut dirs: Vec<String> = std::fs::read_dir(&train)
            .with_context(|| format!("cannot list {}", train.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        dirs.sort();
        dirs.into_iter().map(|d| ClassInfo { name: d.clone(), dir: d }).collect()
    };
    if classes.is_empty() {
        bail!("{} lists no classes", root.display());
    }
    for split in [Split::Train, Split::Val] {
        for class in &classes {
            let dir = root.join(split.dir()).join(&class.dir);
            if !dir.is_dir() {
                bail!("class folder {} is missing (classes must be the same in train/ and val/)", dir.display());
            }
        }
    }
    Ok(classes)
}

fn list_images(dir: &Path) -> Result<Vec<String>> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.rsplit_once('.').is_some_and(|(_, ext)| IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str())))
        .collect();
    files.sort();
    Ok(files)
}

/// Decodes every candidate on all cores; `Err(reason)` for those that fail.
fn check_decodable(root: &Path, candidates: &[(Split, Entry)]) -> Vec<std::result::Result<(), String>> {
    let bar = ProgressBar::new(candidates.len() as u64)
        .with_style(ProgressStyle::with_template("indexing {bar:40} {pos}/{len} [{elapsed}<{eta}]").unwrap());
    let results = par_map(candidates, |(_, entry)| {
        let status = image_io::decode(&root.join(&entry.path)).map(|_| ()).map_err(|e| format!("{e:#}"));
        bar.inc(1);
        status
    });
    bar.finish_and_clear();
    results
}
