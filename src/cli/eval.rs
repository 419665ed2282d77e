//! `poac eval`.

use crate::eval::knn::{knn_eval, KnnOptions, KS};
use crate::runtime::RuntimeKind;
use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Weighted k-NN (k = 10, 20, 100, 200; T = 0.07) on the model's class token.
    Knn(KnnArgs),
}

#[derive(Args)]
pub struct KnnArgs {
    /// ONNX model written by `poac lower`.
    #[arg(long)]
    model: PathBuf,
    /// Dataset root in ImageNet layout.
    #[arg(long)]
    data: PathBuf,
    /// Runtime for feature extraction.
    #[arg(long, value_enum, default_value = "ort")]
    runtime: RuntimeKind,
    /// Use a class-balanced subset of this many training images (default: all).
    #[arg(long)]
    train_limit: Option<usize>,
    /// Use a class-balanced subset of this many validation images (default: all).
    #[arg(long)]
    val_limit: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(command: EvalCommand) -> Result<()> {
    match command {
        EvalCommand::Knn(args) => {
            let report = knn_eval(&KnnOptions {
                model: args.model,
                data: args.data,
                runtime: args.runtime,
                train_limit: args.train_limit,
                val_limit: args.val_limit,
            })?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("k-NN of {} on {} ({} train / {} val images):", report.model, report.runtime, report.train_images, report.val_images);
                println!("{:>6} {:>8} {:>8}", "k", "top-1", "top-5");
                for k in KS {
                    let k = k.to_string();
                    println!("{:>6} {:>7.2}% {:>7.2}%", k, 100.0 * report.top1[&k], 100.0 * report.top5[&k]);
                }
            }
            Ok(())
        }
    }
}
