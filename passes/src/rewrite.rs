//! Helpers the fold passes share: finding the op a constant can be folded into.

use poac_ir::{Graph, Op, ParamId, ValueId};

/// Whether `param` is read by exactly one node, so that changing its values changes nothing else.
pub fn exclusive(g: &Graph, param: ParamId) -> bool {
    g.nodes.iter().filter(|n| n.op.params().contains(&param)).count() == 1
}

/// The weight and bias of the linear that node `node` reads as its first input — if that linear feeds nothing
/// else (`consumers` from [`Graph::consumers`]) and owns its parameters, so its output may be rescaled.
pub fn sole_linear_input(g: &Graph, node: ValueId, consumers: &[usize]) -> Option<(ParamId, Option<ParamId>)> {
    let input = *g.nodes[node].inputs.first()?;
    match g.nodes[input].op {
        Op::Linear { weight, bias, .. }
            if consumers[input] == 1 && exclusive(g, weight) && bias.is_none_or(|b| exclusive(g, b)) =>
        {
            Some((weight, bias))
        }
        _ => None,
    }
}

/// The one node that reads `value`, if exactly one does and `value` is not the graph output.
pub fn sole_reader(g: &Graph, value: ValueId, consumers: &[usize]) -> Option<ValueId> {
    if consumers[value] != 1 || g.output == value {
        return None;
    }
    g.nodes.iter().position(|n| n.inputs.contains(&value))
}
