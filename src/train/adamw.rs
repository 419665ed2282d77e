//! AdamW with decoupled weight decay, kept in our own tensors so its state can be checkpointed and restored
//! exactly (tch's optimiser does not expose it).

use tch::{no_grad, Tensor};

/// How one parameter is optimised (torch's parameter groups, one per parameter).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamGroup {
    /// Factor on the scheduled learning rate (layer-wise decay, patch-embed multiplier).
    pub lr_mult: f64,
    /// Whether weight decay applies (not to biases, norms, LayerScale).
    pub decay: bool,
}

/// AdamW state for a list of parameters.
pub struct AdamW {
    /// First moments.
    pub m: Vec<Tensor>,
    /// Second moments.
    pub v: Vec<Tensor>,
    /// Steps taken.
    pub step: i64,
    /// Steps each parameter has taken (a parameter without a gradient, e.g. a frozen one, takes none, as in
    /// torch), for its bias correction.
    pub param_steps: Vec<i64>,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl AdamW {
    /// Zero state for `params`.
    pub fn new(params: &[Tensor], beta1: f64, beta2: f64) -> Self {
        AdamW {
            m: params.iter().map(|p| p.zeros_like()).collect(),
            v: params.iter().map(|p| p.zeros_like()).collect(),
            step: 0,
            param_steps: vec![0; params.len()],
            beta1,
            beta2,
            eps: 1e-8,
        }
    }

    /// One update of every parameter that has a gradient, in the parameter's group: parameter `i` trains at
    /// `lr · groups[i].lr_mult` and is weight-decayed only if `groups[i].decay`.
    pub fn step(&mut self, params: &[Tensor], groups: &[ParamGroup], lr: f64, weight_decay: f64) {
        self.step += 1;
        no_grad(|| {
            for (i, p) in params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                self.param_steps[i] += 1;
                let t = self.param_steps[i] as i32;
                let (c1, c2) = (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t));
                let mut p = p.shallow_clone();
                let lr = lr * groups[i].lr_mult;
                if groups[i].decay && weight_decay != 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
                }
                let (m, v) = (&mut self.m[i], &mut self.v[i]);
                let _ = m.g_mul_scalar_(self.beta1).g_add_(&(&g * (1.0 - self.beta1)));
                let _ = v.g_mul_scalar_(self.beta2).addcmul_(&g, &(&g * (1.0 - self.beta2)));
                let denom = (&*v / c2).sqrt() + self.eps;
                let _ = p.g_sub_(&(&*m / &denom * (lr / c1)));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_by_lr_times_sign() {
        // After one step, m̂ = g and v̂ = g², so the update is lr · g / (|g| + eps) ≈ lr · sign(g),
        // after decoupled decay p ← p (1 − lr·wd).
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let loss = (&p * Tensor::from_slice(&[3.0f32, -0.5])).sum(tch::Kind::Float);
        loss.backward();
        let mut opt = AdamW::new(std::slice::from_ref(&p), 0.9, 0.999);
        opt.step(std::slice::from_ref(&p), &[ParamGroup { lr_mult: 1.0, decay: true }], 0.1, 0.5);
        let got: Vec<f32> = Vec::try_from(p.detach()).unwrap();
        let expected = [1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1];
        for (a, b) in got.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{got:?}");
        }
    }

    #[test]
    fn group_factor_scales_the_step_and_the_decay() {
        // lr_mult 0.5 and no decay: the first step is 0.5 · lr · sign(g), and nothing else.
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        (&p * Tensor::from_slice(&[3.0f32, -0.5])).sum(tch::Kind::Float).backward();
        let mut opt = AdamW::new(std::slice::from_ref(&p), 0.9, 0.999);
        opt.step(std::slice::from_ref(&p), &[ParamGroup { lr_mult: 0.5, decay: false }], 0.1, 0.5);
        let got: Vec<f32> = Vec::try_from(p.detach()).unwrap();
        for (a, b) in got.iter().zip([1.0 - 0.05, -2.0 + 0.05]) {
            assert!((a - b).abs() < 1e-5, "{got:?}");
        }
    }
}
