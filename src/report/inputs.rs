//! The report's inputs: the pre-training curves from `metrics.jsonl` and the evaluation records, grouped into
//! series (one per kind of evaluation and source run).

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One pre-training iteration.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainPoint {
    /// Iteration (0-based).
    pub iteration: u64,
    /// Total loss.
    pub loss: f64,
    /// The intact student's loss.
    pub intact: f64,
    /// The elastic student's loss.
    pub elastic: f64,
    /// The intact→elastic distillation term.
    pub intact_to_elastic: f64,
    /// Mean images per second of the invocation so far.
    pub images_per_second: f64,
    /// Training seconds up to this iteration.
    pub elapsed_s: f64,
}

/// One evaluated sub-network.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalPoint {
    /// Embed dim.
    pub width: usize,
    /// Blocks.
    pub depth: usize,
    /// Backbone parameters, when the model's metadata says.
    pub params: Option<usize>,
    /// FLOPs per image, when the model's metadata says.
    pub flops: Option<u64>,
    /// The headline top-1 (fraction): k-NN at k = 20, the best linear probe, fine-tuning.
    pub top1: f64,
    /// `ort` or `tract`.
    pub runtime: String,
}

/// The points of one kind of evaluation of one source run.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// `knn`, `linear`, `finetune`, … as recorded.
    pub eval: String,
    /// The run folder the evaluated models were lowered from.
    pub weights: String,
    /// The latest record of each (width, depth, runtime), by cost.
    pub points: Vec<EvalPoint>,
}

impl Series {
    /// How the table and the plots name the series.
    pub fn label(&self) -> String {
        format!("{} · {}", self.eval, self.weights)
    }

    /// One point per sub-network: the ort figure where there is one (the runtimes agree; the table shows
    /// how closely), else the first recorded.
    pub fn per_subnet(&self) -> Vec<&EvalPoint> {
        let mut chosen: BTreeMap<(usize, usize), &EvalPoint> = BTreeMap::new();
        for p in &self.points {
            let slot = chosen.entry((p.width, p.depth)).or_insert(p);
            if p.runtime == "ort" {
                *slot = p;
            }
        }
        let mut points: Vec<&EvalPoint> = chosen.into_values().collect();
        points.sort_by_key(|p| (p.flops, p.width, p.depth));
        points
    }

    /// The largest |top-1 on ort − top-1 on tract| over the sub-networks evaluated on both.
    pub fn runtime_gap(&self) -> Option<f64> {
        let on = |runtime: &str, w: usize, d: usize| {
            self.points.iter().find(|p| p.runtime == runtime && (p.width, p.depth) == (w, d)).map(|p| p.top1)
        };
        self.points
            .iter()
            .filter_map(|p| Some((on("ort", p.width, p.depth)? - on("tract", p.width, p.depth)?).abs()))
            .reduce(f64::max)
    }
}

/// The iterations of `run/metrics.jsonl` (lines without a loss, such as k-NN checks, are left out).
pub fn read_training(run: &Path) -> Result<Vec<TrainPoint>> {
    if !run.is_dir() {
        bail!("run folder {} does not exist", run.display());
    }
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} — is {} a `poac pretrain` run folder?", path.display(), run.display()))?;
    let mut points = Vec::new();
    for (line, value) in json_lines(&path, &text)? {
        if value.get("loss").is_none() {
            continue;
        }
        let number = |key: &str| value.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN);
        let iteration = value.get("iteration").and_then(Value::as_u64).with_context(|| format!("{}:{line}: no iteration", path.display()))?;
        points.push(TrainPoint {
            iteration,
            loss: number("loss"),
            intact: number("intact"),
            elastic: number("elastic"),
            intact_to_elastic: number("intact_to_elastic"),
            images_per_second: number("images_per_second"),
            elapsed_s: number("elapsed_s"),
        });
    }
    Ok(points)
}

/// The records of `files`, grouped by (evaluation, source run); a later record of the same sub-network and
/// runtime replaces an earlier one.
pub fn read_series(files: &[PathBuf]) -> Result<Vec<Series>> {
    let mut grouped: BTreeMap<(usize, String, String), BTreeMap<(usize, usize, String), EvalPoint>> = BTreeMap::new();
    for path in files {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read evaluation records {}", path.display()))?;
        for (line, value) in json_lines(path, &text)? {
            let (eval, weights, point) = record(&value).with_context(|| format!("{}:{line}: not an evaluation record", path.display()))?;
            let key = (eval_rank(&eval), eval, weights);
            grouped.entry(key).or_default().insert((point.width, point.depth, point.runtime.clone()), point);
        }
    }
    Ok(grouped
        .into_iter()
        .map(|((_, eval, weights), points)| Series { eval, weights, points: points.into_values().collect() })
        .collect())
}

