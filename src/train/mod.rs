//! POA pre-training (POA_SPEC §1–§6): an EMA teacher, the intact student and one sampled elastic student per
//! iteration, sharing the student's parameters; DINO + iBOT + KoLeo losses and the intact→elastic term.

pub mod adamw;
pub mod budget;
pub mod checkpoint;
pub mod dry_run;
pub mod losses;
mod monitor;
pub mod param_groups;
mod poa;
pub mod sampler;
pub mod schedule;

use crate::config::Config;
use crate::data::loader::{MultiCropSpec, Shard, TrainLoader};
use crate::data::{DatasetIndex, Split};
use crate::dist::World;
use anyhow::{bail, Context, Result};
use budget::BudgetFit;
use checkpoint::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use monitor::KnnMonitor;
use poa::Poa;
use poac_ir::SubnetSpec;
use sampler::ElasticSampler;
use schedule::Schedules;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::Device;

/// What `poac pretrain` was asked to do.
#[derive(Clone, Debug)]
pub struct PretrainOptions {
    /// The YAML config.
    pub config: PathBuf,
    /// Dataset root (ImageNet layout).
    pub data: PathBuf,
    /// Run folder (checkpoint, metrics, resolved config).
    pub output: PathBuf,
    /// Stop after this many iterations (and stretch the schedules over them).
    pub max_iters: Option<u64>,
    /// Stop after this much training time (the schedules are fitted to it as the run goes: see [`budget`]).
    pub time_budget: Option<Duration>,
    /// Continue the run's checkpoint.
    pub resume: bool,
    /// Where to train.
    pub device: Device,
    /// `key=value` config overrides.
    pub overrides: Vec<String>,
    /// With several processes (torchrun's `WORLD_SIZE` > 1): how long the rendezvous and each collective wait
    /// for the other ranks before failing.
    pub dist_timeout: Duration,
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Iterations done in total.
    pub iterations: u64,
    /// Mean images per second of this invocation over all ranks (first iteration excluded).
    pub images_per_second: f64,
    /// Loss of the last iteration.
    pub last_loss: f64,
    /// Images skipped because they did not decode, over all ranks.
    pub skipped_images: usize,
    /// This process's rank (0 for a single process): only rank 0 reports.
    pub rank: usize,
}

/// Where metrics go: `metrics.jsonl` on rank 0, nowhere on the others.
struct MetricsLog(Option<std::fs::File>);

impl MetricsLog {
    fn write(&mut self, line: &serde_json::Value) -> Result<()> {
        if let Some(file) = &mut self.0 {
            writeln!(file, "{line}")?;
        }
        Ok(())
    }
}

/// What the ranks tell each other after every iteration (one all-gather of a few numbers).
struct RankReport {
    subnet: SubnetSpec,
    /// total, intact, elastic, intact→elastic, intact DINO, elastic DINO.
    losses: [f64; 6],
    skipped_images: usize,
    wants_to_stop: bool,
    /// Seconds timed since the first iteration, and seconds of the time budget used.
    timed_secs: f64,
    budget_used_secs: f64,
}

impl RankReport {
    fn encode(&self) -> Vec<f64> {
        let head = [self.subnet.width as f64, self.subnet.depth as f64];
        let tail = [self.skipped_images as f64, self.wants_to_stop as u8 as f64, self.timed_secs, self.budget_used_secs];
        head.into_iter().chain(self.losses).chain(tail).collect()
    }

    fn decode(v: &[f64]) -> Self {
        RankReport {
            subnet: SubnetSpec { width: v[0] as usize, depth: v[1] as usize },
            losses: std::array::from_fn(|i| v[2 + i]),
            skipped_images: v[8] as usize,
            wants_to_stop: v[9] != 0.0,
            timed_secs: v[10],
            budget_used_secs: v[11],
        }
    }
}

