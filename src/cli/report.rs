//! `poac report`: a run's Markdown summary and PNG plots (see [`crate::report`]).

use crate::report::{write_report, EVALS_FILE};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ReportArgs {
    /// Run folder written by `poac pretrain` (its metrics.jsonl, and evals.jsonl if present).
    run: PathBuf,
    /// More evaluation records to include (files written by `poac eval … --record`); repeatable.
    #[arg(long = "records")]
    records: Vec<PathBuf>,
    /// Folder for report.md and the plots (default: RUN/report).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let out = args.out.unwrap_or_else(|| args.run.join("report"));
    let files = write_report(&args.run, &args.records, &out)?;
    if !args.run.join(EVALS_FILE).exists() && args.records.is_empty() {
        eprintln!("note: {} has no {EVALS_FILE}: the report shows pre-training only", args.run.display());
    }
    println!("wrote {}", files.markdown.display());
    for plot in &files.plots {
        println!("wrote {}", plot.display());
    }
    Ok(())
}
