//! The three networks of POA and one training iteration: the EMA teacher, the intact student and the elastic
//! student (a sub-network of the intact one, sharing its parameters), their heads, the optimiser and centres.

use super::adamw::{AdamW, ParamGroup};
use super::param_groups::{backbone_group, head_group};
use super::checkpoint::{self, Progress};
use super::losses::{cross_entropy, dino_loss, ibot_loss, koleo_loss, Centering};
use super::schedule::ScheduleValues;
use crate::config::Config;
use crate::data::loader::CropBatch;
use crate::dist::World;
use crate::model::{head, DinoHead, ElasticVit};
use anyhow::{bail, Context, Result};
use poac_ir::{build::supergraph, SubnetSpec};
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
    /// The DINO (class-token) part of the intact student's term.
    pub intact_dino: f64,
    /// The DINO part of the elastic student's term.
    pub elastic_dino: f64,
    /// Seconds spent averaging the gradients over the ranks (0 for one process).
    pub gradient_all_reduce_s: f64,
}

/// The networks and optimiser state of a run.
pub struct Poa {
    /// The run's configuration.
    pub config: Config,
    /// The student (intact and elastic).
    pub student: ElasticVit,
    /// The student's projection heads (one per entry of `dino.head_n_prototypes`), shared by both students.
    student_heads: Vec<DinoHead>,
    teacher: ElasticVit,
    teacher_heads: Vec<DinoHead>,
    /// The optimiser of the student and its heads.
    pub adam: AdamW,
    groups: Vec<ParamGroup>,
    /// Per head: the centring of the teacher's class-token and patch-token outputs.
    centers: Vec<(Centering, Centering)>,
}

/// Outputs of one student (intact or elastic) on a batch.
struct StudentOutputs {
    /// Class tokens of the global crops, crop-major `[2B, w]` (for KoLeo).
    global_cls: Tensor,
    /// Per head: prototype logits of the global class tokens, the local class tokens and the masked patches.
    heads: Vec<[Tensor; 3]>,
}

/// Key prefix of head `h`'s parameters in the training state (`student_head.0.mlp.0.weight`, …).
fn head_prefix(network: &str, h: usize) -> String {
    format!("{network}_head.{h}.")
}

impl Poa {
    /// Fresh networks: the teacher starts as a copy of the student.
    pub fn fresh(config: Config, device: Device) -> Result<Self> {
        let graph = supergraph(&config.arch())?;
        let width = graph.space.max_width();
        let student = ElasticVit::new(graph, device);
        let d = &config.dino;
        let student_heads: Vec<DinoHead> =
            d.head_n_prototypes.iter().map(|&k| DinoHead::new(width, d.head_hidden_dim, d.head_bottleneck_dim, k, device)).collect();
        let teacher = ElasticVit::from_named(student.graph().clone(), student.named_params().into_iter().map(|(k, t)| (k, t.copy())).collect())?;
        let teacher_heads = student_heads.iter().map(|h| DinoHead::from_params(h.params().iter().map(|t| t.copy()).collect())).collect();
        Ok(Self::assemble(config, student, student_heads, teacher, teacher_heads, device))
    }

    fn assemble(config: Config, mut student: ElasticVit, mut student_heads: Vec<DinoHead>, mut teacher: ElasticVit, mut teacher_heads: Vec<DinoHead>, device: Device) -> Self {
        let kind = config.compute_kind();
        student.set_requires_grad(true);
        student.set_compute_kind(kind);
        teacher.set_compute_kind(kind);
        for head in student_heads.iter_mut() {
            head.set_requires_grad(true);
        }
        for head in student_heads.iter_mut().chain(teacher_heads.iter_mut()) {
            head.set_compute_kind(kind);
        }
        let blocks = student.graph().space.max_depth();
        let o = &config.optim;
        let groups = student
            .named_params()
            .iter()
            .map(|(name, _)| backbone_group(name, blocks, o.layerwise_decay, o.patch_embed_lr_mult))
            .chain(student_heads.iter().flat_map(|h| h.named_params().into_iter().map(|(name, _)| head_group(&name))))
            .collect();
        let params: Vec<Tensor> = student.params().iter().chain(student_heads.iter().flat_map(|h| h.params())).map(|t| t.shallow_clone()).collect();
        let adam = AdamW::new(&params, o.adamw_beta1, o.adamw_beta2);
        let (momentum, sinkhorn_knopp) = (config.dino.center_momentum, config.train.centering == "sinkhorn_knopp");
        let centers = config
            .dino
            .head_n_prototypes
            .iter()
            .map(|&k| (Centering::new(k as i64, momentum, sinkhorn_knopp, device), Centering::new(k as i64, momentum, sinkhorn_knopp, device)))
            .collect();
        Poa { student, student_heads, teacher, teacher_heads, adam, groups, centers, config }
    }

