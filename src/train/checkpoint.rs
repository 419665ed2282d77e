//! Checkpoints: a folder `RUN/checkpoint/` holding the supergraph (`supergraph.json`), the teacher backbone in
//! dinov2/timm keys (`teacher.safetensors`, what `poac lower` deploys), the rest of the training state
//! (`train_state.safetensors`: students, heads, AdamW moments, centres) and `state.json`. It is written to a
//! temporary folder and swapped in by renames, so a kill at any moment leaves a complete checkpoint.

use anyhow::{bail, Context, Result};
use poac_ir::Graph;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Name of the checkpoint folder inside a run.
pub const CHECKPOINT: &str = "checkpoint";
/// The supergraph file.
pub const SUPERGRAPH: &str = "supergraph.json";
/// The teacher backbone weights.
pub const TEACHER: &str = "teacher.safetensors";
const TRAIN_STATE: &str = "train_state.safetensors";
const STATE: &str = "state.json";
const PREVIOUS: &str = ".checkpoint.old";
const PARTIAL: &str = ".checkpoint.tmp";

/// Scalar progress of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Progress {
    /// Iterations done.
    pub iteration: u64,
    /// Iterations the schedules are stretched over.
    pub total_iters: u64,
    /// AdamW steps taken.
    pub adam_step: i64,
    /// Seed of the run.
    pub seed: u64,
    /// Training seconds so far (wall time without the k-NN monitor's), across resumes: what `--time-budget` counts.
    pub elapsed_s: f64,
    /// Data-parallel processes the run trains with: the global batch, the lr scaling and every rank's share of
    /// the data depend on it, so a run resumes only with the same number (checkpoints without it: 1).
    #[serde(default = "one_process")]
    pub world_size: usize,
}

fn one_process() -> usize {
    1
}

impl Progress {
    /// The progress of a run that has not trained yet.
    pub fn fresh(seed: u64, world_size: usize) -> Self {
        Progress { iteration: 0, total_iters: 0, adam_step: 0, seed, elapsed_s: 0.0, world_size }
    }
}

/// Everything a checkpoint holds.
pub struct Checkpoint {
    /// The supergraph.
    pub graph: Graph,
    /// Teacher backbone tensors by weight key.
    pub teacher: HashMap<String, Tensor>,
    /// Other training tensors by key (`student.*`, `student_head.*`, `teacher_head.*`, `adam.m.*`, ...).
    pub train_state: HashMap<String, Tensor>,
    /// Progress.
    pub progress: Progress,
}

/// The checkpoint folder of `path`: `path` itself if it holds a supergraph, else `path/checkpoint` (or the
/// previous checkpoint if a kill interrupted the swap).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(SUPERGRAPH).exists() {
        return Ok(path.to_path_buf());
    }
    for name in [CHECKPOINT, PREVIOUS] {
        if path.join(name).join(SUPERGRAPH).exists() {
            return Ok(path.join(name));
        }
    }
    if !path.exists() {
        bail!("{} does not exist (give a run folder written by `poac pretrain`, or its checkpoint folder)", path.display());
    }
    bail!("{} holds no poac checkpoint (no {SUPERGRAPH} in it or in {CHECKPOINT}/)", path.display())
}

/// Reads the supergraph of a checkpoint folder.
pub fn read_graph(dir: &Path) -> Result<Graph> {
    let text = std::fs::read_to_string(dir.join(SUPERGRAPH)).with_context(|| format!("cannot read {}", dir.join(SUPERGRAPH).display()))?;
    Graph::from_json(&text).with_context(|| format!("in {}", dir.join(SUPERGRAPH).display()))
}

fn write_tensors(path: &Path, tensors: &[(String, &Tensor)]) -> Result<()> {
    let contiguous: Vec<(String, Tensor)> = tensors.iter().map(|(k, t)| (k.clone(), t.detach().to_device(tch::Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&contiguous, path).with_context(|| format!("cannot write {}", path.display()))?;
    sync(path)
}

/// Flushes a file or folder to disk, so that a rename after it never exposes missing data after a crash.
fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync {}", path.display()))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    sync(path)
}

fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(Tensor::read_safetensors(path).with_context(|| format!("cannot read {}", path.display()))?.into_iter().collect())
}

