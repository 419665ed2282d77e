//! `poac eval finetune`.

use super::pretrain::device;
use super::subnet::SubnetArgs;
use crate::eval::finetune::train::Candidate;
use crate::eval::finetune::{finetune, FinetuneOptions, FinetuneReport};
use crate::eval::record::append_record;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct FinetuneArgs {
    /// Run folder (or checkpoint folder) of the pre-trained network.
    run: PathBuf,
    #[command(flatten)]
    subnet: SubnetArgs,
    /// Dataset root with labelled train/ and val/ splits (ImageNet or ImageFolder layout).
    #[arg(long)]
    data: PathBuf,
    /// Epochs (overrides the config's `epochs`, default 10).
    #[arg(long)]
    epochs: Option<usize>,
    /// Train on a class-balanced subset of this many training images (default: all).
    #[arg(long)]
    train_limit: Option<usize>,
    /// Evaluate on a class-balanced subset of this many validation images (default: all).
    #[arg(long)]
    val_limit: Option<usize>,
    /// Output run folder: checkpoint/ (which `poac lower` accepts), model.onnx (logits), metrics.jsonl and
    /// config.yaml. Default: RUN/finetune/wW-dD.
    #[arg(long)]
    output: Option<PathBuf>,
    /// YAML file of fine-tuning settings (keys in the README; each has a default).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a setting: --set mixup=0.5 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// cpu, or cuda / cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Also append the JSON result as one line to this file (created with its folder), for `poac report`.
    #[arg(long)]
    record: Option<PathBuf>,
}

pub fn run(args: FinetuneArgs) -> Result<()> {
    let report = finetune(&FinetuneOptions {
        run: args.run,
        subnet: args.subnet.choice(),
        data: args.data,
        config: args.config,
        overrides: args.overrides,
        epochs: args.epochs,
        train_limit: args.train_limit,
        val_limit: args.val_limit,
        output: args.output,
        device: device(&args.device)?,
    })?;
    if let Some(path) = &args.record {
        append_record(path, "finetune", &report)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(())
}

fn print_summary(r: &FinetuneReport) {
    let c = &r.runtimes;
    println!(
        "Fine-tuned w{}-d{} of {} for {} epochs on {} train / {} val images ({} classes, {:.0} s of training):",
        r.width, r.depth, r.source_run, r.epochs, r.train_images, r.val_images, r.classes, r.train_seconds
    );
    println!("best val top-1: {:.2}% (model), {:.2}% (EMA)", 100.0 * r.top1_model, 100.0 * r.top1_ema);
    let whose = match r.exported {
        Candidate::Model => "model's",
        Candidate::Ema => "EMA's",
    };
    println!("exported the {whose} weights of epoch {} to {} (logits) and {}/checkpoint", r.exported_epoch, r.onnx, r.output);
    println!(
        "through ONNX Runtime: top-1 {:.2}% (libtorch {:.2}%, {} predictions differ); max logit error ort {:.1e}, tract {:.1e} ({} images)",
        100.0 * c.top1_ort,
        100.0 * r.top1,
        c.ort_tch_disagreements,
        c.max_logit_error_ort,
        c.max_logit_error_tract,
        c.tract_images
    );
}
