//! `poac lower`, `inspect` and `import-torch` end to end (the binary, spawned): exact initializers for a
//! hand-written state dict (checked by numpy), costs and budgets against hand-derived formulas, the IR dump, a
//! clear error — never a panic — for every kind of bad request, and imports of dinov2-style state dicts.

mod common;

use common::python;
use poac::config::Config;
use poac::model::ElasticVit;
use poac::runtime::RuntimeKind;
use poac::train::checkpoint::{self, Progress};
use poac_ir::{build::supergraph, Graph, VitArch, WeightFile, Weights};
use safetensors::{tensor::TensorView, Dtype};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::Device;

const POAC: &str = env!("CARGO_BIN_EXE_poac");

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn tiny_arch() -> VitArch {
    Config::load(&repo("tests/data/tiny.yaml")).unwrap().arch()
}

fn poac(args: &[&str]) -> Output {
    let out = Command::new(POAC).args(args).output().expect("run poac");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "poac {args:?} panicked:\n{stderr}");
    out
}

fn ok(args: &[&str]) -> String {
    let out = poac(args);
    assert!(out.status.success(), "poac {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs poac expecting failure; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = poac(args);
    assert!(!out.status.success(), "poac {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("poac-lowering-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A checkpoint of `arch` with fresh random parameters, LayerScale at the config's init.
fn random_run(dir: &Path, arch: &VitArch) -> ElasticVit {
    tch::manual_seed(3);
    let model = ElasticVit::new(supergraph(arch).unwrap(), Device::Cpu);
    let progress = Progress::fresh(3, 1);
    checkpoint::save(dir, model.graph(), &model.named_params(), &[], &progress).unwrap();
    model
}

/// Writes `tensors` (key, shape, f32 values) as a safetensors file.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views = tensors.iter().zip(&bytes).map(|((k, shape, _), b)| (k.as_str(), TensorView::new(Dtype::F32, shape.clone(), b).unwrap()));
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// The hand-written value of element `j` of the `k`-th tensor (numpy computes the same below).
fn known_value(k: usize, j: usize) -> f32 {
    ((k * 7919 + j) % 1009) as f32 / 1009.0 - 0.5
}

/// FLOPs per image of a ViT sub-network by the textbook formula: per block the four linears (qkv 3w², proj w²,
/// fc1 and fc2 4w² each, times tokens) and attention (two T×T×w products), plus the patch embedding.
fn vit_flops(arch: &VitArch, w: usize, d: usize) -> u64 {
    let patches = arch.num_patches();
    let t = patches + 1;
    let block = 2 * t * (3 * w * w + w * w + 8 * w * w) + 2 * 2 * t * t * w;
    (2 * patches * w * arch.in_chans * arch.patch_size * arch.patch_size + d * block) as u64
}

/// Parameters of a ViT sub-network by formula: patch embedding, class token, position embedding, per block two
/// norms, qkv, proj, fc1, fc2 (with biases) and two LayerScales, and the final norm.
fn vit_params(arch: &VitArch, w: usize, d: usize) -> usize {
    let p = arch.patch_size;
    let stem = w * arch.in_chans * p * p + w + w + (arch.num_patches() + 1) * w;
    let block = 4 * w + (3 * w * w + 3 * w) + (w * w + w) + (4 * w * w + 4 * w) + (4 * w * w + w) + 2 * w;
    stem + d * block + 2 * w
}

#[test]
fn initializers_equal_numpy_slices_of_a_hand_written_state_dict() {
    let dir = temp("known");
    let graph = supergraph(&tiny_arch()).unwrap();
    let width = graph.space.max_width();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = graph
        .params
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let shape = p.shape_at(width);
            let n = shape.iter().product();
            (p.name.clone(), shape, (0..n).map(|j| known_value(k, j)).collect())
        })
        .collect();
    write_safetensors(&dir.join(checkpoint::TEACHER), &tensors);
    std::fs::write(dir.join(checkpoint::SUPERGRAPH), graph.to_json()).unwrap();
    let model = dir.join("w24-d2.onnx");
    ok(&["lower", s(&dir), "--width", "24", "--depth", "2", "--bake-normalize", "-o", s(&model)]);

    // numpy rebuilds the state dict from the same rule and slices it by POA_SPEC §3 (max width 32, head_dim 8,
    // width 24, depth 2 of 3 keeps blocks 0 and 2), folds by hand, and compares every initializer.
    let names: Vec<&str> = graph.params.iter().map(|p| p.name.as_str()).collect();
    let shapes: Vec<Vec<usize>> = graph.params.iter().map(|p| p.shape_at(width)).collect();
    let script = format!(
        r#"
import sys, onnx, numpy as np
from onnx import numpy_helper
names, shapes = {names:?}, {shapes:?}
sd = {{n: (((k * 7919 + np.arange(int(np.prod(s)))) % 1009) / np.float32(1009) - np.float32(0.5)).astype(np.float32).reshape(s)
      for k, (n, s) in enumerate(zip(names, shapes))}}
W, w, hd = 32, 24, 8
alpha, mlp_alpha = W / w, (4 * W) / (4 * w)
mean = np.array([0.485, 0.456, 0.406], np.float32); std = np.array([0.229, 0.224, 0.225], np.float32)
expected = {{}}
pw = sd['patch_embed.proj.weight'][:w] / std[None, :, None, None]
expected['patch_embed.proj.weight'] = pw
expected['patch_embed.proj.bias'] = sd['patch_embed.proj.bias'][:w] - (pw * mean[None, :, None, None]).sum(axis=(1, 2, 3))
expected['cls_token'] = sd['cls_token'][..., :w]
expected['pos_embed'] = sd['pos_embed'][..., :w]
for b in (0, 2):
    k = lambda s: f'blocks.{{b}}.{{s}}'
    for n in ('norm1', 'norm2'):
        expected[k(n + '.weight')] = sd[k(n + '.weight')][:w]; expected[k(n + '.bias')] = sd[k(n + '.bias')][:w]
    rows = np.r_[0:w, W:W + w, 2 * W:2 * W + w]
    q = np.where(np.arange(3 * w) < w, hd ** -0.5, 1.0)[:, None]
    expected[k('attn.qkv.weight')] = (sd[k('attn.qkv.weight')][rows][:, :w] * alpha * q).T
    expected[k('attn.qkv.bias')] = sd[k('attn.qkv.bias')][rows] * q[:, 0]
    g1, g2 = sd[k('ls1.gamma')][:w], sd[k('ls2.gamma')][:w]
    expected[k('attn.proj.weight')] = (sd[k('attn.proj.weight')][:w, :w] * alpha * g1[:, None]).T
    expected[k('attn.proj.bias')] = sd[k('attn.proj.bias')][:w] * g1
    expected[k('mlp.fc1.weight')] = (sd[k('mlp.fc1.weight')][:4 * w, :w] * alpha).T
    expected[k('mlp.fc1.bias')] = sd[k('mlp.fc1.bias')][:4 * w]
    expected[k('mlp.fc2.weight')] = (sd[k('mlp.fc2.weight')][:w, :4 * w] * mlp_alpha * g2[:, None]).T
    expected[k('mlp.fc2.bias')] = sd[k('mlp.fc2.bias')][:w] * g2
expected['norm.weight'] = sd['norm.weight'][:w]; expected['norm.bias'] = sd['norm.bias'][:w]
got = {{t.name: numpy_helper.to_array(t) for t in onnx.load(sys.argv[1]).graph.initializer if t.name in sd}}
assert sorted(got) == sorted(expected), sorted(set(got) ^ set(expected))
for n, e in expected.items():
    assert got[n].shape == e.shape, (n, got[n].shape, e.shape)
    assert np.allclose(got[n], e, rtol=1e-6, atol=1e-6), (n, np.abs(got[n] - e).max())
print('checked', len(expected))
"#
    );
    let report = python(&script, &[s(&model)]);
    // 4 stem + 12 per kept block (norms, linears; gammas are folded) + 2 final norm: no gamma, no mask token,
    // no tensor of the dropped block.
    assert_eq!(report.trim(), format!("checked {}", 4 + 2 * 12 + 2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inspect_budgets_and_the_ir_dump() {
    let dir = temp("inspect");
    let arch = tiny_arch();
    random_run(&dir, &arch);
    let rows: serde_json::Value = serde_json::from_str(&ok(&["inspect", s(&dir), "--json"])).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 6);
    for row in rows {
        let (w, d) = (row["width"].as_u64().unwrap() as usize, row["depth"].as_u64().unwrap() as usize);
        assert_eq!(row["heads"].as_u64().unwrap() as usize, w / 8);
        assert_eq!(row["params"].as_u64().unwrap() as usize, vit_params(&arch, w, d), "w{w}-d{d}");
        assert_eq!(row["flops"].as_u64().unwrap(), vit_flops(&arch, w, d), "w{w}-d{d}");
    }
    // The ONNX size inspect computes is the size of the file lower writes.
    let model = dir.join("m.onnx");
    for (w, d) in [(16, 2), (32, 3)] {
        ok(&["lower", s(&dir), "--width", &w.to_string(), "--depth", &d.to_string(), "-o", s(&model)]);
        let row = rows.iter().find(|r| r["width"] == w && r["depth"] == d).unwrap();
        assert_eq!(row["onnx_bytes"].as_u64().unwrap(), std::fs::metadata(&model).unwrap().len());
    }

    // A budget halfway between w24-d2 and w24-d3 picks the sub-network with the most FLOPs under it (ties to the
    // deeper), found here from the formula.
    let budget = (vit_flops(&arch, 24, 2) + vit_flops(&arch, 24, 3)) / 2;
    let fits = |w: usize, d: usize| vit_flops(&arch, w, d) <= budget;
    let best = [(16, 2), (16, 3), (24, 2), (24, 3), (32, 2), (32, 3)].into_iter().filter(|&(w, d)| fits(w, d)).max_by_key(|&(w, d)| (vit_flops(&arch, w, d), d)).unwrap();
    let out = ok(&["lower", s(&dir), "--max-gflops", &format!("{}", budget as f64 / 1e9), "-o", s(&model)]);
    assert!(out.contains(&format!("picked w{}-d{}", best.0, best.1)), "{out}");
    let out = ok(&["lower", s(&dir), "--max-params", &vit_params(&arch, 24, 3).to_string(), "-o", s(&model)]);
    assert!(out.contains("picked w24-d3"), "{out}");

    // The dump shows every pass, the folds it made and the shapes it checked.
    let dump = ok(&["lower", s(&dir), "--width", "24", "--depth", "2", "--dump-ir", "-o", s(&model)]);
    for pass in ["specialise", "strip-training", "select-output", "fold-alpha", "fold-layer-scale", "fold-attention-scale", "dce"] {
        assert!(dump.contains(&format!("== after {pass} (changed) ==")), "{pass}:\n{dump}");
    }
    assert!(dump.contains("== after shape-check (no change) =="));
    assert!(dump.contains("⊙blocks.2.ls1.gamma") && dump.contains("head_dim=8 (scale folded into q)"), "{dump}");
    assert!(dump.contains("weight[72, 24]×1.3333334") && dump.contains(": [N, 17, 72]"), "{dump}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_requests_are_clear_errors() {
    let dir = temp("bad");
    let arch = tiny_arch();
    random_run(&dir, &arch);
    let model = dir.join("m.onnx");
    let lower = |extra: &[&str]| fails(&[&["lower", s(&dir), "-o", s(&model)], extra].concat());

    for width in ["20", "12"] {
        let err = lower(&["--width", width]);
        assert!(err.contains("multiples of head_dim 8") && err.contains("16, 24, 32"), "{err}");
    }
    let err = lower(&["--depth", "7"]);
    assert!(err.contains("valid depths: 2, 3"), "{err}");
    let err = lower(&["--max-gflops", "0.00001"]);
    let smallest = format!("{:.4} GFLOPs", vit_flops(&arch, 16, 2) as f64 / 1e9);
    assert!(err.contains("no sub-network fits") && err.contains("w16-d2") && err.contains(&smallest), "{err}");
    let err = lower(&["--max-params", "1k"]);
    assert!(err.contains(&format!("{} params", vit_params(&arch, 16, 2))), "{err}");
    assert!(lower(&["--max-gflops", "1", "--width", "16"]).contains("not both"));
    assert!(lower(&["--output", "last4"]).contains("at least 4 blocks; this sub-network has 3"));
    assert!(lower(&["--output", "pooled"]).contains("cls, patch, cls+patch, last4"));
    assert!(lower(&["--with-head"]).contains("no classifier head"));
    assert!(lower(&["--batch", "0"]).contains("positive batch size"));
    assert!(!model.exists());

    // Checkpoints of another architecture: a supergraph that is not poac's ViT, weights of another config, and
    // a file that is no supergraph at all.
    let graph_file = dir.join("checkpoint").join(checkpoint::SUPERGRAPH);
    let original = std::fs::read_to_string(&graph_file).unwrap();
    std::fs::write(&graph_file, original.replace("blocks.1.attn.qkv.weight", "blocks.1.attn.in_proj_weight")).unwrap();
    let err = lower(&[]);
    assert!(err.contains("not a poac elastic ViT") && err.contains("in_proj_weight"), "{err}");
    std::fs::write(&graph_file, "{\"nodes\": 3}").unwrap();
    assert!(lower(&[]).contains("not a poac supergraph"));
    std::fs::write(&graph_file, &original).unwrap();
    let other = temp("bad-other");
    random_run(&other, &Config::load(&repo("tests/data/parity_alt.yaml")).unwrap().arch());
    std::fs::copy(other.join("checkpoint").join(checkpoint::TEACHER), dir.join("checkpoint").join(checkpoint::TEACHER)).unwrap();
    let err = lower(&[]);
    assert!(err.contains("another architecture") && err.contains("`pos_embed` is [1, 10, 64], the supergraph has [1, 17, 32]"), "{err}");
    assert!(!model.exists());
    std::fs::remove_dir_all(&other).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes `src` (safetensors) as a PyTorch zip file the way `torch.save` does — without torch: the pickle names
/// `torch._utils._rebuild_tensor_v2` and `torch.FloatStorage`. `nest` wraps the state dict as dinov2 checkpoints
/// do (`{"model": OrderedDict(...), "iteration": 3}`); otherwise it is a plain dict.
fn write_pth(src: &Path, dst: &Path, nest: bool) {
    let script = r#"
import collections, io, json, pickle, struct, sys, types, zipfile
import numpy as np
src, dst, nest = sys.argv[1], sys.argv[2], sys.argv[3] == 'nest'
raw = open(src, 'rb').read(); n = struct.unpack('<Q', raw[:8])[0]
header = json.loads(raw[8:8 + n]); data = raw[8 + n:]
torch = types.ModuleType('torch'); utils = types.ModuleType('torch._utils')
sys.modules['torch'] = torch; sys.modules['torch._utils'] = utils
class FloatStorage: pass
FloatStorage.__module__ = 'torch'; torch.FloatStorage = FloatStorage
def _rebuild_tensor_v2(*a): pass
_rebuild_tensor_v2.__module__ = 'torch._utils'; utils._rebuild_tensor_v2 = _rebuild_tensor_v2
class Storage:
    def __init__(self, key, numel): self.key, self.numel = key, numel
class Tensor:
    def __init__(self, storage, shape): self.storage, self.shape = storage, shape
    def __reduce__(self):
        stride, acc = [], 1
        for d in reversed(self.shape): stride.insert(0, acc); acc *= d
        return (_rebuild_tensor_v2, (self.storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))
class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ('storage', FloatStorage, obj.key, 'cpu', obj.numel) if isinstance(obj, Storage) else None
state, blobs = (collections.OrderedDict() if nest else {}), {}
for i, (name, info) in enumerate(kv for kv in header.items() if kv[0] != '__metadata__'):
    b, e = info['data_offsets']
    blobs[str(i)] = data[b:e]
    state[name] = Tensor(Storage(str(i), (e - b) // 4), info['shape'])
buf = io.BytesIO(); Pickler(buf, protocol=2).dump({'model': state, 'iteration': 3} if nest else state)
with zipfile.ZipFile(dst, 'w', zipfile.ZIP_STORED) as z:
    z.writestr('archive/data.pkl', buf.getvalue()); z.writestr('archive/byteorder', 'little')
    for k, v in blobs.items(): z.writestr(f'archive/data/{k}', v)
    z.writestr('archive/version', '3\n')
"#;
    python(script, &[s(src), s(dst), if nest { "nest" } else { "plain" }]);
}

/// Every tensor of `graph` in two weight files, equal.
fn same_weights(graph: &Graph, a: &Path, b: &Path) {
    let (a, b) = (WeightFile::open(a).unwrap(), WeightFile::open(b).unwrap());
    for p in &graph.params {
        assert_eq!(a.gather(&p.name, &[]).unwrap(), b.gather(&p.name, &[]).unwrap(), "{}", p.name);
    }
}

#[test]
fn import_torch_reads_dinov2_style_state_dicts() {
    let dir = temp("import");
    let arch = tiny_arch();
    let reference = dir.join("reference");
    let model = random_run(&reference, &arch);
    let graph = model.graph().clone();
    let config = repo("tests/data/tiny.yaml");

    // A dinov2 meta-architecture layout: `teacher.backbone.` keys with blocks in one FSDP chunk
    // (`blocks.0.<i>.`), the DINO head and the student alongside, no mask token (a plain ViT has none).
    let named: Vec<(String, Vec<usize>, Vec<f32>)> = model
        .named_params()
        .into_iter()
        .filter(|(k, _)| k != "mask_token")
        .map(|(k, t)| {
            let key = match k.strip_prefix("blocks.") {
                Some(rest) => format!("teacher.backbone.blocks.0.{rest}"),
                None => format!("teacher.backbone.{k}"),
            };
            (key, t.size().iter().map(|&d| d as usize).collect(), Vec::<f32>::try_from(t.flatten(0, -1)).unwrap())
        })
        .chain([
            ("teacher.dino_head.mlp.0.weight".to_string(), vec![4, 32], vec![0.5; 128]),
            ("student.backbone.norm.weight".to_string(), vec![32], vec![9.0; 32]),
        ])
        .collect();
    let source = dir.join("dinov2.safetensors");
    write_safetensors(&source, &named);
    let imported = dir.join("imported");
    let out = ok(&["import-torch", s(&source), "--config", s(&config), "-o", s(&imported)]);
    assert!(out.contains("2 keys ignored") && out.contains("mask_token set to zeros"), "{out}");
    let teacher = |run: &Path| run.join("checkpoint").join(checkpoint::TEACHER);
    let backbone = Graph { params: graph.params.iter().filter(|p| p.name != "mask_token").cloned().collect(), ..graph.clone() };
    same_weights(&backbone, &teacher(&reference), &teacher(&imported));
    assert!(imported.join("config.yaml").exists());

    // The imported run lowers to the same model as the reference run.
    let (a, b) = (dir.join("a.onnx"), dir.join("b.onnx"));
    ok(&["lower", s(&reference), "--width", "24", "-o", s(&a)]);
    ok(&["lower", s(&imported), "--width", "24", "-o", s(&b)]);
    let pixels: Vec<f32> = (0..2 * 3 * 16 * 16).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
    let run = |m: &Path| RuntimeKind::Ort.open(m).unwrap().run(&pixels, [2, 3, 16, 16]).unwrap().1;
    assert_eq!(run(&a), run(&b));

    // The same state dict as .pth: a plain dict (read by libtorch) and a nested dinov2 checkpoint with an
    // OrderedDict (read by python's unpickler).
    for nest in [false, true] {
        let pth = dir.join(format!("dinov2-{nest}.pth"));
        write_pth(&source, &pth, nest);
        let run = dir.join(format!("from-pth-{nest}"));
        ok(&["import-torch", s(&pth), "--config", s(&config), "-o", s(&run)]);
        same_weights(&graph, &teacher(&imported), &teacher(&run));
    }

    // Mismatches are listed: another architecture's state dict, an unknown key, an existing run, a bad file.
    let err = fails(&["import-torch", s(&source), "--config", s(&repo("tests/data/parity_alt.yaml")), "-o", s(&dir.join("x"))]);
    assert!(err.contains("does not match the ViT of the config") && err.contains("the config's ViT has `patch_embed.proj.weight` [64, 3, 8, 8]"), "{err}");
    let mut extra = named.clone();
    extra.push(("teacher.backbone.register_tokens".to_string(), vec![1, 4, 32], vec![0.0; 128]));
    extra.retain(|(k, _, _)| k != "teacher.backbone.norm.bias");
    let bad = dir.join("registers.safetensors");
    write_safetensors(&bad, &extra);
    let err = fails(&["import-torch", s(&bad), "--config", s(&config), "-o", s(&dir.join("y"))]);
    assert!(err.contains("`teacher.backbone.register_tokens` is not a parameter") && err.contains("`norm.bias` [32] is missing"), "{err}");
    assert!(fails(&["import-torch", s(&source), "--config", s(&config), "-o", s(&imported)]).contains("already holds a checkpoint"));
    let junk = dir.join("junk.pth");
    std::fs::write(&junk, b"not a zip").unwrap();
    assert!(fails(&["import-torch", s(&junk), "--config", s(&config), "-o", s(&dir.join("z"))]).contains("cannot read"));
    assert!(fails(&["import-torch", s(&config), "--config", s(&config), "-o", s(&dir.join("z"))]).contains("give a .safetensors, .pth or .pt"));
    assert!(!dir.join("z").join("checkpoint").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
