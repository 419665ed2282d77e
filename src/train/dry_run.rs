//! `poac pretrain --dry-run`: what a config resolves to and what one iteration costs, without data or training —
//! so a ViT-L config meant for a GPU cluster can be checked on a laptop.

use crate::config::Config;
use anyhow::Result;
use poac_ir::{build::supergraph, stats, SubnetSpec, VitArch};
use poac_passes::{specialise::Specialise, Pass};
use std::fmt::Write;

/// Forward + backward of a trained network costs about three forwards.
const TRAIN_FLOPS_FACTOR: f64 = 3.0;

/// Parameters and FLOPs per image of sub-network `subnet` of `arch` at `img_size` pixels.
fn subnet_cost(arch: &VitArch, subnet: SubnetSpec, img_size: usize) -> Result<(usize, f64)> {
    let mut graph = supergraph(&VitArch { img_size, ..arch.clone() })?;
    Specialise { subnet }.run(&mut graph)?;
    Ok((stats::param_count(&graph), stats::flops_per_image(&graph)? as f64))
}

/// Parameters of one projection head (3-layer MLP, bottleneck, prototype layer) from `width` features.
fn head_params(width: usize, hidden: usize, bottleneck: usize, prototypes: usize) -> usize {
    width * hidden + hidden + hidden * hidden + hidden + hidden * bottleneck + bottleneck + bottleneck * prototypes
}

/// The resolved config as YAML followed by the run's derived figures: effective lr, the elastic space,
/// parameters and FLOPs per iteration.
pub fn describe(config: &Config) -> Result<String> {
    let arch = config.arch();
    let space = poac_ir::ElasticSpace::of(&arch);
    let (crops, batch) = (&config.crops, config.train.batch_size);
    let d = &config.dino;
    let mut out = serde_yaml::to_string(config)?;
    let o = &config.optim;
    writeln!(out, "\n# derived")?;
    writeln!(out, "learning rate: {:.6} (base_lr {} × {} for batch {batch})", config.lr(1), o.base_lr, o.scaling_rule)?;
    let iterations = (o.epochs * config.train.official_epoch_length as f64).round() as u64;
    writeln!(out, "iterations: {iterations} ({} epochs × {}), cosine schedules over {:.0}", o.epochs, config.train.official_epoch_length, iterations as f64 / o.iter_num_scale)?;
    let list = space.sampling_list(d.net_select_scale);
    writeln!(
        out,
        "elastic space: widths {:?} × depths {:?} = {} sub-networks; sampling list {} entries",
        space.widths,
        space.depths,
        space.subnets().len(),
        list.len()
    )?;
    let intact = space.intact();
    let (backbone, _) = subnet_cost(&arch, intact, crops.global_crops_size)?;
    let heads: usize = d.head_n_prototypes.iter().map(|&k| head_params(space.max_width(), d.head_hidden_dim, d.head_bottleneck_dim, k)).sum();
    writeln!(out, "parameters: backbone {:.2} M, {} head(s) {:.2} M, trained {:.2} M", backbone as f64 / 1e6, d.head_n_prototypes.len(), heads as f64 / 1e6, (backbone + heads) as f64 / 1e6)?;

    // One iteration: the teacher's forward on the global crops; forward and backward of the intact and of the
    // elastic student (its expected cost over the sampling list) on all crops. Heads are left out.
    let views = |subnet: SubnetSpec| -> Result<f64> {
        let global = subnet_cost(&arch, subnet, crops.global_crops_size)?.1;
        let local = subnet_cost(&arch, subnet, crops.local_crops_size)?.1;
        Ok(2.0 * global + crops.local_crops_number as f64 * local)
    };
    let teacher = 2.0 * subnet_cost(&arch, intact, crops.global_crops_size)?.1;
    let intact_student = TRAIN_FLOPS_FACTOR * views(intact)?;
    let mut elastic = 0.0;
    for &subnet in &list {
        elastic += TRAIN_FLOPS_FACTOR * views(subnet)?;
    }
    elastic /= list.len().max(1) as f64;
    let per_image = teacher + intact_student + elastic;
    writeln!(
        out,
        "FLOPs per iteration (backbones): {:.1} GFLOPs per image (teacher {:.1}, intact student {:.1}, elastic student {:.1} on average), {:.1} TFLOPs per batch of {batch}",
        per_image / 1e9,
        teacher / 1e9,
        intact_student / 1e9,
        elastic / 1e9,
        per_image * batch as f64 / 1e12
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parameters_by_hand() {
        // 4 → 8 → 8 → 2, 5 prototypes: 32 + 8 + 64 + 8 + 16 + 2 + 10.
        assert_eq!(head_params(4, 8, 2, 5), 140);
    }

    #[test]
    fn describes_the_default_fashion_config() {
        let config = Config::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/fashion_mnist_vit.yaml"))).unwrap();
        let text = describe(&config).unwrap();
        // 5 widths × 5 depths; the sampling list of a 5 × 5 space has 99 entries (POA_SPEC §4).
        assert!(text.contains("= 25 sub-networks; sampling list 99 entries"), "{text}");
        assert!(text.contains(&format!("learning rate: {:.6}", 0.004 * (64.0f64 / 1024.0).sqrt())), "{text}");
    }
}
