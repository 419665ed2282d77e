//! `poac report RUN`: what a run learnt, in a form people would rather look at — a Markdown summary with the
//! pre-training curves and a table of every evaluated sub-network, and PNG plots of accuracy against parameters
//! and FLOPs (the figure a user picks a size from).
//!
//! Inputs are the run's `metrics.jsonl` (written by `poac pretrain`) and evaluation records (`evals.jsonl`,
//! appended by `poac eval … --record`). Records of models lowered from other runs (e.g. the random-init
//! baseline) are series of their own, named after the run folder of their source checkpoint.

mod inputs;
mod markdown;
mod plot;

pub use inputs::{EvalPoint, Series, TrainPoint};

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The evaluation records a run folder holds by convention.
pub const EVALS_FILE: &str = "evals.jsonl";

/// What `poac report` wrote.
#[derive(Debug)]
pub struct ReportFiles {
    /// The Markdown summary.
    pub markdown: PathBuf,
    /// The PNG plots, in the order the summary shows them.
    pub plots: Vec<PathBuf>,
}

/// Reads `run`'s metrics and the evaluation records (`run/evals.jsonl` if present, then `extra_records`) and
/// writes `report.md` and the plots into `out`.
pub fn write_report(run: &Path, extra_records: &[PathBuf], out: &Path) -> Result<ReportFiles> {
    let training = inputs::read_training(run)?;
    let mut record_files: Vec<PathBuf> = Some(run.join(EVALS_FILE)).filter(|p| p.exists()).into_iter().collect();
    record_files.extend(extra_records.iter().cloned());
    let series = inputs::read_series(&record_files)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;

    let mut plots = Vec::new();
    if !training.is_empty() {
        let path = out.join("loss.png");
        plot::losses(&training, &path)?;
        plots.push(path);
    }
    if !series.is_empty() {
        for axis in [plot::CostAxis::Params, plot::CostAxis::Gflops] {
            let path = out.join(format!("accuracy_vs_{}.png", axis.file_stem()));
            plot::accuracy(&series, axis, &path)?;
            plots.push(path);
        }
    }
    let names: Vec<String> = plots.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    let text = markdown::render(run, &training, &series, &names);
    let markdown = out.join("report.md");
    std::fs::write(&markdown, text).with_context(|| format!("cannot write {}", markdown.display()))?;
    Ok(ReportFiles { markdown, plots })
}
