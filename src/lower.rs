//! Lowering a checkpoint to ONNX: resolve the sub-network the user asked for (by width/depth, name or budget),
//! check the weights against the supergraph, run the pass pipeline, and stream the ONNX file to disk with the
//! teacher's weights read one tensor at a time (memory-mapped, sliced on write), atomically.

use crate::data::augment::{MEAN, STD};
use crate::train::checkpoint;
use anyhow::{bail, Context, Result};
use poac_ir::{stats, Graph, SubnetSpec, WeightFile, Weights, WidthChoice};
use poac_passes::add_head::{HEAD_BIAS, HEAD_WEIGHT};
use poac_passes::onnx::{emit, Batch, EmitOptions, OnnxModel};
use poac_passes::specialise::Specialise;
use poac_passes::{lowering_pipeline, LoweringOptions, OutputKind, Pass};
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How the user named a sub-network: `--size`, `--width` and/or `--depth` (each defaulting to the largest), or a
/// budget (`--max-gflops`, `--max-params`: the largest sub-network within it).
#[derive(Clone, Debug, Default)]
pub struct SubnetChoice {
    /// `small`, `base` or `large`.
    pub size: Option<String>,
    /// A fraction of the largest width or an embed dim.
    pub width: Option<WidthChoice>,
    /// A depth.
    pub depth: Option<usize>,
    /// Largest GFLOPs per image allowed.
    pub max_gflops: Option<f64>,
    /// Largest parameter count allowed.
    pub max_params: Option<usize>,
}

impl SubnetChoice {
    /// The sub-network this choice names in `supergraph`'s space, or an error listing the valid choices.
    pub fn resolve(&self, supergraph: &Graph) -> Result<SubnetSpec> {
        let space = &supergraph.space;
        let by_budget = self.max_gflops.is_some() || self.max_params.is_some();
        let by_name = self.width.is_some() || self.depth.is_some();
        if by_budget && (by_name || self.size.is_some()) {
            bail!("give a budget (--max-gflops / --max-params) or a sub-network (--size, --width/--depth), not both");
        }
        if by_budget {
            return Ok(pick_by_budget(&subnet_costs(supergraph)?, self.max_gflops, self.max_params)?.subnet);
        }
        if let Some(size) = &self.size {
            if by_name {
                bail!("give either --size or --width/--depth, not both");
            }
            return Ok(space.named(size)?);
        }
        let width = match self.width {
            Some(w) => space.resolve_width(w)?,
            None => space.max_width(),
        };
        let depth = self.depth.unwrap_or(space.max_depth());
        Ok(space.check(SubnetSpec { width, depth })?)
    }
}

/// Size and cost of one sub-network (a row of `poac inspect`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SubnetCost {
    /// The sub-network.
    #[serde(skip)]
    pub subnet: SubnetSpec,
    /// Embed dim.
    pub width: usize,
    /// Blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// Backbone parameters (LayerScale gammas included, as trained).
    pub params: usize,
    /// FLOPs per image at the configured resolution (2 per multiply-add).
    pub flops: u64,
}

/// Params and FLOPs of every sub-network of `supergraph`, width-major.
pub fn subnet_costs(supergraph: &Graph) -> Result<Vec<SubnetCost>> {
    supergraph.space.subnets().into_iter().map(|subnet| subnet_cost(supergraph, subnet)).collect()
}

fn subnet_cost(supergraph: &Graph, subnet: SubnetSpec) -> Result<SubnetCost> {
    let mut g = supergraph.clone();
    Specialise { subnet }.run(&mut g)?;
    Ok(SubnetCost {
        subnet,
        width: subnet.width,
        depth: subnet.depth,
        heads: subnet.width / supergraph.space.head_dim,
        params: stats::param_count(&g),
        flops: stats::flops_per_image(&g)?,
    })
}

