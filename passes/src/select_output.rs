//! Select output: what a lowered model returns from the final-normed token sequence.

use crate::pipeline::Pass;
use poac_ir::{error::Result, Graph, Op};

/// Which tokens the model returns.
pub enum SelectOutput {
    /// The class token `[N, D]` (what k-NN and linear probes use), as the output named `embedding`.
    ClsToken,
}

impl Pass for SelectOutput {
    fn name(&self) -> &'static str {
        "select-output"
    }

    fn run(&self, g: &mut Graph) -> Result<bool> {
        match self {
            SelectOutput::ClsToken => {
                if matches!(g.nodes[g.output].op, Op::ClsToken) {
                    return Ok(false);
                }
                g.output = g.push("embedding", Op::ClsToken, vec![g.output], None);
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::tiny_supergraph;

    #[test]
    fn cls_token_is_appended_once() {
        let mut g = tiny_supergraph();
        let norm = g.output;
        assert!(SelectOutput::ClsToken.run(&mut g).unwrap());
        assert_eq!(g.nodes[g.output].inputs, vec![norm]);
        assert!(!SelectOutput::ClsToken.run(&mut g).unwrap());
    }
}
