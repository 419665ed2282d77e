//! Parameters with elastic dimensions, and views that map a parameter onto the stored tensor.

use serde::{Deserialize, Serialize};
use std::fmt;
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

impl fmt::Display for Dim {
    /// `12` for a fixed axis, `W`, `3W`, `4W` for elastic ones.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Elastic { segments: 1, per_width: 1 } => write!(f, "W"),
            Dim::Elastic { segments, per_width: 1 } | Dim::Elastic { segments: 1, per_width: segments } => {
                write!(f, "{segments}W")
            }
            Dim::Elastic { segments, per_width } => write!(f, "{segments}x{per_width}W"),
        }
    }
}

/// Which part of a stored tensor a parameter is, a factor to multiply it by (folded α), and the constants
/// folded into it afterwards (LayerScale, attention scale, input normalisation), applied in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightView {
    /// Per axis, the stored ranges that are concatenated; empty means the whole stored tensor.
    pub axes: Vec<Vec<Range<usize>>>,
    /// Multiplies every element.
    pub scale: f32,
    /// Constants folded into the values after slicing and scaling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folds: Vec<Fold>,
}

impl WeightView {
    /// The whole stored tensor, unscaled.
    pub fn whole() -> Self {
        WeightView { axes: Vec::new(), scale: 1.0, folds: Vec::new() }
    }

    /// Shape of the viewed tensor (the kept lengths per axis); `None` for a whole-tensor view.
    pub fn sliced_shape(&self) -> Option<Vec<usize>> {
        if self.axes.is_empty() {
            return None;
        }
        Some(self.axes.iter().map(|ranges| ranges.iter().map(|r| r.len()).sum()).collect())
    }
}

/// A view of another stored tensor, read by a [`Fold`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorRef {
    /// Key of the stored tensor.
    pub name: String,
    /// Which part of it, with its own folds.
    pub view: WeightView,
}

impl TensorRef {
    /// The stored tensor and view behind `param`.
    pub fn of(param: &Param) -> Self {
        TensorRef { name: param.name.clone(), view: param.view.clone() }
    }
}

/// A constant folded into a parameter's values, so that the lowered network computes the same function with
/// one op less. Each variant is exact algebra on the values (see the pass that creates it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Fold {
    /// `x[.., i, ..] *= factor` for `i` in `range` along `axis` (attention scale into the q rows of qkv).
    ScaleRange {
        /// Axis of the parameter.
        axis: usize,
        /// Indices along it.
        range: Range<usize>,
        /// The factor.
        factor: f32,
    },
    /// `x[.., i, ..] *= factors[i]` along `axis` (1 / std per input channel of a baked normalisation).
    ScaleEach {
        /// Axis of the parameter.
        axis: usize,
        /// One factor per index of the axis.
        factors: Vec<f32>,
    },
    /// `x[.., i, ..] *= t[i]` along `axis`, `t` a 1-D tensor (LayerScale's gamma into the linear before it).
    ScaleByTensor {
        /// Axis of the parameter.
        axis: usize,
        /// The 1-D factor tensor.
        tensor: TensorRef,
    },
    /// `x[o] += Σ_{c, rest} t[o, c, rest] · coefficients[c]` for a 1-D parameter `x` (a baked normalisation's
    /// `-mean / std` contracted with the conv weight into the conv bias).
    AddContraction {
        /// The tensor `t`, at least 2-D, whose axis 0 matches `x`.
        tensor: TensorRef,
        /// One coefficient per index of `t`'s axis 1.
        coefficients: Vec<f32>,
    },
}

impl fmt::Display for Fold {
    /// Compact, for `--dump-ir`: `·0.177[axis 0: 0..64]`, `·[4.37, 4.46, 4.44][axis 1]`, `⊙ls1.gamma`,
    /// `+Σ patch_embed.proj.weight·[-2.12, -2.04, -1.8]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fold::ScaleRange { axis, range, factor } => write!(f, "·{factor}[axis {axis}: {range:?}]"),
            Fold::ScaleEach { axis, factors } => write!(f, "·{factors:?}[axis {axis}]"),
            Fold::ScaleByTensor { axis: 0, tensor } => write!(f, "⊙{}", tensor.name),
            Fold::ScaleByTensor { axis, tensor } => write!(f, "⊙{}[axis {axis}]", tensor.name),
            Fold::AddContraction { tensor, coefficients } => write!(f, "+Σ {}·{coefficients:?}", tensor.name),
        }
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
