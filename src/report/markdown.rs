//! The Markdown summary: pre-training in one paragraph, then one table row per evaluated sub-network with a
//! column per series, then the plots.

use super::inputs::{EvalPoint, Series, TrainPoint};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// The whole `report.md`; `plots` are file names next to it (the loss curves first, if any).
pub fn render(run: &Path, training: &[TrainPoint], series: &[Series], plots: &[String]) -> String {
    let name = run.file_name().map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut md = format!("# poac report: {name}\n\n## Pre-training\n\n");
    let mut plots = plots.iter();
    match (training.first(), training.last()) {
        (Some(first), Some(last)) => {
            let _ = writeln!(
                md,
                "{} iterations, {:.1} min of training at {:.1} img/s. Loss {:.3} → {:.3} (last iteration: intact {:.3}, \
                 elastic {:.3}, intact→elastic {:.3}).\n",
                last.iteration + 1,
                last.elapsed_s / 60.0,
                last.images_per_second,
                first.loss,
                last.loss,
                last.intact,
                last.elastic,
                last.intact_to_elastic
            );
            if let Some(plot) = plots.next() {
                let _ = writeln!(md, "![pre-training losses]({plot})\n");
            }
        }
        _ => md.push_str("No iteration logged yet.\n\n"),
    }
    md.push_str("## Sub-networks\n\n");
    if series.is_empty() {
        md.push_str(
            "No evaluation recorded yet: `poac eval knn|linear … --record RUN/evals.jsonl` (the `shells/eval/` scripts \
             do this) adds one.\n",
        );
        return md;
    }
    md.push_str(&table(series));
    md.push_str(
        "\nTop-1 in % on the validation split: k-NN at k = 20, the best classifier of the linear-probe grid, fine-tuning. \
         ort's figure where both runtimes were run.",
    );
    let gaps: Vec<String> =
        series.iter().filter_map(|s| s.runtime_gap().map(|g| format!("{} {:.2} pts", s.label(), 100.0 * g))).collect();
    if !gaps.is_empty() {
        let _ = write!(md, " Largest ort–tract difference: {}.", gaps.join(", "));
    }
    md.push_str("\n\n");
    for (plot, what) in plots.zip(["parameters", "FLOPs per image"]) {
        let _ = writeln!(md, "![top-1 against {what}]({plot})\n");
    }
    md
}

/// One row per sub-network (by FLOPs), one column per series; `—` where a series did not evaluate it.
fn table(series: &[Series]) -> String {
    let mut rows: BTreeMap<(usize, usize), &EvalPoint> = BTreeMap::new();
    for point in series.iter().flat_map(|s| &s.points) {
        let row = rows.entry((point.width, point.depth)).or_insert(point);
        if row.params.is_none() {
            *row = point;
        }
    }
    let mut rows: Vec<&EvalPoint> = rows.into_values().collect();
    rows.sort_by_key(|p| (p.flops, p.width, p.depth));
    let columns: Vec<Vec<&EvalPoint>> = series.iter().map(Series::per_subnet).collect();

    let mut md = String::from("| sub-network | params (M) | GFLOPs |");
    series.iter().for_each(|s| md.push_str(&format!(" {} |", s.label())));
    md.push_str(&format!("\n|---|---|---|{}\n", "---|".repeat(series.len())));
    for row in rows {
        let params = row.params.map_or("?".into(), |p| format!("{:.2}", p as f64 / 1e6));
        let gflops = row.flops.map_or("?".into(), |f| format!("{:.3}", f as f64 / 1e9));
        let _ = write!(md, "| w{}-d{} | {params} | {gflops} |", row.width, row.depth);
        for column in &columns {
            match column.iter().find(|p| (p.width, p.depth) == (row.width, row.depth)) {
                Some(p) => {
                    let _ = write!(md, " {:.2} |", 100.0 * p.top1);
                }
                None => md.push_str(" — |"),
            }
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(width: usize, depth: usize, top1: f64, runtime: &str) -> EvalPoint {
        EvalPoint { width, depth, params: Some(width * 1000), flops: Some((width * depth) as u64 * 1_000_000), top1, runtime: runtime.into() }
    }

    #[test]
    fn the_table_has_a_row_per_subnetwork_and_a_column_per_series() {
        let knn = Series {
            eval: "knn".into(),
            weights: "run".into(),
            points: vec![point(128, 6, 0.5835, "ort"), point(64, 4, 0.58, "ort"), point(64, 4, 0.5795, "tract")],
        };
        let linear = Series { eval: "linear".into(), weights: "run".into(), points: vec![point(64, 4, 0.7125, "ort")] };
        let training = [
            TrainPoint { iteration: 0, loss: 12.5, intact: 12.0, elastic: 13.0, intact_to_elastic: 1.0, images_per_second: 0.0, elapsed_s: 2.0 },
            TrainPoint { iteration: 9, loss: 11.25, intact: 11.0, elastic: 11.5, intact_to_elastic: 0.5, images_per_second: 25.5, elapsed_s: 120.0 },
        ];
        let plots = ["loss.png".to_string(), "accuracy_vs_params.png".to_string()];
        let md = render(Path::new("/x/runs/demo"), &training, &[knn, linear], &plots);
        assert!(md.starts_with("# poac report: demo\n"), "{md}");
        assert!(md.contains("10 iterations, 2.0 min of training at 25.5 img/s. Loss 12.500 → 11.250"), "{md}");
        assert!(md.contains("| sub-network | params (M) | GFLOPs | knn · run | linear · run |\n|---|---|---|---|---|\n"), "{md}");
        assert!(md.contains("| w64-d4 | 0.06 | 0.256 | 58.00 | 71.25 |\n| w128-d6 | 0.13 | 0.768 | 58.35 | — |\n"), "{md}");
        assert!(md.contains("Largest ort–tract difference: knn · run 0.05 pts."), "{md}");
        assert!(md.contains("![pre-training losses](loss.png)") && md.contains("![top-1 against parameters](accuracy_vs_params.png)"));
    }

    #[test]
    fn without_records_the_summary_says_how_to_add_them() {
        let md = render(Path::new("run"), &[], &[], &[]);
        assert!(md.contains("No iteration logged yet") && md.contains("--record RUN/evals.jsonl"), "{md}");
    }
}
