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

/// All schedules of a run of `total` iterations; an "epoch" of the config is `total / optim.epochs` iterations.
/// The cosine schedules run over `total / optim.iter_num_scale` iterations (POA's `iter_num_scale`), the
/// warm-ups and switches over epochs of the run.
#[derive(Clone, Debug)]
pub struct Schedules {
    total: f64,
    lr: f64,
    min_lr: f64,
    warmup: f64,
    weight_decay: [f64; 2],
    momentum: [f64; 2],
    teacher_temp: [f64; 2],
    teacher_temp_warmup: f64,
    ibot_start: f64,
    freeze_last_layer: f64,
}

/// Cosine from `start` (at t = 0) to `end` (at t = len).
fn cosine(start: f64, end: f64, t: f64, len: f64) -> f64 {
    if len <= 0.0 {
        return end;
    }
    end + 0.5 * (start - end) * (1.0 + (PI * (t / len).min(1.0)).cos())
}

impl Schedules {
    /// Schedules of `config` stretched over `total` iterations.
    pub fn new(config: &Config, total: u64) -> Self {
        let run = total.max(1) as f64;
        let per_epoch = run / config.optim.epochs;
        let total = run / config.optim.iter_num_scale;
        Schedules {
            total,
            lr: config.lr(),
            min_lr: config.optim.min_lr,
            warmup: (config.optim.warmup_epochs * per_epoch).min(total),
            weight_decay: [config.optim.weight_decay, config.optim.weight_decay_end],
            momentum: [config.teacher.momentum_teacher, config.teacher.final_momentum_teacher],
            teacher_temp: [config.teacher.warmup_teacher_temp, config.teacher.teacher_temp],
            teacher_temp_warmup: config.teacher.warmup_teacher_temp_epochs * per_epoch,
            ibot_start: config.ibot.ibot_activate_epochs * per_epoch,
            freeze_last_layer: config.optim.freeze_last_layer_epochs * per_epoch,
        }
    }

    /// The values at iteration `it` (0-based).
    pub fn at(&self, it: u64) -> ScheduleValues {
        let t = it as f64;
        let lr = if t < self.warmup {
            self.lr * t / self.warmup
        } else {
            cosine(self.lr, self.min_lr, t - self.warmup, self.total - self.warmup)
        };
        let teacher_temp = if t < self.teacher_temp_warmup {
            self.teacher_temp[0] + (self.teacher_temp[1] - self.teacher_temp[0]) * t / self.teacher_temp_warmup
        } else {
            self.teacher_temp[1]
        };
        ScheduleValues {
            lr,
            weight_decay: cosine(self.weight_decay[0], self.weight_decay[1], t, self.total),
            momentum: cosine(self.momentum[0], self.momentum[1], t, self.total),
            teacher_temp,
            ibot_active: t >= self.ibot_start,
            last_layer_frozen: t < self.freeze_last_layer,
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
        let s = Schedules::new(&c, 100);
        // Warm-up: 20 iterations, linear from 0.
        assert!((s.at(10).lr - 0.002).abs() < 1e-12);
        assert!((s.at(20).lr - 0.004).abs() < 1e-12);
        // Half-way through the cosine (iteration 60 of 20..100): the mean of lr and min_lr.
        assert!((s.at(60).lr - (0.004 + 1e-6) / 2.0).abs() < 1e-12);
        // Weight decay and momentum: cosine over the whole run, mid-point at 50.
        assert!((s.at(50).weight_decay - 0.22).abs() < 1e-12);
        assert!((s.at(0).momentum - 0.992).abs() < 1e-12);
        assert!((s.at(100).momentum - 0.9999).abs() < 1e-12);
        // Teacher temperature: 0.04 → 0.07 over 50 iterations.
        assert!((s.at(25).teacher_temp - 0.055).abs() < 1e-12);
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
        // the lr cosine runs from 20 to 200 so at iteration 110 it is half-way, the momentum at 100 is half-way.
        let s = Schedules::new(&c, 100);
        assert!((s.at(20).lr - 0.004).abs() < 1e-12);
        assert!((s.at(110).lr - 0.002).abs() < 1e-12);
        assert!((s.at(100).momentum - (0.992 + 0.9999) / 2.0).abs() < 1e-12);
    }
}