/// Writes a checkpoint into `run/checkpoint` atomically.
pub fn save(run: &Path, graph: &Graph, teacher: &[(String, &Tensor)], train_state: &[(String, &Tensor)], progress: &Progress) -> Result<()> {
    let partial = run.join(PARTIAL);
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir_all(&partial)?;
    write_file(&partial.join(SUPERGRAPH), graph.to_json().as_bytes())?;
    write_tensors(&partial.join(TEACHER), teacher)?;
    write_tensors(&partial.join(TRAIN_STATE), train_state)?;
    write_file(&partial.join(STATE), serde_json::to_string_pretty(progress)?.as_bytes())?;
    sync(&partial)?;
    // Swap: at every instant `checkpoint/` or `.checkpoint.old/` is complete ([`resolve`] falls back to it).
    let (current, previous) = (run.join(CHECKPOINT), run.join(PREVIOUS));
    if current.exists() {
        if previous.exists() {
            std::fs::remove_dir_all(&previous)?;
        }
        std::fs::rename(&current, &previous)?;
    }
    std::fs::rename(&partial, &current)?;
    sync(run)?;
    if previous.exists() {
        std::fs::remove_dir_all(&previous)?;
    }
    Ok(())
}

/// Folder of the kept earlier checkpoints inside a run.
pub const KEPT: &str = "checkpoints";

/// Keeps `run/checkpoints/iter_NNNNNNN/`, a copy of the current `checkpoint/` (hard links: its files are
/// written once and never modified in place), and deletes all but the newest `keep` of them; `keep == 0`
/// keeps none. Any of them can be lowered or resumed from like `checkpoint/`.
pub fn keep_last(run: &Path, iteration: u64, keep: usize) -> Result<()> {
    let kept = run.join(KEPT);
    if keep > 0 {
        let dir = kept.join(format!("iter_{iteration:07}"));
        let partial = kept.join(format!(".iter_{iteration:07}.tmp"));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        for entry in std::fs::read_dir(run.join(CHECKPOINT))? {
            let from = entry?.path();
            let to = partial.join(from.file_name().unwrap_or_default());
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&partial, &dir)?;
    }
    let Ok(entries) = std::fs::read_dir(&kept) else { return Ok(()) };
    let mut snapshots: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("iter_"))).collect();
    snapshots.sort();
    for old in &snapshots[..snapshots.len().saturating_sub(keep)] {
        std::fs::remove_dir_all(old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
    Ok(())
}

/// Reads the checkpoint of a run (or of a checkpoint folder).
pub fn load(path: &Path) -> Result<Checkpoint> {
    let dir = resolve(path)?;
    let progress: Progress = serde_json::from_str(&std::fs::read_to_string(dir.join(STATE)).with_context(|| format!("cannot read {}", dir.join(STATE).display()))?)?;
    Ok(Checkpoint { graph: read_graph(&dir)?, teacher: read_tensors(&dir.join(TEACHER))?, train_state: read_tensors(&dir.join(TRAIN_STATE))?, progress })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_snapshots() {
        let run = std::env::temp_dir().join(format!("poac-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(run.join(CHECKPOINT)).unwrap();
        for iteration in [10, 20, 30, 40] {
            // As `save` does: each file is written anew (a new inode), never modified in place.
            let fresh = run.join("state.tmp");
            std::fs::write(&fresh, format!("{iteration}")).unwrap();
            std::fs::rename(&fresh, run.join(CHECKPOINT).join(STATE)).unwrap();
            keep_last(&run, iteration, 2).unwrap();
        }
        let mut left: Vec<String> = std::fs::read_dir(run.join(KEPT)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["iter_0000030", "iter_0000040"]);
        assert_eq!(std::fs::read_to_string(run.join(KEPT).join("iter_0000030").join(STATE)).unwrap(), "30");
        keep_last(&run, 50, 0).unwrap();
        assert_eq!(std::fs::read_dir(run.join(KEPT)).unwrap().count(), 0);
        std::fs::remove_dir_all(&run).unwrap();
    }
}
