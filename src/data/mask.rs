//! iBOT block-wise masks over the patch grid of the global crops.

use rand::Rng;

/// Smallest block a mask is built from, in patches.
const MIN_BLOCK: f64 = 4.0;
/// Aspect ratios of blocks are log-uniform in [0.3, 1/0.3].
const MIN_ASPECT: f64 = 0.3;

/// A block-wise mask of about `target` patches on a `side × side` grid: rectangles of random area and
/// aspect ratio are added until the target is met or no rectangle adds anything.
pub fn block_mask(side: usize, target: usize, rng: &mut impl Rng) -> Vec<bool> {
    let mut mask = vec![false; side * side];
    let mut count = 0;
    let (log_lo, log_hi) = (MIN_ASPECT.ln(), (1.0 / MIN_ASPECT).ln());
    while count < target {
        let room = target - count;
        let mut added = 0;
        for _ in 0..10 {
            let area = rng.random_range(MIN_BLOCK.min(room as f64)..=room as f64);
            let aspect = rng.random_range(log_lo..=log_hi).exp();
            let h = (area * aspect).sqrt().round() as usize;
            let w = (area / aspect).sqrt().round() as usize;
            if h == 0 || w == 0 || h >= side || w >= side {
                continue;
            }
            let top = rng.random_range(0..=side - h);
            let left = rng.random_range(0..=side - w);
            let fresh = (top..top + h).flat_map(|r| (left..left + w).map(move |c| r * side + c)).filter(|&i| !mask[i]).count();
            if fresh > 0 && fresh <= room {
                for r in top..top + h {
                    mask[r * side + left..r * side + left + w].iter_mut().for_each(|m| *m = true);
                }
                added = fresh;
                break;
            }
        }
        if added == 0 {
            break;
        }
        count += added;
    }
    mask
}

/// Masks for `crops` global crops (dinov2's collate): `floor(crops · probability)` of them are masked, crop `i`
/// of those with a ratio drawn from the `i`-th of evenly spaced sub-ranges of `ratio`; the rest are unmasked;
/// the assignment to crops is shuffled.
pub fn batch_masks(crops: usize, side: usize, probability: f64, ratio: [f64; 2], rng: &mut impl Rng) -> Vec<Vec<bool>> {
    let patches = side * side;
    let masked = (crops as f64 * probability) as usize;
    let step = (ratio[1] - ratio[0]) / masked.max(1) as f64;
    let mut masks: Vec<Vec<bool>> = (0..masked)
        .map(|i| {
            let lo = ratio[0] + i as f64 * step;
            let r = rng.random_range(lo..=lo + step);
            block_mask(side, (patches as f64 * r) as usize, rng)
        })
        .collect();
    masks.resize(crops, vec![false; patches]);
    for i in (1..masks.len()).rev() {
        masks.swap(i, rng.random_range(0..=i));
    }
    masks
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn block_masks_reach_about_their_target_without_exceeding_it() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for target in [6, 13, 20, 32] {
            let m = block_mask(8, target, &mut rng);
            let n = m.iter().filter(|&&b| b).count();
            assert!(n <= target && n * 2 >= target, "target {target}, got {n}");
        }
    }

    #[test]
    fn half_of_the_crops_are_masked() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let masks = batch_masks(128, 8, 0.5, [0.1, 0.5], &mut rng);
        assert_eq!(masks.len(), 128);
        let masked = masks.iter().filter(|m| m.iter().any(|&b| b)).count();
        assert_eq!(masked, 64);
        assert!(masks.iter().all(|m| m.iter().filter(|&&b| b).count() <= 32));
    }
}
