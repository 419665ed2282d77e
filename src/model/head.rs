//! The DINO projection head (shared by the class-token and the iBOT patch-token losses): a 3-layer MLP, an
//! L2-normalised bottleneck and a weight-normalised prototype layer. Its first layer is elastic: a sub-network
//! of width `w` uses the first `w` input columns, scaled by α = max / w like every elastic linear (the scale is
//! applied to the weight, which is smaller than the activations).

use super::init_tensor;
use poac_ir::Init;
use tch::{Device, Kind, Tensor};

/// Parameter names of the head, in order (dinov2's keys).
pub const NAMES: [&str; 7] =
    ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight", "mlp.4.bias", "last_layer.weight_v"];

/// DINO head parameters.
pub struct DinoHead {
    params: Vec<Tensor>,
    in_dim: i64,
    compute_kind: Kind,
}

impl DinoHead {
    /// A fresh head from `in_dim` (the largest width) to `prototypes` outputs.
    pub fn new(in_dim: usize, hidden: usize, bottleneck: usize, prototypes: usize, device: Device) -> Self {
        let (i, h, b, k) = (in_dim as i64, hidden as i64, bottleneck as i64, prototypes as i64);
        let std = Init::TruncNormal(0.02);
        let zero = Init::Constant(0.0);
        let shapes: [(&[i64], Init); 7] =
            [(&[h, i], std), (&[h], zero), (&[h, h], std), (&[h], zero), (&[b, h], std), (&[b], zero), (&[k, b], std)];
        let params = shapes.iter().map(|(s, init)| init_tensor(s, *init, device)).collect();
        DinoHead { params, in_dim: i, compute_kind: Kind::Float }
    }

    /// A head from tensors in [`DinoHead::named_params`] order.
    pub fn from_params(params: Vec<Tensor>) -> Self {
        let in_dim = params[0].size()[1];
        DinoHead { params, in_dim, compute_kind: Kind::Float }
    }

    /// `[hidden, bottleneck, prototypes]` sizes.
    pub fn dims(&self) -> [i64; 3] {
        [self.params[0].size()[0], self.params[4].size()[0], self.params[6].size()[0]]
    }

    /// `(key, tensor)` pairs.
    pub fn named_params(&self) -> Vec<(String, &Tensor)> {
        NAMES.iter().map(|n| n.to_string()).zip(&self.params).collect()
    }

    /// Parameters in order.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Turns gradient tracking on or off.
    pub fn set_requires_grad(&mut self, on: bool) {
        self.params = self.params.iter().map(|p| p.detach().set_requires_grad(on)).collect();
    }

    /// Stops (or resumes) gradients into the prototype layer: dinov2 freezes it for the first epoch. A
    /// frozen parameter gets no gradient, so the optimiser leaves it and its moments untouched.
    pub fn freeze_last_layer(&self, frozen: bool) {
        let last = &self.params[NAMES.len() - 1];
        if last.requires_grad() == frozen {
            let _ = last.set_requires_grad(!frozen);
        }
    }

    /// Runs the MLP's matmuls in `kind` (mixed precision, see `ElasticVit::set_compute_kind`); the
    /// normalisations and the prototype layer stay f32.
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute_kind = kind;
    }

    /// Prototype logits `[M, K]` (f32) of features `[M, w]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let p = &self.params;
        let kind = self.compute_kind;
        let w = x.size()[1];
        let first = if w == self.in_dim { p[0].shallow_clone() } else { p[0].narrow(1, 0, w) * (self.in_dim as f64 / w as f64) };
        let linear = |x: &Tensor, weight: &Tensor, bias: &Tensor| x.to_kind(kind).linear(&weight.to_kind(kind), Some(bias.to_kind(kind)));
        let h = linear(x, &first, &p[1]).gelu("none");
        let h = linear(&h, &p[2], &p[3]).gelu("none");
        let h = linear(&h, &p[4], &p[5]).to_kind(Kind::Float);
        let h = &h / h.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12);
        let prototypes = &p[6] / p[6].norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12);
        h.linear(&prototypes, None::<Tensor>)
    }
}
