//! Lowering a checkpoint to ONNX: resolve the sub-network the user asked for, run the pass pipeline on the
//! supergraph, emit ONNX with the teacher's weights (memory-mapped, sliced on read), write the file atomically.

use crate::data::augment::{MEAN, STD};
use crate::train::checkpoint;
use anyhow::{bail, Context, Result};
use poac_ir::{stats, ElasticSpace, Graph, SubnetSpec, WeightFile, WidthChoice};
use poac_passes::onnx::{emit, Batch, EmitOptions};
use poac_passes::lowering_pipeline;
use prost::Message;
use std::path::Path;

/// How the user named a sub-network: `--size`, or `--width` and/or `--depth` (each defaulting to the largest).
#[derive(Clone, Debug, Default)]
pub struct SubnetChoice {
    /// `small`, `base` or `large`.
    pub size: Option<String>,
    /// A fraction of the largest width or an embed dim.
    pub width: Option<WidthChoice>,
    /// A depth.
    pub depth: Option<usize>,
}

impl SubnetChoice {
    /// The sub-network this choice names in `space`, or an error listing the valid choices.
    pub fn resolve(&self, space: &ElasticSpace) -> Result<SubnetSpec> {
        if let Some(size) = &self.size {
            if self.width.is_some() || self.depth.is_some() {
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

/// What a lowering produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Lowered {
    /// The sub-network.
    pub width: usize,
    /// Its depth.
    pub depth: usize,
    /// Parameters of the lowered model.
    pub params: usize,
    /// FLOPs per image at the model's resolution.
    pub flops: u64,
    /// Size of the ONNX file in bytes.
    pub bytes: usize,
}

/// Lowers sub-network `choice` of the checkpoint at `checkpoint` (a run folder or its checkpoint folder) to
/// `out`. `observe` sees the graph after each pass (for `--dump-ir`).
pub fn lower(checkpoint: &Path, choice: &SubnetChoice, batch: Batch, out: &Path, observe: impl FnMut(&str, bool, &Graph)) -> Result<Lowered> {
    let dir = checkpoint::resolve(checkpoint)?;
    let supergraph = checkpoint::read_graph(&dir)?;
    let subnet = choice.resolve(&supergraph.space)?;
    let weights = WeightFile::open(&dir.join(checkpoint::TEACHER))?;
    let mut graph = supergraph.clone();
    lowering_pipeline(subnet).run(&mut graph, observe)?;
    let join = |v: &[f32]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
    let kept = supergraph.space.kept_blocks(subnet.depth).iter().map(|b| b.to_string()).collect::<Vec<_>>().join(",");
    let params = stats::param_count(&graph);
    let flops = stats::flops_per_image(&graph);
    let metadata = vec![
        ("width".to_string(), subnet.width.to_string()),
        ("depth".to_string(), subnet.depth.to_string()),
        ("kept_blocks".to_string(), kept),
        ("image_size".to_string(), graph.arch.img_size.to_string()),
        ("mean".to_string(), join(&MEAN)),
        ("std".to_string(), join(&STD)),
        ("params".to_string(), params.to_string()),
        ("flops".to_string(), flops.to_string()),
        ("source_checkpoint".to_string(), std::fs::canonicalize(&dir).unwrap_or(dir.clone()).display().to_string()),
    ];
    let model = emit(&graph, &weights, &EmitOptions { batch, metadata })?;
    let bytes = model.encode_to_vec();
    write_atomically(out, &bytes)?;
    Ok(Lowered { width: subnet.width, depth: subnet.depth, params, flops, bytes: bytes.len() })
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = path.with_extension("onnx.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Input metadata of a lowered model: image size, mean and std.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Side of the input image.
    pub image_size: usize,
    /// Normalisation mean.
    pub mean: [f32; 3],
    /// Normalisation std.
    pub std: [f32; 3],
    /// Width of the sub-network.
    pub width: usize,
    /// Depth of the sub-network.
    pub depth: usize,
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
    Ok(ModelInfo {
        image_size: get("image_size")?.parse().context("bad `image_size` metadata")?,
        mean: triple("mean")?,
        std: triple("std")?,
        width: get("width")?.parse().context("bad `width` metadata")?,
        depth: get("depth")?.parse().context("bad `depth` metadata")?,
    })
}
