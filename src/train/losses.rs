//! POA's loss terms (POA_SPEC §5): DINO cross-view class-token loss, iBOT masked-patch loss, KoLeo, the
//! intact→elastic distillation, and the centring of the teacher's outputs (Sinkhorn–Knopp or DINO's EMA).

use crate::dist::World;
use anyhow::Result;
use tch::{Kind, Tensor};

/// `mean_rows(−Σ_k target · log_softmax(student / temp))`.
pub fn cross_entropy(target: &Tensor, student_logits: &Tensor, student_temp: f64) -> Tensor {
    -(target * (student_logits / student_temp).log_softmax(-1, Kind::Float)).sum_dim_intlist(-1, false, Kind::Float).mean(Kind::Float)
}

/// DINO loss over views: the teacher's two global views (crop-major `[2B, K]` probabilities) against every
/// *other* student view (its two globals `[2B, K]` and `n` locals `[nB, K]`), averaged over the view pairs.
pub fn dino_loss(teacher: &Tensor, student_global: &Tensor, student_local: &Tensor, batch: i64, student_temp: f64) -> Tensor {
    let log_probs = |x: &Tensor| (x / student_temp).log_softmax(-1, Kind::Float).split(batch, 0);
    let (global_views, local_views) = (log_probs(student_global), log_probs(student_local));
    let mut total = Tensor::zeros([], (Kind::Float, teacher.device()));
    let mut pairs = 0;
    for (t, tv) in teacher.split(batch, 0).iter().enumerate() {
        let others = global_views.iter().enumerate().filter(|(s, _)| *s != t).map(|(_, v)| v).chain(&local_views);
        for view in others {
            total -= (tv * view).sum_dim_intlist(-1, false, Kind::Float).mean(Kind::Float);
            pairs += 1;
        }
    }
    total / pairs as f64
}

/// iBOT loss on masked patch tokens: each token's cross-entropy weighted by 1 / (masked tokens of its crop),
/// summed, divided by the number of global crops.
pub fn ibot_loss(teacher: &Tensor, student_logits: &Tensor, token_weights: &Tensor, crops: i64, student_temp: f64) -> Tensor {
    let per_token = -(teacher * (student_logits / student_temp).log_softmax(-1, Kind::Float)).sum_dim_intlist(-1, false, Kind::Float);
    (per_token * token_weights).sum(Kind::Float) / crops as f64
}

/// KoLeo regulariser on features `[B, D]`: `−mean log(distance to the nearest neighbour)` of the L2-normalised
/// features; spreads the batch over the sphere.
pub fn koleo_loss(features: &Tensor) -> Tensor {
    let x = features / features.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-8);
    let n = x.size()[0];
    let eye = Tensor::eye(n, (Kind::Bool, x.device()));
    let dots = x.matmul(&x.tr()).masked_fill(&eye, -2.0);
    let nearest = dots.argmax(-1, false);
    let distances = (&x - x.index_select(0, &nearest)).norm_scalaropt_dim(2, [-1], false);
    -(distances + 1e-8).log().mean(Kind::Float)
}

/// Sinkhorn–Knopp iterations of the teacher's centring (dinov2 and POA use 3).
pub const SINKHORN_ITERATIONS: usize = 3;

/// Teacher targets `[M, K]` by Sinkhorn–Knopp (SwAV, dinov2): `exp(logits / temp)` normalised alternately so
/// that every prototype gets an equal share of the batch (rows of `Qᵀ` sum to 1/K) and every sample is a
/// distribution (columns sum to 1/M), `iterations` times; returned as per-sample distributions (rows sum to 1).
/// Across ranks (dinov2's distributed Sinkhorn–Knopp) `logits` is this rank's `M_r` rows of the `rows` of all
/// ranks, and the sums over samples are reduced over `world`.
pub fn sinkhorn_knopp(logits: &Tensor, temp: f64, iterations: usize, rows: f64, world: &World) -> Result<Tensor> {
    let k = logits.size()[1] as f64;
    let scaled = logits.to_kind(Kind::Float) / temp;
    // Subtracting the maximum (over all ranks) leaves the result unchanged (it is normalised), keeps exp finite.
    let max = if scaled.numel() == 0 { Tensor::full([], f32::MIN as f64, (Kind::Float, scaled.device())) } else { scaled.max() };
    world.all_reduce_max(std::slice::from_ref(&max))?;
    let mut q = (&scaled - max).exp().tr();
    let total = q.sum(Kind::Float);
    world.all_reduce_sum(std::slice::from_ref(&total))?;
    q = &q / total;
    for _ in 0..iterations {
        let per_prototype = q.sum_dim_intlist(1, true, Kind::Float);
        world.all_reduce_sum(std::slice::from_ref(&per_prototype))?;
        q = &q / per_prototype / k;
        q = &q / q.sum_dim_intlist(0, true, Kind::Float) / rows;
    }
    Ok((q * rows).tr())
}

