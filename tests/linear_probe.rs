//! The linear probe: the classifier grid on synthetic features (separable classes reach 100 %, each feature
//! setting reads its columns, SGD-momentum steps with each head's own learning rate against hand-derived
//! values), and `poac eval linear` end to end on tiny models (both runtimes, the feature cache, `--record`), with
//! a clear error — never a panic — for each kind of bad input.

mod common;

use common::{fails, ok, poac, stripes, temp, tiny_config};
use poac::eval::classifier_grid::{ClassifierGrid, FeatureSetting, BASE_LRS, INIT_STD, MOMENTUM};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let t = t.to_kind(Kind::Double);
    (0..t.size()[0]).map(|r| Vec::<f64>::try_from(&t.get(r)).unwrap()).collect()
}

#[test]
fn each_feature_setting_reads_its_columns_of_last4() {
    // Width 2: columns 0-1 are the class token of block L-4, 2-3 of L-3, 4-5 of L-2, 6-7 of the last block,
    // 8-9 the mean patch token. Entry (r, c) holds 10·r + c.
    let last4 = Tensor::arange(20, (Kind::Float, tch::Device::Cpu)).view([2, 10]);
    let expected: [(FeatureSetting, Vec<Vec<f64>>); 4] = [
        (FeatureSetting { n_blocks: 1, avgpool: false }, vec![vec![6., 7.], vec![16., 17.]]),
        (FeatureSetting { n_blocks: 1, avgpool: true }, vec![vec![6., 7., 8., 9.], vec![16., 17., 18., 19.]]),
        (FeatureSetting { n_blocks: 4, avgpool: false }, vec![vec![0., 1., 2., 3., 4., 5., 6., 7.], vec![10., 11., 12., 13., 14., 15., 16., 17.]]),
        (FeatureSetting { n_blocks: 4, avgpool: true }, vec![(0..10).map(f64::from).collect(), (10..20).map(f64::from).collect()]),
    ];
    assert_eq!(FeatureSetting::ALL.to_vec(), expected.iter().map(|(s, _)| *s).collect::<Vec<_>>());
    for (setting, values) in expected {
        assert_eq!(rows(&setting.select(&last4, 2)), values, "{setting:?}");
    }
    assert_eq!(FeatureSetting { n_blocks: 1, avgpool: true }.columns(192), 576..960);
}

/// `n` points per class around class means that differ only in the mean-patch-token columns (8 apart along one
/// axis per class, unit Gaussian noise everywhere): `[3n, 5·width]` and labels.
fn blobs(n: i64, width: i64) -> (Tensor, Tensor) {
    let labels = Tensor::arange(3, (Kind::Int64, tch::Device::Cpu)).repeat_interleave_self_int(n, 0, None);
    let means = Tensor::zeros([3, 5 * width], (Kind::Float, tch::Device::Cpu));
    for class in 0..3 {
        let _ = means.get(class).get(4 * width + class).fill_(8.0);
    }
    let points = means.index_select(0, &labels) + Tensor::randn([3 * n, 5 * width], (Kind::Float, tch::Device::Cpu));
    (points, labels)
}

#[test]
fn the_grid_separates_blobs_that_only_the_pooled_patch_token_tells_apart() {
    tch::manual_seed(11);
    let (train, train_labels) = blobs(60, 4);
    let (val, val_labels) = blobs(30, 4);
    let batch = 30;
    let mut grid = ClassifierGrid::new(4, 3, batch, INIT_STD);
    grid.train(&train, &train_labels, 30, batch, 0);
    let accuracies = grid.accuracies(&val, &val_labels);
    let classifiers = ClassifierGrid::classifiers(batch);
    assert_eq!(accuracies.len(), 52);
    let best = accuracies.iter().cloned().fold(0.0, f64::max);
    assert_eq!(best, 1.0, "{accuracies:?}");
    for ((setting, lr), top1) in classifiers.iter().zip(&accuracies) {
        if setting.avgpool {
            // The five largest learning rates (0.0059 and up at batch 30) separate the classes fully.
            if *lr >= 5e-3 * batch as f64 / 256.0 {
                assert_eq!(*top1, 1.0, "{setting:?} lr {lr}");
            }
        } else {
            // Without the pooled patch token the features are noise: chance (1/3) on 90 images, 5.7 σ below 0.6.
            assert!(*top1 < 0.6, "{setting:?} lr {lr}: {top1}");
        }
    }
}

