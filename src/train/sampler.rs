//! Which elastic sub-network each iteration trains: a walk without replacement over POA's sampling list,
//! reshuffled every pass, seeded — the choice at iteration `t` depends only on the seed and `t`.

use poac_ir::{ElasticSpace, SubnetSpec};
use rand::{seq::SliceRandom, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The elastic-student sampler.
pub struct ElasticSampler {
    list: Vec<SubnetSpec>,
    seed: u64,
    pass: Option<(u64, Vec<SubnetSpec>)>,
}

impl ElasticSampler {
    /// A sampler over `space`'s sampling list (see [`ElasticSpace::sampling_list`]).
    pub fn new(space: &ElasticSpace, net_select_scale: f64, seed: u64) -> Self {
        let mut list = space.sampling_list(net_select_scale);
        if list.is_empty() {
            // A space with one network: the elastic student is the intact one.
            list.push(space.intact());
        }
        ElasticSampler { list, seed, pass: None }
    }

    /// Length of one pass.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Always false: a sampler has at least one entry.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The sub-network of iteration `t`.
    pub fn at(&mut self, t: u64) -> SubnetSpec {
        let len = self.list.len() as u64;
        let (pass, pos) = (t / len, (t % len) as usize);
        if self.pass.as_ref().is_none_or(|(p, _)| *p != pass) {
            let mut order = self.list.clone();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(self.seed.rotate_left(17) ^ pass.wrapping_mul(0xA24B_AED4_963E_E407)));
            self.pass = Some((pass, order));
        }
        self.pass.as_ref().unwrap().1[pos]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poac_ir::VitArch;

    #[test]
    fn one_pass_visits_the_list_exactly_and_is_reproducible() {
        let arch = VitArch { head_dim: 32, min_embed_dim: 64, max_embed_dim: 192, min_depth: 4, max_depth: 8, ..VitArch::default() };
        let space = ElasticSpace::of(&arch);
        let mut a = ElasticSampler::new(&space, 3.0, 5);
        assert_eq!(a.len(), 99);
        let mut first: Vec<SubnetSpec> = (0..99).map(|t| a.at(t)).collect();
        let mut expected = space.sampling_list(3.0);
        first.sort();
        expected.sort();
        assert_eq!(first, expected);
        let mut b = ElasticSampler::new(&space, 3.0, 5);
        assert_eq!(b.at(150), a.at(150));
    }
}
