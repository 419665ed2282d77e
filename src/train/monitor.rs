//! k-NN of the teacher during training: a fixed, class-balanced subset of both splits, decoded once, pushed
//! through the teacher's small, base and intact sub-networks every `evaluation.eval_period_iterations`.
//! It answers the question the loss cannot: is every size of the elastic network learning?

use crate::config::Config;
use crate::data::augment::{MEAN, STD};
use crate::data::loader::EvalBatches;
use crate::data::{index::Layout, DatasetIndex, Split};
use crate::eval::knn::{knn_accuracy, TEMPERATURE};
use crate::model::ElasticVit;
use anyhow::{bail, Result};
use poac_ir::{ElasticSpace, SubnetSpec};
use tch::{no_grad, Device, Kind, Tensor};

/// The k reported (the main job's k).
const K: usize = 20;
/// Images per forward pass.
const BATCH: i64 = 250;

/// Decoded images and labels of one split's subset.
struct Subset {
    images: Tensor,
    labels: Tensor,
}

/// The monitor's data and the sub-networks it checks.
pub struct KnnMonitor {
    train: Subset,
    val: Subset,
    classes: i64,
    subnets: Vec<SubnetSpec>,
}

impl KnnMonitor {
    /// Decodes the subsets (images that do not decode are left out); `None` when the config turns it off.
    pub fn new(config: &Config, index: &DatasetIndex, space: &ElasticSpace, device: Device) -> Result<Option<Self>> {
        let eval = &config.evaluation;
        if eval.eval_period_iterations == 0 {
            return Ok(None);
        }
        if index.layout == Layout::Unlabelled || index.split(Split::Val).is_empty() {
            eprintln!("evaluation.eval_period_iterations is set but {} has no labelled val split: no k-NN during training", index.root().display());
            return Ok(None);
        }
        let size = config.crops.global_crops_size;
        let subset = |split: Split, limit: usize| -> Result<Subset> {
            let (images, labels) = EvalBatches::new(index.root(), index.balanced(split, Some(limit)), size, MEAN, STD).load_all();
            if images.size()[0] == 0 {
                bail!("the k-NN monitor found no decodable {} image in {}", split.dir(), index.root().display());
            }
            Ok(Subset { images: images.to_device(device), labels: labels.to_device(device) })
        };
        let mut subnets = vec![space.smallest(), space.named("base")?, space.intact()];
        subnets.dedup();
        Ok(Some(KnnMonitor {
            train: subset(Split::Train, eval.knn_train_images)?,
            val: subset(Split::Val, eval.knn_val_images)?,
            classes: index.classes.len() as i64,
            subnets,
        }))
    }

    /// k-NN top-1 (k = 20, fraction) of each monitored sub-network of `model`.
    pub fn evaluate(&self, model: &ElasticVit) -> Vec<(SubnetSpec, f64)> {
        no_grad(|| {
            self.subnets
                .iter()
                .map(|&subnet| {
                    let features = |s: &Subset| -> Tensor {
                        let chunks: Vec<Tensor> = s.images.split(BATCH, 0).iter().map(|x| model.forward(x, subnet, None).select(1, 0).to_kind(Kind::Float)).collect();
                        Tensor::cat(&chunks, 0)
                    };
                    let (top1, _) = knn_accuracy(&features(&self.train), &self.train.labels, &features(&self.val), &self.val.labels, self.classes, &[K], TEMPERATURE);
                    (subnet, top1[0])
                })
                .collect()
        })
    }
}