/// Batch of the SGD tests: 4 rows of `last4` features of width 2 (10 columns) and their classes (of 3).
fn sgd_batch() -> (Vec<Vec<f64>>, Vec<usize>) {
    let x = (0..4).map(|r| (0..10).map(|k| ((3 * r + 7 * k) % 11) as f64 / 4.0 - 1.2).collect()).collect();
    (x, vec![0, 2, 1, 2])
}

fn tensor(x: &[Vec<f64>]) -> Tensor {
    Tensor::from_slice(&x.concat()).view([x.len() as i64, x[0].len() as i64]).to_kind(Kind::Float)
}

/// Each classifier's bias and weight rows read back through its logits: the logits of a zero row are the bias,
/// those of the unit row `e_k` minus the bias are weight row `k` (zero for columns its setting does not read).
/// `[setting][head]` → (bias `[C]`, weight `[10][C]`).
fn read_back(grid: &ClassifierGrid) -> Vec<Vec<(Vec<f64>, Vec<Vec<f64>>)>> {
    let probes = Tensor::cat(&[Tensor::zeros([1, 10], (Kind::Float, tch::Device::Cpu)), Tensor::eye(10, (Kind::Float, tch::Device::Cpu))], 0);
    let logits = grid.logits(&probes).to_kind(Kind::Double);
    (0..4)
        .map(|s| {
            (0..13)
                .map(|h| {
                    let at = |row: i64| Vec::<f64>::try_from(&logits.get(row).get(s).get(h)).unwrap();
                    let bias = at(0);
                    let weight = (1..=10).map(|k| at(k).iter().zip(&bias).map(|(l, b)| l - b).collect()).collect();
                    (bias, weight)
                })
                .collect()
        })
        .collect()
}

/// `actual` (computed in f32) equals `expected` to 1e-5 relative, or to 1e-6 of the learning rate `lr` for values
/// near 0.
fn assert_close(actual: f64, expected: f64, lr: f64, what: &str) {
    assert!((actual - expected).abs() <= 1e-5 * expected.abs() + 1e-6 * lr, "{what}: {actual} vs {expected}");
}

#[test]
fn one_sgd_step_from_zero_moves_each_head_by_its_own_lr_times_the_gradient() {
    let (x, y) = sgd_batch();
    let (batch, classes) = (4usize, 3usize);
    let mut grid = ClassifierGrid::new(2, classes, batch, 0.0);
    grid.step(&tensor(&x), &Tensor::from_slice(&y.iter().map(|&c| c as i64).collect::<Vec<_>>()), 1.0);
    // From zero weights every softmax is uniform, so the gradient of the mean cross-entropy is
    // ∂/∂b_c = mean_r (1/3 − [y_r = c]) and ∂/∂W_kc = mean_r x_rk (1/3 − [y_r = c]); the first momentum buffer is
    // the gradient itself, so each head moves by −lr_i times it.
    let delta = |r: usize, c: usize| 1.0 / classes as f64 - if y[r] == c { 1.0 } else { 0.0 };
    let bias_grad: Vec<f64> = (0..classes).map(|c| (0..batch).map(|r| delta(r, c)).sum::<f64>() / batch as f64).collect();
    let weight_grad = |k: usize, c: usize| (0..batch).map(|r| x[r][k] * delta(r, c)).sum::<f64>() / batch as f64;
    for (s, heads) in read_back(&grid).iter().enumerate() {
        let columns = FeatureSetting::ALL[s].columns(2);
        for (h, (bias, weight)) in heads.iter().enumerate() {
            let lr = BASE_LRS[h] * batch as f64 / 256.0;
            for c in 0..classes {
                assert_close(bias[c], -lr * bias_grad[c], lr, &format!("setting {s} head {h} bias {c}"));
                for k in 0..10 {
                    let expected = if columns.contains(&k) { -lr * weight_grad(k, c) } else { 0.0 };
                    assert_close(weight[k][c], expected, lr, &format!("setting {s} head {h} weight {k},{c}"));
                }
            }
        }
    }
}

