//! Lowering is exact: for sub-networks of an elastic ViT with random (non-trivial) weights, the ONNX model on
//! ONNX Runtime and on tract matches the libtorch forward of the same sub-network (max abs error ≤ 1e-4, f32),
//! and `onnx.checker.check_model(full_check=True)` accepts every file.

use poac::config::Config;
use poac::lower::{lower, SubnetChoice};
use poac::model::ElasticVit;
use poac::runtime::RuntimeKind;
use poac::train::checkpoint::{self, Progress};
use poac_ir::{build::supergraph, SubnetSpec, WidthChoice};
use poac_passes::onnx::Batch;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f32 = 1e-4;

/// A checkpoint of the default Fashion-MNIST architecture whose every parameter is random at the scale of trained
/// weights (LayerScale gammas O(0.3) instead of 1e-5), so that every op of every kept block changes the output.
fn random_checkpoint(dir: &Path) -> ElasticVit {
    let config = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/fashion_mnist_vit.yaml")).unwrap();
    let graph = supergraph(&config.arch()).unwrap();
    tch::manual_seed(7);
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
    let model = ElasticVit::from_named(graph, named).unwrap();
    let progress = Progress { iteration: 0, total_iters: 0, adam_step: 0, seed: 7, elapsed_s: 0.0 };
    checkpoint::save(dir, model.graph(), &model.named_params(), &[], &progress).unwrap();
    model
}

