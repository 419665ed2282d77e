//! The three networks of POA and one training iteration: the EMA teacher, the intact student and the elastic
//! student (a sub-network of the intact one, sharing its parameters), their heads, the optimiser and centres.

use super::adamw::AdamW;
use super::checkpoint::{self, Progress};
use super::losses::{cross_entropy, dino_loss, ibot_loss, koleo_loss, Centering};
use super::schedule::ScheduleValues;
use crate::config::Config;
use crate::data::loader::CropBatch;
use crate::model::{head, DinoHead, ElasticVit};
use anyhow::{bail, Context, Result};
use poac_ir::{build::supergraph, SubnetSpec};
use std::collections::HashMap;
use tch::{no_grad, Device, Kind, Tensor};

/// Loss terms of one iteration, for logging.
pub struct Losses {
    /// The total loss (a scalar tensor).
    pub total: Tensor,
    /// The intact student's term.
    pub intact: f64,
    /// The elastic student's term against the teacher.
    pub elastic: f64,
    /// The intact→elastic distillation term.
    pub intact_to_elastic: f64,
}

/// The networks and optimiser state of a run.
pub struct Poa {
    /// The run's configuration.
    pub config: Config,
    /// The student (intact and elastic).
    pub student: ElasticVit,
    student_head: DinoHead,
    teacher: ElasticVit,
    teacher_head: DinoHead,
    /// The optimiser of the student and its head.
    pub adam: AdamW,
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

impl Poa {
    /// Fresh networks: the teacher starts as a copy of the student.
    pub fn fresh(config: Config, device: Device) -> Result<Self> {
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

    /// Networks, optimiser and centres from the checkpoint of `run`.
    pub fn restore(config: Config, run: &std::path::Path, device: Device) -> Result<(Self, Progress)> {
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
        let head_names: Vec<String> = head::NAMES.iter().map(|n| n.to_string()).collect();
        let mut heads = |prefix: &str| -> Result<DinoHead> {
            let mut map = take(prefix, head_names.clone())?;
            Ok(DinoHead::from_params(head_names.iter().map(|n| map.remove(n).unwrap()).collect()))
        };
        let mut student_head = heads("student_head.")?;
        let teacher_head = heads("teacher_head.")?;
        let expected = [d.head_hidden_dim, d.head_bottleneck_dim, d.head_n_prototypes].map(|n| n as i64);
        if student_head.dims() != expected {
            bail!("the config's dino head sizes (hidden, bottleneck, prototypes) {expected:?} differ from the checkpoint's {:?}", student_head.dims());
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

    /// Writes a checkpoint of everything into `run`.
    pub fn save(&self, run: &std::path::Path, progress: &Progress) -> Result<()> {
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
    pub fn step(&mut self, batch: &CropBatch, subnet: SubnetSpec, v: ScheduleValues) -> Result<Losses> {
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
            loss
        };
        // KoLeo on each global crop's class tokens, averaged over the two students (POA_SPEC §5).
        let koleo = |out: &StudentOutputs| -> Tensor { out.global_cls.split(b, 0).iter().map(koleo_loss).sum() };
        let intact_out = self.student_outputs(&batch, intact, masks, &mask_index);
        let elastic_out = self.student_outputs(&batch, subnet, masks, &mask_index);
        let intact_loss = student_loss(&intact_out);
        let elastic_loss = student_loss(&elastic_out);
        let intact_targets = no_grad(|| Tensor::cat(&[&intact_out.global_logits, &intact_out.local_logits], 0).detach() / tau).softmax(-1, Kind::Float);
        let elastic_logits = Tensor::cat(&[&elastic_out.global_logits, &elastic_out.local_logits], 0);
        let to_elastic = cross_entropy(&intact_targets, &elastic_logits, tau);
        let lambda = cfg.dino.lambda_ie;
        let mut total = &intact_loss * lambda + (&elastic_loss + &to_elastic) * (1.0 - lambda);
        if cfg.dino.koleo_loss_weight > 0.0 {
            total += (koleo(&intact_out) + koleo(&elastic_out)) * (0.5 * cfg.dino.koleo_loss_weight);
        }

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
                let _ = t.shallow_clone().lerp_(s, 1.0 - v.momentum);
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
            for mut g in grads {
                let _ = g.g_mul_scalar_(factor);
            }
        }
    });
}
