//! The elastic-space rules against numpy, the reference implementation's own tool: kept blocks are
//! `np.linspace(0, L-1, d).astype(int)` and the sampling list repeats each pair `np.round(s_w * s_d)` times.

mod common;

use common::python;
use poac_ir::{ElasticSpace, VitArch};

fn numpy(script: &str) -> String {
    python(script, &[])
}

fn space(max_depth: usize, min_depth: usize, widths: usize) -> ElasticSpace {
    let arch = VitArch { head_dim: 8, min_embed_dim: 8, max_embed_dim: 8 * widths, min_depth, max_depth, ..VitArch::default() };
    ElasticSpace::of(&arch)
}

#[test]
fn kept_blocks_equal_numpy_linspace_astype_int() {
    let pairs: Vec<(usize, usize)> = (2..=32).flat_map(|l| (1..=l).map(move |d| (l, d))).collect();
    let script = format!(
        "import numpy as np\nfor l, d in {pairs:?}:\n    print(' '.join(str(b) for b in np.linspace(0, l - 1, d).astype(int)))"
    );
    let expected = numpy(&script);
    for ((l, d), line) in pairs.iter().zip(expected.lines()) {
        let ours: Vec<String> = space(*l, 1, 1).kept_blocks(*d).iter().map(|b| b.to_string()).collect();
        assert_eq!(ours.join(" "), line, "L = {l}, d = {d}");
    }
}

#[test]
fn sampling_list_lengths_equal_numpy() {
    let shapes = [(11usize, 13usize, 24usize), (5, 5, 8), (3, 13, 24), (4, 7, 12), (1, 3, 6)];
    let script = format!(
        "import numpy as np\nfor nw, nd, _ in {shapes:?}:\n    sw = np.linspace(3, 1, nw); sd = np.linspace(3, 1, nd)\n    print(sum(int(np.round(a * b)) for i, a in enumerate(sw) for j, b in enumerate(sd) if (i, j) != (nw - 1, nd - 1)))"
    );
    let expected: Vec<usize> = numpy(&script).lines().map(|l| l.parse().unwrap()).collect();
    for ((nw, nd, max_depth), want) in shapes.iter().zip(expected) {
        let s = space(*max_depth, max_depth + 1 - nd, *nw);
        assert_eq!((s.widths.len(), s.depths.len()), (*nw, *nd));
        assert_eq!(s.sampling_list(3.0).len(), want, "{nw} widths × {nd} depths");
    }
}
