//! Fine-tuning: the stand-alone sub-network computes what the elastic one does and holds the sliced,
//! α-scaled weights of the blocks the depth keeps, renamed `blocks.0..D`, which layer-wise lr decay then groups
//! by their new indices (a hand-derived table); `poac eval finetune` end to end on a tiny pre-trained run, its
//! ONNX logits on ONNX Runtime and tract against a libtorch forward of the written checkpoint, and its accuracy
//! through ONNX Runtime against libtorch's; and a clear error, never a panic, for each kind of bad input.

mod common;

use common::{fails, ok, stripes, temp, tiny_config};
use poac::data::augment::{MEAN, STD};
use poac::data::loader::EvalBatches;
use poac::data::{DatasetIndex, Split};
use poac::eval::finetune::classifier::{standalone, Classifier};
use poac::lower::Source;
use poac::model::ElasticVit;
use poac::runtime::RuntimeKind;
use poac::train::checkpoint::{self, Progress};
use poac_ir::{build::supergraph, SubnetSpec, VitArch};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Widths 4, 8, 12 (head_dim 4), depths 1..=4, 8 px images in 4 px patches.
fn tiny_arch() -> VitArch {
    VitArch { img_size: 8, patch_size: 4, head_dim: 4, min_embed_dim: 4, max_embed_dim: 12, min_depth: 1, max_depth: 4, ..VitArch::default() }
}