/// Every non-empty line of `text` as JSON, with its 1-based line number.
fn json_lines(path: &Path, text: &str) -> Result<Vec<(usize, Value)>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map(|v| (i + 1, v)).with_context(|| format!("{}:{}: not JSON", path.display(), i + 1)))
        .collect()
}

/// (evaluation, source run, point) of one record.
fn record(value: &Value) -> Result<(String, String, EvalPoint)> {
    let text = |key: &str| value.get(key).and_then(Value::as_str).with_context(|| format!("no `{key}`"));
    let count = |key: &str| value.get(key).and_then(Value::as_u64).with_context(|| format!("no `{key}`"));
    let eval = text("eval")?.to_string();
    let headline = if eval == "knn" { "top1_k20" } else { "top1" };
    let top1 = value.get(headline).and_then(Value::as_f64).with_context(|| format!("no `{headline}`"))?;
    let source = value.get("source_checkpoint").and_then(Value::as_str);
    let point = EvalPoint {
        width: count("width")? as usize,
        depth: count("depth")? as usize,
        params: value.get("params").and_then(Value::as_u64).map(|p| p as usize),
        flops: value.get("flops").and_then(Value::as_u64),
        top1,
        runtime: text("runtime")?.to_string(),
    };
    Ok((eval, source.map_or_else(|| "unknown run".to_string(), run_name), point))
}

/// `…/runs/fashion_mnist/checkpoint` → `fashion_mnist`: the run folder's name (the checkpoint folder's own name
/// when it is not called `checkpoint`).
fn run_name(checkpoint: &str) -> String {
    let path = Path::new(checkpoint);
    let dir = if path.file_name().is_some_and(|n| n == "checkpoint") { path.parent().unwrap_or(path) } else { path };
    dir.file_name().map_or_else(|| checkpoint.to_string(), |n| n.to_string_lossy().into_owned())
}

/// Series order: k-NN, linear probe, fine-tuning, then anything else.
fn eval_rank(eval: &str) -> usize {
    ["knn", "linear", "finetune"].iter().position(|e| *e == eval).unwrap_or(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(eval: &str, source: &str, w: usize, d: usize, runtime: &str, top1: f64) -> String {
        let headline = if eval == "knn" { "top1_k20" } else { "top1" };
        format!(
            r#"{{"eval":"{eval}","source_checkpoint":"{source}","width":{w},"depth":{d},"params":{},"flops":{},"runtime":"{runtime}","{headline}":{top1}}}"#,
            w * d * 100,
            w * d * 1000
        )
    }

    #[test]
    fn records_group_by_evaluation_and_source_run_and_the_latest_wins() {
        let dir = std::env::temp_dir().join(format!("poac-report-inputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("evals.jsonl");
        let lines = [
            line("linear", "/r/run/checkpoint", 64, 4, "ort", 0.7),
            line("knn", "/r/run/checkpoint", 128, 6, "ort", 0.5),
            line("knn", "/r/run/checkpoint", 64, 4, "tract", 0.58),
            line("knn", "/r/run/checkpoint", 64, 4, "ort", 0.59),
            line("knn", "/r/run-random-init/checkpoint", 64, 4, "ort", 0.52),
            line("knn", "/r/run/checkpoint", 128, 6, "ort", 0.6),
        ];
        std::fs::write(&file, lines.join("\n") + "\n\n").unwrap();
        let series = read_series(&[file]).unwrap();
        let labels: Vec<String> = series.iter().map(Series::label).collect();
        assert_eq!(labels, ["knn · run", "knn · run-random-init", "linear · run"]);
        let knn: Vec<(usize, f64)> = series[0].per_subnet().iter().map(|p| (p.width, p.top1)).collect();
        assert_eq!(knn, [(64, 0.59), (128, 0.6)], "ort preferred, later record replaces earlier, sorted by FLOPs");
        assert!((series[0].runtime_gap().unwrap() - 0.01).abs() < 1e-12);
        assert_eq!(series[1].runtime_gap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_records_name_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("poac-report-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("evals.jsonl");
        std::fs::write(&file, format!("{}\n{{\"eval\":\"knn\"}}\n", line("knn", "/r/a/checkpoint", 64, 4, "ort", 0.5))).unwrap();
        let err = format!("{:#}", read_series(std::slice::from_ref(&file)).unwrap_err());
        assert!(err.contains("evals.jsonl:2") && err.contains("no `top1_k20`"), "{err}");
        std::fs::write(&file, "not json\n").unwrap();
        let err = format!("{:#}", read_series(&[file]).unwrap_err());
        assert!(err.contains("evals.jsonl:1: not JSON"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn run_names_come_from_the_checkpoint_path() {
        assert_eq!(run_name("/a/runs/fashion_mnist/checkpoint"), "fashion_mnist");
        assert_eq!(run_name("/a/runs/finetuned_w64_d4"), "finetuned_w64_d4");
    }
}
