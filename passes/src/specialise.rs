//! Specialise: from the elastic supergraph to one sub-network (POA_SPEC §3). Every elastic axis keeps the first
//! channels of each of its segments, every linear gets its width scaling factor α = max_in / active_in, and
//! blocks not kept by the depth rule are cut out of the residual stream.

use crate::pipeline::Pass;
use poac_ir::{error::Result, Dim, Graph, IrError, Op, SubnetSpec, WeightView};
use std::collections::HashMap;

/// Specialises a supergraph to `subnet`.
pub struct Specialise {
    /// The sub-network to keep.
    pub subnet: SubnetSpec,
}

impl Pass for Specialise {
    fn name(&self) -> &'static str {
        "specialise"
    }

    fn run(&self, g: &mut Graph) -> Result<bool> {
        if let Some(done) = g.subnet {
            return Err(IrError::Malformed(format!("graph is already specialised to {done}")));
        }
        let subnet = g.space.check(self.subnet)?;
        let (width, max_width) = (subnet.width, g.space.max_width());

        for node in &mut g.nodes {
            if let Op::Linear { weight, alpha, .. } = &mut node.op {
                let input_axis = g.params[*weight].shape[1];
                *alpha = input_axis.at_width(max_width) as f32 / input_axis.at_width(width) as f32;
            }
        }
        for param in &mut g.params {
            param.view = WeightView {
                axes: param.shape.iter().map(|d| d.kept_ranges(width, max_width)).collect(),
                scale: 1.0,
                folds: Vec::new(),
            };
            param.shape = param.shape.iter().map(|d| Dim::Fixed(d.at_width(width))).collect();
        }

        let kept = g.space.kept_blocks(subnet.depth);
        let mut replace = HashMap::new();
        for block in g.blocks.iter().filter(|b| !kept.contains(&b.index)) {
            replace.insert(block.output, block.input);
        }
        let keep: Vec<bool> = g.nodes.iter().map(|n| n.block.is_none_or(|b| kept.contains(&b))).collect();
        g.remove_nodes(&keep, &replace)?;
        g.subnet = Some(subnet);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::tiny_supergraph;

    fn specialised(width: usize, depth: usize) -> Graph {
        let mut g = tiny_supergraph();
        Specialise { subnet: SubnetSpec { width, depth } }.run(&mut g).unwrap();
        g
    }

    #[test]
    fn qkv_keeps_the_first_heads_of_q_k_and_v() {
        // Max width 12 (3 heads of 4); width 8 keeps 2 heads: rows 0..8 of q, 12..20 of k, 24..32 of v.
        let g = specialised(8, 3);
        let qkv = g.param_by_name("blocks.0.attn.qkv.weight").unwrap();
        assert_eq!(qkv.view.axes, vec![vec![0..8, 12..20, 24..32], vec![0..8]]);
        assert_eq!(qkv.static_shape().unwrap(), vec![24, 8]);
        let fc1 = g.param_by_name("blocks.0.mlp.fc1.weight").unwrap();
        assert_eq!(fc1.view.axes, vec![vec![0..32], vec![0..8]]);
        let fc2 = g.param_by_name("blocks.0.mlp.fc2.weight").unwrap();
        assert_eq!(fc2.view.axes, vec![vec![0..8], vec![0..32]]);
        let pos = g.param_by_name("pos_embed").unwrap();
        assert_eq!(pos.view.axes, vec![vec![0..1], vec![0..5], vec![0..8]]);
        let patch = g.param_by_name("patch_embed.proj.weight").unwrap();
        assert_eq!(patch.static_shape().unwrap(), vec![8, 3, 4, 4]);
    }

    #[test]
    fn alpha_is_max_in_over_active_in() {
        let g = specialised(4, 3);
        let alphas: Vec<f32> = g
            .nodes
            .iter()
            .filter_map(|n| if let Op::Linear { alpha, .. } = n.op { Some(alpha) } else { None })
            .collect();
        // 4 linears a block (qkv, proj, fc1, fc2), each with α = 12 / 4 (fc2: 48 / 16).
        assert_eq!(alphas, vec![3.0; 12]);
        let intact = specialised(12, 3);
        assert!(intact.nodes.iter().all(|n| !matches!(n.op, Op::Linear { alpha, .. } if alpha != 1.0)));
    }

    #[test]
    fn depth_cuts_blocks_out_of_the_residual_stream() {
        let g = specialised(12, 2);
        assert_eq!(g.blocks.iter().map(|b| b.index).collect::<Vec<_>>(), vec![0, 2]);
        // Block 2 now reads block 0's output directly.
        assert_eq!(g.blocks[1].input, g.blocks[0].output);
        assert!(g.nodes.iter().all(|n| n.block != Some(1)));
        let one = specialised(12, 1);
        assert_eq!(one.blocks.iter().map(|b| b.index).collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn invalid_choices_are_errors_naming_the_valid_ones() {
        let mut g = tiny_supergraph();
        let err = Specialise { subnet: SubnetSpec { width: 6, depth: 2 } }.run(&mut g).unwrap_err().to_string();
        assert!(err.contains("4, 8, 12"), "{err}");
        let err = Specialise { subnet: SubnetSpec { width: 8, depth: 4 } }.run(&mut g).unwrap_err().to_string();
        assert!(err.contains("1, 2, 3"), "{err}");
        Specialise { subnet: SubnetSpec { width: 8, depth: 2 } }.run(&mut g).unwrap();
        assert!(Specialise { subnet: SubnetSpec { width: 8, depth: 2 } }.run(&mut g).is_err());
    }
}
