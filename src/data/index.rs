//! The dataset index: which images a dataset holds, with their classes, checked once and written to
//! `ROOT/extra/index.json` so that later runs start at once.
//!
//! Three layouts are read: ImageNet (`train/<class>/…`, `val/<class>/…`, `labels.txt` with `<dir>,<name>`
//! lines), ImageFolder (the same without `labels.txt`: the class names are the folder names of `train/`), and
//! a plain folder of unlabelled images, named `folder:ROOT`, whose images are all training images. Class
//! folders and plain folders are searched recursively; names starting with `.` and `ROOT/extra/` are skipped.

use super::image_io::{self, DecodeError, SkipReason};
use super::par_map;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Version of the index format; an index of another version is rebuilt.
const INDEX_VERSION: u32 = 2;
const IMAGE_EXTENSIONS: [&str; 3] = ["jpeg", "jpg", "png"];
/// Prefix of a data argument naming a folder of unlabelled images: `folder:PATH`.
pub const FOLDER_PREFIX: &str = "folder:";
/// Folder of a dataset root that holds the index, never images.
const EXTRA_DIR: &str = "extra";

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

/// How a dataset's images are labelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `train/<class>/…`, optionally `val/<class>/…`, classes and their names from `labels.txt`.
    ImageNet,
    /// The same without `labels.txt`: the classes are the sorted folder names of `train/`.
    ImageFolder,
    /// Every image below the root, without labels (`folder:ROOT`); all of them are training images.
    Unlabelled,
}

/// A class: its folder and human name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// Folder name under `train/` and `val/` (a WordNet id for ImageNet).
    pub dir: String,
    /// Human-readable name from `labels.txt`, or the folder name.
    pub name: String,
}

/// One image: path relative to the root, and class id (index into `classes`; 0 when unlabelled).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the dataset root.
    pub path: String,
    /// Class id.
    pub class: u32,
}

/// An image file left out of the index, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// Path relative to the dataset root.
    pub path: String,
    /// The kind of failure.
    pub reason: SkipReason,
    /// What the decoder said.
    pub detail: String,
}

/// Everything the loaders need to know about a dataset.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatasetIndex {
    version: u32,
    /// How the images are labelled.
    pub layout: Layout,
    /// Classes in label order; empty when unlabelled.
    pub classes: Vec<ClassInfo>,
    /// Training images that decode.
    pub train: Vec<Entry>,
    /// Validation images that decode; empty without a `val/` folder.
    pub val: Vec<Entry>,
    /// Image files that did not decode; left out of the splits.
    pub skipped: Vec<Skipped>,
    #[serde(skip)]
    root: PathBuf,
}

impl DatasetIndex {
    /// The index of `source` (a dataset root, or `folder:PATH`) from `ROOT/extra/index.json`, built (and
    /// written) first if absent, of another version or layout, or inconsistent. Images added after indexing
    /// are not seen until `poac data index` runs again. What was skipped is reported on stderr.
    pub fn open(source: &Path) -> Result<Self> {
        let (root, layout) = locate(source)?;
        let index = match Self::read(&root).filter(|index| index.layout == layout) {
            Some(index) => index,
            None => {
                let index = Self::build(source)?;
                if let Err(e) = index.write() {
                    eprintln!("warning: could not write {}: {e:#} (the index will be rebuilt next time)", index_path(&root).display());
                }
                index
            }
        };
        if !index.skipped.is_empty() {
            eprintln!("note: {}: {}", root.display(), index.skip_summary());
        }
        Ok(index)
    }

    /// [`DatasetIndex::open`] for uses that need labels and both splits (k-NN): an unlabelled folder, or a
    /// dataset without `val/`, is an error saying so.
    pub fn open_labelled(source: &Path) -> Result<Self> {
        let index = Self::open(source)?;
        if index.layout == Layout::Unlabelled {
            bail!(
                "{} is a folder of unlabelled images; this needs labels: give a dataset root with train/<class>/ and val/<class>/ folders",
                index.root.display()
            );
        }
        if index.val.is_empty() {
            bail!("{} has no val/ folder; this needs validation images in val/<class>/", index.root.display());
        }
        Ok(index)
    }

