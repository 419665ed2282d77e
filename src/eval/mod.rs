//! Evaluations of lowered models through a [`crate::runtime::Runtime`].

pub mod features;
pub mod knn;