/// The largest sub-network (by FLOPs, ties to the deeper) within the budget, or an error naming the cost of
/// the smallest one.
pub fn pick_by_budget(costs: &[SubnetCost], max_gflops: Option<f64>, max_params: Option<usize>) -> Result<&SubnetCost> {
    let fits = |c: &&SubnetCost| {
        max_gflops.is_none_or(|g| c.flops as f64 <= g * 1e9) && max_params.is_none_or(|p| c.params <= p)
    };
    if let Some(best) = costs.iter().filter(fits).max_by_key(|c| (c.flops, c.depth)) {
        return Ok(best);
    }
    let smallest = costs.iter().min_by_key(|c| (c.flops, c.params)).context("the elastic space is empty")?;
    let mut budget = Vec::new();
    if let Some(g) = max_gflops {
        budget.push(format!("--max-gflops {g}"));
    }
    if let Some(p) = max_params {
        budget.push(format!("--max-params {p}"));
    }
    bail!(
        "no sub-network fits {}: the smallest, {}, needs {:.4} GFLOPs and {} params ({:.3} M)",
        budget.join(" and "),
        smallest.subnet,
        smallest.flops as f64 / 1e9,
        smallest.params,
        smallest.params as f64 / 1e6
    )
}

/// What the lowered model computes besides the sub-network (`poac lower` flags).
#[derive(Clone, Debug)]
pub struct LowerOptions {
    /// Batch axis.
    pub batch: Batch,
    /// Features returned.
    pub output: OutputKind,
    /// Include the checkpoint's classifier head.
    pub with_head: bool,
    /// Fold the input normalisation into the model, which then takes raw `[0, 1]` pixels.
    pub bake_normalize: bool,
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions { batch: Batch::Dynamic, output: OutputKind::Cls, with_head: false, bake_normalize: false }
    }
}

/// What a lowering produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Lowered {
    /// The sub-network.
    pub width: usize,
    /// Its depth.
    pub depth: usize,
    /// Backbone parameters of the sub-network.
    pub params: usize,
    /// FLOPs per image at the model's resolution.
    pub flops: u64,
    /// Size of the ONNX file in bytes.
    pub bytes: usize,
    /// Bytes of weights in it.
    pub weight_bytes: usize,
}

/// A checkpoint opened for lowering: its folder, supergraph and teacher weights, checked against each other.
pub struct Source {
    /// The checkpoint folder.
    pub dir: PathBuf,
    /// The elastic supergraph.
    pub supergraph: Graph,
    /// The teacher backbone, memory-mapped.
    pub weights: WeightFile,
}

impl Source {
    /// Opens the checkpoint at `path` (a run folder or its checkpoint folder).
    pub fn open(path: &Path) -> Result<Self> {
        let dir = checkpoint::resolve(path)?;
        let supergraph = checkpoint::read_graph(&dir)?;
        let file = dir.join(checkpoint::TEACHER);
        let weights = WeightFile::open(&file)?;
        check_weights(&supergraph, &weights).with_context(|| format!("{} does not fit {}", file.display(), dir.join(checkpoint::SUPERGRAPH).display()))?;
        Ok(Source { dir, supergraph, weights })
    }

    /// Emits sub-network `subnet` with `options` (nothing is read from the weights yet).
    pub fn model(&self, subnet: SubnetSpec, options: &LowerOptions, observe: impl FnMut(&str, bool, &Graph)) -> Result<(OnnxModel, SubnetCost)> {
        let head = if options.with_head { Some(self.head_shape()?) } else { None };
        let normalize = options.bake_normalize.then(|| (MEAN.to_vec(), STD.to_vec()));
        let mut graph = self.supergraph.clone();
        lowering_pipeline(subnet, &LoweringOptions { output: options.output, head, normalize }).run(&mut graph, observe)?;
        let cost = subnet_cost(&self.supergraph, subnet)?;
        let metadata = self.metadata(&graph, &cost, options, head);
        Ok((emit(&graph, &EmitOptions { batch: options.batch, metadata })?, cost))
    }

    /// Shape `[classes, features]` of the checkpoint's classifier head, or an error saying it has none.
    fn head_shape(&self) -> Result<[usize; 2]> {
        let (Ok(weight), Ok(bias)) = (self.weights.shape(HEAD_WEIGHT), self.weights.shape(HEAD_BIAS)) else {
            bail!(
                "--with-head: the checkpoint has no classifier head (no `{HEAD_WEIGHT}` / `{HEAD_BIAS}` in {}); \
                 `poac pretrain` writes a backbone only — lower without --with-head, or use a checkpoint with a \
                 fine-tuned or imported (`poac import-torch`) head",
                self.dir.join(checkpoint::TEACHER).display()
            );
        };
        match (weight.as_slice(), bias.as_slice()) {
            (&[classes, features], &[b]) if b == classes => Ok([classes, features]),
            _ => bail!("the classifier head is malformed: `{HEAD_WEIGHT}` {weight:?}, `{HEAD_BIAS}` {bias:?}"),
        }
    }

