//! The elastic space: which widths and depths exist, which blocks a depth keeps, how sub-networks are sampled.

use crate::arch::VitArch;
use crate::error::{IrError, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One sub-network: an embed dim (heads × head_dim) and a number of blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubnetSpec {
    /// Embed dim.
    pub width: usize,
    /// Number of transformer blocks.
    pub depth: usize,
}

impl fmt::Display for SubnetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}-d{}", self.width, self.depth)
    }
}

/// How a user names a width: a fraction of the largest width (`0.5`) or an absolute embed dim (`192`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WidthChoice {
    /// Fraction of `max_embed_dim`, in (0, 1].
    Fraction(f64),
    /// Absolute embed dim.
    Absolute(usize),
}

impl std::str::FromStr for WidthChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if let Ok(n) = s.parse::<usize>() {
            return Ok(WidthChoice::Absolute(n));
        }
        match s.parse::<f64>() {
            Ok(f) if f > 0.0 && f <= 1.0 => Ok(WidthChoice::Fraction(f)),
            _ => Err(format!("`{s}` is neither a fraction in (0, 1] nor an embed dim")),
        }
    }
}

/// All widths and depths of an elastic ViT.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ElasticSpace {
    /// Dimension of one head; widths are multiples of it.
    pub head_dim: usize,
    /// Valid embed dims, ascending.
    pub widths: Vec<usize>,
    /// Valid depths, ascending.
    pub depths: Vec<usize>,
}

impl ElasticSpace {
    /// The space an architecture spans (the architecture must be valid).
    pub fn of(arch: &VitArch) -> Self {
        let step = arch.head_dim * arch.width_interval;
        ElasticSpace {
            head_dim: arch.head_dim,
            widths: (arch.min_embed_dim..=arch.max_embed_dim).step_by(step).collect(),
            depths: (arch.min_depth..=arch.max_depth).step_by(arch.depth_interval).collect(),
        }
    }

    /// Largest width (the intact network's).
    pub fn max_width(&self) -> usize {
        *self.widths.last().expect("an elastic space has at least one width")
    }

    /// Largest depth: the number of blocks of the supergraph.
    pub fn max_depth(&self) -> usize {
        *self.depths.last().expect("an elastic space has at least one depth")
    }

    /// The intact (largest) network.
    pub fn intact(&self) -> SubnetSpec {
        SubnetSpec { width: self.max_width(), depth: self.max_depth() }
    }

    /// The smallest network.
    pub fn smallest(&self) -> SubnetSpec {
        SubnetSpec { width: self.widths[0], depth: self.depths[0] }
    }

    /// Every sub-network, width-major, ascending.
    pub fn subnets(&self) -> Vec<SubnetSpec> {
        self.widths
            .iter()
            .flat_map(|&width| self.depths.iter().map(move |&depth| SubnetSpec { width, depth }))
            .collect()
    }

    /// Blocks kept by a sub-network of `depth` blocks: `floor(linspace(0, Lmax-1, depth))`, evenly spaced,
    /// always the first and the last block.
    pub fn kept_blocks(&self, depth: usize) -> Vec<usize> {
        let last = self.max_depth() - 1;
        linspace(0.0, last as f64, depth).into_iter().map(|x| x as usize).collect()
    }

    /// Checks that a sub-network is in the space; the error lists the valid choices.
    pub fn check(&self, spec: SubnetSpec) -> Result<SubnetSpec> {
        if !self.widths.contains(&spec.width) {
            return Err(self.invalid_width(spec.width.to_string()));
        }
        if !self.depths.contains(&spec.depth) {
            return Err(IrError::InvalidDepth { got: spec.depth, valid: list(&self.depths) });
        }
        Ok(spec)
    }

    /// Resolves a width given as a fraction or an absolute dim.
    pub fn resolve_width(&self, choice: WidthChoice) -> Result<usize> {
        let width = match choice {
            WidthChoice::Absolute(w) => w,
            WidthChoice::Fraction(f) => {
                let w = f * self.max_width() as f64;
                if (w - w.round()).abs() > 1e-6 {
                    return Err(self.invalid_width(format!("{f} (= {w:.2} channels)")));
                }
                w.round() as usize
            }
        };
        if self.widths.contains(&width) {
            Ok(width)
        } else {
            Err(self.invalid_width(match choice {
                WidthChoice::Fraction(f) => format!("{f} (= {width} channels)"),
                WidthChoice::Absolute(w) => w.to_string(),
            }))
        }
    }

    /// A named size: `small` and `base` are the smallest and the middle width at the smallest depth (as POA's
    /// ViT-S/12 and ViT-B/12 of a ViT-L/24 space), `large` is the intact network.
    pub fn named(&self, name: &str) -> Result<SubnetSpec> {
        let depth = self.depths[0];
        match name {
            "small" => Ok(SubnetSpec { width: self.widths[0], depth }),
            "base" => Ok(SubnetSpec { width: self.widths[self.widths.len() / 2], depth }),
            "large" => Ok(self.intact()),
            _ => Err(IrError::UnknownSize { got: name.to_string() }),
        }
    }

