//! POA's loss terms against numpy, written from the method's definitions (POA_SPEC §5, dinov2's formulas) apart
//! from our libtorch code: Sinkhorn–Knopp centring, the DINO cross-view loss on SK targets, the iBOT
//! masked-patch loss, KoLeo and the intact→elastic term, on the same fixed inputs, to ≤ 1e-5; and the schedules
//! against dinov2's `CosineScheduler` re-written in numpy, at every iteration.

mod common;

use common::python;
use poac::dist::World;
use poac::train::losses::{cross_entropy, dino_loss, ibot_loss, koleo_loss, sinkhorn_knopp, SINKHORN_ITERATIONS};
use tch::{Kind, Tensor};

/// Deterministic values in [-1, 1) that look like logits of cosine-similarity prototypes.
fn values(n: usize, salt: f64) -> Vec<f32> {
    (0..n).map(|i| ((i as f64 * 0.7391 + salt).sin() * 0.9) as f32).collect()
}

fn tensor(v: &[f32], shape: [i64; 2]) -> Tensor {
    Tensor::from_slice(v).view(shape)
}

fn numpy(script: &str) -> Vec<f64> {
    python(script, &[]).split_whitespace().map(|x| x.parse().unwrap()).collect()
}

fn close(ours: &[f64], oracle: &[f64], what: &str) {
    assert_eq!(ours.len(), oracle.len(), "{what}");
    for (i, (a, b)) in ours.iter().zip(oracle).enumerate() {
        assert!((a - b).abs() <= 1e-5, "{what}[{i}]: ours {a}, numpy {b}");
    }
}

fn flat(t: &Tensor) -> Vec<f64> {
    Vec::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

#[test]
fn losses_equal_numpy() {
    // B = 3 images, 2 global + 2 local crops, K = 7 prototypes, 5 masked patches, 4-d features.
    let (b, k, locals, patches) = (3i64, 7i64, 2i64, 5i64);
    let (teacher_temp, student_temp) = (0.05, 0.1);
    let teacher = values((2 * b * k) as usize, 0.3);
    let global = values((2 * b * k) as usize, 1.1);
    let local = values((locals * b * k) as usize, 2.9);
    let teacher_patch = values((patches * k) as usize, 4.2);
    let student_patch = values((patches * k) as usize, 5.5);
    let weights: Vec<f32> = vec![0.5, 0.5, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0];
    let features = values(6 * 4, 7.7);

    let sk = sinkhorn_knopp(&tensor(&teacher, [2 * b, k]), teacher_temp, SINKHORN_ITERATIONS, (2 * b) as f64, &World::single()).unwrap();
    let sk_patch = sinkhorn_knopp(&tensor(&teacher_patch, [patches, k]), teacher_temp, SINKHORN_ITERATIONS, patches as f64, &World::single()).unwrap();
    let dino = dino_loss(&sk, &tensor(&global, [2 * b, k]), &tensor(&local, [locals * b, k]), b, student_temp);
    let ibot = ibot_loss(&sk_patch, &tensor(&student_patch, [patches, k]), &Tensor::from_slice(&weights), 2 * b, student_temp);
    let koleo = koleo_loss(&tensor(&features, [6, 4]));
    // intact → elastic: the intact student's softmax at the student temperature as the target of the elastic one.
    let intact = tensor(&global, [2 * b, k]);
    let elastic = tensor(&local, [2 * b, k]);
    let target = (&intact / student_temp).softmax(-1, Kind::Float);
    let to_elastic = cross_entropy(&target, &elastic, student_temp);
    let mut ours = flat(&sk);
    ours.extend(flat(&sk_patch));
    ours.extend([&dino, &ibot, &koleo, &to_elastic].iter().map(|t| t.double_value(&[])));

    let script = format!(
        r#"
import numpy as np
b, k, L, P = {b}, {k}, {locals}, {patches}
tt, st = {teacher_temp}, {student_temp}
teacher = np.array({teacher:?}).reshape(2 * b, k)
glob = np.array({global:?}).reshape(2 * b, k)
loc = np.array({local:?}).reshape(L * b, k)
tpatch = np.array({teacher_patch:?}).reshape(P, k)
spatch = np.array({student_patch:?}).reshape(P, k)
w = np.array({weights:?})
feats = np.array({features:?}).reshape(6, 4)

def sinkhorn(logits, temp, iters={SINKHORN_ITERATIONS}):
    q = np.exp(logits / temp).T          # K x M
    m, kk = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True); q /= kk
        q /= q.sum(axis=0, keepdims=True); q /= m
    return (q * m).T

def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

sk = sinkhorn(teacher, tt)
skp = sinkhorn(tpatch, tt)
# DINO: every teacher global view against every student view but its own, mean over pairs and images.
tv = np.split(sk, 2)
sv = np.split(log_softmax(glob / st), 2) + np.split(log_softmax(loc / st), L)
terms = [-(tv[t] * sv[s]).sum(-1).mean() for t in range(2) for s in range(2 + L) if s != t]
dino = np.mean(terms)
# iBOT: per masked token cross-entropy, weighted by 1 / masked tokens of its crop, summed, over 2B crops.
ibot = (-(skp * log_softmax(spatch / st)).sum(-1) * w).sum() / (2 * b)
# KoLeo: -mean log distance to the nearest neighbour of the L2-normalised features.
x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
d = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1) + np.diag([np.inf] * len(x))
koleo = -np.log(d.min(axis=1) + 1e-8).mean()
target = np.exp(log_softmax(glob / st))
to_elastic = -(target * log_softmax(loc / st)).sum(-1).mean()
print(" ".join(repr(float(v)) for v in list(sk.ravel()) + list(skp.ravel()) + [dino, ibot, koleo, to_elastic]))
"#
    );
    let oracle = numpy(&script);
    let n_sk = (2 * b * k + patches * k) as usize;
    close(&ours[..n_sk], &oracle[..n_sk], "Sinkhorn-Knopp targets");
    for (i, name) in ["DINO", "iBOT", "KoLeo", "intact→elastic"].iter().enumerate() {
        close(&ours[n_sk + i..n_sk + i + 1], &oracle[n_sk + i..n_sk + i + 1], name);
    }
}

