//! `poac pretrain`.

use crate::train::{pretrain, PretrainOptions};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct PretrainArgs {
    /// YAML config (keys as in dinov2/POA; see configs/).
    #[arg(long)]
    config: PathBuf,
    /// Dataset root (ImageNet or ImageFolder layout: train/<class>/…, labels.txt optional), or folder:PATH for a
    /// folder of unlabelled images (searched recursively).
    #[arg(long, required_unless_present = "dry_run")]
    data: Option<PathBuf>,
    /// Run folder: checkpoint/, metrics.jsonl, config.yaml.
    #[arg(long, required_unless_present = "dry_run")]
    output: Option<PathBuf>,
    /// Print the resolved config, effective lr, elastic space, parameters and FLOPs per iteration; train nothing.
    #[arg(long)]
    dry_run: bool,
    /// Iterations to train (the schedules are stretched over them). 0 writes the initial (random) weights.
    #[arg(long)]
    max_iters: Option<u64>,
    /// Training time, e.g. 900s, 15m, 1h; the schedules are fitted to it after a few iterations and refitted every 25.
    #[arg(long, value_parser = parse_duration)]
    time_budget: Option<Duration>,
    /// Continue the checkpoint in --output (a new run starts if there is none).
    #[arg(long)]
    resume: bool,
    /// cpu, or cuda / cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Under torchrun / `poac launch` (WORLD_SIZE > 1): how long the rendezvous and each collective wait for
    /// the other ranks before failing, e.g. 90s, 10m.
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    dist_timeout: Duration,
    /// Override a config value: --set student.layerscale=1.0 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

/// Parses `90`, `90s`, `15m`, `1.5h`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("`{s}` is not a duration such as 900s, 15m or 1h"))?;
    let seconds = match unit {
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit `{unit}` in `{s}`; use s, m or h")),
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("`{s}` must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The device a `--device` flag names (`cpu`, `cuda`, `cuda:N`); CUDA must be available.
pub(super) fn device(name: &str) -> Result<tch::Device> {
    let device = match name {
        "cpu" => tch::Device::Cpu,
        "cuda" => tch::Device::Cuda(0),
        _ => match name.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => tch::Device::Cuda(i),
            None => bail!("unknown device `{name}`; valid: cpu, cuda, cuda:N"),
        },
    };
    if device.is_cuda() && !tch::Cuda::is_available() {
        bail!("--device {name} but this libtorch sees no CUDA device");
    }
    Ok(device)
}

pub fn run(args: PretrainArgs) -> Result<()> {
    if args.dry_run {
        let config = crate::config::Config::load_with(&args.config, &args.overrides)?;
        print!("{}", crate::train::dry_run::describe(&config)?);
        return Ok(());
    }
    let (Some(data), Some(output)) = (args.data, args.output) else { bail!("--data and --output are required to train") };
    let device = device(&args.device)?;
    let options = PretrainOptions {
        config: args.config,
        data,
        output: output.clone(),
        max_iters: args.max_iters,
        time_budget: args.time_budget,
        resume: args.resume,
        device,
        overrides: args.overrides,
        dist_timeout: args.dist_timeout,
    };
    let summary = pretrain(&options)?;
    if summary.rank != 0 {
        return Ok(());
    }
    if summary.iterations == 0 {
        println!("wrote the initial (untrained) weights to {}", output.join("checkpoint").display());
        return Ok(());
    }
    println!(
        "pretrained {} iterations, {:.1} img/s, last loss {:.4}, {} images skipped; checkpoint in {}",
        summary.iterations,
        summary.images_per_second,
        summary.last_loss,
        summary.skipped_images,
        output.join("checkpoint").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("900").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("15 parsecs").is_err());
        assert!(parse_duration("-3s").is_err());
    }
}
