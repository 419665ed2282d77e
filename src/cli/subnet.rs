//! The flags that name one sub-network, shared by `poac lower` and `poac eval finetune`.

use crate::lower::SubnetChoice;
use clap::Args;
use poac_ir::WidthChoice;

/// `--width`, `--depth` or `--size`; with none of them, the intact network.
#[derive(Args)]
pub struct SubnetArgs {
    /// Width: a fraction of the largest written with a decimal point (0.5, 1.0) or an embed dim as an integer
    /// (192). Default: the largest.
    #[arg(long)]
    width: Option<WidthChoice>,
    /// Depth (number of blocks). Default: the largest.
    #[arg(long)]
    depth: Option<usize>,
    /// A named size instead of --width/--depth: small, base or large.
    #[arg(long)]
    size: Option<String>,
}

impl SubnetArgs {
    /// The choice these flags make, without a budget.
    pub fn choice(self) -> SubnetChoice {
        SubnetChoice { size: self.size, width: self.width, depth: self.depth, ..Default::default() }
    }
}
