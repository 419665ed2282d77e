//! Parameters with elastic dimensions, and views that map a parameter onto the stored tensor.

use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Index of a parameter in [`crate::Graph::params`].
pub type ParamId = usize;

/// One axis of a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dim {
    /// Does not change with the sub-network.
    Fixed(usize),
    /// Follows the width `w`: `segments` stacked blocks, each `per_width * w` long (of `per_width * max_width`
    /// stored). The qkv rows are `{segments: 3, per_width: 1}`, the MLP hidden axis `{segments: 1, per_width: 4}`.
    Elastic {
        /// Stacked blocks along the axis (3 for packed q, k, v).
        segments: usize,
        /// Length of one block per unit of width.
        per_width: usize,
    },
}

impl Dim {
    /// Length of this axis at width `width`.
    pub fn at_width(self, width: usize) -> usize {
        match self {
            Dim::Fixed(n) => n,
            Dim::Elastic { segments, per_width } => segments * per_width * width,
        }
    }

    /// The stored ranges kept at width `width` of `max_width`: always the first channels of each segment.
    pub fn kept_ranges(self, width: usize, max_width: usize) -> Vec<Range<usize>> {
        match self {
            Dim::Fixed(n) => vec![0..n],
            Dim::Elastic { segments, per_width } => (0..segments)
                .map(|s| {
                    let start = s * per_width * max_width;
                    start..start + per_width * width
                })
                .collect(),
        }
    }
}

/// Which part of a stored tensor a parameter is, and a factor to multiply it by (folded α).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightView {
    /// Per axis, the stored ranges that are concatenated; empty means the whole stored tensor.
    pub axes: Vec<Vec<Range<usize>>>,
    /// Multiplies every element.
    pub scale: f32,
}

impl WeightView {
    /// The whole stored tensor, unscaled.
    pub fn whole() -> Self {
        WeightView { axes: Vec::new(), scale: 1.0 }
    }

}

/// How a parameter starts before training (dinov2's initialisation).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Init {
    /// Normal with this standard deviation, truncated at ±2 std.
    TruncNormal(f32),
    /// Every element equal to this value.
    Constant(f32),
}

/// A named parameter of the graph; `name` is its key in the weights file (dinov2/timm naming).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Param {
    /// Key in the safetensors file, e.g. `blocks.3.attn.qkv.weight`.
    pub name: String,
    /// Shape, possibly elastic.
    pub shape: Vec<Dim>,
    /// Part of the stored tensor this parameter is.
    pub view: WeightView,
    /// Initial value before training.
    pub init: Init,
}

impl Param {
    /// A parameter that is a whole stored tensor.
    pub fn new(name: impl Into<String>, shape: Vec<Dim>, init: Init) -> Self {
        Param { name: name.into(), shape, view: WeightView::whole(), init }
    }

    /// Shape at width `width` (the stored shape when `width` is the maximum).
    pub fn shape_at(&self, width: usize) -> Vec<usize> {
        self.shape.iter().map(|d| d.at_width(width)).collect()
    }

    /// Shape of a parameter whose dims are all fixed; `None` when some dim is still elastic.
    pub fn static_shape(&self) -> Option<Vec<usize>> {
        self.shape.iter().map(|d| if let Dim::Fixed(n) = d { Some(*n) } else { None }).collect()
    }
}