    /// Scans `source` (a dataset root, or `folder:PATH`), decoding every image once to leave out those that
    /// do not decode. A split or class folder without images, or without one that decodes, is an error.
    pub fn build(source: &Path) -> Result<Self> {
        let (root, layout) = locate(source)?;
        let (classes, candidates) = match layout {
            Layout::Unlabelled => {
                let files = list_images(&root, &root)?;
                if files.is_empty() {
                    bail!("{} has no images (.jpeg, .jpg, .png), searched recursively", root.display());
                }
                (Vec::new(), files.into_iter().map(|path| (Split::Train, Entry { path, class: 0 })).collect())
            }
            Layout::ImageNet | Layout::ImageFolder => labelled_candidates(&root, layout)?,
        };
        let mut index = DatasetIndex { version: INDEX_VERSION, layout, classes, train: Vec::new(), val: Vec::new(), skipped: Vec::new(), root };
        for ((split, entry), status) in candidates.iter().zip(check_decodable(&index.root, &candidates)) {
            match (status, split) {
                (Ok(()), Split::Train) => index.train.push(entry.clone()),
                (Ok(()), Split::Val) => index.val.push(entry.clone()),
                (Err(e), _) => index.skipped.push(Skipped { path: entry.path.clone(), reason: e.reason, detail: e.detail }),
            }
        }
        if !index.skipped.is_empty() {
            let first = &index.skipped[0];
            eprintln!("warning: {}, e.g. {}: {}: {}", index.skip_summary(), first.path, first.reason, first.detail);
        }
        index.check_every_folder_decodes(&candidates)?;
        Ok(index)
    }

    /// Errors naming the first class folder (or, unlabelled, the root) of which no image decodes; every class
    /// folder of a split holds image files by then.
    fn check_every_folder_decodes(&self, candidates: &[(Split, Entry)]) -> Result<()> {
        if self.layout == Layout::Unlabelled {
            if self.train.is_empty() {
                bail!("{} has no decodable images ({})", self.root.display(), self.skip_summary());
            }
            return Ok(());
        }
        for split in [Split::Train, Split::Val].into_iter().filter(|&split| candidates.iter().any(|(s, _)| *s == split)) {
            let mut decoded = vec![0usize; self.classes.len()];
            self.split(split).iter().for_each(|e| decoded[e.class as usize] += 1);
            if let Some(class) = decoded.iter().position(|&n| n == 0) {
                let dir = self.root.join(split.dir()).join(&self.classes[class].dir);
                bail!("class folder {} has no decodable images (all were skipped; see above)", dir.display());
            }
        }
        Ok(())
    }

    fn read(root: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(index_path(root)).ok()?;
        let mut index: DatasetIndex = serde_json::from_str(&text).ok()?;
        let classes = index.classes.len() as u32;
        let consistent = match index.layout {
            Layout::Unlabelled => classes == 0 && index.val.is_empty() && index.train.iter().all(|e| e.class == 0),
            Layout::ImageNet | Layout::ImageFolder => index.train.iter().chain(&index.val).all(|e| e.class < classes),
        };
        (index.version == INDEX_VERSION && consistent && !index.train.is_empty()).then(|| {
            index.root = root.to_path_buf();
            index
        })
    }

    /// Writes the index to `root/extra/index.json` atomically.
    pub fn write(&self) -> Result<()> {
        let path = index_path(&self.root);
        std::fs::create_dir_all(path.parent().unwrap_or(&self.root))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, path)?;
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

    /// How many files were skipped for each reason.
    pub fn skip_counts(&self) -> BTreeMap<SkipReason, usize> {
        let mut counts = BTreeMap::new();
        self.skipped.iter().for_each(|s| *counts.entry(s.reason).or_insert(0) += 1);
        counts
    }

    /// `3 image(s) skipped: 1 empty, 2 corrupt or truncated`.
    pub fn skip_summary(&self) -> String {
        let counts: Vec<String> = self.skip_counts().iter().map(|(reason, n)| format!("{n} {reason}")).collect();
        format!("{} image(s) skipped: {}", self.skipped.len(), counts.join(", "))
    }

