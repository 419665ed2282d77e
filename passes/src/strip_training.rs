//! Strip training-only ops: iBOT's mask-token substitution has no meaning at inference.

use crate::pipeline::Pass;
use poac_ir::{error::Result, Graph, Op};
use std::collections::HashMap;

/// Removes `MaskTokens` nodes, passing their input through.
pub struct StripTraining;

impl Pass for StripTraining {
    fn name(&self) -> &'static str {
        "strip-training"
    }

    fn run(&self, g: &mut Graph) -> Result<bool> {
        let bypass: HashMap<_, _> = (0..g.nodes.len())
            .filter(|&i| matches!(g.nodes[i].op, Op::MaskTokens { .. }))
            .map(|i| (i, g.nodes[i].inputs[0]))
            .collect();
        g.bypass(&bypass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::tiny_supergraph;

    #[test]
    fn mask_tokens_are_bypassed() {
        let mut g = tiny_supergraph();
        let before = g.nodes.len();
        assert!(StripTraining.run(&mut g).unwrap());
        assert_eq!(g.nodes.len(), before - 1);
        let cls = g.nodes.iter().position(|n| matches!(n.op, Op::PrependCls { .. })).unwrap();
        assert!(matches!(g.nodes[g.nodes[cls].inputs[0]].op, Op::PatchEmbed { .. }));
        assert!(!StripTraining.run(&mut g).unwrap());
    }
}
