//! Fitting a run's length to a time budget (`poac pretrain --time-budget`): the schedules (lr, weight decay,
//! teacher momentum, …) are stretched over the number of iterations the budget holds, so that they end with it.
//!
//! The cost of an iteration is only known once the run goes, and it drifts: the sampled elastic students differ
//! several-fold in cost, and later iterations are slower than the first ones (on Fashion-MNIST a fit from the first
//! 12 iterations alone planned 404 iterations where 342 fitted). So the fit is made after a few iterations and then
//! redone periodically from the mean cost of every iteration timed so far. The budget covers the whole run: a
//! resumed run counts what its checkpoint had spent and refits to what is left.

/// Iterations timed (after the first, which pays for warm-up) before the first fit.
pub const FIRST_FIT_AFTER: u64 = 12;
/// Timed iterations between two refits.
pub const REFIT_EVERY: u64 = 25;

/// When to (re)fit, and to how many iterations.
#[derive(Clone, Debug)]
pub struct BudgetFit {
    budget_s: f64,
}

impl BudgetFit {
    /// A fit to `budget_s` seconds of training.
    pub fn new(budget_s: f64) -> Self {
        BudgetFit { budget_s }
    }

    /// The run's new total iteration count, at the iteration counts where a (re)fit is due: `iteration` done,
    /// `timed` of them timed for `timed_secs` in all, `used_s` of the budget spent. `None` between fits.
    pub fn total_at(&self, iteration: u64, timed: u64, timed_secs: f64, used_s: f64) -> Option<u64> {
        let due = timed >= FIRST_FIT_AFTER && (timed - FIRST_FIT_AFTER) % REFIT_EVERY == 0;
        if !due || timed_secs <= 0.0 {
            return None;
        }
        let per_iteration = timed_secs / timed as f64;
        let remaining = (self.budget_s - used_s).max(0.0);
        Some(iteration + (remaining / per_iteration).floor() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_after_the_first_iterations_then_every_period() {
        let fit = BudgetFit::new(100.0);
        let due: Vec<u64> = (1..=80).filter(|&t| fit.total_at(t + 1, t, t as f64, t as f64 + 1.0).is_some()).collect();
        assert_eq!(due, vec![FIRST_FIT_AFTER, FIRST_FIT_AFTER + REFIT_EVERY, FIRST_FIT_AFTER + 2 * REFIT_EVERY]);
    }

    #[test]
    fn the_total_is_what_the_remaining_budget_holds_at_the_mean_cost() {
        let fit = BudgetFit::new(100.0);
        // 13 iterations done, 12 timed at 2 s each, 26 s of the budget used: 74 s left hold 37 more.
        assert_eq!(fit.total_at(13, 12, 24.0, 26.0), Some(13 + 37));
        // Later iterations got slower: 37 timed in 90 s (2.43 s each), 92 s used: 8 s hold 3 more.
        assert_eq!(fit.total_at(38, 37, 90.0, 92.0), Some(38 + 3));
        // The budget is spent: the run ends where it is.
        assert_eq!(fit.total_at(63, 62, 150.0, 151.0), Some(63));
    }
}
