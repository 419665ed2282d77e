//! Seeded passes over a list: pass `p` is a permutation of the items that depends only on the seed and `p`, so
//! a resumed run walks exactly the order an uninterrupted one would (used for the data order and for the
//! elastic-student sampler).

use rand::{seq::SliceRandom, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// An endless sequence of shuffled passes over `items`.
pub struct ShuffledPasses<T> {
    items: Vec<T>,
    seed: u64,
    current: Option<(u64, Vec<T>)>,
}

impl<T: Clone> ShuffledPasses<T> {
    /// Passes over `items` (which must not be empty) seeded by `seed`.
    pub fn new(items: Vec<T>, seed: u64) -> Self {
        assert!(!items.is_empty(), "shuffled passes need at least one item");
        ShuffledPasses { items, seed, current: None }
    }

    /// Number of items in a pass.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Always false (see [`ShuffledPasses::new`]).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The permutation of pass `pass` (ChaCha stream `pass` of the seed).
    pub fn pass(&mut self, pass: u64) -> &[T] {
        if self.current.as_ref().is_none_or(|(p, _)| *p != pass) {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
            rng.set_stream(pass);
            let mut order = self.items.clone();
            order.shuffle(&mut rng);
            self.current = Some((pass, order));
        }
        &self.current.as_ref().expect("set above").1
    }

    /// Item `t` of the endless sequence: position `t mod len` of pass `t / len`.
    pub fn at(&mut self, t: u64) -> T {
        let len = self.items.len() as u64;
        self.pass(t / len)[(t % len) as usize].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_are_permutations_that_depend_on_seed_and_pass_only() {
        let mut a = ShuffledPasses::new((0..20).collect::<Vec<u32>>(), 1);
        let mut sorted = a.pass(0).to_vec();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        let (p0, p1) = (a.pass(0).to_vec(), a.pass(1).to_vec());
        assert_ne!(p0, p1);
        let mut b = ShuffledPasses::new((0..20).collect::<Vec<u32>>(), 1);
        assert_eq!(b.pass(1), p1.as_slice());
        assert_eq!(b.at(25), p1[5]);
        assert_ne!(ShuffledPasses::new((0..20).collect::<Vec<u32>>(), 2).pass(0), p0.as_slice());
    }
}
