//! Which elastic sub-network each iteration trains: a walk without replacement over POA's sampling list,
//! reshuffled every pass, seeded — the choice at iteration `t` depends only on the seed and `t`.

use crate::shuffle::ShuffledPasses;
use poac_ir::{ElasticSpace, SubnetSpec};

/// Seeds the sampler apart from the data order, which uses the run's seed itself.
const SAMPLER_SALT: u64 = 0x9E37_79B9_7F4A_7C15;

/// The elastic-student sampler.
pub struct ElasticSampler {
    passes: ShuffledPasses<SubnetSpec>,
}

impl ElasticSampler {
    /// A sampler over `space`'s sampling list (see [`ElasticSpace::sampling_list`]).
    pub fn new(space: &ElasticSpace, net_select_scale: f64, seed: u64) -> Self {
        let mut list = space.sampling_list(net_select_scale);
        if list.is_empty() {
            // A space with one network: the elastic student is the intact one.
            list.push(space.intact());
        }
        ElasticSampler { passes: ShuffledPasses::new(list, seed ^ SAMPLER_SALT) }
    }

    /// The sub-network of iteration `t`.
    pub fn at(&mut self, t: u64) -> SubnetSpec {
        self.passes.at(t)
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
        let mut first: Vec<SubnetSpec> = (0..99).map(|t| a.at(t)).collect();
        let mut expected = space.sampling_list(3.0);
        first.sort();
        expected.sort();
        assert_eq!(first, expected);
        let mut b = ElasticSampler::new(&space, 3.0, 5);
        assert_eq!(b.at(150), a.at(150));
    }
}
