//! The one error type of the blip2 workspace.

use std::path::PathBuf;

/// `Result` with [`enum@Error`] as the error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when finding, loading or running a BLIP-2 model.
///
/// Each variant names what it concerns (the file, the tensor key, the shapes) so that the
/// message alone tells a user what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (config, index, processor settings) is not valid JSON or has wrong types.
    #[error("cannot parse {path}: {source}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The parser's reason, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// A configuration parsed but holds values the model cannot run with.
    #[error("invalid configuration ({field}): {reason}")]
    InvalidConfig {
        /// The offending field, e.g. `vision_config.hidden_size`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A `model_type` this crate does not implement.
    #[error("unsupported model type {found:?} in {field} (supported: {supported})")]
    UnsupportedModelType {
        /// Where the model type was read, e.g. `text_config.model_type`.
        field: String,
        /// The value found.
        found: String,
        /// The values this crate supports.
        supported: String,
    },

    /// The model could not be found anywhere it was looked for.
    #[error(
        "model {model:?} not found; looked in: {}. {hint}",
        display_paths(searched)
    )]
    ModelNotFound {
        /// What the user asked for (a hub id or a path).
        model: String,
        /// Every place that was searched.
        searched: Vec<PathBuf>,
        /// How to get the model.
        hint: String,
    },

    /// Downloading a model from the Hugging Face hub failed (feature `download`).
    #[error("cannot download {model:?} from the Hugging Face hub: {reason}")]
    Download {
        /// The hub id.
        model: String,
        /// What went wrong.
        reason: String,
    },

    /// A model folder holds only pickled PyTorch weights, which are never executed.
    #[error(
        "{dir} has only PyTorch pickle weights ({file}); pickles can run arbitrary code and are never loaded. \
         Convert them to safetensors first, e.g. in Python: \
         `Blip2ForConditionalGeneration.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`"
    )]
    PickleOnly {
        /// The model folder.
        dir: PathBuf,
        /// The pickle file found.
        file: String,
    },

    /// A model folder has no weights at all.
    #[error("{dir} contains no model.safetensors nor model.safetensors.index.json")]
    NoWeights {
        /// The model folder.
        dir: PathBuf,
    },

    /// A tensor the model needs is not in the checkpoint.
    #[error("tensor {key:?} is missing from {location}")]
    MissingTensor {
        /// The HF key name.
        key: String,
        /// The file or folder searched.
        location: String,
    },

    /// A tensor has a different shape from the one the configuration implies.
    #[error("tensor {key:?} in {file} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The HF key name.
        key: String,
        /// The safetensors file holding it.
        file: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },

    /// A tensor is stored in a dtype that cannot be converted to a float dtype.
    #[error("tensor {key:?} in {file} has unsupported dtype {dtype} (expected F32, F16 or BF16)")]
    UnsupportedDType {
        /// The HF key name.
        key: String,
        /// The safetensors file holding it.
        file: String,
        /// The dtype found, as safetensors names it.
        dtype: String,
    },

    /// A weights file is truncated or its header is inconsistent.
    #[error("corrupt weights file {path}: {reason}")]
    CorruptWeights {
        /// The safetensors or index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// `model.safetensors.index.json` names a shard that is not there.
    #[error("{index} refers to shard {shard:?}, which does not exist")]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The shard name as written in the index.
        shard: String,
    },

    /// `model.safetensors.index.json` names a shard outside the model folder.
    #[error("{index} refers to shard {shard:?}, which is outside the model folder; refused")]
    UnsafeShardPath {
        /// The index file.
        index: PathBuf,
        /// The shard name as written in the index.
        shard: String,
    },

    /// `tokenizer.json` is missing or unreadable.
    #[error("cannot load tokenizer {path}: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// An image could not be decoded.
    #[error("cannot decode image{}: {reason}", display_origin(origin))]
    ImageDecode {
        /// Where the image came from, when known.
        origin: Option<PathBuf>,
        /// The decoder's reason.
        reason: String,
    },

    /// An image is larger than the configured limit.
    #[error(
        "image{} is {width}x{height} pixels, over the limit of {limit} pixels (see ImageLimits)",
        display_origin(origin)
    )]
    ImageTooLarge {
        /// Where the image came from, when known.
        origin: Option<PathBuf>,
        /// Width in pixels.
        width: u64,
        /// Height in pixels.
        height: u64,
        /// The configured maximum number of pixels.
        limit: u64,
    },

    /// An argument a caller passed is not usable (empty batch, mismatched counts, a
    /// contradictory generation config, ...): the call is wrong, the model is fine.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// What was asked for is not available with this model, backend or build: a retrieval
    /// checkpoint asked to generate text, a dtype the backend cannot run, a backend not compiled
    /// in. The call may be fine; the set-up is not.
    #[error("not supported: {0}")]
    Unsupported(String),

    /// The tokenizer failed on a text or on generated ids (a tokenizer that does not match the
    /// model's vocabulary).
    #[error("tokenizer failed: {0}")]
    Tokenization(String),

    /// The backend could not store or compute a tensor: for instance a GPU driver that cannot
    /// bind a buffer as large as a weight (lavapipe and WebGPU's defaults stop at 128 MiB, while
    /// OPT-2.7b's embedding is 515 MB in f32).
    #[error("the backend failed: {0}")]
    Backend(String),
}

/// The class of an [`enum@Error`], for callers that handle classes rather than variants: a
/// server answering 400 or 500, a command choosing its exit code, a batch job deciding whether
/// to skip one item or stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller's arguments or data are wrong (an empty batch, mismatched counts, an invalid
    /// generation config, an image that does not decode or is too large). Fix the call or skip
    /// the item; the model stays usable.
    Input,
    /// The model or the set-up is wrong: a checkpoint missing, incomplete, corrupt or of the
    /// wrong kind, a config or tokenizer that does not load, a download that failed, a backend or
    /// dtype that is not available.
    Setup,
    /// A file could not be read. The path says whose file it is: an image the caller named, or a
    /// part of the model.
    Io,
    /// The backend failed while storing or computing tensors.
    Backend,
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nowhere".to_owned();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn display_origin(origin: &Option<PathBuf>) -> String {
    origin
        .as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Which class of problem this is: see [`ErrorKind`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput(_) | Error::ImageDecode { .. } | Error::ImageTooLarge { .. } => {
                ErrorKind::Input
            }
            Error::Io { .. } => ErrorKind::Io,
            Error::Backend(_) => ErrorKind::Backend,
            Error::Json { .. }
            | Error::InvalidConfig { .. }
            | Error::UnsupportedModelType { .. }
            | Error::ModelNotFound { .. }
            | Error::Download { .. }
            | Error::PickleOnly { .. }
            | Error::NoWeights { .. }
            | Error::MissingTensor { .. }
            | Error::ShapeMismatch { .. }
            | Error::UnsupportedDType { .. }
            | Error::CorruptWeights { .. }
            | Error::MissingShard { .. }
            | Error::UnsafeShardPath { .. }
            | Error::Tokenizer { .. }
            | Error::Unsupported(_)
            | Error::Tokenization(_) => ErrorKind::Setup,
        }
    }

    /// Whether the caller's arguments or data are at fault ([`ErrorKind::Input`]): the same call
    /// with other inputs can succeed on the same model.
    pub fn is_input(&self) -> bool {
        self.kind() == ErrorKind::Input
    }

    /// An [`Error::InvalidConfig`] for `field`.
    pub fn invalid_config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
