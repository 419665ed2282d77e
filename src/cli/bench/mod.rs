//! `poac bench`: measurements that print a table and write their figures as JSON.

mod augment;
mod lower;

use anyhow::Result;
use clap::Subcommand;

/// The benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time and peak RSS of lowering ViT-S and ViT-L from a ViT-L-sized supergraph.
    Lower(lower::BenchLowerArgs),
    /// One measured lowering (run by `bench lower` in a child process).
    #[command(hide = true)]
    LowerChild(lower::ChildArgs),
    /// Time of a config's multi-crop augmentation per batch, with and without blur and solarisation.
    Augment(augment::BenchAugmentArgs),
}

/// Runs one benchmark.
pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Lower(args) => lower::bench_lower(args),
        BenchCommand::LowerChild(args) => lower::child(args),
        BenchCommand::Augment(args) => augment::bench_augment(args),
    }
}
