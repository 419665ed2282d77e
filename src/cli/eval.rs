//! `poac eval`.

use crate::eval::knn::{knn_eval, KS};
use crate::eval::linear::{best_per_setting, linear_eval, LinearOptions, LinearReport};
use crate::eval::EvalTarget;
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

/// What every evaluation of a lowered model reads, and how it reports.
#[derive(Args)]
pub struct EvalInput {
    /// ONNX model written by `poac lower` (for `linear`: with `--output last4`).
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
    /// Print one JSON object instead of a table (for `linear`: with all 52 classifiers).
    #[arg(long)]
    json: bool,
    /// Also append the JSON result as one line to this file (created with its folder), for `poac report`.
    #[arg(long)]
    record: Option<PathBuf>,
}

impl EvalInput {
    /// The model, data and runtime to evaluate.
    fn target(&self) -> EvalTarget {
        let (model, data) = (self.model.clone(), self.data.clone());
        EvalTarget { model, data, runtime: self.runtime, train_limit: self.train_limit, val_limit: self.val_limit }
    }

    /// Records `report` if asked, then prints it as JSON or with `table`.
    fn report<R: serde::Serialize>(&self, eval: &str, report: &R, table: impl FnOnce(&R)) -> Result<()> {
        if let Some(path) = &self.record {
            append_record(path, eval, report)?;
        }
        if self.json {
            println!("{}", serde_json::to_string(report)?);
        } else {
            table(report);
        }
        Ok(())
    }
}

#[derive(Args)]
pub struct KnnArgs {
    #[command(flatten)]
    input: EvalInput,
}

#[derive(Args)]
pub struct LinearArgs {
    #[command(flatten)]
    input: EvalInput,
    /// Passes over the training features (default: as many as make dinov2's 12,500 iterations).
    #[arg(long)]
    epochs: Option<usize>,
    /// Mini-batch size; the learning rates are scaled by it / 256.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
}

pub fn run(command: EvalCommand) -> Result<()> {
    match command {
        EvalCommand::Knn(KnnArgs { input }) => {
            let report = knn_eval(&input.target())?;
            input.report("knn", &report, |report| {
                println!("k-NN of {} on {} ({} train / {} val images):", report.evaluated.model, report.runtime, report.train_images, report.val_images);
                println!("{:>6} {:>8} {:>8}", "k", "top-1", "top-5");
                for k in KS {
                    let k = k.to_string();
                    println!("{:>6} {:>7.2}% {:>7.2}%", k, 100.0 * report.top1[&k], 100.0 * report.top5[&k]);
                }
            })
        }
        EvalCommand::Linear(LinearArgs { input, epochs, batch_size }) => {
            let report = linear_eval(&LinearOptions { target: input.target(), epochs, batch_size })?;
            input.report("linear", &report, print_linear)
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
        report.evaluated.model,
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
