//! Normalize input: the model takes raw `[0, 1]` pixels and normalises them itself, `(x - mean) / std` per
//! channel (`--bake-normalize`). The op is then folded into the patch embedding by `fold-normalize`.

use crate::pipeline::Pass;
use poac_ir::{error::Result, Graph, IrError, Op};

/// Inserts a [`Op::Normalize`] right after the image input.
pub struct NormalizeInput {
    /// Per-channel mean.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
}

impl Pass for NormalizeInput {
    fn name(&self) -> &'static str {
        "normalize-input"
    }

    fn run(&self, g: &mut Graph) -> Result<bool> {
        let image = g.nodes.iter().position(|n| matches!(n.op, Op::Image)).ok_or_else(|| IrError::Malformed("no image input".into()))?;
        if g.nodes.get(image + 1).is_some_and(|n| matches!(n.op, Op::Normalize { .. })) {
            return Ok(false);
        }
        g.insert_after(image, "normalize", Op::Normalize { mean: self.mean.clone(), std: self.std.clone() });
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::tiny_supergraph;

    #[test]
    fn the_patch_embedding_reads_the_normalised_image() {
        let mut g = tiny_supergraph();
        let pass = NormalizeInput { mean: vec![0.5; 3], std: vec![0.25; 3] };
        assert!(pass.run(&mut g).unwrap());
        g.validate().unwrap();
        let embed = g.nodes.iter().find(|n| matches!(n.op, Op::PatchEmbed { .. })).unwrap();
        assert!(matches!(g.nodes[embed.inputs[0]].op, Op::Normalize { .. }));
        assert_eq!(g.nodes[g.nodes[embed.inputs[0]].inputs[0]].op, Op::Image);
        assert!(poac_ir::shape::infer(&g).is_ok());
        assert!(!pass.run(&mut g).unwrap());
        let mut wrong = tiny_supergraph();
        NormalizeInput { mean: vec![0.5], std: vec![0.25] }.run(&mut wrong).unwrap();
        assert!(poac_ir::shape::infer(&wrong).unwrap_err().to_string().contains("1 means"));
    }
}
