//! `poac lower`.

use super::subnet::SubnetArgs;
use crate::lower::{lower, LowerOptions, SubnetChoice};
use anyhow::Result;
use clap::Args;
use poac_passes::onnx::Batch;
use poac_passes::OutputKind;
use std::path::PathBuf;

#[derive(Args)]
pub struct LowerArgs {
    /// Run folder or checkpoint folder.
    checkpoint: PathBuf,
    #[command(flatten)]
    subnet: SubnetArgs,
    /// Pick the largest sub-network (by FLOPs, ties to the deeper) with at most this many GFLOPs per image.
    #[arg(long)]
    max_gflops: Option<f64>,
    /// Pick the largest sub-network with at most this many parameters (a number, or with a k/M/G suffix: 5M).
    #[arg(long, value_parser = parse_count)]
    max_params: Option<usize>,
    /// Batch axis: `dynamic` or a fixed size.
    #[arg(long, default_value = "dynamic", value_parser = parse_batch)]
    batch: Batch,
    /// What the model returns: cls, patch, cls+patch or last4 (see the README for each layout).
    #[arg(long = "output", default_value = "cls")]
    features: OutputKind,
    /// Include the checkpoint's classifier head (`head.weight`, `head.bias`): the model returns logits.
    #[arg(long)]
    with_head: bool,
    /// Fold the input normalisation into the patch embedding: the model takes raw [0, 1] pixels.
    #[arg(long)]
    bake_normalize: bool,
    /// Output ONNX file.
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
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

/// A count such as `5000000`, `5M`, `21.7M` or `800k`.
fn parse_count(s: &str) -> std::result::Result<usize, String> {
    let (number, scale) = match s.trim().char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1e3),
        Some((i, 'm' | 'M')) => (&s[..i], 1e6),
        Some((i, 'g' | 'G')) => (&s[..i], 1e9),
        _ => (s, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok((v * scale).round() as usize),
        _ => Err(format!("`{s}` is not a parameter count (e.g. 5000000, 5M, 800k)")),
    }
}

pub fn run(args: LowerArgs) -> Result<()> {
    let choice = SubnetChoice { max_gflops: args.max_gflops, max_params: args.max_params, ..args.subnet.choice() };
    let budget = choice.max_gflops.is_some() || choice.max_params.is_some();
    let options = LowerOptions { batch: args.batch, output: args.features, with_head: args.with_head, bake_normalize: args.bake_normalize };
    let dump = args.dump_ir;
    let lowered = lower(&args.checkpoint, &choice, &options, &args.out, |pass, changed, graph| {
        if dump {
            println!("== after {pass} ({}) ==\n{graph}\n", if changed { "changed" } else { "no change" });
        }
    })?;
    if budget {
        println!("picked w{}-d{}: the largest sub-network within the budget", lowered.width, lowered.depth);
    }
    println!(
        "lowered w{}-d{} to {}: {:.2} M params, {:.3} GFLOPs/image, {:.1} MB",
        lowered.width,
        lowered.depth,
        args.out.display(),
        lowered.params as f64 / 1e6,
        lowered.flops as f64 / 1e9,
        lowered.bytes as f64 / 1e6
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_suffixes() {
        assert_eq!(parse_count("5000000"), Ok(5_000_000));
        assert_eq!(parse_count("21.7M"), Ok(21_700_000));
        assert_eq!(parse_count("800k"), Ok(800_000));
        assert!(parse_count("lots").is_err());
        assert!(parse_count("-3").is_err());
    }
}
