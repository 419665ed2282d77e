//! The architecture hyper-parameters of an elastic ViT (the `student` section of a POA config).

use crate::error::{IrError, Result};
use serde::{Deserialize, Serialize};

/// Hyper-parameters of the elastic ViT supernet. Field names follow POA's `student.*` config keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VitArch {
    /// Side of the (square) input image in pixels.
    pub img_size: usize,
    /// Side of a (square) patch in pixels.
    pub patch_size: usize,
    /// Channels of the input image.
    pub in_chans: usize,
    /// Dimension of one attention head; fixed across the elastic space.
    pub head_dim: usize,
    /// Smallest embed dim of the elastic space.
    pub min_embed_dim: usize,
    /// Largest embed dim: the intact network.
    pub max_embed_dim: usize,
    /// Width step in units of heads (the step in channels is `head_dim * width_interval`).
    pub width_interval: usize,
    /// Smallest depth of the elastic space.
    pub min_depth: usize,
    /// Largest depth: the intact network.
    pub max_depth: usize,
    /// Depth step.
    pub depth_interval: usize,
    /// MLP hidden size as a multiple of the width.
    pub mlp_ratio: usize,
    /// Initial value of LayerScale's gamma.
    pub layerscale_init: f32,
    /// Epsilon of every LayerNorm.
    pub norm_eps: f32,
}

impl Default for VitArch {
    fn default() -> Self {
        VitArch {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            head_dim: 64,
            min_embed_dim: 384,
            max_embed_dim: 1024,
            width_interval: 1,
            min_depth: 12,
            max_depth: 24,
            depth_interval: 1,
            mlp_ratio: 4,
            layerscale_init: 1e-5,
            norm_eps: 1e-6,
        }
    }
}

impl VitArch {
    /// Checks that the numbers describe a buildable elastic ViT, saying what is wrong otherwise.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(IrError::InvalidArch(m));
        if self.patch_size == 0 || self.img_size == 0 || self.img_size % self.patch_size != 0 {
            return bad(format!("img_size {} must be a positive multiple of patch_size {}", self.img_size, self.patch_size));
        }
        if self.head_dim == 0 || self.width_interval == 0 || self.depth_interval == 0 || self.in_chans == 0 {
            return bad("head_dim, width_interval, depth_interval and in_chans must be positive".into());
        }
        for (key, dim) in [("min_embed_dim", self.min_embed_dim), ("max_embed_dim", self.max_embed_dim)] {
            if dim == 0 || dim % self.head_dim != 0 {
                return bad(format!("{key} {dim} must be a positive multiple of head_dim {}", self.head_dim));
            }
        }
        if self.min_embed_dim > self.max_embed_dim {
            return bad(format!("min_embed_dim {} exceeds max_embed_dim {}", self.min_embed_dim, self.max_embed_dim));
        }
        let step = self.head_dim * self.width_interval;
        if (self.max_embed_dim - self.min_embed_dim) % step != 0 {
            return bad(format!(
                "max_embed_dim - min_embed_dim = {} must be a multiple of head_dim * width_interval = {step}",
                self.max_embed_dim - self.min_embed_dim
            ));
        }
        if self.min_depth == 0 || self.min_depth > self.max_depth {
            return bad(format!("need 1 <= min_depth ({}) <= max_depth ({})", self.min_depth, self.max_depth));
        }
        if (self.max_depth - self.min_depth) % self.depth_interval != 0 {
            return bad(format!(
                "max_depth - min_depth = {} must be a multiple of depth_interval {}",
                self.max_depth - self.min_depth,
                self.depth_interval
            ));
        }
        if self.mlp_ratio == 0 {
            return bad("mlp_ratio must be positive".into());
        }
        Ok(())
    }

    /// Number of patch tokens of one image (the class token not counted).
    pub fn num_patches(&self) -> usize {
        (self.img_size / self.patch_size).pow(2)
    }
}