/// The ranks' reports of one iteration, reduced: rank 0's timings, mean losses, summed skips, any rank's stop;
/// an error if a rank trained another elastic sub-network than rank 0 (their samplers must agree).
fn reduce_reports(iteration: u64, reports: Vec<Vec<f64>>) -> Result<RankReport> {
    let reports: Vec<RankReport> = reports.iter().map(|v| RankReport::decode(v)).collect();
    let root = &reports[0];
    if let Some((rank, other)) = reports.iter().enumerate().find(|(_, r)| r.subnet != root.subnet) {
        bail!("rank {rank} trained the elastic sub-network {} at iteration {iteration}, rank 0 {}: the ranks' samplers disagree", other.subnet, root.subnet);
    }
    let n = reports.len() as f64;
    Ok(RankReport {
        subnet: root.subnet,
        losses: std::array::from_fn(|i| reports.iter().map(|r| r.losses[i]).sum::<f64>() / n),
        skipped_images: reports.iter().map(|r| r.skipped_images).sum(),
        wants_to_stop: reports.iter().any(|r| r.wants_to_stop),
        timed_secs: root.timed_secs,
        budget_used_secs: root.budget_used_secs,
    })
}

/// Trains; returns when the iterations or the time budget are used up, or on Ctrl-C (after saving).
///
/// With torchrun's environment (`WORLD_SIZE` > 1) this process is one rank of a data-parallel run: every rank
/// trains on its share of each global batch of `WORLD_SIZE × train.batch_size` images and averages gradients;
/// rank 0 writes the run folder, which the others read to resume (it must be shared across nodes).
pub fn pretrain(options: &PretrainOptions) -> Result<Summary> {
    let config = Config::load_with(&options.config, &options.overrides)?;
    let index = DatasetIndex::open(&options.data)?;
    let world = World::from_env(options.dist_timeout, matches!(options.device, Device::Cuda(_)))?;
    let root = world.is_root();
    let device = match options.device {
        Device::Cuda(_) if world.size() > 1 => Device::Cuda(world.local_rank()),
        device => device,
    };
    let run = &options.output;
    if root {
        std::fs::create_dir_all(run).with_context(|| format!("cannot create run folder {}", run.display()))?;
    }
    let has_checkpoint = checkpoint::resolve(run).is_ok();
    if has_checkpoint && !options.resume {
        bail!("{} already holds a checkpoint: pass --resume to continue it, or choose another --output", run.display());
    }
    if options.resume && !has_checkpoint && root {
        eprintln!("{} has no checkpoint yet: starting a new run", run.display());
    }
    tch::manual_seed(config.train.seed as i64);
    let (mut poa, mut progress) = if has_checkpoint {
        Poa::restore(config, run, device)?
    } else {
        let seed = config.train.seed;
        (Poa::fresh(config, device)?, Progress::fresh(seed, world.size()))
    };
    let starts = world.all_gather(&[progress.iteration as f64])?;
    if let Some((rank, start)) = starts.iter().enumerate().find(|(_, s)| s[0] != starts[0][0]) {
        bail!("rank {rank} would resume at iteration {}, rank 0 at {}: every rank must see the same run folder", start[0], starts[0][0]);
    }
    poa.broadcast_from_root(&world)?;
    let config = poa.config.clone();
    if progress.world_size != world.size() {
        let (trained, now) = (progress.world_size, world.size());
        bail!("{} was trained by {trained} process(es): resume it with WORLD_SIZE={trained} (poac launch: --nnodes × --nproc-per-node = {trained}), not {now}", run.display());
    }
    if root && has_checkpoint {
        truncate_metrics(&run.join("metrics.jsonl"), progress.iteration)?;
    } else if root {
        std::fs::write(run.join("config.yaml"), serde_yaml::to_string(&config)?)?;
    }

    let config_total = (config.optim.epochs * config.train.official_epoch_length as f64).round() as u64;
    let fresh = progress.total_iters == 0;
    if fresh {
        progress.total_iters = options.max_iters.unwrap_or(config_total);
    } else if let Some(max) = options.max_iters {
        progress.total_iters = max;
    }
    // A time budget covers the whole run, resumed parts included; the run's length is refitted to it as it goes.
    let budget_fit = options.time_budget.filter(|_| options.max_iters.is_none()).map(|b| BudgetFit::new(b.as_secs_f64()));
    let spent_before = Duration::from_secs_f64(progress.elapsed_s);
    // Until its first fit, a new budgeted run's length (the config's) is a placeholder, not a limit.
    let mut awaiting_fit = fresh && budget_fit.is_some();
    let mut schedules = Schedules::new(&config, progress.total_iters, world.size());
    let mut sampler = ElasticSampler::new(&poa.student.graph().space, config.dino.net_select_scale, config.train.seed);

    let spec = MultiCropSpec::from_config(&config)?;
    let global_batch = config.train.batch_size * world.size();
    if index.train.len() < global_batch {
        bail!("the training split has {} images, fewer than the global batch {global_batch} (train.batch_size {} × {} ranks)", index.train.len(), config.train.batch_size, world.size());
    }
    let shard = Shard { rank: world.rank(), ranks: world.size() };
    let mut loader = TrainLoader::start(index.root(), index.split(Split::Train).to_vec(), spec, config.train.seed, progress.iteration, config.train.num_workers, shard);

    // Only rank 0 evaluates; the others wait for it at the next collective.
    let monitor = if root { KnnMonitor::new(&config, &index, &poa.student.graph().space, device)? } else { None };
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));

    let bar = ProgressBar::new(progress.total_iters).with_style(
        ProgressStyle::with_template("pretrain {bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}").unwrap(),
    );
    if !root {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_position(progress.iteration);
    let mut metrics = MetricsLog(if root { Some(std::fs::OpenOptions::new().create(true).append(true).open(run.join("metrics.jsonl"))?) } else { None });
    // What the data index left out, by reason, next to the per-iteration count of images that broke later.
    let dataset = serde_json::json!({
        "iteration": progress.iteration,
        "dataset": { "train_images": index.train.len(), "index_skipped": index.skip_counts() },
    });
    metrics.write(&dataset)?;
    let started = Instant::now();
    let first_iteration = progress.iteration;
    // When timing started (after the first iteration) and the k-NN time spent until then.
    let mut timed_since: Option<(Instant, Duration)> = None;
    let mut last_loss = f64::NAN;
    let batch = global_batch as f64;
    let mut last_knn = None;
    // Returns the time it took, which does not count against the time budget.
    let mut check_knn = |iteration: u64, poa: &Poa, metrics: &mut MetricsLog, bar: &ProgressBar| -> Result<Duration> {
        let Some(monitor) = &monitor else { return Ok(Duration::ZERO) };
        if last_knn == Some(iteration) {
            return Ok(Duration::ZERO);
        }
        last_knn = Some(iteration);
        let t0 = Instant::now();
        let mut line = serde_json::json!({ "iteration": iteration });
        for (name, model) in [("teacher", poa.teacher()), ("student", &poa.student)] {
            let scores = monitor.evaluate(model);
            let shown: Vec<String> = scores.iter().map(|(s, top1)| format!("{s} {:.1}", 100.0 * top1)).collect();
            bar.suspend(|| eprintln!("k-NN@20 of the {name} at iteration {iteration}: {}", shown.join(" | ")));
            let knn: serde_json::Map<String, serde_json::Value> = scores.iter().map(|(s, top1)| (s.to_string(), (*top1).into())).collect();
            line[format!("knn20_{name}")] = knn.into();
        }
        metrics.write(&line)?;
        Ok(t0.elapsed())
    };
    let period = config.evaluation.eval_period_iterations as u64;
    let mut monitor_time = Duration::ZERO;
    if progress.iteration == 0 {
        monitor_time += check_knn(0, &poa, &mut metrics, &bar)?;
    }

    // Messages for the user, from rank 0 only.
    let say = |message: String| {
        if root {
            bar.suspend(|| eprintln!("{message}"));
        }
    };
    let budget_used = |monitor_time: Duration| spent_before + started.elapsed().saturating_sub(monitor_time);
    // Whether any rank was interrupted or used up the time budget: all stop at the same iteration.
    let mut stop = options.time_budget.is_some_and(|b| budget_used(monitor_time) >= b);
    let mut skipped_images = 0;
    while (progress.iteration < progress.total_iters || awaiting_fit) && !stop {
        let it = progress.iteration;
        let values = schedules.at(it);
        let subnet = sampler.at(it);
        let crop_batch = loader.next_batch()?;
        // libtorch's generator (drop-path) is re-seeded from the iteration, so a resumed run draws the same.
        tch::manual_seed((config.train.seed ^ it.wrapping_mul(0x2545_F491_4F6C_DD1D)) as i64);
        let losses = poa.step(&crop_batch, subnet, values, &world)?;
        progress.iteration += 1;
        progress.adam_step = poa.adam.step;
        if it == first_iteration {
            timed_since = Some((Instant::now(), monitor_time));
        }
        let timed_secs = timed_since.map_or(0.0, |(t, before)| t.elapsed().saturating_sub(monitor_time - before).as_secs_f64());
        let report = RankReport {
            subnet,
            losses: [losses.total.double_value(&[]), losses.intact, losses.elastic, losses.intact_to_elastic, losses.intact_dino, losses.elastic_dino],
            skipped_images: loader.skipped_total.load(Ordering::Relaxed),
            wants_to_stop: interrupted.load(Ordering::SeqCst) || options.time_budget.is_some_and(|b| budget_used(monitor_time) >= b),
            timed_secs,
            budget_used_secs: budget_used(monitor_time).as_secs_f64(),
        };
        let reduced = reduce_reports(it, world.all_gather(&report.encode())?)?;
        let [loss, intact, elastic, intact_to_elastic, intact_dino, elastic_dino] = reduced.losses;
        skipped_images = reduced.skipped_images;
        stop = reduced.wants_to_stop;
        progress.elapsed_s = reduced.budget_used_secs;
        if stop && interrupted.load(Ordering::SeqCst) {
            say("interrupted: saving a checkpoint and stopping".into());
        }
        if !loss.is_finite() {
            bail!("the loss is not finite ({loss}) at iteration {it}; the last checkpoint (before it) is kept in {}", run.display());
        }
        last_loss = loss;
        let done_timed = progress.iteration - first_iteration - 1;
        let timed_secs = reduced.timed_secs;
        let images_per_second = if done_timed > 0 { done_timed as f64 * batch / timed_secs.max(1e-9) } else { 0.0 };

        let refit = budget_fit.as_ref().and_then(|fit| fit.total_at(progress.iteration, done_timed, timed_secs, reduced.budget_used_secs));
        if let Some(total) = refit {
            awaiting_fit = false;
            if done_timed == budget::FIRST_FIT_AFTER {
                say(format!("fitted the schedules to the time budget: {total} iterations at {:.2} s each (refitted every {} iterations)", timed_secs / done_timed as f64, budget::REFIT_EVERY));
            }
            progress.total_iters = total;
            schedules = Schedules::new(&config, total, world.size());
            bar.set_length(total);
        }
        bar.set_position(progress.iteration);
        let status = format!("loss {loss:.3} | {images_per_second:.1} img/s | elastic {subnet}");
        if root && bar.is_hidden() && (progress.iteration % 50 == 0 || progress.iteration == progress.total_iters) {
            eprintln!("pretrain {}/{}: {status}", progress.iteration, progress.total_iters);
        }
        bar.set_message(status);
        let line = serde_json::json!({
            "iteration": it, "loss": loss, "intact": intact, "elastic": elastic,
            "intact_to_elastic": intact_to_elastic, "intact_dino": intact_dino,
            "elastic_dino": elastic_dino, "elastic_subnet": subnet.to_string(),
            "lr": values.lr, "weight_decay": values.weight_decay, "momentum": values.momentum,
            "teacher_temp": values.teacher_temp, "images_per_second": images_per_second,
            "skipped_images": skipped_images, "elapsed_s": progress.elapsed_s, "total_iters": progress.total_iters,
            "gradient_all_reduce_s": losses.gradient_all_reduce_s,
        });
        metrics.write(&line)?;
        if root && progress.iteration % config.train.saveckp_freq as u64 == 0 {
            poa.save(run, &progress)?;
        }
        if period > 0 && progress.iteration % period == 0 {
            monitor_time += check_knn(progress.iteration, &poa, &mut metrics, &bar)?;
        }
    }
    if root {
        poa.save(run, &progress)?;
    }
    let timed = progress.iteration.saturating_sub(first_iteration + 1);
    let timed_secs = timed_since.map_or(0.0, |(t, before)| t.elapsed().saturating_sub(monitor_time - before).as_secs_f64());
    let images_per_second = if timed > 0 { timed as f64 * batch / timed_secs.max(1e-9) } else { 0.0 };
    check_knn(progress.iteration, &poa, &mut metrics, &bar)?;
    bar.finish_and_clear();
    // Leave together: no rank tears the group down while another still uses it.
    world.barrier()?;
    Ok(Summary { iterations: progress.iteration, images_per_second, last_loss, skipped_images, rank: world.rank() })
}

/// Drops the metric lines of iterations at or after `iteration` (logged after the checkpoint a run resumes from,
/// and about to be trained again).
fn truncate_metrics(path: &std::path::Path, iteration: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|line| serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v["iteration"].as_u64()).is_some_and(|i| i < iteration))
        .map(|line| format!("{line}\n"))
        .collect();
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, kept)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

