//! Lowering is exact: every sub-network of two elastic ViTs with random (non-trivial) weights, lowered to ONNX,
//! runs on ONNX Runtime and on tract with the libtorch forward's result (max abs error ≤ 1e-4, f32), and
//! `onnx.checker.check_model(full_check=True)` accepts every file. Each `--output`, `--with-head` and
//! `--bake-normalize` is checked against a ViT written out by hand from POA_SPEC §3.

use poac::config::Config;
use poac::lower::{lower, LowerOptions, SubnetChoice};
use poac::model::ElasticVit;
use poac::runtime::RuntimeKind;
use poac::train::checkpoint::{self, Progress};
use poac_ir::{build::supergraph, SubnetSpec, VitArch, WidthChoice};
use poac_passes::onnx::Batch;
use poac_passes::OutputKind;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f32 = 1e-4;
const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const STD: [f64; 3] = [0.229, 0.224, 0.225];

fn config(relative: &str) -> Config {
    Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)).unwrap()
}

/// Random parameters at the scale of trained weights (LayerScale gammas O(0.3) instead of 1e-5, norms around
/// 1), so that every op of every kept block changes the output.
fn random_model(arch: &VitArch, seed: i64) -> ElasticVit {
    let graph = supergraph(arch).unwrap();
    tch::manual_seed(seed);
    let fresh = ElasticVit::new(graph.clone(), Device::Cpu);
    let named = fresh
        .named_params()
        .into_iter()
        .map(|(name, t)| {
            let size = t.size();
            let noise = Tensor::randn(&size, (Kind::Float, Device::Cpu));
            let value = if name.contains("norm") && name.ends_with("weight") {
                noise * 0.2 + 1.0
            } else if size.len() >= 2 && name.ends_with("weight") {
                // Kaiming-like scale: what trained weights look like, so activations stay O(1).
                let fan_in: i64 = size[1..].iter().product();
                noise / (fan_in as f64).sqrt()
            } else {
                noise * 0.3
            };
            (name, value)
        })
        .collect();
    ElasticVit::from_named(graph, named).unwrap()
}

/// Writes `model` (plus `extra` tensors such as a classifier head) as the checkpoint of run `dir`.
fn save(dir: &Path, model: &ElasticVit, extra: &[(String, &Tensor)]) {
    let progress = Progress::fresh(7, 1);
    let mut teacher = model.named_params();
    teacher.extend(extra.iter().map(|(k, t)| (k.clone(), *t)));
    checkpoint::save(dir, model.graph(), &teacher, &[], &progress).unwrap();
}

