//! `poac lower`.

use crate::lower::{lower, SubnetChoice};
use anyhow::Result;
use clap::Args;
use poac_ir::WidthChoice;
use poac_passes::onnx::Batch;
use std::path::PathBuf;

#[derive(Args)]
pub struct LowerArgs {
    /// Run folder or checkpoint folder.
    checkpoint: PathBuf,
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
    /// Batch axis: `dynamic` or a fixed size.
    #[arg(long, default_value = "dynamic", value_parser = parse_batch)]
    batch: Batch,
    /// Output ONNX file.
    #[arg(short, long)]
    output: PathBuf,
    /// Print the IR after each pass.
    #[arg(long)]
    dump_ir: bool,
}

fn parse_batch(s: &str) -> std::result::Result<Batch, String> {
    match s {
        "dynamic" => Ok(Batch::Dynamic),
        _ => match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Batch::Static(n)),
            _ => Err(format!("`{s}`: give `dynamic` or a positive batch size")),
        },
    }
}

pub fn run(args: LowerArgs) -> Result<()> {
    let choice = SubnetChoice { size: args.size, width: args.width, depth: args.depth };
    let dump = args.dump_ir;
    let lowered = lower(&args.checkpoint, &choice, args.batch, &args.output, |pass, changed, graph| {
        if dump {
            println!("== after {pass} ({}) ==\n{graph}\n", if changed { "changed" } else { "no change" });
        }
    })?;
    println!(
        "lowered w{}-d{} to {}: {:.2} M params, {:.3} GFLOPs/image, {:.1} MB",
        lowered.width,
        lowered.depth,
        args.output.display(),
        lowered.params as f64 / 1e6,
        lowered.flops as f64 / 1e9,
        lowered.bytes as f64 / 1e6
    );
    Ok(())
}
