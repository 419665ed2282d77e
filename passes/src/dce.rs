//! Dead-code elimination: drop nodes the output does not depend on, and parameters no node reads.

use crate::pipeline::Pass;
use poac_ir::{error::Result, Graph, Op};
use std::collections::HashMap;

/// Removes unreachable nodes (the image input is always kept) and unused parameters.
pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn run(&self, g: &mut Graph) -> Result<bool> {
        let mut live = vec![false; g.nodes.len()];
        live[g.output] = true;
        for i in (0..g.nodes.len()).rev() {
            if live[i] || matches!(g.nodes[i].op, Op::Image) {
                live[i] = true;
                for &input in &g.nodes[i].inputs {
                    live[input] = true;
                }
            }
        }
        let nodes_changed = live.iter().any(|l| !l);
        if nodes_changed {
            g.remove_nodes(&live, &HashMap::new())?;
        }

        let mut used = vec![false; g.params.len()];
        g.nodes.iter().flat_map(|n| n.op.params()).for_each(|p| used[p] = true);
        let mut new_id = vec![usize::MAX; g.params.len()];
        let mut params = Vec::new();
        for (i, param) in std::mem::take(&mut g.params).into_iter().enumerate() {
            if used[i] {
                new_id[i] = params.len();
                params.push(param);
            }
        }
        let params_changed = params.len() != used.len();
        g.params = params;
        for node in &mut g.nodes {
            for p in node.op.params_mut() {
                *p = new_id[*p];
            }
        }
        Ok(nodes_changed || params_changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pipeline::testing::tiny_supergraph, specialise::Specialise, strip_training::StripTraining};
    use poac_ir::SubnetSpec;

    #[test]
    fn dropped_blocks_and_mask_token_leave_no_params() {
        let mut g = tiny_supergraph();
        Specialise { subnet: SubnetSpec { width: 8, depth: 1 } }.run(&mut g).unwrap();
        StripTraining.run(&mut g).unwrap();
        assert!(Dce.run(&mut g).unwrap());
        assert!(g.param_by_name("mask_token").is_none());
        assert!(g.param_by_name("blocks.1.norm1.weight").is_none());
        assert!(g.param_by_name("blocks.0.norm1.weight").is_some());
        // 5 stem params - mask token + 14 for the one block + 2 final.
        assert_eq!(g.params.len(), 4 + 14 + 2);
        g.validate().unwrap();
        assert!(!Dce.run(&mut g).unwrap());
    }

    #[test]
    fn nodes_the_output_does_not_read_are_removed() {
        let mut g = tiny_supergraph();
        let patch_embed = g.nodes.iter().position(|n| matches!(n.op, Op::PatchEmbed { .. })).unwrap();
        g.output = patch_embed;
        assert!(Dce.run(&mut g).unwrap());
        assert_eq!(g.nodes.len(), 2);
        assert_eq!(g.params.len(), 2);
    }
}
