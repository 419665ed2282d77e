//! Add head: a classifier `logits = features · Wᵀ + b` on the selected output, with the weight keys
//! `head.weight` `[classes, features]` and `head.bias` `[classes]` (timm's name for a ViT classifier).

use crate::pipeline::Pass;
use poac_ir::{error::Result, Dim, Graph, Init, Op, Param};

/// Key of the classifier weight.
pub const HEAD_WEIGHT: &str = "head.weight";
/// Key of the classifier bias.
pub const HEAD_BIAS: &str = "head.bias";

/// Appends the classifier as a linear named `logits`. The shape is that of the stored head, so a head trained for
/// other features fails the shape check with both shapes named.
pub struct AddHead {
    /// Stored `head.weight` shape: `[classes, features]`.
    pub weight_shape: [usize; 2],
}

impl Pass for AddHead {
    fn name(&self) -> &'static str {
        "add-head"
    }

    fn run(&self, g: &mut Graph) -> Result<bool> {
        let [classes, features] = self.weight_shape;
        let zeros = Init::Constant(0.0);
        let weight = g.add_param(Param::new(HEAD_WEIGHT, vec![Dim::Fixed(classes), Dim::Fixed(features)], zeros));
        let bias = g.add_param(Param::new(HEAD_BIAS, vec![Dim::Fixed(classes)], zeros));
        g.output = g.push("logits", Op::Linear { weight, bias: Some(bias), alpha: 1.0 }, vec![g.output], None);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::tiny_supergraph;
    use crate::select_output::{OutputKind, SelectOutput};
    use poac_ir::shape;

    #[test]
    fn the_head_maps_features_to_classes_and_must_fit_them() {
        let mut g = tiny_supergraph();
        SelectOutput { kind: OutputKind::Cls }.run(&mut g).unwrap();
        AddHead { weight_shape: [10, 12] }.run(&mut g).unwrap();
        assert_eq!(shape::infer(&g).unwrap()[g.output], vec![10]);
        assert_eq!(g.nodes[g.output].name, "logits");

        let mut g = tiny_supergraph();
        SelectOutput { kind: OutputKind::Cls }.run(&mut g).unwrap();
        AddHead { weight_shape: [10, 8] }.run(&mut g).unwrap();
        let err = shape::infer(&g).unwrap_err().to_string();
        assert!(err.contains("logits") && err.contains("[10, 8]") && err.contains("12 input channels"), "{err}");
    }
}
