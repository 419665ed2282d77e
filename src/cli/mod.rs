//! The command line: one module per verb.

mod bench;
mod data;
mod eval;
mod finetune;
mod import_torch;
mod inspect;
mod launch;
mod lower;
mod pretrain;
mod report;
mod subnet;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// poac — pre-train once (POA), deploy any size as ONNX.
#[derive(Parser)]
#[command(name = "poac", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import and index datasets.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// POA self-supervised pre-training of an elastic ViT.
    Pretrain(pretrain::PretrainArgs),
    /// Start this node's workers of a data-parallel run (torchrun's environment): `launch --nproc-per-node 2 --
    /// pretrain …`.
    Launch(launch::LaunchArgs),
    /// Lower one sub-network of a checkpoint to ONNX.
    Lower(lower::LowerArgs),
    /// List every sub-network of a checkpoint with its parameters and FLOPs.
    Inspect(inspect::InspectArgs),
    /// Evaluate a lowered model.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Import a dinov2/POA-style ViT state dict (.safetensors or .pth) as a run folder `poac lower` accepts.
    ImportTorch(import_torch::ImportArgs),
    /// A run's Markdown summary and PNG plots: losses, and accuracy against parameters and FLOPs.
    Report(report::ReportArgs),
    /// Benchmarks (figures as JSON).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Keeps freed memory in the process instead of returning it to the kernel after every large tensor: libtorch
/// allocates and frees activations of tens of MB each step, and with glibc's defaults each one comes back as
/// fresh zeroed pages (about 15 % of a CPU training step spent in page faults).
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator tunables; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Lets libtorch use its AVX-512 kernels where the CPU has them (it picks AVX2 by default; AVX-512 measured
/// about 25 % faster for a training step here). A value the user set is left alone.
fn prefer_avx512() {
    #[cfg(target_arch = "x86_64")]
    if std::env::var_os("ATEN_CPU_CAPABILITY").is_none()
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
    {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("ATEN_CPU_CAPABILITY", "avx512") };
    }
}

/// Parses the arguments, runs the verb, prints any error with its causes, and returns the exit code.
pub fn main() -> ExitCode {
    keep_freed_memory();
    prefer_avx512();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(c) => data::run(c),
        Command::Pretrain(a) => pretrain::run(a),
        Command::Launch(a) => launch::run(a),
        Command::Lower(a) => lower::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Eval(c) => eval::run(c),
        Command::Report(a) => report::run(a),
        Command::ImportTorch(a) => import_torch::run(a),
        Command::Bench(c) => bench::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
