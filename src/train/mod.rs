//! POA pre-training (POA_SPEC §1–§6): an EMA teacher, the intact student and one sampled elastic student per
//! iteration, sharing the student's parameters; DINO + iBOT + KoLeo losses and the intact→elastic term.

pub mod adamw;
pub mod checkpoint;
pub mod losses;
pub mod sampler;
pub mod schedule;

use crate::config::Config;
use crate::data::loader::{CropBatch, MultiCropSpec, TrainLoader};
use crate::data::{DatasetIndex, Split};
use crate::model::{DinoHead, ElasticVit};
use adamw::AdamW;
use anyhow::{bail, Context, Result};
use checkpoint::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use losses::{cross_entropy, dino_loss, ibot_loss, koleo_loss, Centering};
use poac_ir::{build::supergraph, SubnetSpec};
use sampler::ElasticSampler;
use schedule::{ScheduleValues, Schedules};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{no_grad, Device, Kind, Tensor};

/// What `poac pretrain` was asked to do.
#[derive(Clone, Debug)]
pub struct PretrainOptions {
    /// The YAML config.
    pub config: PathBuf,
    /// Dataset root (ImageNet layout).
    pub data: PathBuf,
    /// Run folder (checkpoint, metrics, resolved config).
    pub output: PathBuf,
    /// Stop after this many iterations (and stretch the schedules over them).
    pub max_iters: Option<u64>,
    /// Stop after this much training time (the schedules are fitted to it after a few iterations).
    pub time_budget: Option<Duration>,
    /// Continue the run's checkpoint.
    pub resume: bool,
    /// Where to train.
    pub device: Device,
    /// `key=value` config overrides.
    pub overrides: Vec<String>,
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Iterations done in total.
    pub iterations: u64,
    /// Mean images per second of this invocation (first iteration excluded).
    pub images_per_second: f64,
    /// Loss of the last iteration.
    pub last_loss: f64,
    /// Images skipped because they did not decode.
    pub skipped_images: usize,
}

/// Loss terms of one iteration, for logging.
struct Losses {
    total: Tensor,
    intact: f64,
    elastic: f64,
    intact_to_elastic: f64,
}

/// The networks and optimiser state of a run.
struct Poa {
    config: Config,
    student: ElasticVit,
    student_head: DinoHead,
    teacher: ElasticVit,
    teacher_head: DinoHead,
    adam: AdamW,
    decay: Vec<bool>,
    dino_center: Centering,
    ibot_center: Centering,
}

/// Outputs of one student (intact or elastic) on a batch.
struct StudentOutputs {
    global_logits: Tensor,
    local_logits: Tensor,
    patch_logits: Tensor,
    global_cls: Tensor,
}

