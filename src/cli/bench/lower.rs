//! `poac bench lower`: how fast and how light lowering is at ViT-L scale. A ViT-L/16 supergraph (embed 1024, 24
//! blocks, head_dim 64, 224 px; widths 384..1024, depths 12..24) gets random weights written once to a cached
//! safetensors file (~1.2 GB); then ViT-S (384, 12) and ViT-L (1024, 24) are lowered, each in a child process
//! of its own, once into a sink (the lowering itself) and once to a file (plus the write). Time is measured
//! inside the child around the lowering; peak RSS is the child's `ru_maxrss` from `wait4` (what
//! `/usr/bin/time -v` reports), next to the child's RSS before lowering (the binary and libtorch).

use crate::lower::{lower, prepare, write_atomically, LowerOptions, SubnetChoice};
use crate::train::checkpoint;
use anyhow::{bail, Context, Result};
use clap::Args;
use poac_ir::{build::supergraph, write_safetensors, Graph, IrError, VitArch, WeightFile, WidthChoice};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// `poac bench lower`'s flags.
#[derive(Args)]
pub struct BenchLowerArgs {
    /// Write the figures as JSON to this file (they are printed as a table either way).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Folder for the cached random supergraph weights and the temporary models (default:
    /// `$POAC_CACHE/bench`, else `~/.cache/poac/bench`).
    #[arg(long)]
    cache: Option<PathBuf>,
}

/// The sub-network a child lowers.
#[derive(Args)]
pub struct ChildArgs {
    checkpoint: PathBuf,
    #[arg(long)]
    width: usize,
    #[arg(long)]
    depth: usize,
    /// Write the model here; without it the model goes to a sink.
    #[arg(long)]
    file: Option<PathBuf>,
}

/// What a child reports on stdout.
#[derive(Serialize, Deserialize)]
struct ChildReport {
    seconds: f64,
    cpu_seconds: f64,
    rss_before_bytes: u64,
    rss_file_before_bytes: u64,
    onnx_bytes: usize,
    weight_bytes: usize,
}

/// One measured lowering.
#[derive(Serialize)]
struct Measurement {
    subnet: String,
    /// `sink` (no file) or `file`.
    target: &'static str,
    params: usize,
    onnx_bytes: usize,
    output_weight_bytes: usize,
    seconds: f64,
    cpu_seconds: f64,
    peak_rss_bytes: u64,
    rss_before_lowering_bytes: u64,
    rss_before_lowering_file_backed_bytes: u64,
    peak_rss_over_weight_bytes: f64,
    lowering_rss_over_weight_bytes: f64,
}

/// The ViT-L/16 elastic space of POA's reference configuration.
fn vit_l() -> VitArch {
    VitArch { layerscale_init: 0.1, ..VitArch::default() }
}

