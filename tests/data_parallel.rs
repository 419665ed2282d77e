//! Data-parallel pre-training on c10d's Gloo backend over loopback: 2 ranks × batch B train exactly like
//! 1 rank × batch 2B (same seed, same data order, same per-image crops and masks), and a rank that dies takes
//! the run down within the collective timeout instead of hanging it; a rendezvous that cannot happen names the
//! address it failed on, and a run resumes only with the number of processes it was trained with.
//!
//! The tiny config runs with KoLeo and drop-path off: KoLeo's nearest neighbours are searched within each
//! rank's share of the batch (as in dinov2), and drop-path draws from libtorch's global generator in batch
//! order, so neither can match across a different split of the batch. Everything else — both students, the
//! EMA teacher, Sinkhorn–Knopp over the global batch, iBOT masks, AdamW, clipping — must agree.

mod common;

use common::{stripes_dataset, temp, tiny_config};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tch::Tensor;

const ITERATIONS: &str = "10";
/// Images per rank with two ranks (one rank takes twice as many).
const BATCH: usize = 4;

/// A free loopback port for a rendezvous.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A temporary folder for one test, with the stripes dataset in its `data/`.
fn workspace(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp(name);
    let data = dir.join("data");
    stripes_dataset(&data);
    (dir, data)
}

