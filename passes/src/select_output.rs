//! Select output: what a lowered model returns, built from the final-normed token sequence (and, for `last4`,
//! from the outputs of the last kept blocks).

use crate::pipeline::Pass;
use poac_ir::{error::Result, Graph, IrError, Op};
use std::fmt;
use std::str::FromStr;

/// Which features the model returns (`poac lower --output`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputKind {
    /// The class token after the final norm, `embedding` `[N, W]` (what k-NN uses).
    #[default]
    Cls,
    /// The patch tokens after the final norm, `patch_tokens` `[N, P, W]`.
    Patch,
    /// The whole final-normed sequence, class token first, then the patches: `tokens` `[N, 1 + P, W]`.
    ClsPatch,
    /// dinov2's linear-probe input, `features` `[N, 5W]`: the class tokens of the last 4 kept blocks, each after
    /// the final norm, oldest first, then the mean of the last block's final-normed patch tokens.
    Last4,
}

impl OutputKind {
    /// Every kind, as the CLI spells them.
    pub const ALL: [OutputKind; 4] = [OutputKind::Cls, OutputKind::Patch, OutputKind::ClsPatch, OutputKind::Last4];

    /// The CLI spelling.
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Cls => "cls",
            OutputKind::Patch => "patch",
            OutputKind::ClsPatch => "cls+patch",
            OutputKind::Last4 => "last4",
        }
    }

    /// The exact layout of the output, for the model's metadata and the README.
    pub fn layout(self) -> &'static str {
        match self {
            OutputKind::Cls => "embedding [N, W]: class token after the final norm",
            OutputKind::Patch => "patch_tokens [N, P, W]: patch tokens after the final norm, row-major patch order",
            OutputKind::ClsPatch => "tokens [N, 1+P, W]: class token then patch tokens, after the final norm",
            OutputKind::Last4 => {
                "features [N, 5W]: class tokens of the last 4 kept blocks (each after the final norm, oldest first), \
                 then the mean of the last block's final-normed patch tokens"
            }
        }
    }
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OutputKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        OutputKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let valid: Vec<&str> = OutputKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown output `{s}`; valid outputs: {}", valid.join(", "))
        })
    }
}

/// Blocks whose class tokens `last4` concatenates.
const LAST_BLOCKS: usize = 4;

/// Adds the nodes that compute `kind` from the final norm and makes the last of them the graph output.
pub struct SelectOutput {
    /// What to return.
    pub kind: OutputKind,
}

impl Pass for SelectOutput {
    fn name(&self) -> &'static str {
        "select-output"
    }

    fn run(&self, g: &mut Graph) -> Result<bool> {
        let Op::LayerNorm { weight, bias, eps } = g.nodes[g.output].op else {
            return Err(IrError::Malformed("select-output needs the final norm as the graph output".into()));
        };
        let norm = g.output;
        g.output = match self.kind {
            OutputKind::Cls => g.push("embedding", Op::ClsToken, vec![norm], None),
            OutputKind::Patch => g.push("patch_tokens", Op::PatchTokens, vec![norm], None),
            OutputKind::ClsPatch => {
                g.nodes[norm].name = "tokens".into();
                norm
            }
            OutputKind::Last4 => {
                if g.blocks.len() < LAST_BLOCKS {
                    return Err(IrError::Malformed(format!(
                        "--output last4 needs at least {LAST_BLOCKS} blocks; this sub-network has {}",
                        g.blocks.len()
                    )));
                }
                let last = &g.blocks[g.blocks.len() - LAST_BLOCKS..];
                let earlier: Vec<(usize, usize)> = last[..LAST_BLOCKS - 1].iter().map(|b| (b.index, b.output)).collect();
                let last_index = last[LAST_BLOCKS - 1].index;
                let mut parts = Vec::new();
                for (index, output) in earlier {
                    let normed = g.push(format!("blocks.{index}.final_norm"), Op::LayerNorm { weight, bias, eps }, vec![output], None);
                    parts.push(g.push(format!("blocks.{index}.cls"), Op::ClsToken, vec![normed], None));
                }
                parts.push(g.push(format!("blocks.{last_index}.cls"), Op::ClsToken, vec![norm], None));
                let patches = g.push(format!("blocks.{last_index}.patch_tokens"), Op::PatchTokens, vec![norm], None);
                parts.push(g.push("mean_patch_token", Op::MeanTokens, vec![patches], None));
                g.push("features", Op::Concat, parts, None)
            }
        };
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::tiny_supergraph;
    use poac_ir::shape;

    #[test]
    fn each_output_has_its_shape() {
        // Tiny supergraph at its largest: 12 channels, 4 patches, 3 blocks.
        let cases = [(OutputKind::Cls, vec![12]), (OutputKind::Patch, vec![4, 12]), (OutputKind::ClsPatch, vec![5, 12])];
        for (kind, expected) in cases {
            let mut g = tiny_supergraph();
            assert!(SelectOutput { kind }.run(&mut g).unwrap());
            assert_eq!(shape::infer(&g).unwrap()[g.output], expected, "{kind}");
        }
        // The tiny supergraph has 3 blocks: too few for last4.
        let err = SelectOutput { kind: OutputKind::Last4 }.run(&mut tiny_supergraph()).unwrap_err().to_string();
        assert!(err.contains("at least 4 blocks") && err.contains("has 3"), "{err}");
        assert!("cls+patch".parse::<OutputKind>().unwrap() == OutputKind::ClsPatch);
        assert!("last5".parse::<OutputKind>().unwrap_err().contains("cls, patch, cls+patch, last4"));
    }

    #[test]
    fn last4_concatenates_four_class_tokens_and_the_mean_patch_token() {
        let mut g = crate::pipeline::testing::supergraph_with_depth(5);
        SelectOutput { kind: OutputKind::Last4 }.run(&mut g).unwrap();
        assert_eq!(shape::infer(&g).unwrap()[g.output], vec![5 * 12]);
        let concat = &g.nodes[g.output];
        let names: Vec<&str> = concat.inputs.iter().map(|&v| g.nodes[v].name.as_str()).collect();
        assert_eq!(names, ["blocks.1.cls", "blocks.2.cls", "blocks.3.cls", "blocks.4.cls", "mean_patch_token"]);
        // Earlier blocks' outputs go through the final norm's own parameters.
        let norm_of = |name: &str| {
            let cls = g.nodes.iter().find(|n| n.name == name).unwrap();
            let normed = &g.nodes[cls.inputs[0]];
            (normed.op.params(), g.blocks.iter().find(|b| b.output == normed.inputs[0]).map(|b| b.index))
        };
        let (final_norm, _) = norm_of("blocks.4.cls");
        assert_eq!(norm_of("blocks.1.cls"), (final_norm, Some(1)));
    }
}