/// Trains; returns when the iterations or the time budget are used up, or on Ctrl-C (after saving).
pub fn pretrain(options: &PretrainOptions) -> Result<Summary> {
    let config = Config::load_with(&options.config, &options.overrides)?;
    let index = DatasetIndex::open(&options.data)?;
    let run = &options.output;
    std::fs::create_dir_all(run).with_context(|| format!("cannot create run folder {}", run.display()))?;
    let has_checkpoint = checkpoint::resolve(run).is_ok();
    if has_checkpoint && !options.resume {
        bail!("{} already holds a checkpoint: pass --resume to continue it, or choose another --output", run.display());
    }
    tch::manual_seed(config.train.seed as i64);
    let (mut poa, mut progress) = if has_checkpoint {
        Poa::restore(config, run, options.device)?
    } else {
        let seed = config.train.seed;
        (Poa::fresh(config, options.device)?, Progress { iteration: 0, total_iters: 0, adam_step: 0, seed, elapsed_s: 0.0 })
    };
    let config = poa.config.clone();
    std::fs::write(run.join("config.yaml"), serde_yaml::to_string(&config)?)?;

    let config_total = (config.optim.epochs * config.train.official_epoch_length as f64).round() as u64;
    let mut fit_to_budget = false;
    if progress.total_iters == 0 {
        progress.total_iters = options.max_iters.unwrap_or(config_total);
        fit_to_budget = options.time_budget.is_some() && options.max_iters.is_none();
    } else if let Some(max) = options.max_iters {
        progress.total_iters = max;
    }
    let mut schedules = Schedules::new(&config, progress.total_iters);
    let mut sampler = ElasticSampler::new(&poa.student.graph().space, config.dino.net_select_scale, config.train.seed);

    let crops = &config.crops;
    let spec = MultiCropSpec {
        batch_size: config.train.batch_size,
        global_size: crops.global_crops_size,
        global_scale: crops.global_crops_scale,
        local_number: crops.local_crops_number,
        local_size: crops.local_crops_size,
        local_scale: crops.local_crops_scale,
        patch_size: config.student.patch_size,
        mask_probability: config.ibot.mask_sample_probability,
        mask_ratio: config.ibot.mask_ratio_min_max,
    };
    if index.train.len() < config.train.batch_size {
        bail!("the training split has {} images, fewer than train.batch_size {}", index.train.len(), config.train.batch_size);
    }
    let mut loader = TrainLoader::start(index.root(), index.split(Split::Train).to_vec(), spec, config.train.seed, progress.iteration, config.train.num_workers);

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));

    let bar = ProgressBar::new(progress.total_iters).with_style(
        ProgressStyle::with_template("pretrain {bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}").unwrap(),
    );
    bar.set_position(progress.iteration);
    let mut metrics = std::fs::OpenOptions::new().create(true).append(true).open(run.join("metrics.jsonl"))?;
    let started = Instant::now();
    let first_iteration = progress.iteration;
    let mut timed_since: Option<Instant> = None;
    let mut last_loss = f64::NAN;
    let batch = config.train.batch_size as f64;

    while progress.iteration < progress.total_iters {
        if interrupted.load(Ordering::SeqCst) {
            bar.println("interrupted: saving a checkpoint and stopping");
            break;
        }
        if options.time_budget.is_some_and(|b| started.elapsed() >= b) {
            break;
        }
        let t0 = Instant::now();
        let it = progress.iteration;
        let values = schedules.at(it);
        let subnet = sampler.at(it);
        let crop_batch = loader.next_batch();
        let losses = poa.step(&crop_batch, subnet, values)?;
        let loss = losses.total.double_value(&[]);
        if !loss.is_finite() {
            bail!("the loss is not finite ({loss}) at iteration {it}; the last checkpoint (before it) is kept in {}", run.display());
        }
        last_loss = loss;
        progress.iteration += 1;
        progress.adam_step = poa.adam.step;
        progress.elapsed_s += t0.elapsed().as_secs_f64();
        if it == first_iteration {
            timed_since = Some(Instant::now());
        }
        let done_timed = progress.iteration - first_iteration - 1;
        let images_per_second = timed_since.map_or(0.0, |t| done_timed as f64 * batch / t.elapsed().as_secs_f64().max(1e-9));

        if fit_to_budget && done_timed == 3 {
            let budget = options.time_budget.unwrap();
            let per_iteration = timed_since.unwrap().elapsed().as_secs_f64() / 3.0;
            let remaining = budget.saturating_sub(started.elapsed()).as_secs_f64();
            progress.total_iters = progress.iteration + (remaining / per_iteration).floor() as u64;
            schedules = Schedules::new(&config, progress.total_iters);
            bar.set_length(progress.total_iters);
            bar.println(format!("fitted the schedules to the time budget: {} iterations at {:.2} s each", progress.total_iters, per_iteration));
            fit_to_budget = false;
        }
        bar.set_position(progress.iteration);
        bar.set_message(format!("loss {loss:.3} | {images_per_second:.1} img/s | elastic {subnet}"));
        let line = serde_json::json!({
            "iteration": it, "loss": loss, "intact": losses.intact, "elastic": losses.elastic,
            "intact_to_elastic": losses.intact_to_elastic, "elastic_subnet": subnet.to_string(),
            "lr": values.lr, "weight_decay": values.weight_decay, "momentum": values.momentum,
            "teacher_temp": values.teacher_temp, "images_per_second": images_per_second,
            "skipped_images": loader.skipped_total.load(Ordering::Relaxed), "elapsed_s": progress.elapsed_s,
        });
        writeln!(metrics, "{line}")?;
        if progress.iteration % config.train.saveckp_freq as u64 == 0 {
            poa.save(run, &progress)?;
        }
    }
    poa.save(run, &progress)?;
    bar.finish_and_clear();
    let timed = progress.iteration.saturating_sub(first_iteration + 1);
    let images_per_second = timed_since.map_or(0.0, |t| timed as f64 * batch / t.elapsed().as_secs_f64().max(1e-9));
    let skipped_images = loader.skipped_total.load(Ordering::Relaxed);
    Ok(Summary { iterations: progress.iteration, images_per_second, last_loss, skipped_images })
}