/// Plain SGD with momentum on softmax cross-entropy, in f64: weights `[d][C]` and bias `[C]` after one step per
/// entry of `lr_factors` on the batch (`x` `[B][d]`), from zero.
fn reference_sgd(x: &[Vec<f64>], y: &[usize], classes: usize, lr: f64, lr_factors: &[f64]) -> (Vec<Vec<f64>>, Vec<f64>) {
    let (batch, d) = (x.len(), x[0].len());
    let (mut w, mut b) = (vec![vec![0.0; classes]; d], vec![0.0; classes]);
    let (mut w_buf, mut b_buf) = (w.clone(), b.clone());
    for factor in lr_factors {
        let (mut w_grad, mut b_grad) = (vec![vec![0.0; classes]; d], vec![0.0; classes]);
        for r in 0..batch {
            let z: Vec<f64> = (0..classes).map(|c| b[c] + (0..d).map(|k| x[r][k] * w[k][c]).sum::<f64>()).collect();
            let total: f64 = z.iter().map(|v| v.exp()).sum();
            for c in 0..classes {
                let delta = (z[c].exp() / total - if y[r] == c { 1.0 } else { 0.0 }) / batch as f64;
                b_grad[c] += delta;
                (0..d).for_each(|k| w_grad[k][c] += x[r][k] * delta);
            }
        }
        for c in 0..classes {
            b_buf[c] = MOMENTUM * b_buf[c] + b_grad[c];
            b[c] -= factor * lr * b_buf[c];
            for k in 0..d {
                w_buf[k][c] = MOMENTUM * w_buf[k][c] + w_grad[k][c];
                w[k][c] -= factor * lr * w_buf[k][c];
            }
        }
    }
    (w, b)
}

#[test]
fn two_momentum_steps_match_plain_sgd_per_head_and_setting() {
    let (x, y) = sgd_batch();
    let labels = Tensor::from_slice(&y.iter().map(|&c| c as i64).collect::<Vec<_>>());
    // Rates as for batches of 2560 (the grid's × 10): the largest, 1.0, moves the logits by O(1) in the first
    // step, so the second step's softmax is far from uniform.
    let mut grid = ClassifierGrid::new(2, 3, 2560, 0.0);
    let factors = [1.0, 0.5];
    for factor in factors {
        grid.step(&tensor(&x), &labels, factor);
    }
    for (s, heads) in read_back(&grid).iter().enumerate() {
        let columns = FeatureSetting::ALL[s].columns(2);
        let x_s: Vec<Vec<f64>> = x.iter().map(|row| row[columns.clone()].to_vec()).collect();
        for (h, (bias, weight)) in heads.iter().enumerate() {
            let lr = BASE_LRS[h] * 10.0;
            let (w, b) = reference_sgd(&x_s, &y, 3, lr, &factors);
            for c in 0..3 {
                assert_close(bias[c], b[c], lr, &format!("setting {s} head {h} bias {c}"));
                for (j, k) in columns.clone().enumerate() {
                    assert_close(weight[k][c], w[j][c], lr, &format!("setting {s} head {h} weight {k},{c}"));
                }
            }
        }
    }
}

