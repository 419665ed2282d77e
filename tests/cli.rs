//! The `poac` binary end to end on a small image folder: index (with broken files among good ones), pretrain,
//! resume, lower, k-NN on both runtimes — and every kind of bad input gives a clear error, never a panic.

mod common;

use common::{fails, ok, stripes, temp, tiny_config};
use std::path::Path;

/// Three classes of 20 px images (stripes at a class-dependent angle), plus a zero-byte file, random bytes and a
/// truncated JPEG in the training split.
fn make_dataset(root: &Path) {
    let classes = ["c0_horizontal", "c1_vertical", "c2_diagonal"];
    for (split, count) in [("train", 16), ("val", 6)] {
        for (c, class) in classes.iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                let img = stripes(c, i, 20);
                let ext = if i % 2 == 0 { "JPEG" } else { "png" };
                img.save(dir.join(format!("{i:03}.{ext}"))).unwrap();
            }
        }
    }
    let labels: String = classes.iter().map(|c| format!("{c},{}\n", c.replace('_', " "))).collect();
    std::fs::write(root.join("labels.txt"), labels).unwrap();
    let bad = root.join("train").join(classes[0]);
    std::fs::write(bad.join("empty.JPEG"), b"").unwrap();
    std::fs::write(bad.join("noise.JPEG"), (0..500u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>()).unwrap();
    let good = std::fs::read(bad.join("000.JPEG")).unwrap();
    std::fs::write(bad.join("truncated.JPEG"), &good[..good.len() / 3]).unwrap();
}