impl Poa {
    fn fresh(config: Config, device: Device) -> Result<Self> {
        let graph = supergraph(&config.arch())?;
        let width = graph.space.max_width();
        let mut student = ElasticVit::new(graph, device);
        let d = &config.dino;
        let mut student_head = DinoHead::new(width, d.head_hidden_dim, d.head_bottleneck_dim, d.head_n_prototypes, device);
        let teacher = ElasticVit::from_named(student.graph().clone(), student.named_params().into_iter().map(|(k, t)| (k, t.copy())).collect())?;
        let teacher_head = DinoHead::from_params(student_head.params().iter().map(|t| t.copy()).collect());
        student.set_requires_grad(true);
        student_head.set_requires_grad(true);
        Ok(Self::assemble(config, student, student_head, teacher, teacher_head, device))
    }

    fn assemble(config: Config, mut student: ElasticVit, mut student_head: DinoHead, mut teacher: ElasticVit, mut teacher_head: DinoHead, device: Device) -> Self {
        let kind = config.compute_kind();
        student.set_compute_kind(kind);
        teacher.set_compute_kind(kind);
        student_head.set_compute_kind(kind);
        teacher_head.set_compute_kind(kind);
        let names: Vec<String> = student.named_params().into_iter().chain(student_head.named_params()).map(|(k, _)| k).collect();
        // dinov2: no weight decay on biases, norms and LayerScale gammas.
        let decay = names.iter().map(|n| !(n.ends_with(".bias") || n.contains("norm") || n.contains("gamma"))).collect();
        let params: Vec<Tensor> = student.params().iter().chain(student_head.params()).map(|t| t.shallow_clone()).collect();
        let adam = AdamW::new(&params, config.optim.adamw_beta1, config.optim.adamw_beta2);
        let k = config.dino.head_n_prototypes as i64;
        let momentum = config.dino.center_momentum;
        Poa {
            student,
            student_head,
            teacher,
            teacher_head,
            adam,
            decay,
            dino_center: Centering::new(k, momentum, device),
            ibot_center: Centering::new(k, momentum, device),
            config,
        }
    }

    fn restore(config: Config, run: &std::path::Path, device: Device) -> Result<(Self, Progress)> {
        let ckpt = checkpoint::load(run)?;
        let graph = ckpt.graph;
        if graph.arch != config.arch() {
            bail!("the config's architecture differs from the checkpoint's in {}; resume with the run's own config.yaml", run.display());
        }
        let mut state = ckpt.train_state;
        let mut take = |prefix: &str, names: Vec<String>| -> Result<HashMap<String, Tensor>> {
            names
                .into_iter()
                .map(|n| {
                    let key = format!("{prefix}{n}");
                    let t = state.remove(&key).with_context(|| format!("the checkpoint has no `{key}`"))?;
                    Ok((n, t.to_device(device)))
                })
                .collect()
        };
        let names: Vec<String> = graph.params.iter().map(|p| p.name.clone()).collect();
        let mut student = ElasticVit::from_named(graph.clone(), take("student.", names)?)?;
        let teacher = ElasticVit::from_named(graph, ckpt.teacher.into_iter().map(|(k, t)| (k, t.to_device(device))).collect())?;
        let d = &config.dino;
        let head_names: Vec<String> = DinoHead::new(1, 1, 1, 1, Device::Cpu).named_params().into_iter().map(|(k, _)| k).collect();
        let mut heads = |prefix: &str| -> Result<DinoHead> {
            let mut map = take(prefix, head_names.clone())?;
            Ok(DinoHead::from_params(head_names.iter().map(|n| map.remove(n).unwrap()).collect()))
        };
        let mut student_head = heads("student_head.")?;
        let teacher_head = heads("teacher_head.")?;
        if student_head.params()[6].size()[0] != d.head_n_prototypes as i64 {
            bail!("the config's dino.head_n_prototypes differs from the checkpoint's");
        }
        student.set_requires_grad(true);
        student_head.set_requires_grad(true);
        let mut poa = Self::assemble(config, student, student_head, teacher, teacher_head, device);
        for i in 0..poa.adam.m.len() {
            poa.adam.m[i] = state.remove(&format!("adam.m.{i}")).context("the checkpoint has no optimiser state")?.to_device(device);
            poa.adam.v[i] = state.remove(&format!("adam.v.{i}")).context("the checkpoint has no optimiser state")?.to_device(device);
        }
        poa.adam.step = ckpt.progress.adam_step;
        poa.dino_center.center = state.remove("center.dino").context("no center.dino")?.to_device(device);
        poa.ibot_center.center = state.remove("center.ibot").context("no center.ibot")?.to_device(device);
        Ok((poa, ckpt.progress))
    }

