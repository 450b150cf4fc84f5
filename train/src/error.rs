//! The one error type of the training library.

use std::path::PathBuf;

/// Everything that can go wrong in the training library. Every variant names the file, tensor
/// or field at fault, so a user can act on the message alone.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A student configuration is malformed or inconsistent.
    #[error("{origin}: invalid student config: {message}")]
    Config {
        /// Where the config came from (a file path or a preset name).
        origin: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// No preset of that name is bundled.
    #[error("unknown student preset `{name}` (known presets: {known})")]
    UnknownPreset {
        /// The requested name.
        name: String,
        /// The bundled preset names, comma-separated.
        known: String,
    },
    /// A tensor has the wrong shape.
    #[error("{tensor}: expected shape {expected}, got {actual:?}")]
    Shape {
        /// The tensor, with the file it came from where there is one.
        tensor: String,
        /// The expected shape, in words or as a list.
        expected: String,
        /// The shape found.
        actual: Vec<usize>,
    },
    /// A tensor a model or checkpoint needs is absent from its source.
    #[error("{origin}: missing tensor `{tensor}`")]
    MissingTensor {
        /// The file (or in-memory source) that lacks it.
        origin: String,
        /// The missing tensor's name.
        tensor: String,
    },
    /// A tensor has the wrong element type.
    #[error("{tensor}: expected dtype {expected}, got {actual:?}")]
    DType {
        /// The tensor.
        tensor: String,
        /// The expected dtype.
        expected: String,
        /// The dtype found.
        actual: candle_core::DType,
    },
    /// A training step was given no micro-batch.
    #[error("a distillation step needs at least one micro-batch, got none")]
    EmptyStep,
    /// A tensor source holds a name the model does not know.
    #[error("{origin}: unexpected tensor `{tensor}` (not a parameter of this student)")]
    UnexpectedTensor {
        /// The file (or in-memory source) that holds it.
        origin: String,
        /// The unknown name.
        tensor: String,
    },
    /// A checkpoint or export file is unreadable or inconsistent.
    #[error("{path}: {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A teacher checkpoint or its architecture is unusable (boxed: its shape errors are
    /// large, and every result of the crate carries this type).
    #[error(transparent)]
    Vit(Box<tinymim_formats::vit::VitError>),
    /// A tensor operation failed (a bug or an exhausted device, not bad user input).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<tinymim_formats::vit::VitError> for TrainError {
    fn from(e: tinymim_formats::vit::VitError) -> Self {
        TrainError::Vit(Box::new(e))
    }
}

/// Result alias of the training library.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Checks that `tensor` has exactly `expected` dims, naming it in the error otherwise.
pub(crate) fn expect_shape(
    name: &str,
    tensor: &candle_core::Tensor,
    expected: &[usize],
) -> Result<()> {
    if tensor.dims() == expected {
        Ok(())
    } else {
        Err(TrainError::Shape {
            tensor: name.to_string(),
            expected: format!("{expected:?}"),
            actual: tensor.dims().to_vec(),
        })
    }
}