    /// Networks, optimiser and centres from the checkpoint of `run`.
    pub fn restore(config: Config, run: &std::path::Path, device: Device) -> Result<(Self, Progress)> {
        let ckpt = checkpoint::load(run)?;
        let graph = ckpt.graph;
        if graph.arch != config.arch() {
            bail!("the config's architecture differs from the checkpoint's in {}; resume with the run's own config.yaml", run.display());
        }
        let mut state = ckpt.train_state;
        let mut take = |key: String| -> Result<Tensor> {
            let t = state.remove(&key).with_context(|| format!("the checkpoint has no `{key}` (was it written with another config?)"))?;
            Ok(t.to_device(device))
        };
        let student_named = graph.params.iter().map(|p| Ok((p.name.clone(), take(format!("student.{}", p.name))?))).collect::<Result<_>>()?;
        let student = ElasticVit::from_named(graph.clone(), student_named)?;
        let teacher = ElasticVit::from_named(graph, ckpt.teacher.into_iter().map(|(k, t)| (k, t.to_device(device))).collect())?;
        let d = &config.dino;
        let mut heads = |network: &str| -> Result<Vec<DinoHead>> {
            (0..d.head_n_prototypes.len())
                .map(|h| Ok(DinoHead::from_params(head::NAMES.iter().map(|n| take(format!("{}{n}", head_prefix(network, h)))).collect::<Result<_>>()?)))
                .collect()
        };
        let student_heads = heads("student")?;
        let teacher_heads = heads("teacher")?;
        for (head, &k) in student_heads.iter().zip(&d.head_n_prototypes) {
            let expected = [d.head_hidden_dim, d.head_bottleneck_dim, k].map(|n| n as i64);
            if head.dims() != expected {
                bail!("the config's dino head sizes (hidden, bottleneck, prototypes) {expected:?} differ from the checkpoint's {:?}", head.dims());
            }
        }
        let mut poa = Self::assemble(config, student, student_heads, teacher, teacher_heads, device);
        for i in 0..poa.adam.m.len() {
            poa.adam.m[i] = take(format!("adam.m.{i}"))?;
            poa.adam.v[i] = take(format!("adam.v.{i}"))?;
        }
        poa.adam.param_steps = Vec::try_from(take("adam.param_steps".into())?.to_device(Device::Cpu))?;
        poa.adam.step = ckpt.progress.adam_step;
        for (h, (dino, ibot)) in poa.centers.iter_mut().enumerate() {
            dino.center = take(format!("center.dino.{h}"))?;
            ibot.center = take(format!("center.ibot.{h}"))?;
        }
        Ok((poa, ckpt.progress))
    }

    /// The EMA teacher: the network a checkpoint deploys.
    pub fn teacher(&self) -> &ElasticVit {
        &self.teacher
    }

    /// Makes every rank's networks, optimiser moments and centres rank 0's.
    pub fn broadcast_from_root(&self, world: &World) -> Result<()> {
        let teacher = self.teacher.params().iter().map(|t| t.shallow_clone());
        let state: Vec<Tensor> = self.state().into_iter().map(|(_, t)| t).chain(teacher).collect();
        world.broadcast_from_root(&state)
    }

    /// Writes a checkpoint of everything into `run`.
    pub fn save(&self, run: &std::path::Path, progress: &Progress) -> Result<()> {
        let mut state = self.state();
        state.push(("adam.param_steps".into(), Tensor::from_slice(&self.adam.param_steps)));
        let state_refs: Vec<(String, &Tensor)> = state.iter().map(|(k, t)| (k.clone(), t)).collect();
        checkpoint::save(run, self.teacher.graph(), &self.teacher.named_params(), &state_refs, progress)?;
        checkpoint::keep_last(run, progress.iteration, self.config.train.max_to_keep)
    }