/// An empty folder of the temporary directory, unique to this test process.
fn fresh_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("poac-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::try_from(t.flatten(0, -1)).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `onnx.checker.check_model(full_check=True)` on every file, in one python process.
fn onnx_check(models: &[PathBuf]) {
    let python = option_env!("POAC_PYTHON").map(PathBuf::from).unwrap_or_else(|| "python3".into());
    let script = "import sys, onnx\nfor p in sys.argv[1:]:\n    onnx.checker.check_model(onnx.load(p), full_check=True)\nprint(len(sys.argv) - 1)";
    let out = Command::new(&python).args(["-c", script]).args(models).output().expect("run the onnx checker (shells/setup.sh installs it)");
    assert!(out.status.success(), "onnx.checker rejects a model: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), models.len().to_string());
}

fn choice(subnet: SubnetSpec) -> SubnetChoice {
    SubnetChoice { width: Some(WidthChoice::Absolute(subnet.width)), depth: Some(subnet.depth), ..Default::default() }
}

/// Runs `model` on `pixels` `[n, 3, s, s]` on one runtime; returns its output shape and values.
fn run(kind: RuntimeKind, model: &Path, pixels: &[f32], n: usize, s: usize) -> (Vec<usize>, Vec<f32>) {
    kind.open(model).unwrap().run(pixels, [n, 3, s, s]).unwrap()
}

/// Largest error of ort and of tract against `expected`, checking the output shape.
fn errors(model: &Path, pixels: &[f32], n: usize, s: usize, expected: &Tensor) -> [f32; 2] {
    let want: Vec<usize> = expected.size().iter().map(|&d| d as usize).collect();
    [RuntimeKind::Ort, RuntimeKind::Tract].map(|kind| {
        let (shape, got) = run(kind, model, pixels, n, s);
        assert_eq!(shape, want, "{} output shape of {}", kind.name(), model.display());
        max_abs_diff(&got, &values(expected))
    })
}

#[test]
fn every_subnetwork_matches_libtorch_on_ort_and_tract() {
    let dir = fresh_dir("parity-all");
    let mut files = Vec::new();
    for (tag, relative) in [("default", "configs/fashion_mnist_vit.yaml"), ("alt", "tests/data/parity_alt.yaml")] {
        let run_dir = dir.join(tag);
        let model = random_model(&config(relative).arch(), 7);
        save(&run_dir, &model, &[]);
        let space = model.graph().space.clone();
        let size = model.graph().arch.img_size;
        let batch = 2;
        let images = Tensor::randn([batch as i64, 3, size as i64, size as i64], (Kind::Float, Device::Cpu));
        let pixels = values(&images);
        let mut worst = [0f32; 2];
        for subnet in space.subnets() {
            let path = run_dir.join(format!("{subnet}.onnx"));
            let lowered = lower(&run_dir, &choice(subnet), &LowerOptions::default(), &path, |_, _, _| {}).unwrap();
            assert_eq!((lowered.width, lowered.depth), (subnet.width, subnet.depth));
            let expected = tch::no_grad(|| model.forward(&images, subnet, None)).select(1, 0);
            let err = errors(&path, &pixels, batch, size, &expected);
            assert!(err.iter().all(|e| *e <= TOLERANCE), "{tag} {subnet}: max abs error ort {:.2e}, tract {:.2e}", err[0], err[1]);
            worst = [worst[0].max(err[0]), worst[1].max(err[1])];
            files.push(path);
        }
        // A static batch on both runtimes, for the smallest and the intact network.
        for subnet in [space.smallest(), space.intact()] {
            let path = run_dir.join(format!("{subnet}-static.onnx"));
            let options = LowerOptions { batch: Batch::Static(batch), ..Default::default() };
            lower(&run_dir, &choice(subnet), &options, &path, |_, _, _| {}).unwrap();
            let expected = tch::no_grad(|| model.forward(&images, subnet, None)).select(1, 0);
            let err = errors(&path, &pixels, batch, size, &expected);
            assert!(err.iter().all(|e| *e <= TOLERANCE), "{tag} {subnet} static: {err:?}");
            files.push(path);
        }
        eprintln!(
            "{relative}: {} sub-networks (+2 static-batch) on ort and tract, max abs error ort {:.2e}, tract {:.2e}",
            space.subnets().len(),
            worst[0],
            worst[1]
        );
    }
    onnx_check(&files);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The residual stream after each kept block of sub-network (w, d), by hand from POA_SPEC §3 — first channels of
/// every axis, the first `w` rows of each of q, k and v, inputs scaled by α = W / w, blocks
/// floor(i·(L−1)/(d−1)) — on the full stored tensors: an oracle independent of the passes.
fn hand_vit(weights: &HashMap<String, Tensor>, arch: &VitArch, w: i64, d: i64, images: &Tensor) -> Vec<Tensor> {
    let get = |k: &str| weights[k].shallow_clone();
    let (max_w, max_d) = (arch.max_embed_dim as i64, arch.max_depth as i64);
    let n = images.size()[0];
    let alpha = max_w as f64 / w as f64;
    let first = |t: Tensor, axis: i64, len: i64| t.narrow(axis, 0, len);
    let rows_of_qkv = |t: Tensor| Tensor::cat(&[t.narrow(0, 0, w), t.narrow(0, max_w, w), t.narrow(0, 2 * max_w, w)], 0);
    let linear = |x: &Tensor, weight: Tensor, bias: Tensor| (x * alpha).linear(&weight, Some(bias));
    let p = arch.patch_size as i64;
    let patches = images.conv2d(&first(get("patch_embed.proj.weight"), 0, w), Some(first(get("patch_embed.proj.bias"), 0, w)), [p, p], [0, 0], [1, 1], 1);
    let patches = patches.flatten(2, 3).transpose(1, 2);
    let cls = first(get("cls_token"), 2, w).expand([n, 1, w], false);
    let mut x = Tensor::cat(&[cls, patches], 1) + first(get("pos_embed"), 2, w);
    let mut outputs = Vec::new();
    for b in (0..d).map(|i| if d == 1 { 0 } else { i * (max_d - 1) / (d - 1) }) {
        let key = |k: &str| format!("blocks.{b}.{k}");
        let h = norm(weights, &x, &key("norm1"), w);
        let qkv = linear(&h, first(rows_of_qkv(get(&key("attn.qkv.weight"))), 1, w), rows_of_qkv(get(&key("attn.qkv.bias"))));
        let (t, hd) = (qkv.size()[1], arch.head_dim as i64);
        let qkv = qkv.view([n, t, 3, w / hd, hd]).permute([2, 0, 3, 1, 4]);
        let scores = (qkv.get(0) * (hd as f64).powf(-0.5)).matmul(&qkv.get(1).transpose(-2, -1)).softmax(-1, Kind::Float);
        let attended = scores.matmul(&qkv.get(2)).transpose(1, 2).reshape([n, t, w]);
        let proj = linear(&attended, first(first(get(&key("attn.proj.weight")), 0, w), 1, w), first(get(&key("attn.proj.bias")), 0, w));
        x = &x + first(get(&key("ls1.gamma")), 0, w) * proj;
        let h = norm(weights, &x, &key("norm2"), w);
        let hidden = linear(&h, first(first(get(&key("mlp.fc1.weight")), 0, 4 * w), 1, w), first(get(&key("mlp.fc1.bias")), 0, 4 * w)).gelu("none");
        let out = linear(&hidden, first(first(get(&key("mlp.fc2.weight")), 0, w), 1, 4 * w), first(get(&key("mlp.fc2.bias")), 0, w));
        x = &x + first(get(&key("ls2.gamma")), 0, w) * out;
        outputs.push(x.shallow_clone());
    }
    outputs
}

/// LayerNorm over the first `w` channels with the first `w` of `key`'s weight and bias.
fn norm(weights: &HashMap<String, Tensor>, x: &Tensor, key: &str, w: i64) -> Tensor {
    let part = |k: &str| weights[&format!("{key}.{k}")].narrow(0, 0, w);
    x.layer_norm([w], Some(part("weight")), Some(part("bias")), 1e-6, false)
}

fn named(model: &ElasticVit) -> HashMap<String, Tensor> {
    model.named_params().into_iter().map(|(k, t)| (k, t.shallow_clone())).collect()
}

#[test]
fn elastic_forward_matches_a_hand_sliced_vit() {
    let arch = config("configs/fashion_mnist_vit.yaml").arch();
    let model = random_model(&arch, 7);
    let weights = named(&model);
    let images = Tensor::randn([2, 3, arch.img_size as i64, arch.img_size as i64], (Kind::Float, Device::Cpu));
    for (w, d) in [(96i64, 5i64), (128, 7), (64, 8)] {
        let last = hand_vit(&weights, &arch, w, d, &images).pop().unwrap();
        let expected = norm(&weights, &last, "norm", w);
        let subnet = SubnetSpec { width: w as usize, depth: d as usize };
        let got = tch::no_grad(|| model.forward(&images, subnet, None));
        let err = max_abs_diff(&values(&got), &values(&expected));
        assert!(err <= 1e-5, "{subnet}: elastic forward differs from the hand-sliced ViT by {err}");
    }
}

#[test]
fn outputs_head_and_baked_normalisation_match_the_hand_sliced_vit() {
    let dir = fresh_dir("parity-outputs");
    let arch = config("configs/fashion_mnist_vit.yaml").arch();
    let model = random_model(&arch, 11);
    let mut weights = named(&model);
    let (w, d, classes) = (128i64, 6i64, 10i64);
    let head_weight = Tensor::randn([classes, w], (Kind::Float, Device::Cpu)) * 0.1;
    let head_bias = Tensor::randn([classes], (Kind::Float, Device::Cpu));
    save(&dir, &model, &[("head.weight".into(), &head_weight), ("head.bias".into(), &head_bias)]);
    weights.insert("head.weight".into(), head_weight.shallow_clone());
    weights.insert("head.bias".into(), head_bias.shallow_clone());

    let (n, s) = (3usize, arch.img_size);
    let raw = Tensor::rand([n as i64, 3, s as i64, s as i64], (Kind::Float, Device::Cpu));
    let mean = Tensor::from_slice(&MEAN).to_kind(Kind::Float).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&STD).to_kind(Kind::Float).view([1, 3, 1, 1]);
    let images = (&raw - mean) / std;
    let blocks = tch::no_grad(|| hand_vit(&weights, &arch, w, d, &images));
    let normed: Vec<Tensor> = blocks.iter().map(|b| norm(&weights, b, "norm", w)).collect();
    let last = normed.last().unwrap();
    let patches = arch.num_patches() as i64;
    let cls = last.select(1, 0);
    let mut last4: Vec<Tensor> = normed[normed.len() - 4..].iter().map(|t| t.select(1, 0)).collect();
    last4.push(last.narrow(1, 1, patches).mean_dim(1, false, Kind::Float));

    let cases = [
        ("patch", LowerOptions { output: OutputKind::Patch, ..Default::default() }, last.narrow(1, 1, patches)),
        ("cls+patch", LowerOptions { output: OutputKind::ClsPatch, ..Default::default() }, last.shallow_clone()),
        ("last4", LowerOptions { output: OutputKind::Last4, ..Default::default() }, Tensor::cat(&last4, -1)),
        ("head", LowerOptions { with_head: true, ..Default::default() }, cls.linear(&head_weight, Some(&head_bias))),
        ("baked", LowerOptions { bake_normalize: true, ..Default::default() }, cls.shallow_clone()),
        ("last4+static", LowerOptions { output: OutputKind::Last4, batch: Batch::Static(n), ..Default::default() }, Tensor::cat(&last4, -1)),
    ];
    let subnet = SubnetSpec { width: w as usize, depth: d as usize };
    let mut files = Vec::new();
    for (tag, options, expected) in cases {
        let path = dir.join(format!("{tag}.onnx"));
        lower(&dir, &choice(subnet), &options, &path, |_, _, _| {}).unwrap();
        let input = if options.bake_normalize { &raw } else { &images };
        let err = errors(&path, &values(input), n, s, &expected);
        eprintln!("{tag}: max abs error ort {:.2e}, tract {:.2e}", err[0], err[1]);
        assert!(err.iter().all(|e| *e <= TOLERANCE), "{tag}: {err:?}");
        files.push(path);
    }
    onnx_check(&files);
    std::fs::remove_dir_all(&dir).unwrap();
}