    fn save(&self, run: &std::path::Path, progress: &Progress) -> Result<()> {
        let prefixed = |prefix: &str, named: Vec<(String, &Tensor)>| -> Vec<(String, Tensor)> {
            named.into_iter().map(|(k, t)| (format!("{prefix}{k}"), t.shallow_clone())).collect()
        };
        let mut state = prefixed("student.", self.student.named_params());
        state.extend(prefixed("student_head.", self.student_head.named_params()));
        state.extend(prefixed("teacher_head.", self.teacher_head.named_params()));
        for (i, (m, v)) in self.adam.m.iter().zip(&self.adam.v).enumerate() {
            state.push((format!("adam.m.{i}"), m.shallow_clone()));
            state.push((format!("adam.v.{i}"), v.shallow_clone()));
        }
        state.push(("center.dino".into(), self.dino_center.center.shallow_clone()));
        state.push(("center.ibot".into(), self.ibot_center.center.shallow_clone()));
        let state_refs: Vec<(String, &Tensor)> = state.iter().map(|(k, t)| (k.clone(), t)).collect();
        checkpoint::save(run, self.teacher.graph(), &self.teacher.named_params(), &state_refs, progress)
    }

    fn student_outputs(&self, batch: &CropBatch, subnet: SubnetSpec, masks: &Tensor, mask_index: &Tensor) -> StudentOutputs {
        let global_tokens = self.student.forward(&batch.global, subnet, Some(masks));
        let local_tokens = self.student.forward(&batch.local, subnet, None);
        let global_cls = global_tokens.select(1, 0);
        let width = subnet.width as i64;
        let patches = global_tokens.narrow(1, 1, global_tokens.size()[1] - 1).reshape([-1, width]).index_select(0, mask_index);
        let (n_global, n_local) = (global_cls.size()[0], local_tokens.size()[0]);
        let logits = self.student_head.forward(&Tensor::cat(&[global_cls.shallow_clone(), local_tokens.select(1, 0), patches], 0));
        StudentOutputs {
            global_logits: logits.narrow(0, 0, n_global),
            local_logits: logits.narrow(0, n_global, n_local),
            patch_logits: logits.narrow(0, n_global + n_local, logits.size()[0] - n_global - n_local),
            global_cls,
        }
    }

    /// One POA iteration: forward teacher and both students, backward, clip, AdamW, EMA.
    fn step(&mut self, batch: &CropBatch, subnet: SubnetSpec, v: ScheduleValues) -> Result<Losses> {
        let device = self.student.params()[0].device();
        let batch = CropBatch { global: batch.global.to_device(device), local: batch.local.to_device(device), masks: batch.masks.to_device(device), skipped: 0 };
        let cfg = &self.config;
        let b = cfg.train.batch_size as i64;
        let intact = self.student.graph().space.intact();
        let masks = &batch.masks;
        let mask_index = masks.flatten(0, 1).nonzero().squeeze_dim(1);
        let n_masked = mask_index.size()[0];
        let ibot_on = v.ibot_active && n_masked > 0 && cfg.ibot.loss_weight > 0.0;
        let token_weights = (masks.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0).reciprocal().unsqueeze(1).expand(masks.size(), false))
            .flatten(0, 1)
            .index_select(0, &mask_index);

