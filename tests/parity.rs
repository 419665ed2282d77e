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
    let dir = std::env::temp_dir().join(format!("poac-parity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
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
            let mut runtime = kind.open(&path, size as usize).unwrap();
            let (shape, got) = runtime.run(&pixels, batch as usize).unwrap();
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
    let dir = std::env::temp_dir().join(format!("poac-static-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = random_checkpoint(&dir);
    let size = model.graph().arch.img_size;
    let path = dir.join("static.onnx");
    lower(&dir, &SubnetChoice { size: Some("small".into()), ..Default::default() }, Batch::Static(2), &path, |_, _, _| {}).unwrap();
    onnx_check(&path);
    let pixels = vec![0.5f32; 2 * 3 * size * size];
    let (_, a) = RuntimeKind::Ort.open(&path, size).unwrap().run(&pixels, 2).unwrap();
    let (_, b) = RuntimeKind::Tract.open(&path, size).unwrap().run(&pixels, 2).unwrap();
    assert!(max_abs_diff(&a, &b) <= TOLERANCE);
    std::fs::remove_dir_all(&dir).unwrap();
}
