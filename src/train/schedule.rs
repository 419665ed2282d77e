//! The schedules of a POA run, as functions of the iteration: lr (linear warm-up, then cosine to `min_lr`),
//! weight decay (cosine), teacher EMA momentum (cosine), teacher temperature (linear warm-up, then constant),
//! and when iBOT starts.

use crate::config::Config;
use std::f64::consts::PI;

/// Values of every schedule at one iteration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScheduleValues {
    /// Learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Teacher EMA momentum.
    pub momentum: f64,
    /// Teacher softmax temperature.
    pub teacher_temp: f64,
    /// Whether the iBOT loss is on.
    pub ibot_active: bool,
    /// Whether the heads' prototype layers are frozen (the first `optim.freeze_last_layer_epochs`).
    pub last_layer_frozen: bool,
}

/// dinov2's `CosineScheduler`: over `warmup` iterations a linear ramp from `warmup_start` to `base` (numpy's
/// `linspace`, both ends included), then a cosine from `base` to `end` over the other `total − warmup`
/// iterations, and `end` from iteration `total` on.
#[derive(Clone, Copy, Debug)]
pub struct Cosine {
    /// Value at the end of the warm-up.
    pub base: f64,
    /// Value from iteration `total` on.
    pub end: f64,
    /// Value at iteration 0 of the warm-up.
    pub warmup_start: f64,
    /// Iterations of linear warm-up.
    pub warmup: u64,
    /// Iterations until `end`.
    pub total: u64,
}

impl Cosine {
    /// The value at iteration `it` (0-based).
    pub fn at(&self, it: u64) -> f64 {
        if it >= self.total {
            return self.end;
        }
        if it < self.warmup {
            let ramp = if self.warmup > 1 { it as f64 / (self.warmup - 1) as f64 } else { 0.0 };
            return self.warmup_start + (self.base - self.warmup_start) * ramp;
        }
        let (i, n) = ((it - self.warmup) as f64, (self.total - self.warmup) as f64);
        self.end + 0.5 * (self.base - self.end) * (1.0 + (PI * i / n).cos())
    }
}

/// All schedules of a run of `total` iterations; an "epoch" of the config is `total / optim.epochs` iterations
/// (rounded to whole iterations where a schedule needs a count). The cosine schedules run over
/// `total / optim.iter_num_scale` iterations (POA's `iter_num_scale`), the warm-ups and switches over epochs of
/// the run.
#[derive(Clone, Debug)]
pub struct Schedules {
    lr: Cosine,
    weight_decay: Cosine,
    momentum: Cosine,
    teacher_temp: Cosine,
    ibot_start: u64,
    freeze_last_layer: u64,
}

impl Schedules {
    /// Schedules of `config` stretched over `total` iterations, for `ranks` data-parallel processes.
    pub fn new(config: &Config, total: u64, ranks: usize) -> Self {
        let run = total.max(1) as f64;
        let epochs = |e: f64| (e * run / config.optim.epochs).round() as u64;
        let span = (run / config.optim.iter_num_scale).round() as u64;
        let (o, t) = (&config.optim, &config.teacher);
        let cosine = |base, end| Cosine { base, end, warmup_start: base, warmup: 0, total: span };
        let temp_warmup = epochs(t.warmup_teacher_temp_epochs);
        Schedules {
            lr: Cosine { base: config.lr(ranks), end: o.min_lr, warmup_start: 0.0, warmup: epochs(o.warmup_epochs).min(span), total: span },
            weight_decay: cosine(o.weight_decay, o.weight_decay_end),
            momentum: cosine(t.momentum_teacher, t.final_momentum_teacher),
            teacher_temp: Cosine { base: t.teacher_temp, end: t.teacher_temp, warmup_start: t.warmup_teacher_temp, warmup: temp_warmup, total: temp_warmup },
            ibot_start: epochs(config.ibot.ibot_activate_epochs),
            freeze_last_layer: epochs(o.freeze_last_layer_epochs),
        }
    }

    /// The values at iteration `it` (0-based).
    pub fn at(&self, it: u64) -> ScheduleValues {
        ScheduleValues {
            lr: self.lr.at(it),
            weight_decay: self.weight_decay.at(it),
            momentum: self.momentum.at(it),
            teacher_temp: self.teacher_temp.at(it),
            ibot_active: it >= self.ibot_start,
            last_layer_frozen: it < self.freeze_last_layer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_hand_computed_values() {
        let mut c = Config::default();
        c.optim.epochs = 10.0;
        c.optim.warmup_epochs = 2.0;
        c.optim.base_lr = 0.004;
        c.optim.min_lr = 1e-6;
        c.train.batch_size = 1024; // sqrt rule: lr = base_lr
        c.teacher.warmup_teacher_temp_epochs = 5.0;
        c.ibot.ibot_activate_epochs = 1.0;
        let s = Schedules::new(&c, 100, 1);
        // Warm-up: 20 iterations, linspace(0, lr, 20): lr·t/19, reaching lr at iteration 19 and 20.
        assert!((s.at(10).lr - 0.004 * 10.0 / 19.0).abs() < 1e-12);
        assert!((s.at(19).lr - 0.004).abs() < 1e-12);
        assert!((s.at(20).lr - 0.004).abs() < 1e-12);
        // Half-way through the cosine (iteration 60 of 20..100): the mean of lr and min_lr.
        assert!((s.at(60).lr - (0.004 + 1e-6) / 2.0).abs() < 1e-12);
        // Weight decay and momentum: cosine over the whole run, mid-point at 50.
        assert!((s.at(50).weight_decay - 0.22).abs() < 1e-12);
        assert!((s.at(0).momentum - 0.992).abs() < 1e-12);
        assert!((s.at(100).momentum - 0.9999).abs() < 1e-12);
        // Teacher temperature: linspace(0.04, 0.07, 50).
        assert!((s.at(49).teacher_temp - 0.07).abs() < 1e-12);
        assert!((s.at(14).teacher_temp - (0.04 + 0.03 * 14.0 / 49.0)).abs() < 1e-12);
        assert_eq!(s.at(80).teacher_temp, 0.07);
        assert!(!s.at(9).ibot_active && s.at(10).ibot_active);
        // The default freezes the prototype layers for one epoch (10 iterations).
        assert!(s.at(9).last_layer_frozen && !s.at(10).last_layer_frozen);
    }

    #[test]
    fn iter_num_scale_stretches_the_cosines_only() {
        let mut c = Config::default();
        c.optim.epochs = 10.0;
        c.optim.warmup_epochs = 2.0;
        c.train.batch_size = 1024;
        c.optim.min_lr = 0.0;
        c.optim.iter_num_scale = 0.5;
        // 100 iterations run; the cosines span 200: warm-up still 20 iterations (2 of 10 epochs of the run),
        // the lr cosine runs from 20 to 200 so at iteration 110 it is half-way; the momentum at 100 is half-way.
        let s = Schedules::new(&c, 100, 1);
        assert!((s.at(20).lr - 0.004).abs() < 1e-12);
        assert!((s.at(110).lr - 0.002).abs() < 1e-12);
        assert!((s.at(100).momentum - (0.992 + 0.9999) / 2.0).abs() < 1e-12);
    }
}
