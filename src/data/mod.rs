//! Data: importing Fashion-MNIST, indexing ImageNet-layout datasets, decoding, multi-crop augmentation,
//! iBOT masks and the batch loader.

pub mod augment;
pub mod fashion_mnist;
pub mod image_io;
pub mod index;
pub mod loader;
pub mod mask;

pub use index::{DatasetIndex, Split};
