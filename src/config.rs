//! Training configuration: a YAML file whose keys follow dinov2/POA (`student.min_embed_dim`, `dino.lambda_ie`,
//! `crops.local_crops_number`, `optim.base_lr`, ...). Missing keys take the documented defaults below; an unknown
//! key is an error naming the nearest valid spelling.

use crate::data::resize::Interpolation;
use anyhow::{bail, Context, Result};
use poac_ir::VitArch;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The whole configuration of a pre-training run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The elastic backbone.
    pub student: StudentConfig,
    /// DINO head, class-token loss, POA's elastic terms.
    pub dino: DinoConfig,
    /// iBOT masked-patch loss.
    pub ibot: IbotConfig,
    /// EMA teacher and its temperature.
    pub teacher: TeacherConfig,
    /// Optimiser and schedules.
    pub optim: OptimConfig,
    /// Multi-crop augmentation.
    pub crops: CropsConfig,
    /// Batch, seed, checkpoints.
    pub train: TrainConfig,
    /// k-NN monitoring of the teacher during training.
    pub evaluation: EvaluationConfig,
}

/// `evaluation.*`: a quick k-NN of the teacher's smallest and intact sub-networks every few iterations, so a run
/// shows whether every size is learning, not only the loss (dinov2's `eval_period_iterations`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluationConfig {
    /// Iterations between k-NN checks (and one at the end); 0 turns them off.
    pub eval_period_iterations: usize,
    /// Class-balanced training images the k-NN votes with.
    pub knn_train_images: usize,
    /// Class-balanced validation images it classifies.
    pub knn_val_images: usize,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        EvaluationConfig { eval_period_iterations: 0, knn_train_images: 2000, knn_val_images: 500 }
    }
}

/// `student.*`: the elastic ViT.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StudentConfig {
    /// Architecture family; only `vit` exists so far.
    pub arch: String,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Head dimension, fixed over the elastic space.
    pub head_dim: usize,
    /// Smallest embed dim.
    pub min_embed_dim: usize,
    /// Largest embed dim (the intact network).
    pub max_embed_dim: usize,
    /// Width step in heads.
    pub width_interval: usize,
    /// Smallest depth.
    pub min_depth: usize,
    /// Largest depth.
    pub max_depth: usize,
    /// Depth step.
    pub depth_interval: usize,
    /// MLP hidden size / width.
    pub mlp_ratio: usize,
    /// LayerScale initial value.
    pub layerscale: f32,
    /// Stochastic depth of the students: every residual branch is dropped per sample with this probability
    /// (uniform over blocks, as POA uses it). The teacher never drops.
    pub drop_path_rate: f64,
}

impl Default for StudentConfig {
    fn default() -> Self {
        let a = VitArch::default();
        StudentConfig {
            arch: "vit".into(),
            patch_size: a.patch_size,
            head_dim: a.head_dim,
            min_embed_dim: a.min_embed_dim,
            max_embed_dim: a.max_embed_dim,
            width_interval: a.width_interval,
            min_depth: a.min_depth,
            max_depth: a.max_depth,
            depth_interval: a.depth_interval,
            mlp_ratio: a.mlp_ratio,
            layerscale: a.layerscale_init,
            drop_path_rate: 0.0,
        }
    }
}

/// `dino.*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DinoConfig {
    /// Weight of the DINO class-token loss.
    pub loss_weight: f64,
    /// Prototypes of each projection head's last layer: one number, or a list for several heads whose
    /// losses are averaged (POA's reference uses 8192, 16384, 32768, 65536).
    #[serde(deserialize_with = "one_or_many")]
    pub head_n_prototypes: Vec<usize>,
    /// Hidden size of the head's MLP.
    pub head_hidden_dim: usize,
    /// Bottleneck size before the prototypes.
    pub head_bottleneck_dim: usize,
    /// Weight of the KoLeo regulariser.
    pub koleo_loss_weight: f64,
    /// λ: weight of the intact student's loss; the elastic student's terms get 1 − λ.
    pub lambda_ie: f64,
    /// How much more often the smallest sub-network is sampled than the largest (per axis).
    pub net_select_scale: f64,
    /// Momentum of the EMA centre of the teacher's outputs.
    pub center_momentum: f64,
}

impl Default for DinoConfig {
    fn default() -> Self {
        DinoConfig {
            loss_weight: 1.0,
            head_n_prototypes: vec![65536],
            head_hidden_dim: 2048,
            head_bottleneck_dim: 256,
            koleo_loss_weight: 0.1,
            lambda_ie: 0.8,
            net_select_scale: 3.0,
            center_momentum: 0.9,
        }
    }
}

