//! Typed errors of the IR; the CLI turns them into messages for the user.

use thiserror::Error;

/// Everything that can go wrong while building, specialising or reading an IR graph.
#[derive(Debug, Error)]
pub enum IrError {
    /// A width that is not in the elastic space.
    #[error("width {got} is not in the elastic space; valid widths (multiples of head_dim {head_dim}): {valid} (or a fraction of {max} such as 0.5)")]
    InvalidWidth {
        /// What the user asked for.
        got: String,
        /// Channels per attention head: every width is a multiple of it.
        head_dim: usize,
        /// The valid widths, listed.
        valid: String,
        /// The largest width.
        max: usize,
    },
    /// A depth that is not in the elastic space.
    #[error("depth {got} is not in the elastic space; valid depths: {valid}")]
    InvalidDepth {
        /// What the user asked for.
        got: usize,
        /// The valid depths, listed.
        valid: String,
    },
    /// A named size that is not known.
    #[error("unknown size `{got}`; valid sizes: small, base, large (or give --width and --depth)")]
    UnknownSize {
        /// What the user asked for.
        got: String,
    },
    /// An architecture description that cannot describe a model.
    #[error("invalid architecture: {0}")]
    InvalidArch(String),
    /// A weight that is missing or has the wrong shape or type.
    #[error("weights: {0}")]
    Weights(String),
    /// A value's shape does not fit the op that reads it.
    #[error("shape mismatch at `{node}`: {message}")]
    Shape {
        /// The node whose inputs or parameters do not fit.
        node: String,
        /// What does not fit.
        message: String,
    },
    /// The graph is not well formed.
    #[error("malformed graph: {0}")]
    Malformed(String),
}

/// Result alias of the IR.
pub type Result<T> = std::result::Result<T, IrError>;
