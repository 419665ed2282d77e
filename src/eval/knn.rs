//! Weighted k-NN classification on L2-normalised features (dinov2's protocol): the k most cosine-similar
//! training images vote for their class with weight `exp(similarity / T)`.

use super::features::extract;
use super::record::EvaluatedModel;
use super::EvalTarget;
use crate::data::loader::EvalBatches;
use crate::data::{DatasetIndex, Split};
use crate::lower::model_info;
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// The k of the protocol.
pub const KS: [usize; 4] = [10, 20, 100, 200];
/// Softmax temperature of the votes.
pub const TEMPERATURE: f64 = 0.07;

/// Accuracies per k.
#[derive(Clone, Debug, Serialize)]
pub struct KnnReport {
    /// Top-1 accuracy (fraction) per k.
    pub top1: BTreeMap<String, f64>,
    /// Top-1 accuracy at k = 20, the protocol's headline figure.
    pub top1_k20: f64,
    /// Top-5 accuracy (fraction) per k.
    pub top5: BTreeMap<String, f64>,
    /// `ort` or `tract`.
    pub runtime: String,
    /// Training images used.
    pub train_images: usize,
    /// Validation images used.
    pub val_images: usize,
    /// Images that did not decode (left out).
    pub skipped_images: usize,
    /// The model evaluated.
    #[serde(flatten)]
    pub evaluated: EvaluatedModel,
}

/// Extracts features of both splits and classifies the validation images.
pub fn knn_eval(target: &EvalTarget) -> Result<KnnReport> {
    let info = model_info(&target.model)?;
    let index = DatasetIndex::open_labelled(&target.data)?;
    let mut runtime = target.runtime.open(&target.model)?;
    let train = EvalBatches::new(index.root(), index.balanced(Split::Train, target.train_limit), info.image_size, info.mean, info.std);
    let val = EvalBatches::new(index.root(), index.balanced(Split::Val, target.val_limit), info.image_size, info.mean, info.std);
    if train.is_empty() || val.is_empty() {
        bail!("k-NN needs training and validation images; {} has {} and {}", target.data.display(), train.len(), val.len());
    }
    let (train_features, train_kept) = extract(runtime.as_mut(), &train, info.image_size, "train features")?;
    let (val_features, val_kept) = extract(runtime.as_mut(), &val, info.image_size, "val features")?;
    let kept_labels = |labels: Vec<i64>, kept: &[bool]| -> Vec<i64> { labels.into_iter().zip(kept).filter(|(_, k)| **k).map(|(l, _)| l).collect() };
    let train_labels = kept_labels(train.labels(), &train_kept);
    let val_labels = kept_labels(val.labels(), &val_kept);
    if train_labels.is_empty() || val_labels.is_empty() {
        bail!("no image of one split of {} decodes", target.data.display());
    }
    let skipped_images = train.len() + val.len() - train_labels.len() - val_labels.len();
    let (train_labels, val_labels) = (Tensor::from_slice(&train_labels), Tensor::from_slice(&val_labels));
    let (top1, top5) = knn_accuracy(&train_features, &train_labels, &val_features, &val_labels, index.classes.len() as i64, &KS, TEMPERATURE);
    let keyed = |v: Vec<f64>| KS.iter().map(|k| k.to_string()).zip(v).collect::<BTreeMap<_, _>>();
    let top1 = keyed(top1);
    Ok(KnnReport {
        top1_k20: top1["20"],
        top1,
        top5: keyed(top5),
        runtime: target.runtime.name().into(),
        train_images: train_labels.size()[0] as usize,
        val_images: val_labels.size()[0] as usize,
        skipped_images,
        evaluated: EvaluatedModel::new(&target.model, &info),
    })
}

/// Top-1 and top-5 accuracy for each `k` of weighted k-NN (k larger than the training set uses all of it).
pub fn knn_accuracy(train: &Tensor, train_labels: &Tensor, val: &Tensor, val_labels: &Tensor, classes: i64, ks: &[usize], temperature: f64) -> (Vec<f64>, Vec<f64>) {
    let normalize = |x: &Tensor| x / x.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12);
    let (train, val) = (normalize(train), normalize(val));
    let n_train = train.size()[0];
    let k_max = (*ks.iter().max().unwrap() as i64).min(n_train);
    let mut top1 = vec![0i64; ks.len()];
    let mut top5 = vec![0i64; ks.len()];
    let n_val = val.size()[0];
    for start in (0..n_val).step_by(512) {
        let len = 512.min(n_val - start);
        let chunk = val.narrow(0, start, len);
        let truth = val_labels.narrow(0, start, len).unsqueeze(1);
        let (similarity, neighbours) = chunk.matmul(&train.tr()).topk(k_max, -1, true, true);
        let neighbour_labels = train_labels.index_select(0, &neighbours.flatten(0, 1)).view([len, k_max]);
        let weights = (similarity / temperature).exp();
        for (i, &k) in ks.iter().enumerate() {
            let k = (k as i64).min(n_train);
            let votes = Tensor::zeros([len, classes], (Kind::Float, train.device())).scatter_add(1, &neighbour_labels.narrow(1, 0, k), &weights.narrow(1, 0, k));
            let ranked = votes.topk(5.min(classes), -1, true, true).1;
            top1[i] += ranked.narrow(1, 0, 1).eq_tensor(&truth).sum(Kind::Int64).int64_value(&[]);
            top5[i] += ranked.eq_tensor(&truth).sum(Kind::Int64).int64_value(&[]);
        }
    }
    let frac = |c: Vec<i64>| c.into_iter().map(|c| c as f64 / n_val as f64).collect();
    (frac(top1), frac(top5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_votes_by_weighted_neighbours() {
        // Unit vectors by angle. Train: class 0 at 0°, class 1 at ±25.84° (cosine 0.9 to 0°). Val: 0° (class 0)
        // and 90° (class 1).
        let at = |deg: f64| [deg.to_radians().cos() as f32, deg.to_radians().sin() as f32];
        let train = Tensor::from_slice(&[at(0.0), at(25.84), at(-25.84)].concat()).view([3, 2]);
        let train_labels = Tensor::from_slice(&[0i64, 1, 1]);
        let val = Tensor::from_slice(&[at(0.0), at(90.0)].concat()).view([2, 2]);
        let val_labels = Tensor::from_slice(&[0i64, 1]);
        let (top1, top5) = knn_accuracy(&train, &train_labels, &val, &val_labels, 2, &[1, 3], 0.07);
        assert_eq!(top1[0], 1.0);
        // k = 3 at 0°: class 0 gets e^(1/0.07) = e^14.29, class 1 gets 2·e^(0.9/0.07) = e^13.55: the weighted
        // vote keeps class 0 where a majority vote would pick class 1. At 90°: class 1 gets
        // e^(0.436/0.07) + e^(−0.436/0.07) > class 0's e^0.
        assert_eq!(top1[1], 1.0);
        assert_eq!(top5, vec![1.0, 1.0]);
    }
}