/// `ibot.*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IbotConfig {
    /// Weight of the iBOT masked-patch loss.
    pub loss_weight: f64,
    /// Fraction of global crops that are masked.
    pub mask_sample_probability: f64,
    /// Range of the fraction of patches masked in a masked crop.
    pub mask_ratio_min_max: [f64; 2],
    /// Epochs before the iBOT loss starts.
    pub ibot_activate_epochs: f64,
}

impl Default for IbotConfig {
    fn default() -> Self {
        IbotConfig { loss_weight: 1.0, mask_sample_probability: 0.5, mask_ratio_min_max: [0.1, 0.5], ibot_activate_epochs: 30.0 }
    }
}

/// `teacher.*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherConfig {
    /// EMA momentum at the start (cosine schedule).
    pub momentum_teacher: f64,
    /// EMA momentum at the end.
    pub final_momentum_teacher: f64,
    /// Teacher temperature at the start of its warm-up.
    pub warmup_teacher_temp: f64,
    /// Teacher temperature after warm-up.
    pub teacher_temp: f64,
    /// Epochs of linear temperature warm-up.
    pub warmup_teacher_temp_epochs: f64,
    /// Student temperature.
    pub student_temp: f64,
}

impl Default for TeacherConfig {
    fn default() -> Self {
        TeacherConfig {
            momentum_teacher: 0.992,
            final_momentum_teacher: 0.9999,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.07,
            warmup_teacher_temp_epochs: 30.0,
            student_temp: 0.1,
        }
    }
}

/// `optim.*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Length of the run in epochs (an epoch is `train.official_epoch_length` iterations).
    pub epochs: f64,
    /// Base learning rate before the batch-size scaling rule.
    pub base_lr: f64,
    /// `sqrt_wrt_1024` (lr = base·√(batch/1024)) or `linear_wrt_256` (lr = base·batch/256).
    pub scaling_rule: String,
    /// Final learning rate of the cosine schedule.
    pub min_lr: f64,
    /// Epochs of linear lr warm-up.
    pub warmup_epochs: f64,
    /// Weight decay at the start (cosine schedule).
    pub weight_decay: f64,
    /// Weight decay at the end.
    pub weight_decay_end: f64,
    /// Gradient clipping by global norm (0 disables).
    pub clip_grad: f64,
    /// AdamW β1.
    pub adamw_beta1: f64,
    /// AdamW β2.
    pub adamw_beta2: f64,
    /// Epochs at the start during which the heads' prototype layers are frozen (dinov2 stabilises early
    /// training this way).
    pub freeze_last_layer_epochs: f64,
    /// POA's `iter_num_scale`: the cosine schedules (lr, weight decay, teacher momentum) run over
    /// `iterations / iter_num_scale`, so a run with a scale below 1 stops before they reach their ends.
    pub iter_num_scale: f64,
    /// Layer-wise lr decay: block `i` of `L` trains at `rate^(L − i)` of the lr, the embeddings at
    /// `rate^(L + 1)`, the final norm and the head at the full lr (dinov2's rule); 1 turns it off.
    pub layerwise_decay: f64,
    /// Extra lr factor of the patch-embedding convolution (on top of the layer-wise factor).
    pub patch_embed_lr_mult: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            epochs: 100.0,
            base_lr: 0.004,
            scaling_rule: "sqrt_wrt_1024".into(),
            min_lr: 1e-6,
            warmup_epochs: 10.0,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            clip_grad: 1.5,
            adamw_beta1: 0.9,
            adamw_beta2: 0.999,
            freeze_last_layer_epochs: 1.0,
            iter_num_scale: 1.0,
            layerwise_decay: 0.9,
            patch_embed_lr_mult: 0.2,
        }
    }
}

/// `crops.*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CropsConfig {
    /// Area range of the two global crops.
    pub global_crops_scale: [f64; 2],
    /// Side of a global crop; also the image size of the lowered model.
    pub global_crops_size: usize,
    /// Number of local crops.
    pub local_crops_number: usize,
    /// Area range of local crops.
    pub local_crops_scale: [f64; 2],
    /// Side of a local crop.
    pub local_crops_size: usize,
    /// Probability of a Gaussian blur on global crop 1 and on global crop 2 (dinov2: 1.0, 0.1).
    pub global_crops_blur_probability: [f64; 2],
    /// Probability of solarisation on global crop 1 and on global crop 2 (dinov2: 0.0, 0.2).
    pub global_crops_solarize_probability: [f64; 2],
    /// Probability of a Gaussian blur on each local crop (dinov2: 0.5).
    pub local_crops_blur_probability: f64,
    /// Range of the blur's standard deviation in pixels, drawn uniformly for every blurred crop (dinov2:
    /// [0.1, 2.0]). The kernel has dinov2's 9 taps at 224 px global crops, fewer for smaller ones (3 at 32 px).
    pub blur_sigma: [f64; 2],
    /// How crops are resampled: `bicubic` (dinov2's, as PIL does it) or `bilinear`.
    pub interpolation: String,
}