/// Starts `cmd` with its stderr captured and its stdout dropped.
fn start(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

/// `poac pretrain` of the tiny config with `batch` images per rank, one libtorch thread.
fn pretrain(data: &Path, run: &Path, batch: usize, iterations: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poac"));
    cmd.args(["pretrain", "--config", tiny_config().to_str().unwrap(), "--data", data.to_str().unwrap()])
        .args(["--output", run.to_str().unwrap(), "--max-iters", iterations])
        .args(["--set", &format!("train.batch_size={batch}"), "--set", "train.compute_precision=fp32"])
        .args(["--set", "train.num_workers=0", "--set", "student.drop_path_rate=0", "--set", "dino.koleo_loss_weight=0"])
        .env("OMP_NUM_THREADS", "1");
    cmd
}

/// Iterations a run that is killed part-way is asked for (far more than it reaches).
const LONG_RUN: &str = "5000";
/// The collective timeout of the runs that lose a rank; a hung collective would fail after it.
const DIST_TIMEOUT: &str = "20s";

/// Waits until `run` has logged a few iterations (the ranks are past the rendezvous and training).
fn wait_for_training(run: &Path, alive: &mut Child) {
    let started = Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count()) < 4 {
        assert!(alive.try_wait().unwrap().is_none(), "the run stopped before it trained");
        assert!(started.elapsed() < Duration::from_secs(60), "no iteration logged after 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits at most `limit` for `child` to exit; its status and stderr.
fn exit_within(mut child: Child, limit: Duration) -> (std::process::ExitStatus, String, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (status, stderr, started.elapsed());
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("still running {limit:?} after its peer died");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rank `rank` of a 2-rank run, as torchrun would start it.
fn rank(mut cmd: Command, rank: usize, port: u16) -> Command {
    cmd.env("RANK", rank.to_string()).env("LOCAL_RANK", rank.to_string()).env("WORLD_SIZE", "2");
    cmd.env("MASTER_ADDR", "127.0.0.1").env("MASTER_PORT", port.to_string());
    cmd
}

fn finish(child: Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("panicked"), "{what} failed:\n{stderr}");
}

/// The loss of every iteration in `run`'s metrics, in order.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["iteration"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// Every tensor of a checkpoint file, by name.
fn tensors(file: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(file).unwrap().into_iter().collect()
}

#[test]
fn two_ranks_of_batch_b_train_like_one_rank_of_batch_2b() {
    let (dir, data) = workspace("data-parallel");
    let (single, split) = (dir.join("single"), dir.join("split"));
    let port = free_port();
    let ranks: Vec<Child> =
        (0..2).map(|r| start(&mut rank(pretrain(&data, &split, BATCH, ITERATIONS), r, port))).collect();
    let one = start(&mut pretrain(&data, &single, 2 * BATCH, ITERATIONS));
    for (r, child) in ranks.into_iter().enumerate() {
        finish(child, &format!("rank {r}"));
    }
    finish(one, "the single process");

    let (a, b) = (losses(&single), losses(&split));
    let n: u64 = ITERATIONS.parse().unwrap();
    assert_eq!(a.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>());
    assert_eq!(b.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>(), "rank 0 logs every iteration once");
    for ((i, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "iteration {i}: loss {x} on 1 rank × {}, {y} on 2 ranks × {BATCH}", 2 * BATCH);
    }
    assert!(a.windows(2).any(|w| (w[0].1 - w[1].1).abs() > 1e-3), "the loss never moved: {a:?}");

    // Students, heads, AdamW moments and centres (train state) and the EMA teacher.
    for file in ["train_state.safetensors", "teacher.safetensors"] {
        let (x, y) = (tensors(&single.join("checkpoint").join(file)), tensors(&split.join("checkpoint").join(file)));
        assert_eq!(x.len(), y.len(), "{file}");
        for (name, t) in &x {
            let u = y.get(name).unwrap_or_else(|| panic!("{file}: 2-rank checkpoint lacks {name}"));
            let diff = (t - u).abs().max().double_value(&[]);
            assert!(diff <= 1e-5, "{file} {name}: max |1 rank − 2 ranks| = {diff}");
        }
    }
    // Only rank 0 wrote: one run folder with a single set of metric lines (checked above) and its checkpoint.
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_rank_that_dies_stops_the_other_within_the_timeout() {
    let (dir, data) = workspace("dead-rank");
    let run = dir.join("run");
    let port = free_port();
    let spawn = |r| {
        start(rank(pretrain(&data, &run, BATCH, LONG_RUN), r, port).args(["--dist-timeout", DIST_TIMEOUT]))
    };
    let (mut survivor, mut victim) = (spawn(0), spawn(1));
    wait_for_training(&run, &mut survivor);
    victim.kill().unwrap(); // SIGKILL mid-run
    victim.wait().unwrap();
    let (status, stderr, took) = exit_within(survivor, Duration::from_secs(40));
    assert!(!status.success(), "rank 0 finished although rank 1 died:\n{stderr}");
    assert!(status.code().is_some(), "rank 0 should exit with an error, not a signal ({status}):\n{stderr}");
    assert!(stderr.contains("error: rank 0 of 2: ") && stderr.contains("across ranks failed"), "no clear error ({took:?}):\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_port_in_use_and_an_unreachable_master_are_errors_naming_the_address() {
    let (dir, data) = workspace("rendezvous");
    let attempt = |rank_index: usize, port: u16| {
        let child = start(rank(pretrain(&data, &dir.join(format!("run{rank_index}")), BATCH, "2"), rank_index, port).args(["--dist-timeout", "3s"]));
        let (status, stderr, _) = exit_within(child, Duration::from_secs(30));
        assert!(!status.success() && !stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.contains("frame #"), "c10d's retry log with its C++ backtrace reached the user:\n{stderr}");
        stderr
    };
    // Rank 0 serves the store: another program already holds the port.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let stderr = attempt(0, taken);
    assert!(stderr.contains(&format!("rank 0 of 2: rendezvous failed serving the master at 127.0.0.1:{taken}")), "{stderr}");
    drop(squatter);
    // Rank 1 reaches for a master nobody serves: it gives up within the timeout.
    let nobody = free_port();
    let stderr = attempt(1, nobody);
    assert!(stderr.contains(&format!("rank 1 of 2: rendezvous failed reaching the master at 127.0.0.1:{nobody}")), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_resumes_only_with_the_world_size_it_was_trained_with() {
    let (dir, data) = workspace("resume-world");
    let run = dir.join("run");
    let single = start(&mut pretrain(&data, &run, 2 * BATCH, "2"));
    finish(single, "the single process");
    let port = free_port();
    let ranks: Vec<Child> = (0..2)
        .map(|r| start(rank(pretrain(&data, &run, BATCH, "4"), r, port).args(["--resume", "--dist-timeout", DIST_TIMEOUT])))
        .collect();
    for child in ranks {
        let (status, stderr, _) = exit_within(child, Duration::from_secs(40));
        assert!(!status.success() && !stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains("was trained by 1 process(es): resume it with WORLD_SIZE=1") && stderr.contains("not 2"), "{stderr}");
    }
    assert_eq!(losses(&run).len(), 2, "the refused resume changed the run");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The pids of `parent`'s children.
fn children(parent: u32) -> Vec<u32> {
    let list = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap();
    list.split_whitespace().map(|p| p.parse().unwrap()).collect()
}

/// The `RANK` a process was started with.
fn rank_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|&b| b == 0).find_map(|kv| kv.strip_prefix(b"RANK=")).map(|v| String::from_utf8_lossy(v).into_owned())
}

#[test]
fn poac_launch_stops_every_worker_when_one_dies() {
    let (dir, data) = workspace("launch");
    let run = dir.join("run");
    let port = free_port().to_string();
    let worker = pretrain(&data, &run, BATCH, LONG_RUN);
    let mut launch = Command::new(env!("CARGO_BIN_EXE_poac"));
    launch.args(["launch", "--nproc-per-node", "2", "--master-port", &port, "--"]).args(worker.get_args());
    launch.arg("--dist-timeout").arg(DIST_TIMEOUT).env("OMP_NUM_THREADS", "1");
    let mut launcher = start(&mut launch);
    wait_for_training(&run, &mut launcher);
    let workers = children(launcher.id());
    assert_eq!(workers.len(), 2, "poac launch --nproc-per-node 2 started {workers:?}");
    let victim = *workers.iter().find(|&&pid| rank_of(pid).as_deref() == Some("1")).expect("a worker with RANK=1");
    // SAFETY: SIGKILL to a live child of the launcher this test started.
    unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
    let (status, stderr, _) = exit_within(launcher, Duration::from_secs(40));
    assert!(!status.success(), "the launcher succeeded although a worker died:\n{stderr}");
    assert!(stderr.contains("worker rank 1 was killed by signal 9"), "{stderr}");
    for pid in workers {
        assert!(!Path::new(&format!("/proc/{pid}")).exists() || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().contains(") Z"), "worker {pid} outlived the launcher");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