    fn metadata(&self, graph: &Graph, cost: &SubnetCost, options: &LowerOptions, head: Option<[usize; 2]>) -> Vec<(String, String)> {
        let join = |v: &[f32]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
        let kept = graph.space.kept_blocks(cost.depth).iter().map(|b| b.to_string()).collect::<Vec<_>>().join(",");
        let input = if options.bake_normalize { "raw pixels in [0, 1]; normalisation folded in" } else { "normalised: (pixel - mean) / std" };
        let mut metadata = vec![
            ("width".to_string(), cost.width.to_string()),
            ("depth".to_string(), cost.depth.to_string()),
            ("kept_blocks".to_string(), kept),
            ("image_size".to_string(), graph.arch.img_size.to_string()),
            ("input".to_string(), input.to_string()),
            ("mean".to_string(), join(&MEAN)),
            ("std".to_string(), join(&STD)),
            ("output".to_string(), options.output.name().to_string()),
            ("output_layout".to_string(), options.output.layout().to_string()),
            ("params".to_string(), cost.params.to_string()),
            ("flops".to_string(), cost.flops.to_string()),
            ("source_checkpoint".to_string(), std::fs::canonicalize(&self.dir).unwrap_or(self.dir.clone()).display().to_string()),
        ];
        if let Some([classes, _]) = head {
            metadata.push(("head".to_string(), format!("logits [N, {classes}] = features · head.weightᵀ + head.bias")));
        }
        metadata
    }
}

