//! `poac import-torch`: a dinov2/POA-style ViT state dict (keys such as `blocks.0.attn.qkv.weight`) becomes a
//! run folder that `poac lower` and `poac inspect` accept. Keys are mapped to poac's (wrapper prefixes stripped,
//! dinov2's chunked blocks flattened, projection heads ignored) and every key and shape is checked against the
//! supergraph of the given config. `.safetensors` files are memory-mapped and streamed. `.pth` / `.pt` files
//! (PyTorch's zip format) are read by libtorch through tch when they hold a plain dict of tensors; libtorch's
//! unpickler cannot read the usual `torch.save(model.state_dict())` (an OrderedDict) or nested checkpoints, so
//! those are converted by python's unpickler (restricted to tensor globals; numpy only, no torch needed).

use crate::config::Config;
use crate::lower::write_atomically;
use crate::train::checkpoint;
use anyhow::{bail, Context, Result};
use clap::Args;
use poac_ir::{build::supergraph, write_f32s, write_safetensors, Graph, IrError, WeightFile, Weights};
use poac_passes::add_head::{HEAD_BIAS, HEAD_WEIGHT};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ImportArgs {
    /// The state dict: `.safetensors`, or `.pth` / `.pt` (a flat dict of tensors saved by `torch.save`).
    file: PathBuf,
    /// The poac config whose `student` section describes the ViT (and `crops.global_crops_size` its image size).
    #[arg(long)]
    config: PathBuf,
    /// The run folder to create.
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
}

/// Wrapper prefixes of training checkpoints, stripped in any order: DDP's `module.`, the meta-architecture's
/// `teacher.` / `student.`, `backbone.`, `model.`, and `torch.compile`'s `_orig_mod.`.
const PREFIXES: [&str; 6] = ["module.", "teacher.", "student.", "backbone.", "model.", "_orig_mod."];
/// Keys of projection heads (DINO, iBOT) and other heads: not part of the backbone.
const HEADS: [&str; 3] = ["dino_head.", "ibot_head.", "head."];

/// What becomes of one key of the source.
#[derive(Debug, PartialEq)]
enum Mapped {
    /// Imported under this poac key.
    Key(String),
    /// Left out, for this reason.
    Ignored(&'static str),
}

/// The key without its wrapper prefixes, and those prefixes.
fn strip_wrappers(mut key: &str) -> (&str, Vec<&'static str>) {
    let mut stripped = Vec::new();
    while let Some((prefix, rest)) = PREFIXES.iter().find_map(|p| key.strip_prefix(p).map(|rest| (*p, rest))) {
        stripped.push(prefix);
        key = rest;
    }
    (key, stripped)
}

/// Whether a key belongs to the teacher of a meta-architecture checkpoint (`teacher.`, maybe under `model.`).
fn is_teacher(key: &str) -> bool {
    strip_wrappers(key).1.contains(&"teacher.")
}

/// Maps a source key to poac's: `student.` keys are ignored when the file also has a teacher (POA deploys the
/// teacher), wrapper prefixes are stripped, `blocks.<chunk>.<i>.` (dinov2's FSDP block chunks) becomes
/// `blocks.<i>.`, and head keys other than a classifier's `head.weight` / `head.bias` are ignored.
fn map_key(key: &str, has_teacher: bool) -> Mapped {
    let (key, stripped) = strip_wrappers(key);
    if has_teacher && stripped.contains(&"student.") {
        return Mapped::Ignored("student weights (the teacher is imported)");
    }
    if key == HEAD_WEIGHT || key == HEAD_BIAS {
        return Mapped::Key(key.to_string());
    }
    if HEADS.iter().any(|h| key.starts_with(h)) {
        return Mapped::Ignored("projection head");
    }
    let parts: Vec<&str> = key.splitn(4, '.').collect();
    if let ["blocks", chunk, index, rest] = parts.as_slice() {
        if chunk.parse::<usize>().is_ok() && index.parse::<usize>().is_ok() {
            return Mapped::Key(format!("blocks.{index}.{rest}"));
        }
    }
    Mapped::Key(key.to_string())
}

/// A state dict being imported.
enum StateDict {
    /// A memory-mapped safetensors file.
    Safetensors(WeightFile),
    /// Tensors libtorch read from a PyTorch file.
    Torch(HashMap<String, tch::Tensor>),
}

impl StateDict {
    /// Opens `path`; a `.pth` libtorch cannot read is converted into `scratch` first.
    fn open(path: &Path, scratch: &Path) -> Result<Self> {
        if !path.exists() {
            bail!("{} does not exist", path.display());
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Ok(StateDict::Safetensors(WeightFile::open(path)?)),
            Some("pth" | "pt" | "bin") => match tch::Tensor::loadz_multi(path) {
                Ok(tensors) => Ok(StateDict::Torch(tensors.into_iter().collect())),
                // libtorch reads only a plain dict of tensors; `torch.save(model.state_dict())` pickles an
                // OrderedDict (which libtorch's unpickler turns into None), and checkpoints nest dicts.
                Err(_) => Ok(StateDict::Safetensors(WeightFile::open(&convert_with_python(path, scratch)?)?)),
            },
            _ => bail!("{}: give a .safetensors, .pth or .pt file", path.display()),
        }
    }