        let (teacher_cls, teacher_patch) = no_grad(|| {
            let tokens = self.teacher.forward(&batch.global, intact, None);
            let cls = tokens.select(1, 0);
            let width = cls.size()[1];
            let patches = tokens.narrow(1, 1, tokens.size()[1] - 1).reshape([-1, width]).index_select(0, &mask_index);
            let logits = self.teacher_head.forward(&Tensor::cat(&[cls, patches], 0));
            let cls_logits = logits.narrow(0, 0, 2 * b);
            let patch_logits = logits.narrow(0, 2 * b, n_masked);
            let cls_probs = self.dino_center.probs(&cls_logits, v.teacher_temp);
            let patch_probs = self.ibot_center.probs(&patch_logits, v.teacher_temp);
            self.dino_center.update(&cls_logits);
            if ibot_on {
                self.ibot_center.update(&patch_logits);
            }
            (cls_probs, patch_probs)
        });

        let tau = cfg.teacher.student_temp;
        let student_loss = |out: &StudentOutputs| -> Tensor {
            let mut loss = dino_loss(&teacher_cls, &out.global_logits, &out.local_logits, b, tau) * cfg.dino.loss_weight;
            if ibot_on {
                loss += ibot_loss(&teacher_patch, &out.patch_logits, &token_weights, 2 * b, tau) * cfg.ibot.loss_weight;
            }
            if cfg.dino.koleo_loss_weight > 0.0 {
                let koleo: Tensor = out.global_cls.split(b, 0).iter().map(koleo_loss).sum();
                loss += koleo * cfg.dino.koleo_loss_weight;
            }
            loss
        };
        let intact_out = self.student_outputs(&batch, intact, masks, &mask_index);
        let elastic_out = self.student_outputs(&batch, subnet, masks, &mask_index);
        let intact_loss = student_loss(&intact_out);
        let elastic_loss = student_loss(&elastic_out);
        let intact_targets = no_grad(|| Tensor::cat(&[&intact_out.global_logits, &intact_out.local_logits], 0).detach() / tau).softmax(-1, Kind::Float);
        let elastic_logits = Tensor::cat(&[&elastic_out.global_logits, &elastic_out.local_logits], 0);
        let to_elastic = cross_entropy(&intact_targets, &elastic_logits, tau);
        let lambda = cfg.dino.lambda_ie;
        let total = &intact_loss * lambda + (&elastic_loss + &to_elastic) * (1.0 - lambda);

        total.backward();
        let backbone: Vec<Tensor> = self.student.params().iter().map(|t| t.shallow_clone()).collect();
        let head: Vec<Tensor> = self.student_head.params().iter().map(|t| t.shallow_clone()).collect();
        if cfg.optim.clip_grad > 0.0 {
            clip_grad_norm(&backbone, cfg.optim.clip_grad);
            clip_grad_norm(&head, cfg.optim.clip_grad);
        }
        let params: Vec<Tensor> = backbone.into_iter().chain(head).collect();
        self.adam.step(&params, &self.decay, v.lr, v.weight_decay);
        for p in &params {
            let mut p = p.shallow_clone();
            p.zero_grad();
        }
        no_grad(|| {
            let pairs = self.teacher.params().iter().zip(self.student.params()).chain(self.teacher_head.params().iter().zip(self.student_head.params()));
            for (t, s) in pairs {
                let mut t = t.shallow_clone();
                let _ = t.f_lerp_(s, 1.0 - v.momentum);
            }
        });
        Ok(Losses {
            intact: intact_loss.double_value(&[]),
            elastic: elastic_loss.double_value(&[]),
            intact_to_elastic: to_elastic.double_value(&[]),
            total,
        })
    }
}

/// Scales the gradients of `params` so that their global L2 norm is at most `max_norm`.
fn clip_grad_norm(params: &[Tensor], max_norm: f64) {
    no_grad(|| {
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).filter(|g| g.defined()).collect();
        if grads.is_empty() {
            return;
        }
        let squares: Vec<Tensor> = grads.iter().map(|g| g.pow_tensor_scalar(2).sum(Kind::Float)).collect();
        let total = Tensor::stack(&squares, 0).sum(Kind::Float).sqrt().double_value(&[]);
        if total > max_norm {
            let factor = max_norm / (total + 1e-6);
            for g in grads {
                let mut g = g;
                let _ = g.f_mul_scalar_(factor);
            }
        }
    });
}