/// Checks that every supergraph parameter is in the weights with its full (largest) shape, listing the
/// mismatches — what a checkpoint of another architecture shows.
fn check_weights(supergraph: &Graph, weights: &WeightFile) -> Result<()> {
    let width = supergraph.space.max_width();
    let problems: Vec<String> = supergraph
        .params
        .iter()
        .filter_map(|p| {
            let expected = p.shape_at(width);
            match weights.shape(&p.name) {
                Err(_) => Some(format!("`{}` is missing", p.name)),
                Ok(shape) if shape != expected => Some(format!("`{}` is {shape:?}, the supergraph has {expected:?}", p.name)),
                Ok(_) => None,
            }
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    let shown = problems.iter().take(6).cloned().collect::<Vec<_>>().join("; ");
    let more = if problems.len() > 6 { format!(" and {} more", problems.len() - 6) } else { String::new() };
    bail!("the weights are not those of this ViT ({} of {} parameters differ: {shown}{more}) — is the checkpoint from another architecture?", problems.len(), supergraph.params.len())
}

/// A sub-network ready to be written: its emitted model and the checkpoint its weights come from.
pub struct Prepared {
    source: Source,
    model: OnnxModel,
    cost: SubnetCost,
}

impl Prepared {
    /// Streams the model into `out`.
    pub fn write(&self, out: &mut dyn Write) -> Result<Lowered> {
        let bytes = self.model.write(&self.source.weights, out)?;
        let c = &self.cost;
        Ok(Lowered { width: c.width, depth: c.depth, params: c.params, flops: c.flops, bytes, weight_bytes: self.model.weight_bytes() })
    }
}

/// Opens the checkpoint at `checkpoint`, resolves `choice` and runs the passes; `observe` sees the graph after
/// each pass (for `--dump-ir`). No weight is read yet.
pub fn prepare(checkpoint: &Path, choice: &SubnetChoice, options: &LowerOptions, observe: impl FnMut(&str, bool, &Graph)) -> Result<Prepared> {
    let source = Source::open(checkpoint)?;
    let subnet = choice.resolve(&source.supergraph)?;
    let (model, cost) = source.model(subnet, options, observe)?;
    Ok(Prepared { source, model, cost })
}

/// Lowers sub-network `choice` of the checkpoint at `checkpoint` to the ONNX file `out`, written through a
/// temporary file and a rename (nothing is created if the choice or the checkpoint is wrong).
pub fn lower(checkpoint: &Path, choice: &SubnetChoice, options: &LowerOptions, out: &Path, observe: impl FnMut(&str, bool, &Graph)) -> Result<Lowered> {
    let prepared = prepare(checkpoint, choice, options, observe)?;
    let mut lowered = None;
    write_atomically(out, |file| {
        lowered = Some(prepared.write(file)?);
        Ok(())
    })?;
    Ok(lowered.expect("set by the writer"))
}

/// Writes `path` through `write` into a temporary file beside it, flushed and synced, then renamed into place;
/// on failure the temporary file is removed and `path` is untouched.
pub fn write_atomically(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = parent.join(format!(".{}.tmp", name.to_string_lossy()));
    let result = (|| {
        let file = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        // Small: the weights arrive in larger writes, which pass straight through.
        let mut out = std::io::BufWriter::with_capacity(64 << 10, file);
        write(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error()).with_context(|| format!("cannot write {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Input metadata of a lowered model: image size, mean and std.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Side of the input image.
    pub image_size: usize,
    /// Mean to subtract from `[0, 1]` pixels before feeding them (0 when the model normalises itself).
    pub mean: [f32; 3],
    /// Std to divide by (1 when the model normalises itself).
    pub std: [f32; 3],
    /// Width of the sub-network.
    pub width: usize,
    /// Depth of the sub-network.
    pub depth: usize,
    /// What the model returns (`cls`, `patch`, `cls+patch`, `last4`); `None` for a model lowered before poac
    /// recorded it (those return the class token).
    pub output: Option<String>,
    /// True when the model ends in a classifier head and returns logits instead of features.
    pub has_head: bool,
    /// Backbone parameters of the sub-network, where recorded.
    pub params: Option<usize>,
    /// FLOPs per image, where recorded.
    pub flops: Option<u64>,
    /// The checkpoint folder the model was lowered from, where recorded.
    pub source_checkpoint: Option<String>,
}

/// Reads the metadata `poac lower` writes into a model.
pub fn model_info(path: &Path) -> Result<ModelInfo> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read model {}", path.display()))?;
    let model = poac_passes::onnx::proto::ModelProto::decode(bytes.as_slice()).with_context(|| format!("{} is not an ONNX model", path.display()))?;
    let get = |key: &str| model.metadata(key).with_context(|| format!("{} has no `{key}` metadata (was it written by `poac lower`?)", path.display()));
    let triple = |key: &str| -> Result<[f32; 3]> {
        let values: Vec<f32> = get(key)?.split(',').map(|v| v.trim().parse()).collect::<std::result::Result<_, _>>().with_context(|| format!("bad `{key}` metadata"))?;
        values.try_into().map_err(|_| anyhow::anyhow!("`{key}` metadata must hold 3 values"))
    };
    let raw_input = model.metadata("input").is_some_and(|v| v.starts_with("raw"));
    let (mean, std) = if raw_input { ([0.0; 3], [1.0; 3]) } else { (triple("mean")?, triple("std")?) };
    Ok(ModelInfo {
        image_size: get("image_size")?.parse().context("bad `image_size` metadata")?,
        mean,
        std,
        width: get("width")?.parse().context("bad `width` metadata")?,
        depth: get("depth")?.parse().context("bad `depth` metadata")?,
        output: model.metadata("output").map(String::from),
        has_head: model.metadata("head").is_some(),
        params: model.metadata("params").and_then(|v| v.parse().ok()),
        flops: model.metadata("flops").and_then(|v| v.parse().ok()),
        source_checkpoint: model.metadata("source_checkpoint").map(String::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(width: usize, depth: usize, params: usize, flops: u64) -> SubnetCost {
        SubnetCost { subnet: SubnetSpec { width, depth }, width, depth, heads: 1, params, flops }
    }

    #[test]
    fn the_budget_picks_the_largest_fitting_and_ties_go_deeper() {
        let costs = [cost(64, 4, 10, 100), cost(64, 6, 15, 150), cost(128, 4, 30, 150), cost(128, 6, 45, 300)];
        let pick = |g: Option<f64>, p: Option<usize>| pick_by_budget(&costs, g, p).map(|c| c.subnet);
        assert_eq!(pick(Some(200e-9), None).unwrap(), SubnetSpec { width: 64, depth: 6 });
        assert_eq!(pick(Some(1.0), None).unwrap(), SubnetSpec { width: 128, depth: 6 });
        assert_eq!(pick(None, Some(29)).unwrap(), SubnetSpec { width: 64, depth: 6 });
        assert_eq!(pick(Some(1.0), Some(10)).unwrap(), SubnetSpec { width: 64, depth: 4 });
        let err = pick(Some(50e-9), None).unwrap_err().to_string();
        assert!(err.contains("w64-d4") && err.contains("0.0000 GFLOPs") && err.contains("10 params"), "{err}");
    }
}
