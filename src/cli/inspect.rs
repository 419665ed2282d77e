//! `poac inspect`: the elastic space of a checkpoint, one row per sub-network, with the size of the ONNX file
//! `poac lower` would write for it (computed from the emitted model, no file written, no weight read).

use crate::lower::{LowerOptions, Source};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct InspectArgs {
    /// Run folder or checkpoint folder.
    checkpoint: PathBuf,
    /// Print JSON (one array of objects) instead of a table.
    #[arg(long)]
    json: bool,
}

/// One row: the sub-network's cost and its ONNX size with `poac lower`'s default options.
#[derive(serde::Serialize)]
struct Row {
    #[serde(flatten)]
    cost: crate::lower::SubnetCost,
    onnx_bytes: usize,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let source = Source::open(&args.checkpoint)?;
    let mut rows = Vec::new();
    for subnet in source.supergraph.space.subnets() {
        let (model, cost) = source.model(subnet, &LowerOptions::default(), |_, _, _| {})?;
        rows.push(Row { cost, onnx_bytes: model.encoded_len() });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{} sub-networks at {} px ({}):", rows.len(), source.supergraph.arch.img_size, source.dir.display());
    println!("{:>6} {:>6} {:>6} {:>10} {:>10} {:>10}", "width", "depth", "heads", "params(M)", "GFLOPs", "ONNX(MB)");
    for Row { cost: c, onnx_bytes } in &rows {
        println!(
            "{:>6} {:>6} {:>6} {:>10.3} {:>10.4} {:>10.2}",
            c.width,
            c.depth,
            c.heads,
            c.params as f64 / 1e6,
            c.flops as f64 / 1e9,
            *onnx_bytes as f64 / 1e6
        );
    }
    Ok(())
}