#[test]
fn index_pretrain_resume_lower_and_knn_on_both_runtimes() {
    let dir = temp("e2e");
    let data = dir.join("data");
    make_dataset(&data);
    let report = ok(&["data", "index", data.to_str().unwrap()]);
    assert!(report.contains("3 classes, 48 train + 18 val images, 3 skipped"), "{report}");

    let run = dir.join("run");
    let (config, data_s, run_s) = (tiny_config(), data.to_str().unwrap().to_string(), run.to_str().unwrap().to_string());
    let config_s = config.to_str().unwrap();
    ok(&["pretrain", "--config", config_s, "--data", &data_s, "--output", &run_s, "--max-iters", "3"]);
    let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().filter(|l| l.contains("\"loss\"")).count();
    assert_eq!(lines(&run.join("metrics.jsonl")), 3);
    assert!(run.join("checkpoint/teacher.safetensors").exists());
    let err = fails(&["pretrain", "--config", config_s, "--data", &data_s, "--output", &run_s, "--max-iters", "3"]);
    assert!(err.contains("--resume"), "{err}");
    ok(&["pretrain", "--config", config_s, "--data", &data_s, "--output", &run_s, "--max-iters", "5", "--resume"]);
    assert_eq!(lines(&run.join("metrics.jsonl")), 5);
    let state = std::fs::read_to_string(run.join("checkpoint/state.json")).unwrap();
    assert!(state.contains("\"iteration\": 5"), "{state}");

    let inspect = ok(&["inspect", &run_s, "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 6);

    let model = dir.join("small.onnx");
    let model_s = model.to_str().unwrap();
    ok(&["lower", &run_s, "--width", "0.5", "--depth", "2", "-o", model_s]);
    let mut top1 = Vec::new();
    for runtime in ["ort", "tract"] {
        let out = ok(&["eval", "knn", "--model", model_s, "--data", &data_s, "--runtime", runtime, "--json", "--train-limit", "30"]);
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["runtime"], runtime);
        assert_eq!(report["train_images"], 30);
        assert_eq!(report["val_images"], 18);
        for k in ["10", "20", "100", "200"] {
            let v = report["top1"][k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "top1@{k} = {v}");
        }
        top1.push(report["top1"]["20"].as_f64().unwrap());
    }
    assert!((top1[0] - top1[1]).abs() < 1e-3, "ort and tract disagree: {top1:?}");
    let table = ok(&["eval", "knn", "--model", model_s, "--data", &data_s, "--runtime", "tract"]);
    assert!(table.contains("top-1"), "{table}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = temp("bad");
    let data = dir.join("data");
    make_dataset(&data);
    let (config, data_s) = (tiny_config(), data.to_str().unwrap().to_string());
    let config_s = config.to_str().unwrap();
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();
    ok(&["pretrain", "--config", config_s, "--data", &data_s, "--output", run_s, "--max-iters", "0"]);

    // Width not a multiple of head_dim, depth outside the space, unknown size: the valid choices are listed.
    let model = dir.join("m.onnx");
    let model_s = model.to_str().unwrap();
    let err = fails(&["lower", run_s, "--width", "20", "-o", model_s]);
    assert!(err.contains("16, 24, 32"), "{err}");
    let err = fails(&["lower", run_s, "--width", "0.3", "-o", model_s]);
    assert!(err.contains("16, 24, 32"), "{err}");
    let err = fails(&["lower", run_s, "--depth", "7", "-o", model_s]);
    assert!(err.contains("2, 3"), "{err}");
    let err = fails(&["lower", run_s, "--size", "huge", "-o", model_s]);
    assert!(err.contains("small, base, large"), "{err}");
    let err = fails(&["lower", dir.join("nope").to_str().unwrap(), "-o", model_s]);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!model.exists());

    // A config with a misspelt key names the key and its nearest valid spelling.
    let bad_config = dir.join("bad.yaml");
    std::fs::write(&bad_config, "dino:\n  lambda_ei: 0.5\n").unwrap();
    let err = fails(&["pretrain", "--config", bad_config.to_str().unwrap(), "--data", &data_s, "--output", dir.join("r2").to_str().unwrap()]);
    assert!(err.contains("dino.lambda_ei") && err.contains("dino.lambda_ie"), "{err}");
    let err = fails(&["pretrain", "--config", config_s, "--data", &data_s, "--output", dir.join("r3").to_str().unwrap(), "--set", "student.max_depth=two"]);
    assert!(err.contains("wrong type"), "{err}");

    // A loss that overflows stops the run, naming the iteration; the checkpoint before it stays, usable.
    let nan_run = dir.join("r4");
    let nan_s = nan_run.to_str().unwrap();
    let blow_up = ["--set", "optim.base_lr=1e8", "--set", "optim.warmup_epochs=0", "--set", "train.saveckp_freq=1"];
    let err = fails(&[&["pretrain", "--config", config_s, "--data", &data_s, "--output", nan_s, "--max-iters", "5"], &blow_up[..]].concat());
    let at = err.split("at iteration ").nth(1).and_then(|rest| rest.split(';').next()).and_then(|n| n.parse::<u64>().ok());
    let at = at.unwrap_or_else(|| panic!("no iteration named: {err}"));
    assert!(err.contains("not finite") && err.contains("last checkpoint"), "{err}");
    let state = std::fs::read_to_string(nan_run.join("checkpoint/state.json")).unwrap();
    assert!(state.contains(&format!("\"iteration\": {at},")), "the checkpoint is the one before iteration {at}: {state}");
    ok(&["lower", nan_s, "-o", dir.join("kept.onnx").to_str().unwrap()]);

    // A missing dataset folder, and an empty class folder, are named.
    let missing = dir.join("no-such-dataset");
    let err = fails(&["data", "index", missing.to_str().unwrap()]);
    assert!(err.contains("no-such-dataset") && err.contains("does not exist"), "{err}");
    std::fs::create_dir_all(data.join("val/c3_empty")).unwrap();
    std::fs::create_dir_all(data.join("train/c3_empty")).unwrap();
    std::fs::write(data.join("labels.txt"), "c0_horizontal,h\nc1_vertical,v\nc2_diagonal,d\nc3_empty,e\n").unwrap();
    let err = fails(&["data", "index", &data_s]);
    assert!(err.contains("c3_empty") && err.contains("no images"), "{err}");

    // Evaluating something that is not a poac model.
    std::fs::write(&model, b"not onnx").unwrap();
    let err = fails(&["eval", "knn", "--model", model_s, "--data", &data_s]);
    assert!(err.contains("not an ONNX model"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