/// A checkpoint of the tiny ViT in `dir` with random weights at trained scale (so every parameter matters).
fn random_run(dir: &Path) -> ElasticVit {
    let graph = supergraph(&tiny_arch()).unwrap();
    tch::manual_seed(3);
    let fresh = ElasticVit::new(graph.clone(), Device::Cpu);
    let named = fresh.named_params().into_iter().map(|(name, t)| (name, Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.3)).collect();
    let model = ElasticVit::from_named(graph, named).unwrap();
    let progress = Progress::fresh(0, 1);
    checkpoint::save(dir, model.graph(), &model.named_params(), &[], &progress).unwrap();
    model
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

#[test]
fn the_standalone_subnetwork_is_the_elastic_one_renamed() {
    let dir = temp("ft-standalone");
    let model = random_run(&dir);
    let source = Source::open(&dir).unwrap();
    // Width 8 of 12 (α = 1.5), depth 2 of 4: blocks floor(linspace(0, 3, 2)) = 0 and 3, renamed 0 and 1.
    let subnet = SubnetSpec { width: 8, depth: 2 };
    let (graph, named) = standalone(&source.supergraph, &source.weights, subnet).unwrap();
    assert_eq!((graph.space.widths.clone(), graph.space.depths.clone()), (vec![8], vec![2]));
    assert!(named.keys().all(|k| !k.starts_with("blocks.2.") && !k.starts_with("blocks.3.")), "{:?}", named.keys());
    let full: HashMap<String, Tensor> = model.named_params().into_iter().map(|(k, t)| (k, t.shallow_clone())).collect();
    // qkv: the first 8 rows of each of q, k, v (of 12 each), the first 8 columns, times α.
    let qkv = &full["blocks.3.attn.qkv.weight"];
    let rows = Tensor::cat(&[qkv.narrow(0, 0, 8), qkv.narrow(0, 12, 8), qkv.narrow(0, 24, 8)], 0).narrow(1, 0, 8) * 1.5;
    assert!(max_abs_diff(&named["blocks.1.attn.qkv.weight"], &rows) < 1e-6);
    // fc2 reads the 32 of 48 hidden channels: α = 48 / 32; a gamma is sliced, never scaled.
    let fc2 = full["blocks.0.mlp.fc2.weight"].narrow(0, 0, 8).narrow(1, 0, 32) * 1.5;
    assert!(max_abs_diff(&named["blocks.0.mlp.fc2.weight"], &fc2) < 1e-6);
    assert!(max_abs_diff(&named["blocks.1.ls2.gamma"], &full["blocks.3.ls2.gamma"].narrow(0, 0, 8)) < 1e-7);
    assert!(max_abs_diff(&named["pos_embed"], &full["pos_embed"].narrow(2, 0, 8)) < 1e-7);

    let images = Tensor::randn([3, 3, 8, 8], (Kind::Float, Device::Cpu));
    let alone = ElasticVit::from_named(graph, named).unwrap();
    let (got, want) = tch::no_grad(|| (alone.forward(&images, SubnetSpec { width: 8, depth: 2 }, None), model.forward(&images, subnet, None)));
    let err = max_abs_diff(&got, &want);
    assert!(err < 1e-5, "the stand-alone sub-network differs from the elastic one by {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn layerwise_decay_groups_the_finetuned_blocks_by_their_new_index() {
    let dir = temp("ft-groups");
    random_run(&dir);
    let source = Source::open(&dir).unwrap();
    let model = Classifier::from_source(&source, SubnetSpec { width: 8, depth: 2 }, 5, Device::Cpu).unwrap();
    let groups: HashMap<String, (f64, bool)> =
        model.named_params().iter().zip(model.param_groups(0.5)).map(|((name, _), g)| (name.clone(), (g.lr_mult, g.decay))).collect();
    // D = 2, rate 0.5: embeddings 0.5³, block 0 (source block 0) 0.5², block 1 (source block 3) 0.5¹, the final
    // norm and the classifier 1 — under the source's names block 3 would get 0.5^(2 − 3) = 2.
    let table: [(&str, f64, bool); 11] = [
        ("patch_embed.proj.weight", 0.125, true),
        ("patch_embed.proj.bias", 0.125, false),
        ("cls_token", 0.125, true),
        ("pos_embed", 0.125, true),
        ("blocks.0.attn.qkv.weight", 0.25, true),
        ("blocks.0.norm1.weight", 0.25, false),
        ("blocks.1.mlp.fc2.weight", 0.5, true),
        ("blocks.1.ls2.gamma", 0.5, false),
        ("norm.weight", 1.0, false),
        ("head.weight", 1.0, true),
        ("head.bias", 1.0, false),
    ];
    for (name, lr_mult, decay) in table {
        let (got_lr, got_decay) = groups[name];
        assert!((got_lr - lr_mult).abs() < 1e-12 && got_decay == decay, "{name}: lr × {got_lr}, decay {got_decay}");
    }
    assert!(groups.values().all(|(lr, _)| *lr <= 1.0));
    let head = model.named_params().into_iter().find(|(n, _)| n == "head.weight").unwrap().1.size();
    assert_eq!(head, [5, 8]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Three classes of 20 px stripes: 16 training and 6 validation images each.
fn make_dataset(root: &Path) {
    for (split, count) in [("train", 16), ("val", 6)] {
        for class in 0..3 {
            let dir = root.join(split).join(format!("c{class}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                stripes(class, i, 20).save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::try_from(t.flatten(0, -1)).unwrap()
}

#[test]
fn finetune_exports_logits_that_ort_and_tract_reproduce() {
    let dir = temp("ft-e2e");
    let data = dir.join("data");
    make_dataset(&data);
    let (run, out, record) = (dir.join("run"), dir.join("ft"), dir.join("records/eval.jsonl"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(&["pretrain", "--config", &s(&tiny_config()), "--data", &s(&data), "--output", &s(&run), "--max-iters", "2"]);
    let args = ["eval", "finetune", &s(&run), "--width", "16", "--depth", "2", "--data", &s(&data), "--epochs", "1", "--output", &s(&out)];
    // Every augmentation on (the defaults leave RandAugment and the crop off), every batch mixed.
    let recipe = ["--set", "batch_size=8", "--set", "rand_augment_ops=2", "--set", "scale=[0.5, 1.0]", "--set", "mixup_prob=1"];
    let json = ok(&[&args[..], &recipe, &["--json", "--record", &s(&record)][..]].concat());
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!((report["width"].as_u64(), report["depth"].as_u64(), report["classes"].as_u64()), (Some(16), Some(2), Some(3)));
    assert_eq!((report["train_images"].as_u64(), report["val_images"].as_u64(), report["epochs"].as_u64()), (Some(48), Some(18), Some(1)));
    let lines: Vec<Value> = std::fs::read_to_string(&record).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!((lines[0]["eval"].as_str(), &lines[0]["top1_ort"]), (Some("finetune"), &report["top1_ort"]));
    let source = std::fs::canonicalize(run.join("checkpoint")).unwrap();
    assert_eq!((lines[0]["runtime"].as_str(), lines[0]["source_checkpoint"].as_str()), (Some("ort"), source.to_str()));

    // libtorch logits of the written checkpoint, independently of the command: backbone, class token, head.
    let ckpt = out.join("checkpoint");
    let graph = checkpoint::read_graph(&ckpt).unwrap();
    let mut weights: HashMap<String, Tensor> = Tensor::read_safetensors(ckpt.join(checkpoint::TEACHER)).unwrap().into_iter().collect();
    let (head_w, head_b) = (weights.remove("head.weight").unwrap(), weights.remove("head.bias").unwrap());
    assert_eq!(head_w.size(), [3, 16]);
    let backbone = ElasticVit::from_named(graph, weights).unwrap();
    let index = DatasetIndex::open(&data).unwrap();
    let (images, labels) = EvalBatches::new(index.root(), index.balanced(Split::Val, None), 16, MEAN, STD).load_all();
    let tch_logits = tch::no_grad(|| backbone.forward(&images, SubnetSpec { width: 16, depth: 2 }, None).select(1, 0).linear(&head_w, Some(&head_b)));
    let accuracy = |logits: &Tensor| logits.argmax(-1, false).eq_tensor(&labels).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);

    let model = out.join("model.onnx");
    for runtime in [RuntimeKind::Ort, RuntimeKind::Tract] {
        let (shape, got) = runtime.open(&model).unwrap().run(&values(&images), [18, 3, 16, 16]).unwrap();
        assert_eq!(shape, [18, 3], "{} output shape", runtime.name());
        let got = Tensor::from_slice(&got).view([18, 3]);
        let err = max_abs_diff(&got, &tch_logits);
        assert!(err <= 1e-4, "{} logits differ from libtorch's by {err}", runtime.name());
        assert_eq!(accuracy(&got), accuracy(&tch_logits), "{} and libtorch predict differently", runtime.name());
        if runtime == RuntimeKind::Ort {
            assert_eq!(report["top1_ort"].as_f64().unwrap(), accuracy(&got));
        }
    }
    // The exported weights are the best of the model and its EMA; the command's own check agrees.
    let top1 = report["top1"].as_f64().unwrap();
    assert_eq!(top1, accuracy(&tch_logits));
    assert_eq!(top1, report["top1_model"].as_f64().unwrap().max(report["top1_ema"].as_f64().unwrap()));
    assert!(report["max_logit_error_ort"].as_f64().unwrap() <= 1e-4 && report["max_logit_error_tract"].as_f64().unwrap() <= 1e-4, "{report}");
    assert_eq!(report["ort_tch_disagreements"].as_i64(), Some(0));

    // The output is a run folder `poac lower` takes: with the head it writes the same model again.
    let again = dir.join("again.onnx");
    ok(&["lower", &s(&out), "--with-head", "-o", &s(&again)]);
    assert!(std::fs::read(&again).unwrap() == std::fs::read(&model).unwrap(), "poac lower of the fine-tuned folder gives another model");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_finetune_input_is_a_clear_error() {
    let dir = temp("ft-bad");
    let data = dir.join("data");
    make_dataset(&data);
    let run = dir.join("run");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(&["pretrain", "--config", &s(&tiny_config()), "--data", &s(&data), "--output", &s(&run), "--max-iters", "0"]);
    let finetune = |run: &Path, data: &Path, extra: &[&str]| {
        let args = ["eval", "finetune", &s(run), "--data", &s(data), "--epochs", "1", "--output", &s(&dir.join("out"))];
        fails(&[&args[..], extra].concat())
    };
    // Sub-networks outside the elastic space: the valid choices are listed.
    let err = finetune(&run, &data, &["--width", "20"]);
    assert!(err.contains("16, 24, 32"), "{err}");
    let err = finetune(&run, &data, &["--depth", "7"]);
    assert!(err.contains("2, 3"), "{err}");
    // No checkpoint, an unknown setting, a value out of range.
    let err = finetune(&dir.join("nope"), &data, &[]);
    assert!(err.contains("does not exist"), "{err}");
    let err = finetune(&run, &data, &["--set", "mixup_switch=1"]);
    assert!(err.contains("`mixup_switch`") && err.contains("`mixup_switch_prob`"), "{err}");
    let err = finetune(&run, &data, &["--set", "smoothing=1.5"]);
    assert!(err.contains("smoothing"), "{err}");
    // An empty validation subset, and empty validation class folders.
    let err = finetune(&run, &data, &["--val-limit", "0"]);
    assert!(err.contains("validation subset") && err.contains("empty"), "{err}");
    let empty_val = dir.join("empty-val");
    for class in ["a", "b"] {
        std::fs::create_dir_all(empty_val.join("train").join(class)).unwrap();
        std::fs::create_dir_all(empty_val.join("val").join(class)).unwrap();
        stripes(0, 0, 20).save(empty_val.join("train").join(class).join("0.png")).unwrap();
    }
    let err = finetune(&run, &empty_val, &[]);
    assert!(err.contains(&s(&empty_val.join("val/a"))) && err.contains("no images"), "{err}");
    // Train and val with different classes.
    let differ = dir.join("differ");
    for (split, class) in [("train", "a"), ("train", "b"), ("val", "a"), ("val", "z")] {
        std::fs::create_dir_all(differ.join(split).join(class)).unwrap();
        stripes(1, 0, 20).save(differ.join(split).join(class).join("0.png")).unwrap();
    }
    let err = finetune(&run, &differ, &[]);
    assert!(err.contains("is not a class of train/"), "{err}");
    assert!(!dir.join("out").join("checkpoint").exists(), "a failed fine-tune wrote a checkpoint");
    std::fs::remove_dir_all(&dir).unwrap();
}
