//! `poac inspect`: the elastic space of a checkpoint, one row per sub-network.

use crate::train::checkpoint;
use anyhow::Result;
use clap::Args;
use poac_ir::stats;
use poac_passes::{specialise::Specialise, Pass};
use std::path::PathBuf;

#[derive(Args)]
pub struct InspectArgs {
    /// Run folder or checkpoint folder.
    checkpoint: PathBuf,
    /// Print JSON (one array of objects) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let dir = checkpoint::resolve(&args.checkpoint)?;
    let supergraph = checkpoint::read_graph(&dir)?;
    let space = &supergraph.space;
    let mut rows = Vec::new();
    for subnet in space.subnets() {
        let mut g = supergraph.clone();
        Specialise { subnet }.run(&mut g)?;
        rows.push(serde_json::json!({
            "width": subnet.width, "depth": subnet.depth, "heads": subnet.width / space.head_dim,
            "params": stats::param_count(&g), "flops": stats::flops_per_image(&g),
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{} sub-networks at {} px ({}):", rows.len(), supergraph.arch.img_size, dir.display());
    println!("{:>6} {:>6} {:>6} {:>10} {:>10}", "width", "depth", "heads", "params(M)", "GFLOPs");
    for r in &rows {
        println!(
            "{:>6} {:>6} {:>6} {:>10.3} {:>10.4}",
            r["width"], r["depth"], r["heads"],
            r["params"].as_f64().unwrap_or(0.0) / 1e6,
            r["flops"].as_f64().unwrap_or(0.0) / 1e9
        );
    }
    Ok(())
}