/// An empty folder of the temporary directory, unique to this test process.
fn fresh_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("poac-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn onnx_check(model: &Path) {
    let python = option_env!("POAC_PYTHON").map(PathBuf::from).unwrap_or_else(|| "python3".into());
    let script = "import sys, onnx; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True); print('ok')";
    let out = Command::new(&python).args(["-c", script]).arg(model).output().expect("run the onnx checker (shells/setup.sh installs it)");
    assert!(out.status.success(), "onnx.checker rejects {}: {}", model.display(), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn lowered_subnetworks_match_libtorch_on_ort_and_tract() {
    let dir = fresh_dir("parity");
    let model = random_checkpoint(&dir);
    let space = model.graph().space.clone();
    let size = model.graph().arch.img_size as i64;
    let middle = SubnetSpec { width: space.widths[space.widths.len() / 2], depth: space.depths[space.depths.len() / 2] };
    let batch = 3;
    let images = Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu));
    let pixels: Vec<f32> = Vec::try_from(images.flatten(0, -1)).unwrap();

    for subnet in [space.smallest(), middle, space.intact()] {
        let path = dir.join(format!("{subnet}.onnx"));
        let choice = SubnetChoice { size: None, width: Some(WidthChoice::Absolute(subnet.width)), depth: Some(subnet.depth) };
        let lowered = lower(&dir, &choice, Batch::Dynamic, &path, |_, _, _| {}).unwrap();
        assert_eq!((lowered.width, lowered.depth), (subnet.width, subnet.depth));
        onnx_check(&path);

        let expected: Vec<f32> = Vec::try_from(tch::no_grad(|| model.forward(&images, subnet, None)).select(1, 0).flatten(0, -1)).unwrap();
        for kind in [RuntimeKind::Ort, RuntimeKind::Tract] {
            let mut runtime = kind.open(&path).unwrap();
            let (shape, got) = runtime.run(&pixels, [batch as usize, 3, size as usize, size as usize]).unwrap();
            assert_eq!(shape, vec![batch as usize, subnet.width]);
            let err = max_abs_diff(&got, &expected);
            eprintln!("{subnet} on {}: max abs error {err:.2e}", kind.name());
            assert!(err <= TOLERANCE, "{subnet} on {}: max abs error {err} > {TOLERANCE}", kind.name());
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn static_batch_models_run_on_both_runtimes() {
    let dir = fresh_dir("static");
    let model = random_checkpoint(&dir);
    let size = model.graph().arch.img_size;
    let path = dir.join("static.onnx");
    lower(&dir, &SubnetChoice { size: Some("small".into()), ..Default::default() }, Batch::Static(2), &path, |_, _, _| {}).unwrap();
    onnx_check(&path);
    let pixels = vec![0.5f32; 2 * 3 * size * size];
    let (_, a) = RuntimeKind::Ort.open(&path).unwrap().run(&pixels, [2, 3, size, size]).unwrap();
    let (_, b) = RuntimeKind::Tract.open(&path).unwrap().run(&pixels, [2, 3, size, size]).unwrap();
    assert!(max_abs_diff(&a, &b) <= TOLERANCE);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The elastic forward at a sub-network equals a ViT written out by hand from POA_SPEC §3 — first channels of
/// every axis, the first `w` rows of each of q, k and v, inputs scaled by α = W / w, blocks
/// floor(i·(L−1)/(d−1)) — on the full stored tensors: an oracle independent of the `specialise` pass.
#[test]
fn elastic_forward_matches_a_hand_sliced_vit() {
    let dir = fresh_dir("hand");
    let model = random_checkpoint(&dir);
    let arch = model.graph().arch.clone();
    let weights: std::collections::HashMap<String, Tensor> = model.named_params().into_iter().map(|(k, t)| (k, t.shallow_clone())).collect();
    let get = |k: &str| weights[k].shallow_clone();
    let (max_w, max_d) = (arch.max_embed_dim as i64, arch.max_depth as i64);
    let images = Tensor::randn([2, 3, arch.img_size as i64, arch.img_size as i64], (Kind::Float, Device::Cpu));

    for (w, d) in [(96i64, 5i64), (128, 7), (64, 8)] {
        let alpha = max_w as f64 / w as f64;
        let first = |t: Tensor, axis: i64, n: i64| t.narrow(axis, 0, n);
        let rows_of_qkv = |t: Tensor| Tensor::cat(&[t.narrow(0, 0, w), t.narrow(0, max_w, w), t.narrow(0, 2 * max_w, w)], 0);
        let linear = |x: &Tensor, weight: Tensor, bias: Tensor| (x * alpha).linear(&weight, Some(bias));
        let norm = |x: &Tensor, key: &str| x.layer_norm([w], Some(first(get(&format!("{key}.weight")), 0, w)), Some(first(get(&format!("{key}.bias")), 0, w)), 1e-6, false);
        let p = arch.patch_size as i64;
        let patches = images.conv2d(&first(get("patch_embed.proj.weight"), 0, w), Some(first(get("patch_embed.proj.bias"), 0, w)), [p, p], [0, 0], [1, 1], 1);
        let patches = patches.flatten(2, 3).transpose(1, 2);
        let cls = first(get("cls_token"), 2, w).expand([2, 1, w], false);
        let mut x = Tensor::cat(&[cls, patches], 1) + first(get("pos_embed"), 2, w);
        for b in (0..d).map(|i| i * (max_d - 1) / (d - 1)) {
            let key = |k: &str| format!("blocks.{b}.{k}");
            let h = norm(&x, &key("norm1"));
            let qkv_w = first(rows_of_qkv(get(&key("attn.qkv.weight"))), 1, w);
            let qkv = linear(&h, qkv_w, rows_of_qkv(get(&key("attn.qkv.bias"))));
            let (n, t, hd) = (2, qkv.size()[1], arch.head_dim as i64);
            let qkv = qkv.view([n, t, 3, w / hd, hd]).permute([2, 0, 3, 1, 4]);
            let scores = (qkv.get(0) * (hd as f64).powf(-0.5)).matmul(&qkv.get(1).transpose(-2, -1)).softmax(-1, Kind::Float);
            let attended = scores.matmul(&qkv.get(2)).transpose(1, 2).reshape([n, t, w]);
            let proj = linear(&attended, first(first(get(&key("attn.proj.weight")), 0, w), 1, w), first(get(&key("attn.proj.bias")), 0, w));
            x = &x + first(get(&key("ls1.gamma")), 0, w) * proj;
            let h = norm(&x, &key("norm2"));
            let hidden = linear(&h, first(first(get(&key("mlp.fc1.weight")), 0, 4 * w), 1, w), first(get(&key("mlp.fc1.bias")), 0, 4 * w)).gelu("none");
            let out = linear(&hidden, first(first(get(&key("mlp.fc2.weight")), 0, w), 1, 4 * w), first(get(&key("mlp.fc2.bias")), 0, w));
            x = &x + first(get(&key("ls2.gamma")), 0, w) * out;
        }
        let expected: Vec<f32> = Vec::try_from(norm(&x, "norm").select(1, 0).flatten(0, -1)).unwrap();
        let subnet = SubnetSpec { width: w as usize, depth: d as usize };
        let got: Vec<f32> = Vec::try_from(tch::no_grad(|| model.forward(&images, subnet, None)).select(1, 0).flatten(0, -1)).unwrap();
        let err = max_abs_diff(&got, &expected);
        assert!(err <= 1e-5, "{subnet}: elastic forward differs from the hand-sliced ViT by {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