    /// POA's sampling list: every sub-network but the intact one, each repeated `round(s_w * s_d)` times, where
    /// `s_w` falls linearly from `net_select_scale` at the smallest width to 1 at the largest (`s_d` likewise over
    /// depths), rounding half to even. Smaller networks are therefore sampled more often.
    pub fn sampling_list(&self, net_select_scale: f64) -> Vec<SubnetSpec> {
        let scale_w = linspace(net_select_scale, 1.0, self.widths.len());
        let scale_d = linspace(net_select_scale, 1.0, self.depths.len());
        let intact = self.intact();
        let mut list = Vec::new();
        for (&width, sw) in self.widths.iter().zip(&scale_w) {
            for (&depth, sd) in self.depths.iter().zip(&scale_d) {
                let spec = SubnetSpec { width, depth };
                if spec != intact {
                    let repeats = (sw * sd).round_ties_even() as usize;
                    list.extend(std::iter::repeat_n(spec, repeats));
                }
            }
        }
        list
    }

    fn invalid_width(&self, got: String) -> IrError {
        IrError::InvalidWidth { got, head_dim: self.head_dim, valid: list(&self.widths), max: self.max_width() }
    }
}

/// numpy's `linspace(start, stop, n)`: `start + i * step`, the last value exactly `stop`.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (n - 1) as f64;
            (0..n).map(|i| if i == n - 1 { stop } else { start + i as f64 * step }).collect()
        }
    }
}

fn list(values: &[usize]) -> String {
    values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(min_w: usize, max_w: usize, head_dim: usize, min_d: usize, max_d: usize) -> ElasticSpace {
        let arch = VitArch {
            head_dim,
            min_embed_dim: min_w,
            max_embed_dim: max_w,
            min_depth: min_d,
            max_depth: max_d,
            ..VitArch::default()
        };
        arch.validate().unwrap();
        ElasticSpace::of(&arch)
    }

    #[test]
    fn kept_blocks_match_numpy_linspace_astype_int() {
        // Values printed by numpy: np.linspace(0, L-1, d).astype(int).
        let s = space(384, 1024, 64, 12, 24);
        assert_eq!(s.kept_blocks(12), vec![0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 23]);
        assert_eq!(s.kept_blocks(13), vec![0, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23]);
        assert_eq!(s.kept_blocks(24), (0..24).collect::<Vec<_>>());
        let s = space(64, 192, 32, 4, 8);
        assert_eq!(s.kept_blocks(4), vec![0, 2, 4, 7]);
        assert_eq!(s.kept_blocks(5), vec![0, 1, 3, 5, 7]);
        assert_eq!(s.kept_blocks(6), vec![0, 1, 2, 4, 5, 7]);
        assert_eq!(s.kept_blocks(7), vec![0, 1, 2, 3, 4, 5, 7]);
    }

    #[test]
    fn sampling_list_counts_match_the_spec() {
        // Reference ViT-L space: 11 widths x 13 depths -> 572 entries; a 5 x 5 space -> 99 (POA_SPEC §4).
        let reference = space(384, 1024, 64, 12, 24);
        assert_eq!((reference.widths.len(), reference.depths.len()), (11, 13));
        assert_eq!(reference.sampling_list(3.0).len(), 572);
        let small = space(64, 192, 32, 4, 8);
        let list = small.sampling_list(3.0);
        assert_eq!(list.len(), 99);
        assert!(!list.contains(&small.intact()));
        // The smallest network has s_w = s_d = 3: 9 copies; (max width, min depth): 1 * 3 = 3 copies.
        assert_eq!(list.iter().filter(|s| **s == small.smallest()).count(), 9);
        assert_eq!(list.iter().filter(|s| **s == SubnetSpec { width: 192, depth: 4 }).count(), 3);
    }

    #[test]
    fn widths_resolve_from_fractions_and_dims() {
        let s = space(64, 192, 32, 4, 8);
        assert_eq!(s.widths, vec![64, 96, 128, 160, 192]);
        assert_eq!(s.resolve_width("0.5".parse().unwrap()).unwrap(), 96);
        assert_eq!(s.resolve_width("1.0".parse().unwrap()).unwrap(), 192);
        assert_eq!(s.resolve_width("128".parse().unwrap()).unwrap(), 128);
        let err = s.resolve_width("100".parse().unwrap()).unwrap_err().to_string();
        assert!(err.contains("64, 96, 128, 160, 192"), "{err}");
        let err = s.resolve_width("0.3".parse().unwrap()).unwrap_err().to_string();
        assert!(err.contains("valid widths"), "{err}");
        assert!("-2".parse::<WidthChoice>().is_err());
        assert!("1.5".parse::<WidthChoice>().is_err());
    }

    #[test]
    fn depth_outside_the_space_lists_valid_depths() {
        let s = space(64, 192, 32, 4, 8);
        let err = s.check(SubnetSpec { width: 64, depth: 9 }).unwrap_err().to_string();
        assert!(err.contains("4, 5, 6, 7, 8"), "{err}");
        assert_eq!(s.subnets().len(), 25);
        assert_eq!(s.named("large").unwrap(), s.intact());
        assert!(s.named("huge").is_err());
    }
}
