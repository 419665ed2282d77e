//! `poac report` end to end: a run folder with known metrics and evaluation records gives a Markdown table of
//! exactly those figures and PNG plots that show every series; bad inputs are clear errors.

mod common;

use common::{fails, ok, temp};

/// Pixels of exactly this colour in `image`.
fn count(image: &image::RgbImage, rgb: [u8; 3]) -> usize {
    image.pixels().filter(|p| p.0 == rgb).count()
}

#[test]
fn report_tables_the_records_and_plots_every_series() {
    let dir = temp("report");
    let run = dir.join("runs/demo");
    std::fs::create_dir_all(&run).unwrap();
    let mut metrics = String::from("{\"iteration\":0,\"dataset\":{\"train_images\":10}}\n");
    for i in 0..20u64 {
        let loss = 12.0 - 0.05 * i as f64;
        metrics.push_str(&format!(
            "{{\"iteration\":{i},\"loss\":{loss},\"intact\":{},\"elastic\":{},\"intact_to_elastic\":{},\"images_per_second\":24.5,\"elapsed_s\":{}}}\n",
            loss - 1.0,
            loss - 0.5,
            loss - 4.0,
            3.0 * (i + 1) as f64
        ));
    }
    metrics.push_str("{\"iteration\":20,\"knn20_teacher\":[0.5,0.6]}\n");
    std::fs::write(run.join("metrics.jsonl"), metrics).unwrap();
    let record = |eval: &str, source: &str, w: u64, d: u64, runtime: &str, top1: f64| {
        let headline = if eval == "knn" { "top1_k20" } else { "top1" };
        format!(
            "{{\"eval\":\"{eval}\",\"source_checkpoint\":\"/somewhere/{source}/checkpoint\",\"width\":{w},\"depth\":{d},\"params\":{},\"flops\":{},\"runtime\":\"{runtime}\",\"{headline}\":{top1}}}\n",
            w * w * d * 12,
            w * w * d * 12 * 130
        )
    };
    let evals = [
        record("knn", "demo", 64, 4, "ort", 0.58),
        record("knn", "demo", 64, 4, "tract", 0.58),
        record("knn", "demo", 192, 8, "ort", 0.5935),
        record("knn", "demo-random-init", 64, 4, "ort", 0.5265),
        record("knn", "demo-random-init", 192, 8, "ort", 0.514),
    ];
    std::fs::write(run.join("evals.jsonl"), evals.concat()).unwrap();
    let linear = dir.join("linear.jsonl");
    std::fs::write(&linear, record("linear", "demo", 192, 8, "ort", 0.8125)).unwrap();

    let out = ok(&["report", run.to_str().unwrap(), "--records", linear.to_str().unwrap()]);
    assert!(out.contains("report/report.md") && out.contains("accuracy_vs_gflops.png"), "{out}");
    let md = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    // 20 iterations, 60 s of training, loss 12.0 → 11.05; params = 12·w²·d, FLOPs = 130 × params.
    assert!(md.contains("20 iterations, 1.0 min of training at 24.5 img/s. Loss 12.000 → 11.050"), "{md}");
    assert!(md.contains("| sub-network | params (M) | GFLOPs | knn · demo | knn · demo-random-init | linear · demo |"), "{md}");
    assert!(md.contains("| w64-d4 | 0.20 | 0.026 | 58.00 | 52.65 | — |"), "{md}");
    assert!(md.contains("| w192-d8 | 3.54 | 0.460 | 59.35 | 51.40 | 81.25 |"), "{md}");
    assert!(md.contains("knn · demo 0.00 pts"), "{md}");

    let size = |name: &str| image::open(run.join("report").join(name)).unwrap().to_rgb8();
    let blue = [31, 119, 180];
    let red = [214, 39, 40];
    let green = [44, 160, 44];
    for name in ["accuracy_vs_params.png", "accuracy_vs_gflops.png"] {
        let plot = size(name);
        assert_eq!(plot.dimensions(), (1000, 620));
        for (colour, series) in [(blue, "knn · demo"), (red, "random init"), (green, "linear")] {
            // More than its legend swatch (2 × 24 px): the points (and lines) are drawn.
            assert!(count(&plot, colour) > 100, "{name}: the {series} series is not drawn");
        }
    }
    let losses = size("loss.png");
    assert!(count(&losses, blue) > 200 && count(&losses, [148, 103, 189]) > 200, "every loss term is drawn");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_runs_and_records_are_clear_errors() {
    let dir = temp("report-bad");
    let err = fails(&["report", dir.join("nope").to_str().unwrap()]);
    assert!(err.contains("does not exist"), "{err}");
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let err = fails(&["report", dir.join("empty").to_str().unwrap()]);
    assert!(err.contains("`poac pretrain` run folder"), "{err}");
    std::fs::write(dir.join("empty/metrics.jsonl"), "{\"iteration\":0,\"loss\":1.0}\n").unwrap();
    std::fs::write(dir.join("empty/evals.jsonl"), "{\"eval\":\"knn\",\"width\":64}\n").unwrap();
    let err = fails(&["report", dir.join("empty").to_str().unwrap()]);
    assert!(err.contains("evals.jsonl:1") && err.contains("not an evaluation record"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
