// SPDX-License-Identifier: MPL-2.0
//! Errors for people: each names the file (or setting), the tensor, what was expected,
//! what was found and, where there is one, the fix.

use std::fmt;
use std::path::{Path, PathBuf};

use i2i_core::infer::ExecutionProvider;

#[derive(Clone, Debug, PartialEq)]
pub enum EngineError {
    /// The ONNX Runtime shared library could not be loaded or initialised.
    Runtime {
        /// The library path tried, if any.
        path: Option<PathBuf>,
        reason: String,
        fix: String,
    },
    /// A file or directory of the model layout is missing or unreadable.
    MissingFile { path: PathBuf, what: String },
    /// A file exists but cannot be used (corrupt ONNX, invalid JSON, unreadable tokenizer).
    InvalidFile { path: PathBuf, reason: String },
    /// A graph input or output does not have the name, type, rank or size the engine needs.
    Tensor {
        file: PathBuf,
        tensor: String,
        expected: String,
        found: String,
    },
    /// A configuration value (scheduler, VAE or tokenizer config) the engine cannot use.
    Config {
        file: PathBuf,
        key: String,
        expected: String,
        found: String,
    },
    /// The requested execution provider cannot run here.
    Provider {
        provider: ExecutionProvider,
        reason: String,
        fix: String,
    },
    /// A caller-side value is out of range (frame size, batch, t-index-list, ...).
    InvalidArgument {
        what: String,
        expected: String,
        found: String,
    },
    /// ONNX Runtime failed while running a graph.
    Inference { file: PathBuf, reason: String },
}

impl EngineError {
    pub(crate) fn missing(path: &Path, what: impl Into<String>) -> Self {
        EngineError::MissingFile {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        EngineError::InvalidFile {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn tensor(
        file: &Path,
        tensor: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        EngineError::Tensor {
            file: file.to_path_buf(),
            tensor: tensor.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    pub(crate) fn config(
        file: &Path,
        key: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        EngineError::Config {
            file: file.to_path_buf(),
            key: key.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    pub(crate) fn argument(
        what: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        EngineError::InvalidArgument {
            what: what.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    pub(crate) fn inference(file: &Path, reason: impl fmt::Display) -> Self {
        EngineError::Inference {
            file: file.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Runtime { path, reason, fix } => {
                write!(f, "cannot load the ONNX Runtime library")?;
                if let Some(path) = path {
                    write!(f, " {}", path.display())?;
                }
                write!(f, ": {reason}. Fix: {fix}")
            }
            EngineError::MissingFile { path, what } => {
                write!(f, "{}: missing {what}", path.display())?;
                if path.is_relative()
                    && let Ok(cwd) = std::env::current_dir()
                {
                    // A model path that works in one folder fails in another: say where
                    // it was looked for.
                    write!(
                        f,
                        " (looked for {}: a relative path starts at the current folder, {})",
                        cwd.join(path).display(),
                        cwd.display()
                    )?;
                }
                Ok(())
            }
            EngineError::InvalidFile { path, reason } => {
                write!(f, "{}: {reason}", path.display())
            }
            EngineError::Tensor {
                file,
                tensor,
                expected,
                found,
            } => write!(
                f,
                "{}: tensor '{tensor}': expected {expected}, found {found}",
                file.display()
            ),
            EngineError::Config {
                file,
                key,
                expected,
                found,
            } => write!(
                f,
                "{}: '{key}': expected {expected}, found {found}",
                file.display()
            ),
            EngineError::Provider {
                provider,
                reason,
                fix,
            } => write!(
                f,
                "execution provider '{provider}' is not usable: {reason}. Fix: {fix}"
            ),
            EngineError::InvalidArgument {
                what,
                expected,
                found,
            } => write!(f, "{what}: expected {expected}, found {found}"),
            EngineError::Inference { file, reason } => {
                write!(f, "{}: inference failed: {reason}", file.display())
            }
        }
    }
}

impl std::error::Error for EngineError {}
