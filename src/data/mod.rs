//! Data: importing Fashion-MNIST, indexing ImageNet-layout datasets, decoding, multi-crop augmentation,
//! RandAugment for fine-tuning, iBOT masks and the batch loader.

pub mod augment;
pub mod fashion_mnist;
pub mod image_io;
pub mod index;
pub mod loader;
pub mod mask;
pub mod rand_augment;
pub mod resize;

pub use index::{DatasetIndex, Split};

/// `f` applied to every item on all cores, in order.
pub fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = items.chunks(chunk).map(|part| s.spawn(|| part.iter().map(&f).collect::<Vec<R>>())).collect();
        workers.into_iter().flat_map(|w| w.join().expect("a worker panicked")).collect()
    })
}
