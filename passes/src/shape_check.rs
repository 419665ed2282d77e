//! Shape check: the graph is static (specialised, every parameter of fixed shape) and every value has a shape
//! that fits the op reading it, at the configured image size. Runs last, so emission never meets a mismatch.

use crate::pipeline::Pass;
use poac_ir::{error::Result, shape, Graph, IrError};

/// Infers every shape and fails with a typed error at the first mismatch; changes nothing.
pub struct ShapeCheck;

impl Pass for ShapeCheck {
    fn name(&self) -> &'static str {
        "shape-check"
    }

    fn run(&self, g: &mut Graph) -> Result<bool> {
        if g.subnet.is_none() {
            return Err(IrError::Malformed("the graph is still elastic; run specialise first".into()));
        }
        if let Some(p) = g.params.iter().find(|p| p.static_shape().is_none()) {
            return Err(IrError::Malformed(format!("`{}` still has elastic dims", p.name)));
        }
        shape::infer(g)?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pipeline::testing::tiny_supergraph, specialise::Specialise};
    use poac_ir::{Op, SubnetSpec};

    #[test]
    fn a_static_graph_passes_and_a_mismatch_is_named() {
        let mut g = tiny_supergraph();
        assert!(ShapeCheck.run(&mut g).unwrap_err().to_string().contains("elastic"));
        Specialise { subnet: SubnetSpec { width: 8, depth: 2 } }.run(&mut g).unwrap();
        assert!(!ShapeCheck.run(&mut g).unwrap());
        // A LayerScale reading the 32-channel MLP hidden value with an 8-channel gamma.
        let ls2 = g.nodes.iter().position(|n| n.name == "blocks.0.ls2").unwrap();
        let act = g.nodes.iter().position(|n| n.name == "blocks.0.mlp.act").unwrap();
        g.nodes[ls2].inputs[0] = act;
        assert!(matches!(g.nodes[ls2].op, Op::LayerScale { .. }));
        let err = ShapeCheck.run(&mut g).unwrap_err();
        assert!(matches!(&err, IrError::Shape { node, .. } if node == "blocks.0.ls2"), "{err}");
        assert!(err.to_string().contains("gamma is [8], the input has 32 channels"), "{err}");
    }
}