impl Default for CropsConfig {
    fn default() -> Self {
        CropsConfig {
            global_crops_scale: [0.32, 1.0],
            global_crops_size: 224,
            local_crops_number: 8,
            local_crops_scale: [0.05, 0.32],
            local_crops_size: 96,
            global_crops_blur_probability: [1.0, 0.1],
            global_crops_solarize_probability: [0.0, 0.2],
            local_crops_blur_probability: 0.5,
            blur_sigma: [0.1, 2.0],
            interpolation: Interpolation::NAMES[0].into(),
        }
    }
}

impl CropsConfig {
    /// The resampling `interpolation` names; an unknown name is an error listing the valid ones.
    pub fn interpolation(&self) -> Result<Interpolation> {
        Interpolation::from_name(&self.interpolation)
            .with_context(|| format!("crops.interpolation `{}`; valid: {}", self.interpolation, Interpolation::NAMES.join(", ")))
    }
}

/// `train.*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Images per iteration.
    pub batch_size: usize,
    /// Iterations per epoch (dinov2's `OFFICIAL_EPOCH_LENGTH`).
    pub official_epoch_length: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Data-loading threads; 0 builds batches on the training thread (best when cores are few).
    pub num_workers: usize,
    /// Checkpoint every this many iterations (and at the end).
    pub saveckp_freq: usize,
    /// Earlier checkpoints kept in `RUN/checkpoints/iter_N/` besides the latest (`RUN/checkpoint/`).
    pub max_to_keep: usize,
    /// `fp32`, or `bf16` for mixed precision (matmuls in bfloat16; parameters, norms, softmax and the residual
    /// stream in f32). bf16 is about 2× faster on CPUs with AVX-512 BF16.
    pub compute_precision: String,
    /// How the teacher's outputs are centred: `sinkhorn_knopp` (3 iterations, dinov2/POA) or `centering`
    /// (DINO's EMA centre, `dino.center_momentum`).
    pub centering: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 64,
            official_epoch_length: 1250,
            seed: 0,
            num_workers: 1,
            saveckp_freq: 100,
            max_to_keep: 3,
            compute_precision: "fp32".into(),
            centering: "sinkhorn_knopp".into(),
        }
    }
}

/// Reads a number or a list of numbers as a list (`head_n_prototypes: 1024` or `[1024, 2048]`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Vec<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(usize),
        Many(Vec<usize>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(n) => vec![n],
        OneOrMany::Many(list) => list,
    })
}