    /// The training state beside the teacher's backbone, by checkpoint key (sharing the live tensors): the
    /// student, both networks' heads, the AdamW moments and the centres.
    fn state(&self) -> Vec<(String, Tensor)> {
        let prefixed = |prefix: &str, named: Vec<(String, &Tensor)>| -> Vec<(String, Tensor)> {
            named.into_iter().map(|(k, t)| (format!("{prefix}{k}"), t.shallow_clone())).collect()
        };
        let mut state = prefixed("student.", self.student.named_params());
        for (h, (s, t)) in self.student_heads.iter().zip(&self.teacher_heads).enumerate() {
            state.extend(prefixed(&head_prefix("student", h), s.named_params()));
            state.extend(prefixed(&head_prefix("teacher", h), t.named_params()));
        }
        for (i, (m, v)) in self.adam.m.iter().zip(&self.adam.v).enumerate() {
            state.push((format!("adam.m.{i}"), m.shallow_clone()));
            state.push((format!("adam.v.{i}"), v.shallow_clone()));
        }
        for (h, (dino, ibot)) in self.centers.iter().enumerate() {
            state.push((format!("center.dino.{h}"), dino.center.shallow_clone()));
            state.push((format!("center.ibot.{h}"), ibot.center.shallow_clone()));
        }
        state
    }

    fn student_outputs(&self, batch: &CropBatch, subnet: SubnetSpec, masks: &Tensor, mask_index: &Tensor) -> StudentOutputs {
        let drop_path = self.config.student.drop_path_rate;
        let global_tokens = self.student.forward_train(&batch.global, subnet, Some(masks), drop_path);
        let local_tokens = self.student.forward_train(&batch.local, subnet, None, drop_path);
        let global_cls = global_tokens.select(1, 0);
        let width = subnet.width as i64;
        let patches = global_tokens.narrow(1, 1, global_tokens.size()[1] - 1).reshape([-1, width]).index_select(0, mask_index);
        let (n_global, n_local, n_patches) = (global_cls.size()[0], local_tokens.size()[0], patches.size()[0]);
        let features = Tensor::cat(&[global_cls.shallow_clone(), local_tokens.select(1, 0), patches], 0);
        let heads = self
            .student_heads
            .iter()
            .map(|head| {
                let logits = head.forward(&features);
                [logits.narrow(0, 0, n_global), logits.narrow(0, n_global, n_local), logits.narrow(0, n_global + n_local, n_patches)]
            })
            .collect();
        StudentOutputs { global_cls, heads }
    }

    /// One POA iteration on this rank's part of the global batch: forward teacher and both students, backward,
    /// gradients averaged over `world`, clip, AdamW, EMA.
    pub fn step(&mut self, batch: &CropBatch, subnet: SubnetSpec, v: ScheduleValues, world: &World) -> Result<Losses> {
        let device = self.student.params()[0].device();
        let batch = CropBatch { global: batch.global.to_device(device), local: batch.local.to_device(device), masks: batch.masks.to_device(device), skipped: 0 };
        let b = self.config.train.batch_size as i64;
        let intact = self.student.graph().space.intact();
        let masks = &batch.masks;
        let mask_index = masks.flatten(0, 1).nonzero().squeeze_dim(1);
        let n_masked = mask_index.size()[0];
        // Teacher rows over all ranks: the centring normalises over the global batch.
        let masked_rows = Tensor::from_slice(&[n_masked as f64]);
        world.all_reduce_sum(std::slice::from_ref(&masked_rows))?;
        let masked_rows = masked_rows.double_value(&[0]);
        let cls_rows = (2 * b as usize * world.size()) as f64;
        let ibot_on = v.ibot_active && masked_rows > 0.0 && self.config.ibot.loss_weight > 0.0;
        let token_weights = (masks.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0).reciprocal().unsqueeze(1).expand(masks.size(), false))
            .flatten(0, 1)
            .index_select(0, &mask_index);

        // Per head: the teacher's centred class-token and masked-patch targets.
        let targets: Vec<(Tensor, Tensor)> = no_grad(|| -> Result<_> {
            let tokens = self.teacher.forward(&batch.global, intact, None);
            let cls = tokens.select(1, 0);
            let width = cls.size()[1];
            let patches = tokens.narrow(1, 1, tokens.size()[1] - 1).reshape([-1, width]).index_select(0, &mask_index);
            let features = Tensor::cat(&[cls, patches], 0);
            self.teacher_heads
                .iter()
                .zip(self.centers.iter_mut())
                .map(|(head, (dino_center, ibot_center))| {
                    let logits = head.forward(&features);
                    let (cls_logits, patch_logits) = (logits.narrow(0, 0, 2 * b), logits.narrow(0, 2 * b, n_masked));
                    let cls_targets = dino_center.probs(&cls_logits, v.teacher_temp, cls_rows, world)?;
                    let patch_targets = if ibot_on { ibot_center.probs(&patch_logits, v.teacher_temp, masked_rows, world)? } else { patch_logits.zeros_like() };
                    dino_center.update(&cls_logits, cls_rows, world)?;
                    if ibot_on {
                        ibot_center.update(&patch_logits, masked_rows, world)?;
                    }
                    Ok((cls_targets, patch_targets))
                })
                .collect()
        })?;

