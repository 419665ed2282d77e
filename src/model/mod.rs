//! libtorch models built from the IR: the elastic ViT (an interpreter of the supergraph) and the DINO head.

pub mod head;
pub mod vit;

pub use head::DinoHead;
pub use vit::ElasticVit;

use poac_ir::{Init, WeightView};
use tch::{Device, Kind, Tensor};

/// A fresh tensor of `shape` initialised as `init` says (truncated normal by inverse CDF, as PyTorch does).
pub fn init_tensor(shape: &[i64], init: Init, device: Device) -> Tensor {
    match init {
        Init::Constant(v) => Tensor::full(shape, v as f64, (Kind::Float, device)),
        Init::TruncNormal(std) => {
            // Φ(−2) and Φ(2): uniform in between, mapped back through the normal's inverse CDF.
            let (lo, hi) = (0.022_750_131_948_179_2, 0.977_249_868_051_820_8);
            let u = Tensor::rand(shape, (Kind::Float, device)) * (hi - lo) + lo;
            (u * 2.0 - 1.0).erfinv() * (std as f64 * std::f64::consts::SQRT_2)
        }
    }
}

/// The part of a full parameter tensor that `view` selects (kept ranges per axis, concatenated), times its
/// scale. Differentiable: gradients flow back into the full tensor.
pub fn view_of(full: &Tensor, view: &WeightView) -> Tensor {
    let mut t = full.shallow_clone();
    for (axis, ranges) in view.axes.iter().enumerate() {
        let size = t.size()[axis] as usize;
        if ranges.len() == 1 && ranges[0] == (0..size) {
            continue;
        }
        let parts: Vec<Tensor> =
            ranges.iter().map(|r| t.narrow(axis as i64, r.start as i64, r.len() as i64)).collect();
        t = if parts.len() == 1 { parts.into_iter().next().unwrap() } else { Tensor::cat(&parts, axis as i64) };
    }
    if view.scale != 1.0 {
        t = t * view.scale as f64;
    }
    t
}