    /// Up to `limit` entries of a split with as many of each class as possible (the first ones in file order),
    /// or the whole split when `limit` is `None`.
    pub fn balanced(&self, split: Split, limit: Option<usize>) -> Vec<Entry> {
        let entries = self.split(split);
        let Some(limit) = limit.filter(|&l| l < entries.len()) else { return entries.to_vec() };
        let classes = entries.iter().map(|e| e.class as usize + 1).max().unwrap_or(0);
        let mut by_class: Vec<Vec<&Entry>> = vec![Vec::new(); classes];
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

fn index_path(root: &Path) -> PathBuf {
    root.join(EXTRA_DIR).join("index.json")
}

/// The root folder a data argument names, and its layout; an error naming the folder if it does not exist or
/// holds no `train/` folder.
fn locate(source: &Path) -> Result<(PathBuf, Layout)> {
    let text = source.to_string_lossy();
    if let Some(folder) = text.strip_prefix(FOLDER_PREFIX) {
        let root = PathBuf::from(folder);
        if !root.is_dir() {
            bail!("image folder {} does not exist", root.display());
        }
        return Ok((root, Layout::Unlabelled));
    }
    let root = source.to_path_buf();
    if !root.is_dir() {
        bail!("dataset folder {} does not exist (expected train/<class>/*.JPEG, val/<class>/*.JPEG, labels.txt; `poac data fashion-mnist --out DIR` makes one)", root.display());
    }
    if !root.join(Split::Train.dir()).is_dir() {
        bail!(
            "{} has no train/ folder (expected train/<class>/ image folders; for a folder of unlabelled images use {FOLDER_PREFIX}{})",
            root.display(),
            root.display()
        );
    }
    let layout = if root.join("labels.txt").exists() { Layout::ImageNet } else { Layout::ImageFolder };
    Ok((root, layout))
}

/// The classes of a labelled dataset and every image file of its class folders.
fn labelled_candidates(root: &Path, layout: Layout) -> Result<(Vec<ClassInfo>, Vec<(Split, Entry)>)> {
    let train = root.join(Split::Train.dir());
    let classes = match layout {
        Layout::ImageNet => read_labels(&root.join("labels.txt"))?,
        _ => subfolders(&train)?.into_iter().map(|d| ClassInfo { name: d.clone(), dir: d }).collect(),
    };
    if classes.is_empty() {
        bail!("{} has no class folders (for a folder of images without classes use {FOLDER_PREFIX}{})", train.display(), root.display());
    }
    let val = root.join(Split::Val.dir());
    let splits: &[Split] = if val.is_dir() { &[Split::Train, Split::Val] } else { &[Split::Train] };
    if val.is_dir() {
        let val_classes = subfolders(&val)?;
        if val_classes.is_empty() {
            bail!("{} holds no class folders: the validation split is empty (add val/<class>/ folders with the classes of train/, or remove val/)", val.display());
        }
        if let Some(extra) = val_classes.into_iter().find(|d| !classes.iter().any(|c| &c.dir == d)) {
            bail!("{} is not a class of train/ (val/ must hold the same classes as train/)", val.join(extra).display());
        }
    }
    let mut candidates = Vec::new();
    for &split in splits {
        for (class, info) in classes.iter().enumerate() {
            let dir = root.join(split.dir()).join(&info.dir);
            if !dir.is_dir() {
                bail!("class folder {} is missing (train/ and val/ must hold the same classes)", dir.display());
            }
            let files = list_images(root, &dir)?;
            if files.is_empty() {
                bail!("class folder {} has no images (.jpeg, .jpg, .png)", dir.display());
            }
            candidates.extend(files.into_iter().map(|path| (split, Entry { path, class: class as u32 })));
        }
    }
    Ok((classes, candidates))
}

/// Classes from `labels.txt` (`<dir>,<name>` per line; a line without a comma names the class by its folder).
fn read_labels(path: &Path) -> Result<Vec<ClassInfo>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut classes: Vec<ClassInfo> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (dir, name) = line.split_once(',').unwrap_or((line, line));
        let class = ClassInfo { dir: dir.trim().to_string(), name: name.trim().to_string() };
        if classes.iter().any(|c| c.dir == class.dir) {
            bail!("{} lists class {} twice", path.display(), class.dir);
        }
        classes.push(class);
    }
    Ok(classes)
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// The sorted names of the visible folders in `dir`.
fn subfolders(dir: &Path) -> Result<Vec<String>> {
    let mut dirs: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !is_hidden(name))
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Every image file below `dir` (recursively, following links once), as sorted paths relative to `root`.
fn list_images(root: &Path, dir: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    let mut visited = HashSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if !std::fs::canonicalize(&dir).is_ok_and(|real| visited.insert(real)) {
            continue;
        }
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if is_hidden(&name) || path == root.join(EXTRA_DIR) {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if name.rsplit_once('.').is_some_and(|(_, ext)| IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str())) {
                let relative = path.strip_prefix(root).unwrap_or(&path);
                files.push(relative.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/"));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Decodes every candidate on all cores.
fn check_decodable(root: &Path, candidates: &[(Split, Entry)]) -> Vec<Result<(), DecodeError>> {
    let bar = ProgressBar::new(candidates.len() as u64)
        .with_style(ProgressStyle::with_template("indexing {bar:40} {pos}/{len} [{elapsed}<{eta}]").unwrap());
    let results = par_map(candidates, |(_, entry)| {
        let status = image_io::decode(&root.join(&entry.path)).map(|_| ());
        bar.inc(1);
        status
    });
    bar.finish_and_clear();
    results
}