/// How the teacher's outputs become targets: Sinkhorn–Knopp, or DINO's EMA centre — probabilities are
/// `softmax((logits − centre) / temp)` and the centre moves towards the batch mean of the logits after each step.
pub struct Centering {
    /// The EMA centre `[1, K]` (unused, kept at zero, with Sinkhorn–Knopp).
    pub center: Tensor,
    momentum: f64,
    sinkhorn_knopp: bool,
}

impl Centering {
    /// A zero EMA centre over `k` prototypes, or Sinkhorn–Knopp when `sinkhorn_knopp`.
    pub fn new(k: i64, momentum: f64, sinkhorn_knopp: bool, device: tch::Device) -> Self {
        Centering { center: Tensor::zeros([1, k], (Kind::Float, device)), momentum, sinkhorn_knopp }
    }

    /// Centred, sharpened probabilities of teacher logits `[M_r, K]`, this rank's of `rows` over `world`.
    pub fn probs(&self, logits: &Tensor, temp: f64, rows: f64, world: &World) -> Result<Tensor> {
        if self.sinkhorn_knopp {
            return sinkhorn_knopp(logits, temp, SINKHORN_ITERATIONS, rows, world);
        }
        Ok(((logits - &self.center) / temp).softmax(-1, Kind::Float))
    }

    /// Moves the EMA centre towards the mean of the logits of all ranks (`rows` of them, this rank's
    /// `logits`); nothing to do for Sinkhorn–Knopp.
    pub fn update(&mut self, logits: &Tensor, rows: f64, world: &World) -> Result<()> {
        if self.sinkhorn_knopp || rows == 0.0 {
            return Ok(());
        }
        let sum = logits.sum_dim_intlist(0, true, Kind::Float);
        world.all_reduce_sum(std::slice::from_ref(&sum))?;
        self.center = &self.center * self.momentum + sum * ((1.0 - self.momentum) / rows);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    #[test]
    fn cross_entropy_of_a_uniform_student_is_log_k() {
        let target = Tensor::from_slice(&[0.7f32, 0.2, 0.1]).view([1, 3]);
        let student = Tensor::zeros([1, 3], (Kind::Float, tch::Device::Cpu));
        assert!((scalar(&cross_entropy(&target, &student, 0.1)) - 3f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn dino_loss_averages_over_the_other_views() {
        // B = 1, 2 globals, 1 local: the mean of the cross-entropies of the four cross-view pairs.
        let k = 4;
        let teacher = Tensor::full([2, k], 0.25, (Kind::Float, tch::Device::Cpu));
        let student = Tensor::randn([2, k], (Kind::Float, tch::Device::Cpu));
        let local = Tensor::randn([1, k], (Kind::Float, tch::Device::Cpu));
        let loss = scalar(&dino_loss(&teacher, &student, &local, 1, 0.1));
        // Hand-computed: pairs (t0,s1), (t0,l0), (t1,s0), (t1,l0).
        let ce = |s: &Tensor| scalar(&cross_entropy(&teacher.get(0).view([1, k]), &s.view([1, k]), 0.1));
        let expected = (ce(&student.get(1)) + ce(&local.get(0)) + ce(&student.get(0)) + ce(&local.get(0))) / 4.0;
        assert!((loss - expected).abs() < 1e-5);
    }

    #[test]
    fn koleo_of_points_on_a_circle() {
        // Four unit vectors at 90°: each nearest neighbour is √2 away → loss = −ln √2.
        let x = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0]).view([4, 2]);
        assert!((scalar(&koleo_loss(&x)) + 2f64.sqrt().ln()).abs() < 1e-6);
    }

    #[test]
    fn centre_moves_by_ema() {
        let mut c = Centering::new(2, 0.9, false, tch::Device::Cpu);
        c.update(&Tensor::from_slice(&[1.0f32, 3.0, 3.0, 5.0]).view([2, 2]), 2.0, &World::single()).unwrap();
        let got: Vec<f32> = Vec::try_from(c.center.view([-1])).unwrap();
        assert!((got[0] - 0.2).abs() < 1e-6 && (got[1] - 0.4).abs() < 1e-6);
    }

    #[test]
    fn sinkhorn_knopp_balances_prototypes() {
        // After the last column step each sample is a distribution; with enough iterations every prototype
        // also gets an equal share M/K of the mass.
        let logits = Tensor::from_slice(&[0.9f32, 0.1, -0.3, 0.5, 0.7, -0.2, 0.0, 0.3, -0.8, 0.6, 0.2, 0.4]).view([4, 3]);
        let q = sinkhorn_knopp(&logits, 0.1, 200, 4.0, &World::single()).unwrap();
        let rows: Vec<f32> = Vec::try_from(q.sum_dim_intlist(1, false, Kind::Float)).unwrap();
        let cols: Vec<f32> = Vec::try_from(q.sum_dim_intlist(0, false, Kind::Float)).unwrap();
        assert!(rows.iter().all(|r| (r - 1.0).abs() < 1e-5), "{rows:?}");
        assert!(cols.iter().all(|c| (c - 4.0 / 3.0).abs() < 1e-4), "{cols:?}");
    }
}