/// Runs `poac bench lower`.
pub fn bench_lower(args: BenchLowerArgs) -> Result<()> {
    let cache = match args.cache {
        Some(dir) => dir,
        None => std::env::var_os("POAC_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/poac")))
            .context("no --cache given and neither POAC_CACHE nor HOME is set")?
            .join("bench"),
    };
    let graph = supergraph(&vit_l())?;
    let run = cache.join("vit-l16-224");
    ensure_weights(&run, &graph)?;
    let costs = crate::lower::subnet_costs(&graph)?;
    let exe = std::env::current_exe().context("cannot find the poac executable")?;
    let mut measurements = Vec::new();
    for (width, depth) in [(384, 12), (1024, 24)] {
        let params = costs.iter().find(|c| (c.width, c.depth) == (width, depth)).map_or(0, |c| c.params);
        for target in ["sink", "file"] {
            let out = cache.join(format!("w{width}-d{depth}.onnx"));
            let mut command = Command::new(&exe);
            command.args(["bench", "lower-child"]).arg(&run).args(["--width", &width.to_string(), "--depth", &depth.to_string()]);
            if target == "file" {
                command.arg("--file").arg(&out);
            }
            let (report, peak) = measure(command)?;
            let _ = std::fs::remove_file(&out);
            let weights = report.weight_bytes as f64;
            measurements.push(Measurement {
                subnet: format!("w{width}-d{depth}"),
                target,
                params,
                onnx_bytes: report.onnx_bytes,
                output_weight_bytes: report.weight_bytes,
                seconds: report.seconds,
                cpu_seconds: report.cpu_seconds,
                peak_rss_bytes: peak,
                rss_before_lowering_bytes: report.rss_before_bytes,
                rss_before_lowering_file_backed_bytes: report.rss_file_before_bytes,
                peak_rss_over_weight_bytes: peak as f64 / weights,
                lowering_rss_over_weight_bytes: peak.saturating_sub(report.rss_before_bytes) as f64 / weights,
            });
        }
    }
    println!("lowering from a ViT-L/16 supergraph ({}, {:.2} GB of weights):", run.display(), supergraph_bytes(&graph) as f64 / 1e9);
    println!(
        "{:>12} {:>6} {:>10} {:>9} {:>9} {:>12} {:>10} {:>9} {:>18}",
        "sub-network", "target", "weights MB", "seconds", "CPU s", "peak RSS MB", "before MB", "peak/wts", "(peak-before)/wts"
    );
    for m in &measurements {
        let mb = |b: f64| b / 1e6;
        println!(
            "{:>12} {:>6} {:>10.1} {:>9.3} {:>9.3} {:>12.1} {:>10.1} {:>9.2} {:>18.2}",
            m.subnet,
            m.target,
            mb(m.output_weight_bytes as f64),
            m.seconds,
            m.cpu_seconds,
            mb(m.peak_rss_bytes as f64),
            mb(m.rss_before_lowering_bytes as f64),
            m.peak_rss_over_weight_bytes,
            m.lowering_rss_over_weight_bytes
        );
    }
    if let Some(path) = args.out {
        let report = serde_json::json!({
            "supergraph": "ViT-L/16, 224 px, widths 384..1024 (head_dim 64), depths 12..24",
            "supergraph_weight_bytes": supergraph_bytes(&graph),
            "method": "each lowering in its own child process; seconds (wall) and cpu_seconds (user + system, getrusage) \
                       measured inside the child around prepare+write; \
                       peak RSS = the child's ru_maxrss from wait4 (as /usr/bin/time -v), rss_before = the child's VmRSS \
                       before lowering (binary + libtorch; the file-backed part is shared library pages); target sink = no file, file = written atomically to the cache folder",
            "measurements": measurements,
        });
        write_atomically(&path, |w| Ok(serde_json::to_writer_pretty(w, &report)?))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn supergraph_bytes(g: &Graph) -> usize {
    g.params.iter().map(|p| 4 * p.shape_at(g.space.max_width()).iter().product::<usize>()).sum()
}

/// Writes the supergraph and random weights to `run` unless a matching copy is already there.
fn ensure_weights(run: &Path, graph: &Graph) -> Result<()> {
    let weights = run.join(checkpoint::TEACHER);
    let width = graph.space.max_width();
    let cached = WeightFile::open(&weights).is_ok_and(|file| {
        let entries = file.entries();
        entries.len() == graph.params.len() && graph.params.iter().zip(&entries).all(|(p, e)| e.name == p.name && e.shape == p.shape_at(width))
    });
    if cached && run.join(checkpoint::SUPERGRAPH).exists() {
        return Ok(());
    }
    let start = Instant::now();
    write_atomically(&run.join(checkpoint::SUPERGRAPH), |w| Ok(w.write_all(graph.to_json().as_bytes())?))?;
    let tensors: Vec<(String, Vec<usize>)> = graph.params.iter().map(|p| (p.name.clone(), p.shape_at(width))).collect();
    write_atomically(&weights, |w| {
        let mut state = 0x5eed_u64;
        write_safetensors(w, &tensors, |i, out| {
            let n: usize = tensors[i].1.iter().product();
            let mut buffer = Vec::with_capacity(1 << 20);
            let mut left = n;
            while left > 0 {
                buffer.clear();
                for _ in 0..left.min(1 << 18) {
                    // splitmix64 → uniform in [-0.035, 0.035): std 0.02, as trained ViT weights.
                    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    let unit = ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32;
                    buffer.extend_from_slice(&((unit - 0.5) * 0.0693).to_le_bytes());
                }
                left -= left.min(1 << 18);
                out.write_all(&buffer).map_err(|e| IrError::Weights(e.to_string()))?;
            }
            Ok(())
        })?;
        Ok(())
    })?;
    println!("wrote random ViT-L weights to {} in {:.1} s", weights.display(), start.elapsed().as_secs_f64());
    Ok(())
}

/// Runs `command` to completion; returns its report and its peak RSS in bytes (`ru_maxrss` from `wait4`).
fn measure(mut command: Command) -> Result<(ChildReport, u64)> {
    let mut child = command.stdout(Stdio::piped()).spawn().context("cannot start the measured child")?;
    let mut stdout = String::new();
    child.stdout.take().expect("piped").read_to_string(&mut stdout)?;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 reaps our own child, which `Child` then never waits for.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    if pid < 0 {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("the measured lowering failed (status {status})");
    }
    let report = serde_json::from_str(stdout.trim()).with_context(|| format!("bad child report: {stdout}"))?;
    Ok((report, usage.ru_maxrss as u64 * 1024))
}

/// One measured lowering, in the child process `bench_lower` starts.
pub fn child(args: ChildArgs) -> Result<()> {
    let (rss_before_bytes, rss_file_before_bytes) = rss_bytes()?;
    let choice = SubnetChoice { width: Some(WidthChoice::Absolute(args.width)), depth: Some(args.depth), ..Default::default() };
    let (start, cpu_start) = (Instant::now(), cpu_seconds());
    let lowered = match &args.file {
        Some(path) => lower(&args.checkpoint, &choice, &LowerOptions::default(), path, |_, _, _| {})?,
        None => prepare(&args.checkpoint, &choice, &LowerOptions::default(), |_, _, _| {})?.write(&mut std::io::sink())?,
    };
    let report = ChildReport {
        seconds: start.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu_start,
        rss_before_bytes,
        rss_file_before_bytes,
        onnx_bytes: lowered.bytes,
        weight_bytes: lowered.weight_bytes,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// User + system CPU seconds this process has used (on a shared machine, steadier than wall time).
fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data, filled by getrusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The process's resident set size now, and the part of it that maps files (shared libraries, chiefly
/// libtorch): `VmRSS` and `RssFile` of /proc/self/status.
fn rss_bytes() -> Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let field = |key: &str| -> Result<u64> {
        let line = status.lines().find(|l| l.starts_with(key)).with_context(|| format!("no {key} in /proc/self/status"))?;
        let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).with_context(|| format!("bad {key} line"))?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("RssFile:")?))
}