        let cfg = &self.config;
        let tau = cfg.teacher.student_temp;
        let heads = targets.len() as f64;
        // (DINO, iBOT) of one student against the teacher, weighted and averaged over the heads.
        let student_loss = |out: &StudentOutputs| -> (Tensor, Tensor) {
            let zero = || Tensor::zeros([], (Kind::Float, device));
            let (mut dino, mut ibot) = (zero(), zero());
            for ((cls_t, patch_t), [global, local, patch]) in targets.iter().zip(&out.heads) {
                dino += dino_loss(cls_t, global, local, b, tau) * (cfg.dino.loss_weight / heads);
                if ibot_on {
                    ibot += ibot_loss(patch_t, patch, &token_weights, 2 * b, tau) * (cfg.ibot.loss_weight / heads);
                }
            }
            (dino, ibot)
        };
        // KoLeo on each global crop's class tokens, averaged over the two students (POA_SPEC §5).
        let koleo = |out: &StudentOutputs| -> Tensor { out.global_cls.split(b, 0).iter().map(koleo_loss).sum() };
        for head in &self.student_heads {
            head.freeze_last_layer(v.last_layer_frozen);
        }
        let intact_out = self.student_outputs(&batch, intact, masks, &mask_index);
        let elastic_out = self.student_outputs(&batch, subnet, masks, &mask_index);
        let (intact_dino, intact_ibot) = student_loss(&intact_out);
        let (elastic_dino, elastic_ibot) = student_loss(&elastic_out);
        let (intact_loss, elastic_loss) = (&intact_dino + intact_ibot, &elastic_dino + elastic_ibot);
        // intact → elastic: on the same views, the intact student's detached class-token distribution.
        let mut to_elastic = Tensor::zeros([], (Kind::Float, device));
        for ([i_global, i_local, _], [e_global, e_local, _]) in intact_out.heads.iter().zip(&elastic_out.heads) {
            let target = no_grad(|| (Tensor::cat(&[i_global, i_local], 0).detach() / tau).softmax(-1, Kind::Float));
            to_elastic += cross_entropy(&target, &Tensor::cat(&[e_global, e_local], 0), tau) / heads;
        }
        let lambda = cfg.dino.lambda_ie;
        let mut total = &intact_loss * lambda + (&elastic_loss + &to_elastic) * (1.0 - lambda);
        if cfg.dino.koleo_loss_weight > 0.0 {
            total += (koleo(&intact_out) + koleo(&elastic_out)) * (0.5 * cfg.dino.koleo_loss_weight);
        }

        total.backward();
        // dinov2 clips each module's gradients on its own: the backbone, each head.
        let modules: Vec<Vec<Tensor>> = std::iter::once(self.student.params())
            .chain(self.student_heads.iter().map(|h| h.params()))
            .map(|ps| ps.iter().map(|t| t.shallow_clone()).collect())
            .collect();
        // Each rank's loss is the mean over its share of the global batch: the mean of their gradients is the
        // gradient of the global batch's loss.
        let grads: Vec<Tensor> = modules.iter().flatten().map(Tensor::grad).filter(Tensor::defined).collect();
        let all_reduce_started = std::time::Instant::now();
        world.all_reduce_mean(&grads)?;
        let gradient_all_reduce_s = all_reduce_started.elapsed().as_secs_f64();
        if cfg.optim.clip_grad > 0.0 {
            for module in &modules {
                clip_grad_norm(module, cfg.optim.clip_grad);
            }
        }
        let params: Vec<Tensor> = modules.into_iter().flatten().collect();
        self.adam.step(&params, &self.groups, v.lr, v.weight_decay);
        for p in &params {
            let mut p = p.shallow_clone();
            p.zero_grad();
        }
        no_grad(|| {
            let heads = self.teacher_heads.iter().zip(&self.student_heads).flat_map(|(t, s)| t.params().iter().zip(s.params()));
            for (t, s) in self.teacher.params().iter().zip(self.student.params()).chain(heads) {
                let _ = t.shallow_clone().lerp_(s, 1.0 - v.momentum);
            }
        });
        Ok(Losses {
            intact: intact_loss.double_value(&[]),
            elastic: elastic_loss.double_value(&[]),
            intact_to_elastic: to_elastic.double_value(&[]),
            intact_dino: intact_dino.double_value(&[]),
            elastic_dino: elastic_dino.double_value(&[]),
            gradient_all_reduce_s,
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
