//! Evaluations of lowered models through a [`crate::runtime::Runtime`].

pub mod classifier_grid;
pub mod feature_cache;
pub mod features;
pub mod finetune;
pub mod knn;
pub mod linear;
pub mod record;