impl Config {
    /// Reads a YAML config; unknown keys are errors, missing keys take defaults, the result is validated.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &[])
    }

    /// Reads a YAML config, then applies `key=value` overrides (dotted keys, YAML values), as dinov2's
    /// command-line `opts`: `student.layerscale=1.0`, `crops.local_crops_number=4`.
    pub fn load_with(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse_with(&text, overrides).with_context(|| format!("in config {}", path.display()))
    }

    /// Parses YAML text (see [`Config::load`]).
    pub fn parse(text: &str) -> Result<Self> {
        Self::parse_with(text, &[])
    }

    fn parse_with(text: &str, overrides: &[String]) -> Result<Self> {
        let config: Config = parse_checked(text, overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// The architecture of the elastic backbone (the image size is the global crop size).
    pub fn arch(&self) -> VitArch {
        let s = &self.student;
        VitArch {
            img_size: self.crops.global_crops_size,
            patch_size: s.patch_size,
            in_chans: 3,
            head_dim: s.head_dim,
            min_embed_dim: s.min_embed_dim,
            max_embed_dim: s.max_embed_dim,
            width_interval: s.width_interval,
            min_depth: s.min_depth,
            max_depth: s.max_depth,
            depth_interval: s.depth_interval,
            mlp_ratio: s.mlp_ratio,
            layerscale_init: s.layerscale,
            norm_eps: 1e-6,
        }
    }

    /// Learning rate after the batch-size scaling rule, for the global batch of `ranks` data-parallel processes
    /// of `train.batch_size` images each.
    pub fn lr(&self, ranks: usize) -> f64 {
        let batch = (self.train.batch_size * ranks) as f64;
        match self.optim.scaling_rule.as_str() {
            "linear_wrt_256" => self.optim.base_lr * batch / 256.0,
            _ => self.optim.base_lr * (batch / 1024.0).sqrt(),
        }
    }

    /// The libtorch kind matmuls run in.
    pub fn compute_kind(&self) -> tch::Kind {
        compute_kind(&self.train.compute_precision)
    }

    fn validate(&self) -> Result<()> {
        if self.student.arch != "vit" {
            bail!("student.arch `{}` is not supported; valid: vit", self.student.arch);
        }
        self.arch().validate()?;
        if !PRECISIONS.contains(&self.train.compute_precision.as_str()) {
            bail!("train.compute_precision `{}`; valid: {}", self.train.compute_precision, PRECISIONS.join(", "));
        }
        self.crops.interpolation()?;
        if !["sinkhorn_knopp", "centering"].contains(&self.train.centering.as_str()) {
            bail!("train.centering `{}`; valid: sinkhorn_knopp, centering", self.train.centering);
        }
        if !["sqrt_wrt_1024", "linear_wrt_256"].contains(&self.optim.scaling_rule.as_str()) {
            bail!("optim.scaling_rule `{}`; valid: sqrt_wrt_1024, linear_wrt_256", self.optim.scaling_rule);
        }
        if self.crops.local_crops_size % self.student.patch_size != 0 {
            bail!(
                "crops.local_crops_size {} must be a multiple of student.patch_size {}",
                self.crops.local_crops_size,
                self.student.patch_size
            );
        }
        if self.train.batch_size < 2 {
            bail!("train.batch_size must be at least 2 (KoLeo needs neighbours)");
        }
        if self.train.saveckp_freq == 0 {
            bail!("train.saveckp_freq must be at least 1");
        }
        if self.crops.local_crops_size == 0 || self.crops.global_crops_size == 0 {
            bail!("crops.global_crops_size and crops.local_crops_size must be positive");
        }
        let d = &self.dino;
        if d.head_n_prototypes.is_empty() || d.head_n_prototypes.contains(&0) || d.head_hidden_dim == 0 || d.head_bottleneck_dim == 0 {
            bail!("dino.head_n_prototypes, head_hidden_dim and head_bottleneck_dim must be positive");
        }
        if !(0.0..1.0).contains(&self.student.drop_path_rate) {
            bail!("student.drop_path_rate {} must be in [0, 1)", self.student.drop_path_rate);
        }
        if !(self.optim.iter_num_scale > 0.0 && self.optim.iter_num_scale <= 1.0) {
            bail!("optim.iter_num_scale {} must be in (0, 1]", self.optim.iter_num_scale);
        }
        if !(self.optim.layerwise_decay > 0.0 && self.optim.layerwise_decay <= 1.0) || self.optim.patch_embed_lr_mult < 0.0 {
            bail!("optim.layerwise_decay must be in (0, 1] and optim.patch_embed_lr_mult at least 0");
        }
        if d.net_select_scale < 1.0 {
            bail!("dino.net_select_scale {} must be at least 1 (1 samples every sub-network equally)", d.net_select_scale);
        }
        if !(0.0..=1.0).contains(&self.ibot.mask_sample_probability) {
            bail!("ibot.mask_sample_probability {} must be in [0, 1]", self.ibot.mask_sample_probability);
        }
        if !(0.0..=1.0).contains(&self.dino.lambda_ie) {
            bail!("dino.lambda_ie {} must be in [0, 1]", self.dino.lambda_ie);
        }
        let [lo, hi] = self.ibot.mask_ratio_min_max;
        if !(0.0 <= lo && lo <= hi && hi < 1.0) {
            bail!("ibot.mask_ratio_min_max [{lo}, {hi}] must satisfy 0 <= min <= max < 1");
        }
        for (key, [lo, hi]) in [("crops.global_crops_scale", self.crops.global_crops_scale), ("crops.local_crops_scale", self.crops.local_crops_scale)] {
            if !(0.0 < lo && lo <= hi && hi <= 1.0) {
                bail!("{key} [{lo}, {hi}] must satisfy 0 < min <= max <= 1");
            }
        }
        if self.optim.epochs <= 0.0 || self.train.official_epoch_length == 0 {
            bail!("optim.epochs and train.official_epoch_length must be positive");
        }
        Ok(())
    }
}

/// The values of a `compute_precision` key.
pub const PRECISIONS: [&str; 2] = ["fp32", "bf16"];

/// The libtorch kind matmuls run in for a `compute_precision` of [`PRECISIONS`]: `bf16` is bfloat16 (mixed
/// precision), anything else f32.
pub fn compute_kind(precision: &str) -> tch::Kind {
    match precision {
        "bf16" => tch::Kind::BFloat16,
        _ => tch::Kind::Float,
    }
}

/// Parses YAML `text` into `T` after `key=value` overrides (dotted keys, YAML values, as dinov2's command-line
/// `opts`): missing keys take `T`'s defaults, an unknown key is an error naming the nearest valid spelling. Every
/// config file poac reads goes through it.
pub fn parse_checked<T: Default + Serialize + DeserializeOwned>(text: &str, overrides: &[String]) -> Result<T> {
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).context("not valid YAML")?;
    if value.is_null() {
        value = serde_yaml::Value::Mapping(Default::default());
    }
    for item in overrides {
        let (key, raw) = item.split_once('=').with_context(|| format!("override `{item}` is not key=value"))?;
        let parsed: serde_yaml::Value = serde_yaml::from_str(raw).with_context(|| format!("override `{item}`: bad value"))?;
        let mut node = &mut value;
        for part in key.split('.') {
            let map = node.as_mapping_mut().with_context(|| format!("override `{item}`: `{part}` is not inside a section"))?;
            node = map.entry(serde_yaml::Value::from(part)).or_insert(serde_yaml::Value::Mapping(Default::default()));
        }
        *node = parsed;
    }
    let known = serde_yaml::to_value(T::default()).expect("a default config serialises");
    check_keys(&value, &known, "")?;
    serde_yaml::from_value(value).context("a value has the wrong type")
}