/// Three classes of 16 px stripes, `train` and `val` images each, ImageNet layout.
fn make_dataset(root: &Path, train: u32, val: u32) {
    let classes = ["c0_horizontal", "c1_vertical", "c2_diagonal"];
    for (split, count) in [("train", train), ("val", val)] {
        for (c, class) in classes.iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                stripes(c, i, 16).save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
    let labels: String = classes.iter().map(|c| format!("{c},{}\n", c.replace('_', " "))).collect();
    std::fs::write(root.join("labels.txt"), labels).unwrap();
}

/// A run of the tiny config with 4 blocks (at initialisation) and two of its sub-networks lowered: one returning
/// the class token, one `last4`.
struct Models {
    run: PathBuf,
    cls: PathBuf,
    last4: PathBuf,
}

fn models(dir: &Path, data: &Path) -> Models {
    let run = dir.join("run");
    let config = tiny_config();
    ok(&["pretrain", "--config", s(&config), "--data", s(data), "--output", s(&run), "--max-iters", "0", "--set", "student.max_depth=4"]);
    let (cls, last4) = (dir.join("cls.onnx"), dir.join("last4.onnx"));
    ok(&["lower", s(&run), "--width", "0.5", "--depth", "4", "-o", s(&cls)]);
    ok(&["lower", s(&run), "--width", "0.5", "--depth", "4", "--output", "last4", "-o", s(&last4)]);
    Models { run, cls, last4 }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn cache_files(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("extra/features")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn linear_probe_on_both_runtimes_caches_features_and_records_results() {
    let dir = temp("linear-e2e");
    let data = dir.join("data");
    make_dataset(&data, 12, 6);
    let m = models(&dir, &data);
    let linear = |runtime: &str, extra: &[&str]| {
        let mut args = vec!["eval", "linear", "--model", s(&m.last4), "--data", s(&data), "--runtime", runtime, "--epochs", "20"];
        args.extend_from_slice(extra);
        poac(&args)
    };

    let record = dir.join("records/results.jsonl");
    let first = linear("ort", &["--json", "--record", s(&record)]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let report = json(&String::from_utf8_lossy(&first.stdout));
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 52);
    for (i, r) in results.iter().enumerate() {
        let setting = FeatureSetting::ALL[i / 13];
        assert_eq!((r["n_blocks"].as_u64().unwrap() as usize, r["avgpool"].as_bool().unwrap()), (setting.n_blocks, setting.avgpool));
        assert_eq!(r["lr"].as_f64().unwrap(), BASE_LRS[i % 13], "batch 256 keeps the grid's rates");
        // An accuracy over the 18 validation images.
        let correct = r["top1"].as_f64().unwrap() * 18.0;
        assert!((correct - correct.round()).abs() < 1e-9 && (0.0..=18.0).contains(&correct), "{r}");
    }
    let best = results.iter().map(|r| r["top1"].as_f64().unwrap()).fold(0.0, f64::max);
    assert_eq!(report["top1"].as_f64().unwrap(), best);
    assert_eq!(report["best"]["top1"].as_f64().unwrap(), best);
    assert_eq!((report["train_images"].as_u64(), report["val_images"].as_u64(), report["classes"].as_u64()), (Some(36), Some(18), Some(3)));
    assert_eq!((report["width"].as_u64(), report["depth"].as_u64(), report["runtime"].as_str()), (Some(16), Some(4), Some("ort")));
    assert_eq!((report["epochs"].as_u64(), report["iterations"].as_u64()), (Some(20), Some(20)), "36 images make one batch of 256");
    let checkpoint = std::fs::canonicalize(m.run.join("checkpoint")).unwrap();
    assert_eq!(report["source_checkpoint"].as_str(), checkpoint.to_str());

    // The features were cached under the model's SHA-256; the next call reads them and gives the same results.
    let digest: String = Sha256::digest(std::fs::read(&m.last4).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
    let files = cache_files(&data);
    assert_eq!(files.len(), 2, "{files:?}");
    for (file, split) in files.iter().zip(["train", "val"]) {
        assert!(file.starts_with(&format!("{}-ort-{split}-all-", &digest[..16])) && file.ends_with(".safetensors"), "{file}");
    }
    let again = linear("ort", &["--json"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("train features: cached in"), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(json(&String::from_utf8_lossy(&again.stdout))["results"], report["results"]);

    // tract extracts its own features; they match ort's.
    let tract = linear("tract", &["--json"]);
    assert!(tract.status.success(), "{}", String::from_utf8_lossy(&tract.stderr));
    assert_eq!(json(&String::from_utf8_lossy(&tract.stdout))["runtime"], "tract");
    let files = cache_files(&data);
    assert_eq!(files.len(), 4, "{files:?}");
    let features = |file: &str| Tensor::read_safetensors(data.join("extra/features").join(file)).unwrap().into_iter().find(|(n, _)| n == "features").unwrap().1;
    for split in ["train", "val"] {
        let pick = |runtime: &str| files.iter().find(|f| f.contains(&format!("-{runtime}-{split}-"))).unwrap().clone();
        let (ort, tract) = (features(&pick("ort")), features(&pick("tract")));
        assert_eq!(ort.size(), [if split == "train" { 36 } else { 18 }, 80]);
        let diff = (ort - tract).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{split}: ort and tract features differ by {diff}");
    }

    // Another batch size scales the grid's learning rates by it / 256; the table names the best classifier.
    let small_batches = json(&ok(&["eval", "linear", "--model", s(&m.last4), "--data", s(&data), "--epochs", "2", "--batch-size", "8", "--json"]));
    assert_eq!(small_batches["iterations"].as_u64(), Some(10), "2 epochs of ⌈36 / 8⌉ batches");
    for (i, r) in small_batches["results"].as_array().unwrap().iter().enumerate() {
        assert!((r["lr"].as_f64().unwrap() - BASE_LRS[i % 13] * 8.0 / 256.0).abs() < 1e-15, "{r}");
    }
    let table = ok(&["eval", "linear", "--model", s(&m.last4), "--data", s(&data), "--epochs", "2"]);
    assert!(table.contains("best:") && table.contains("last 4 blocks + avgpool") && table.contains("last 1 block "), "{table}");

    // k-NN records to the same file: one line per evaluation, tagged, with the model's metadata.
    ok(&["eval", "knn", "--model", s(&m.cls), "--data", s(&data), "--record", s(&record)]);
    let lines: Vec<Value> = std::fs::read_to_string(&record).unwrap().lines().map(json).collect();
    assert_eq!(lines.len(), 2);
    let (linear_line, knn_line) = (&lines[0], &lines[1]);
    assert_eq!(linear_line["eval"], "linear");
    assert_eq!(linear_line["top1"], report["top1"]);
    assert_eq!(linear_line["results"], report["results"]);
    assert_eq!(knn_line["eval"], "knn");
    assert_eq!(knn_line["top1_k20"], knn_line["top1"]["20"]);
    for line in &lines {
        assert_eq!((line["width"].as_u64(), line["depth"].as_u64(), line["runtime"].as_str()), (Some(16), Some(4), Some("ort")));
        assert_eq!((line["train_images"].as_u64(), line["val_images"].as_u64()), (Some(36), Some(18)));
        assert_eq!(line["source_checkpoint"].as_str(), checkpoint.to_str());
        assert!(line["params"].as_u64().unwrap() > 0 && line["flops"].as_u64().unwrap() > 0, "{line}");
    }
    assert_eq!(knn_line["model"].as_str(), Some(s(&m.cls)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = temp("linear-bad");
    let data = dir.join("data");
    make_dataset(&data, 4, 2);
    let m = models(&dir, &data);
    let linear = |data: &Path, model: &Path, extra: &[&str]| {
        let mut args = vec!["eval", "linear", "--model", s(model), "--data", s(data), "--runtime", "tract", "--epochs", "1"];
        args.extend_from_slice(extra);
        fails(&args)
    };

    // A model lowered without --output last4 says how to lower it.
    let err = linear(&data, &m.cls, &[]);
    assert!(err.contains("returns `cls` features") && err.contains("--output last4"), "{err}");
    // An empty selection of validation images, and no epochs.
    let err = linear(&data, &m.last4, &["--val-limit", "0"]);
    assert!(err.contains("validation images") && err.contains("select 12 and 0"), "{err}");
    let err = linear(&data, &m.last4, &["--epochs", "0"]);
    assert!(err.contains("--epochs"), "{err}");

    // Data roots whose splits differ, each freshly indexed: no val/, an empty val/, a val/ class train/ lacks,
    // a train/ class val/ lacks.
    let variant = |name: &str, edit: &dyn Fn(&Path)| {
        let root = dir.join(name);
        make_dataset(&root, 4, 2);
        edit(&root);
        root
    };
    let no_val = variant("no-val", &|r| std::fs::remove_dir_all(r.join("val")).unwrap());
    assert!(linear(&no_val, &m.last4, &[]).contains("has no val/ folder"));
    let empty_val = variant("empty-val", &|r| {
        std::fs::remove_dir_all(r.join("val")).unwrap();
        std::fs::create_dir(r.join("val")).unwrap();
    });
    let err = linear(&empty_val, &m.last4, &[]);
    assert!(err.contains("holds no class folders: the validation split is empty"), "{err}");
    let extra_val = variant("extra-val", &|r| {
        std::fs::create_dir(r.join("val/c3_extra")).unwrap();
        stripes(0, 0, 16).save(r.join("val/c3_extra/0.png")).unwrap();
    });
    let err = linear(&extra_val, &m.last4, &[]);
    assert!(err.contains("c3_extra is not a class of train/"), "{err}");
    let missing_val = variant("missing-val", &|r| std::fs::remove_dir_all(r.join("val/c2_diagonal")).unwrap());
    let err = linear(&missing_val, &m.last4, &[]);
    assert!(err.contains(&format!("{} is missing", missing_val.join("val/c2_diagonal").display())), "{err}");

    // An index written before a class's images went away: the probe names the class and where it is missing.
    for (split, class, counts) in [("val", "c2_diagonal", "has 4 train and 0 val images"), ("train", "c1_vertical", "has 0 train and 2 val images")] {
        let stale = variant(&format!("stale-{split}"), &|_| {});
        ok(&["data", "index", s(&stale)]);
        std::fs::remove_dir_all(stale.join(split).join(class)).unwrap();
        let err = linear(&stale, &m.last4, &[]);
        assert!(err.contains(&format!("(folder {class}) {counts}")) && err.contains("do not hold the same classes"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
