//! Evaluation records (`--record FILE`): each evaluation appends its JSON report as one line, tagged with the
//! kind of evaluation, so that the results of many calls can be collected from one file.

use crate::lower::ModelInfo;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::io::Write;
use std::path::Path;

/// The model an evaluation measured, as every report states it (flattened into the report's JSON): its file and
/// what `poac lower` recorded of it.
#[derive(Clone, Debug, Serialize)]
pub struct EvaluatedModel {
    /// The model file.
    pub model: String,
    /// Width of the model's sub-network.
    pub width: usize,
    /// Depth of the model's sub-network.
    pub depth: usize,
    /// Backbone parameters, from the model's metadata.
    pub params: Option<usize>,
    /// FLOPs per image, from the model's metadata.
    pub flops: Option<u64>,
    /// The checkpoint the model was lowered from, from its metadata.
    pub source_checkpoint: Option<String>,
}

impl EvaluatedModel {
    /// The model at `path` with its metadata `info`.
    pub fn new(path: &Path, info: &ModelInfo) -> Self {
        EvaluatedModel {
            model: path.display().to_string(),
            width: info.width,
            depth: info.depth,
            params: info.params,
            flops: info.flops,
            source_checkpoint: info.source_checkpoint.clone(),
        }
    }
}

/// Appends `{"eval": eval, …every field of report}` as one line to `path`, creating it and its folder.
pub fn append_record(path: &Path, eval: &str, report: &impl Serialize) -> Result<()> {
    let Value::Object(mut line) = serde_json::to_value(report)? else { bail!("a report must serialise to a JSON object") };
    line.insert("eval".into(), eval.into());
    let mut text = serde_json::to_string(&line)?;
    text.push('\n');
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot append to {}", path.display()))
}