/// Fails on the first key of `value` that `known` does not have, suggesting the nearest known key.
fn check_keys(value: &serde_yaml::Value, known: &serde_yaml::Value, prefix: &str) -> Result<()> {
    let (Some(map), Some(known_map)) = (value.as_mapping(), known.as_mapping()) else { return Ok(()) };
    for (key, sub) in map {
        let key = key.as_str().unwrap_or_default();
        let path = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
        match known_map.get(key) {
            Some(known_sub) => check_keys(sub, known_sub, &path)?,
            None => {
                let candidates: Vec<&str> = known_map.keys().filter_map(|k| k.as_str()).collect();
                let nearest = candidates
                    .iter()
                    .min_by(|a, b| strsim::levenshtein(key, a).cmp(&strsim::levenshtein(key, b)))
                    .map(|n| if prefix.is_empty() { n.to_string() } else { format!("{prefix}.{n}") });
                match nearest {
                    Some(n) => bail!("unknown config key `{path}`; did you mean `{n}`? (valid here: {})", candidates.join(", ")),
                    None => bail!("unknown config key `{path}`"),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_name_the_nearest_valid_one() {
        let err = Config::parse("dino:\n  lambda_ei: 0.5\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("`dino.lambda_ei`") && msg.contains("`dino.lambda_ie`"), "{msg}");
        let err = format!("{:#}", Config::parse("studnet:\n  head_dim: 32\n").unwrap_err());
        assert!(err.contains("`student`"), "{err}");
    }

    #[test]
    fn overrides_replace_values_and_are_checked() {
        let c = Config::parse_with("student:\n  head_dim: 32\n", &["student.layerscale=1.0".into(), "train.seed=3".into()]).unwrap();
        assert_eq!((c.student.layerscale, c.train.seed, c.student.head_dim), (1.0, 3, 32));
        assert!(Config::parse_with("", &["student.layerscael=1".into()]).is_err());
        assert!(Config::parse_with("", &["student".into()]).is_err());
    }

    #[test]
    fn missing_keys_take_defaults_and_lr_scales() {
        let c = Config::parse("train:\n  batch_size: 256\n").unwrap();
        assert_eq!(c.dino.lambda_ie, 0.8);
        assert!((c.lr(1) - 0.004 * 0.5).abs() < 1e-12);
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(Config::parse("student:\n  min_embed_dim: 100\n").is_err());
        assert!(Config::parse("dino:\n  lambda_ie: 1.5\n").is_err());
        assert!(Config::parse("student:\n  head_dim: [1]\n").is_err());
        assert!(Config::parse("optim:\n  scaling_rule: cubic\n").is_err());
        let err = format!("{:#}", Config::parse("crops:\n  interpolation: bicubik\n").unwrap_err());
        assert!(err.contains("crops.interpolation `bicubik`; valid: bicubic, bilinear"), "{err}");
        let c = Config::parse("crops:\n  interpolation: bilinear\n").unwrap();
        assert_eq!(c.crops.interpolation().unwrap(), Interpolation::Bilinear);
        assert_eq!(Config::default().crops.interpolation().unwrap(), Interpolation::Bicubic);
    }
}
