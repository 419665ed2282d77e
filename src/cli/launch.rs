//! `poac launch`: starts this node's workers of a data-parallel run with torchrun's environment, and stops
//! them all as soon as one fails.

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long workers get to exit after SIGTERM before they are killed.
const GRACE: Duration = Duration::from_secs(5);
/// How often the workers are polled.
const POLL: Duration = Duration::from_millis(100);

#[derive(Args)]
pub struct LaunchArgs {
    /// Worker processes on this node.
    #[arg(long, default_value_t = 1)]
    nproc_per_node: usize,
    /// Nodes of the run (each runs `poac launch` with its own --node-rank).
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This node's index, 0..nnodes (node 0 hosts rank 0 and the rendezvous).
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Address of node 0, reachable from every node.
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    /// TCP port of the rendezvous on node 0.
    #[arg(long, default_value_t = 29500)]
    master_port: u16,
    /// The poac command every worker runs, after `--`: `-- pretrain --config C --data D --output RUN`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// One started worker.
struct Worker {
    rank: usize,
    child: Child,
}

pub fn run(args: LaunchArgs) -> Result<()> {
    ensure!(args.nproc_per_node >= 1, "--nproc-per-node must be at least 1");
    ensure!(args.nnodes >= 1, "--nnodes must be at least 1");
    ensure!(args.node_rank < args.nnodes, "--node-rank {} must be below --nnodes {}", args.node_rank, args.nnodes);
    let world_size = args.nnodes * args.nproc_per_node;
    let exe = std::env::current_exe().context("cannot find the poac executable")?;
    // Each worker gets its share of the cores unless the user chose.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / args.nproc_per_node).max(1).to_string();
    // Ctrl-C reaches the workers directly (same process group); the launcher waits for them to save and exit.
    let _ = ctrlc::set_handler(|| {});
    let mut workers = Vec::with_capacity(args.nproc_per_node);
    for local_rank in 0..args.nproc_per_node {
        let rank = args.node_rank * args.nproc_per_node + local_rank;
        let mut cmd = Command::new(&exe);
        cmd.args(&args.command)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local_rank.to_string())
            .env("WORLD_SIZE", world_size.to_string())
            .env("LOCAL_WORLD_SIZE", args.nproc_per_node.to_string())
            .env("GROUP_RANK", args.node_rank.to_string())
            .env("MASTER_ADDR", &args.master_addr)
            .env("MASTER_PORT", args.master_port.to_string());
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            cmd.env("OMP_NUM_THREADS", &threads);
        }
        match cmd.spawn() {
            Ok(child) => workers.push(Worker { rank, child }),
            Err(e) => {
                stop_all(&mut workers);
                return Err(e).with_context(|| format!("cannot start worker rank {rank} ({})", exe.display()));
            }
        }
    }
    supervise(workers)
}

/// Waits for every worker; when one fails, stops the others and reports which failed. Workers found dead in the
/// same poll are all named, those killed by a signal first: when one rank is killed, its peers fail at once
/// on the broken connection, and the signal is the cause worth reading.
fn supervise(mut workers: Vec<Worker>) -> Result<()> {
    use std::os::unix::process::ExitStatusExt;
    while !workers.is_empty() {
        let mut failed = Vec::new();
        let mut i = 0;
        while i < workers.len() {
            let Some(status) = workers[i].child.try_wait()? else {
                i += 1;
                continue;
            };
            let worker = workers.swap_remove(i);
            if !status.success() {
                failed.push((worker.rank, status));
            }
        }
        if !failed.is_empty() {
            stop_all(&mut workers);
            failed.sort_by_key(|(rank, status)| (status.signal().is_none(), *rank));
            let which: Vec<String> = failed.iter().map(|(rank, status)| format!("worker rank {rank} {}", describe(*status))).collect();
            bail!("{}; stopped the other workers", which.join(", "));
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// SIGTERM to every worker, SIGKILL to those still running after [`GRACE`].
fn stop_all(workers: &mut [Worker]) {
    for worker in workers.iter() {
        // SAFETY: kill(2) on the pid of a child this process started and has not reaped yet.
        unsafe { libc::kill(worker.child.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + GRACE;
    for worker in workers.iter_mut() {
        while matches!(worker.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let _ = worker.child.kill();
        let _ = worker.child.wait();
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "failed".into(),
    }
}