#[test]
fn schedules_equal_dinov2_cosine_scheduler_in_numpy() {
    use poac::config::Config;
    use poac::train::schedule::Schedules;
    // 12 epochs of 10 iterations, iter_num_scale 0.8 (cosines over 150), 3 warm-up epochs, 5 of temperature warm-up.
    let mut c = Config::default();
    c.optim.epochs = 12.0;
    c.optim.warmup_epochs = 3.0;
    c.optim.iter_num_scale = 0.8;
    c.optim.base_lr = 0.004;
    c.optim.min_lr = 1e-6;
    c.train.batch_size = 256;
    c.teacher.warmup_teacher_temp_epochs = 5.0;
    let s = Schedules::new(&c, 120, 1);
    let mut ours = Vec::new();
    for it in 0..130 {
        let v = s.at(it);
        ours.extend([v.lr, v.weight_decay, v.momentum, v.teacher_temp]);
    }
    let script = format!(
        r#"
import numpy as np
class CosineScheduler:
    def __init__(self, base_value, final_value, total_iters, warmup_iters=0, start_warmup_value=0):
        self.final_value, self.total_iters = final_value, total_iters
        warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
        iters = np.arange(total_iters - warmup_iters)
        cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
        self.schedule = np.concatenate((warmup, cosine))
    def __getitem__(self, it):
        return self.final_value if it >= self.total_iters else self.schedule[it]
lr = {lr}
span = 150
sched = [CosineScheduler(lr, 1e-6, span, 30, 0), CosineScheduler(0.04, 0.4, span), CosineScheduler(0.992, 0.9999, span),
         CosineScheduler(0.07, 0.07, 50, 50, 0.04)]
print(" ".join(repr(float(s[it])) for it in range(130) for s in sched))
"#,
        lr = 0.004 * (256.0f64 / 1024.0).sqrt()
    );
    let oracle = numpy(&script);
    assert_eq!(ours.len(), oracle.len());
    for (i, (a, b)) in ours.iter().zip(&oracle).enumerate() {
        assert!((a - b).abs() <= 1e-12, "iteration {}, schedule {}: ours {a}, numpy {b}", i / 4, ["lr", "weight decay", "momentum", "teacher temp"][i % 4]);
    }
}