    /// Every key with its shape.
    fn shapes(&self) -> Result<BTreeMap<String, Vec<usize>>> {
        Ok(match self {
            StateDict::Safetensors(file) => file.entries().into_iter().map(|e| (e.name, e.shape)).collect(),
            StateDict::Torch(tensors) => {
                tensors.iter().map(|(k, t)| (k.clone(), t.size().iter().map(|&d| d as usize).collect())).collect()
            }
        })
    }

    /// The values of tensor `key` as f32.
    fn values(&self, key: &str) -> Result<Vec<f32>> {
        match self {
            StateDict::Safetensors(file) => Ok(file.gather(key, &[])?),
            StateDict::Torch(tensors) => {
                let t = tensors[key].to_kind(tch::Kind::Float).contiguous().flatten(0, -1);
                Vec::<f32>::try_from(&t).with_context(|| format!("cannot read `{key}`"))
            }
        }
    }
}

/// Reads a PyTorch zip file with python's own unpickler — restricted to the globals a tensor file needs, so it
/// runs no code from the file — and writes its tensors (nested dicts flattened with `.`, non-tensors dropped)
/// as an f32 safetensors file. Needs only numpy.
const PTH_TO_SAFETENSORS: &str = r#"
import collections, json, pickle, struct, sys, zipfile
import numpy as np
src, dst = sys.argv[1], sys.argv[2]
archive = zipfile.ZipFile(src)
pkl = next(n for n in archive.namelist() if n.endswith('data.pkl'))
root = pkl[: -len('data.pkl')]
DTYPES = {'FloatStorage': '<f4', 'HalfStorage': '<f2', 'DoubleStorage': '<f8', 'BFloat16Storage': 'bf16'}
class Tensor:
    def __init__(self, array): self.array = array
def rebuild(storage, offset, size, stride, *rest):
    dtype, data = storage
    if dtype == 'bf16':
        flat = (np.frombuffer(data, '<u2').astype(np.uint32) << 16).view('<f4')
    else:
        flat = np.frombuffer(data, dtype)
    item = flat.itemsize
    return Tensor(np.lib.stride_tricks.as_strided(flat[offset:], tuple(size), tuple(s * item for s in stride)))
class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ('torch._utils', '_rebuild_tensor_v2'): return rebuild
        if module == 'torch' and name in DTYPES: return name
        if (module, name) == ('collections', 'OrderedDict'): return collections.OrderedDict
        raise pickle.UnpicklingError(f'{module}.{name} is not part of a tensor file')
    def persistent_load(self, pid):
        kind, storage, key = pid[0], pid[1], pid[2]
        if kind != 'storage' or storage not in DTYPES: raise pickle.UnpicklingError(f'unsupported storage {pid!r}')
        return DTYPES[storage], archive.read(f'{root}data/{key}')
tensors = {}
def walk(prefix, value):
    if isinstance(value, Tensor): tensors[prefix[:-1]] = np.ascontiguousarray(value.array, dtype='<f4')
    elif isinstance(value, dict):
        for k, v in value.items(): walk(f'{prefix}{k}.', v)
walk('', Unpickler(archive.open(pkl)).load())
header, offset = {}, 0
for k, a in tensors.items():
    header[k] = {'dtype': 'F32', 'shape': list(a.shape), 'data_offsets': [offset, offset + a.nbytes]}
    offset += a.nbytes
text = json.dumps(header).encode()
text += b' ' * (-len(text) % 8)
with open(dst, 'wb') as out:
    out.write(struct.pack('<Q', len(text))); out.write(text)
    for a in tensors.values(): out.write(a.tobytes())
print(len(tensors))
"#;

/// Converts the PyTorch file `path` to `scratch/source.safetensors` with [`PTH_TO_SAFETENSORS`].
fn convert_with_python(path: &Path, scratch: &Path) -> Result<PathBuf> {
    let python = std::env::var_os("POAC_PYTHON").map(PathBuf::from).or(option_env!("POAC_PYTHON").map(PathBuf::from)).unwrap_or("python3".into());
    std::fs::create_dir_all(scratch)?;
    let converted = scratch.join("source.safetensors");
    let output = std::process::Command::new(&python)
        .args(["-c", PTH_TO_SAFETENSORS])
        .arg(path)
        .arg(&converted)
        .output()
        .with_context(|| format!("reading {} needs python 3 with numpy; cannot run {} (set POAC_PYTHON, or run shells/setup.sh)", path.display(), python.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr.lines().last().unwrap_or("no message");
        bail!("cannot read {} as a PyTorch tensor file ({reason}); save a state dict with torch.save, or convert it to .safetensors", path.display());
    }
    Ok(converted)
}

/// How each poac key of the new checkpoint is filled: from a source key, or with zeros.
struct Plan {
    /// Poac key, shape, and source key (`None`: zeros).
    tensors: Vec<(String, Vec<usize>, Option<String>)>,
    /// Source keys left out, with the reason.
    ignored: Vec<(String, &'static str)>,
}

/// Matches the source keys to the supergraph's parameters (plus an optional classifier head), or explains every
/// mismatch at once.
fn plan(graph: &Graph, shapes: &BTreeMap<String, Vec<usize>>) -> Result<Plan> {
    let has_teacher = shapes.keys().any(|k| is_teacher(k));
    let mut by_key: HashMap<String, String> = HashMap::new();
    let mut ignored = Vec::new();
    let mut problems = Vec::new();
    for key in shapes.keys() {
        match map_key(key, has_teacher) {
            Mapped::Ignored(why) => ignored.push((key.clone(), why)),
            Mapped::Key(mapped) => {
                if let Some(previous) = by_key.insert(mapped.clone(), key.clone()) {
                    problems.push(format!("`{previous}` and `{key}` both map to `{mapped}`"));
                }
            }
        }
    }
    let width = graph.space.max_width();
    let mut tensors = Vec::new();
    for p in &graph.params {
        let expected = p.shape_at(width);
        match by_key.remove(&p.name) {
            Some(source) if shapes[&source] == expected => tensors.push((p.name.clone(), expected, Some(source))),
            Some(source) => problems.push(format!("`{source}` is {:?}, the config's ViT has `{}` {expected:?}", shapes[&source], p.name)),
            // iBOT's mask token is training-only: a plain ViT (timm) has none, and lowering never reads it.
            None if p.name == "mask_token" => tensors.push((p.name.clone(), expected, None)),
            None => problems.push(format!("`{}` {expected:?} is missing", p.name)),
        }
    }
    match (by_key.remove(HEAD_WEIGHT), by_key.remove(HEAD_BIAS)) {
        (Some(w), Some(b)) => match (shapes[&w].as_slice(), shapes[&b].as_slice()) {
            (&[classes, _], &[c]) if c == classes => {
                tensors.push((HEAD_WEIGHT.into(), shapes[&w].clone(), Some(w)));
                tensors.push((HEAD_BIAS.into(), shapes[&b].clone(), Some(b)));
            }
            _ => problems.push(format!("classifier head `{w}` {:?} / `{b}` {:?} is not [classes, features] / [classes]", shapes[&w], shapes[&b])),
        },
        (None, None) => {}
        (w, b) => problems.push(format!("a classifier head needs both `{HEAD_WEIGHT}` and `{HEAD_BIAS}` (found {w:?} / {b:?})")),
    }
    let mut unknown: Vec<String> = by_key.into_values().collect();
    unknown.sort();
    problems.extend(unknown.into_iter().map(|k| format!("`{k}` is not a parameter of the config's ViT")));
    if !problems.is_empty() {
        let shown = problems.iter().take(8).cloned().collect::<Vec<_>>().join("\n  ");
        let more = if problems.len() > 8 { format!("\n  … and {} more", problems.len() - 8) } else { String::new() };
        bail!(
            "the state dict does not match the ViT of the config (widths {:?}, depths {:?}, head_dim {}, patch {}, {} px):\n  {shown}{more}",
            graph.space.widths,
            graph.space.depths,
            graph.arch.head_dim,
            graph.arch.patch_size,
            graph.arch.img_size
        );
    }
    Ok(Plan { tensors, ignored })
}

pub fn run(args: ImportArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    let graph = supergraph(&config.arch())?;
    let target = args.out.join(checkpoint::CHECKPOINT);
    if target.exists() {
        bail!("{} already holds a checkpoint; give another -o", args.out.display());
    }
    let partial = args.out.join(".import.tmp");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    let scratch = args.out.join(".import.scratch");
    let source = StateDict::open(&args.file, &scratch)?;
    let plan = plan(&graph, &source.shapes()?).with_context(|| format!("cannot import {}", args.file.display()))?;
    write_atomically(&partial.join(checkpoint::SUPERGRAPH), |w| Ok(w.write_all(graph.to_json().as_bytes())?))?;
    let header: Vec<(String, Vec<usize>)> = plan.tensors.iter().map(|(k, s, _)| (k.clone(), s.clone())).collect();
    write_atomically(&partial.join(checkpoint::TEACHER), |w| {
        write_safetensors(w, &header, |i, out| {
            let (key, shape, from) = &plan.tensors[i];
            let values = match from {
                Some(from) => source.values(from).map_err(|e| IrError::Weights(format!("{e:#}")))?,
                None => vec![0.0; shape.iter().product()],
            };
            write_f32s(out, &values).map_err(|e| IrError::Weights(format!("cannot write `{key}`: {e}")))
        })?;
        Ok(())
    })?;
    let provenance = serde_json::json!({
        "source": std::fs::canonicalize(&args.file).unwrap_or(args.file.clone()),
        "imported": plan.tensors.iter().map(|(k, _, from)| (k.clone(), from.clone())).collect::<BTreeMap<_, _>>(),
        "ignored": plan.ignored.iter().map(|(k, why)| (k.clone(), *why)).collect::<BTreeMap<_, _>>(),
    });
    write_atomically(&partial.join("import.json"), |w| Ok(serde_json::to_writer_pretty(w, &provenance)?))?;
    std::fs::copy(&args.config, args.out.join("config.yaml")).with_context(|| format!("cannot copy {}", args.config.display()))?;
    std::fs::rename(&partial, &target).with_context(|| format!("cannot create {}", target.display()))?;
    drop(source);
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }

    let zeros: Vec<&str> = plan.tensors.iter().filter(|(_, _, f)| f.is_none()).map(|(k, _, _)| k.as_str()).collect();
    println!(
        "imported {} tensors from {} into {} ({} keys ignored{})",
        plan.tensors.len() - zeros.len(),
        args.file.display(),
        target.display(),
        plan.ignored.len(),
        if zeros.is_empty() { String::new() } else { format!("; {} set to zeros: not in the file", zeros.join(", ")) }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_poacs() {
        let key = |k: &str| map_key(k, true);
        assert_eq!(key("teacher.backbone.blocks.3.attn.qkv.weight"), Mapped::Key("blocks.3.attn.qkv.weight".into()));
        assert_eq!(key("module.backbone.blocks.0.5.ls1.gamma"), Mapped::Key("blocks.5.ls1.gamma".into()));
        assert_eq!(key("teacher.backbone.norm.weight"), Mapped::Key("norm.weight".into()));
        assert!(matches!(key("student.backbone.cls_token"), Mapped::Ignored(_)));
        assert!(matches!(key("model.student.backbone.cls_token"), Mapped::Ignored(_)));
        assert!(is_teacher("model.teacher.backbone.cls_token") && !is_teacher("backbone.cls_token"));
        assert_eq!(map_key("student.backbone.cls_token", false), Mapped::Key("cls_token".into()));
        assert!(matches!(key("teacher.dino_head.mlp.0.weight"), Mapped::Ignored(_)));
        assert!(matches!(key("head.fc.weight"), Mapped::Ignored(_)));
        assert_eq!(key("head.weight"), Mapped::Key("head.weight".into()));
        assert_eq!(key("blocks.1.mlp.fc1.bias"), Mapped::Key("blocks.1.mlp.fc1.bias".into()));
    }
}
