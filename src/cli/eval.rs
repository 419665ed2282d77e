//! `poac eval`.

use crate::eval::knn::{knn_eval, KnnOptions, KS};
use crate::eval::linear::{best_per_setting, linear_eval, LinearOptions, LinearReport};
use crate::eval::record::append_record;
use crate::runtime::RuntimeKind;
use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Weighted k-NN (k = 10, 20, 100, 200; T = 0.07) on the model's class token.
    Knn(KnnArgs),
    /// Linear probe (dinov2's grid of 52 classifiers) on a model lowered with `--output last4`.
    Linear(LinearArgs),
    /// Fine-tune one sub-network of a pre-trained run with a classifier head (DeiT's recipe), lower it with the
    /// head to ONNX and check it on ONNX Runtime and tract.
    Finetune(super::finetune::FinetuneArgs),
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
    /// Also append the JSON result as one line to this file (created with its folder), for `poac report`.
    #[arg(long)]
    record: Option<PathBuf>,
}

#[derive(Args)]
pub struct LinearArgs {
    /// ONNX model written by `poac lower ... --output last4`.
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
    /// Passes over the training features (default: as many as make dinov2's 12,500 iterations).
    #[arg(long)]
    epochs: Option<usize>,
    /// Mini-batch size; the learning rates are scaled by it / 256.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Print one JSON object (all 52 classifiers) instead of a table.
    #[arg(long)]
    json: bool,
    /// Also append the JSON result as one line to this file (created with its folder), for `poac report`.
    #[arg(long)]
    record: Option<PathBuf>,
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
            if let Some(path) = &args.record {
                append_record(path, "knn", &report)?;
            }
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
        EvalCommand::Linear(args) => {
            let report = linear_eval(&LinearOptions {
                model: args.model,
                data: args.data,
                runtime: args.runtime,
                train_limit: args.train_limit,
                val_limit: args.val_limit,
                epochs: args.epochs,
                batch_size: args.batch_size,
            })?;
            if let Some(path) = &args.record {
                append_record(path, "linear", &report)?;
            }
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_linear(&report);
            }
            Ok(())
        }
        EvalCommand::Finetune(args) => super::finetune::run(args),
    }
}

/// The best classifier, then the best of each feature setting.
fn print_linear(report: &LinearReport) {
    let setting = |n_blocks: usize, avgpool: bool| format!("last {n_blocks} block{}{}", if n_blocks > 1 { "s" } else { "" }, if avgpool { " + avgpool" } else { "" });
    let best = &report.best;
    println!(
        "Linear probe of {} on {} ({} train / {} val images, {} classifiers, {} epochs = {} iterations of batch {}):",
        report.model,
        report.runtime,
        report.train_images,
        report.val_images,
        report.results.len(),
        report.epochs,
        report.iterations,
        report.batch_size
    );
    println!("best: {:.2}% top-1 ({}, lr {})", 100.0 * best.top1, setting(best.n_blocks, best.avgpool), best.lr);
    println!("{:<24} {:>10} {:>8}", "features", "best lr", "top-1");
    for r in best_per_setting(&report.results) {
        println!("{:<24} {:>10} {:>7.2}%", setting(r.n_blocks, r.avgpool), r.lr, 100.0 * r.top1);
    }
}
