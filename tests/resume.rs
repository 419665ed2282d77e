//! A run killed with SIGKILL and resumed trains exactly like one that was never interrupted: the same loss at
//! every iteration (CPU, fp32, fixed seed). Everything a step depends on — weights, heads, AdamW moments and
//! per-parameter steps, centres, schedules, the sampled sub-network, the data order, crops, masks and
//! drop-path draws — must come back from the checkpoint or be a function of the seed and the iteration.

mod common;

use common::{stripes_dataset, temp, tiny_config};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ITERATIONS: &str = "30";

/// `poac pretrain` of the tiny config from `data` into `run`.
fn pretrain_command(data: &Path, run: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poac"));
    cmd.args(["pretrain", "--config", tiny_config().to_str().unwrap(), "--data", data.to_str().unwrap()])
        .args(["--output", run.to_str().unwrap()]);
    cmd
}

/// `poac pretrain` of the tiny config into `run` for `ITERATIONS`, one libtorch thread (the reduction order is
/// then fixed).
fn pretrain(data: &Path, run: &Path, resume: bool) -> Command {
    let mut cmd = pretrain_command(data, run);
    cmd.args(["--max-iters", ITERATIONS])
        .args(["--set", "train.compute_precision=fp32", "--set", "train.saveckp_freq=3", "--set", "train.num_workers=0"])
        .args(["--set", "student.drop_path_rate=0.1"])
        .env("OMP_NUM_THREADS", "1");
    if resume {
        cmd.arg("--resume");
    }
    cmd
}

fn run_to_end(mut cmd: Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The metrics line of every iteration in `run`, in order.
fn iteration_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .collect()
}

/// The loss of every iteration in `run`'s metrics, in order.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    iteration_lines(run).iter().map(|v| (v["iteration"].as_u64().unwrap(), v["loss"].as_f64().unwrap())).collect()
}

/// The run's `checkpoint/state.json`, if one is complete.
fn state(run: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(run.join("checkpoint/state.json")).ok()?).ok()
}

/// The iteration of `run`'s latest checkpoint, if one is complete.
fn checkpointed(run: &Path) -> Option<u64> {
    state(run)?["iteration"].as_u64()
}

#[test]
fn killed_and_resumed_run_repeats_the_uninterrupted_losses() {
    let dir = temp("resume");
    let data = dir.join("data");
    stripes_dataset(&data);
    let (straight, killed) = (dir.join("straight"), dir.join("killed"));
    run_to_end(pretrain(&data, &straight, false));

    let mut child = pretrain(&data, &killed, false).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    let killed_at = loop {
        if let Some(it) = checkpointed(&killed).filter(|&it| it >= 6) {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            break it;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed");
        assert!(started.elapsed() < Duration::from_secs(300), "no checkpoint after 5 minutes");
        std::thread::sleep(Duration::from_millis(5));
    };
    run_to_end(pretrain(&data, &killed, true));

    let (a, b) = (losses(&straight), losses(&killed));
    let n: u64 = ITERATIONS.parse().unwrap();
    assert_eq!(a.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>());
    assert_eq!(b.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>(), "killed after checkpoint {killed_at}");
    for ((i, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "iteration {i}: {x} uninterrupted, {y} killed at {killed_at} and resumed");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `poac pretrain --resume` of the tiny config into `run` with a time budget for the whole run.
fn pretrain_within(data: &Path, run: &Path, budget: &str) {
    let mut cmd = pretrain_command(data, run);
    cmd.args(["--time-budget", budget, "--resume"]);
    run_to_end(cmd);
}

#[test]
fn a_time_budget_covers_the_whole_run_across_resumes() {
    let dir = temp("budget");
    let data = dir.join("data");
    stripes_dataset(&data);
    let run = dir.join("run");
    pretrain_within(&data, &run, "10s");
    let first = state(&run).unwrap();
    // The config's 4 epochs × 2 iterations are a placeholder until the schedules are fitted to the budget.
    let iterations = first["iteration"].as_u64().unwrap();
    assert!(iterations > 8, "stopped at the config's length: {first}");
    let planned: Vec<u64> = iteration_lines(&run).iter().map(|l| l["total_iters"].as_u64().unwrap()).collect();
    assert_eq!((planned[0], planned.len() as u64), (8, iterations));
    assert!(planned.last().unwrap() >= &iterations, "{planned:?}");
    // Resumed with the same budget, the run has nothing left to train.
    pretrain_within(&data, &run, "10s");
    let again = state(&run).unwrap();
    assert_eq!(again["iteration"], first["iteration"]);
    assert_eq!(again["elapsed_s"], first["elapsed_s"]);
}
