// SPDX-License-Identifier: MPL-2.0
//! The ONNX Runtime layer that the inference elements share (`i2itransform`'s diffusion
//! engine, `onnxtransform`, `i2idecode`, the depth preprocessor): the library and its
//! process-wide environment (here), the execution providers and how a session is opened
//! on one ([`provider`]), one session bound with its declared inputs and outputs
//! ([`graph`]), the declared inputs read from the ONNX file ([`onnx_proto`]), and the
//! errors for people ([`error`]).
//!
//! The library is found at `ORT_DYLIB_PATH`, else at the path compiled in by build.rs
//! (`<workspace>/.deps/lib/libonnxruntime.so`, written by scripts/setup.sh). A missing or
//! unusable library is an [`EngineError::Runtime`] with the fix, never a panic: the file
//! is checked before `ort::init_from`, and a panic inside ort is caught as a last guard.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use ort::environment::Environment;

pub mod adapter_file;
pub mod error;
pub mod graph;
pub mod onnx_proto;
pub mod provider;

use error::EngineError;

/// Where scripts/setup.sh puts the library in this checkout.
pub const DEFAULT_ORT_DYLIB_PATH: &str = env!("I2I_DEFAULT_ORT_DYLIB");

const FIX: &str = "run scripts/setup.sh (it links the onnxruntime wheel's library to .deps/lib), or set \
     ORT_DYLIB_PATH to a libonnxruntime.so of version 1.24 or newer (from the `onnxruntime` PyPI \
     wheel: onnxruntime/capi/libonnxruntime.so.*, or `onnxruntime-gpu` for CUDA / TensorRT)";

static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// Severity of a message from the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
}

type Logger = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;
static LOGGER: RwLock<Option<Logger>> = RwLock::new(None);

/// Routes the engine's messages (chosen execution provider, TensorRT engine builds, ...)
/// to `f`. Without a logger, info and above go to stderr.
pub fn set_logger(f: impl Fn(LogLevel, &str) + Send + Sync + 'static) {
    if let Ok(mut l) = LOGGER.write() {
        *l = Some(Arc::new(f));
    }
}

pub(crate) fn log(level: LogLevel, msg: &str) {
    let logger = LOGGER.read().ok().and_then(|l| l.clone());
    match logger {
        Some(f) => f(level, msg),
        None if level >= LogLevel::Info => eprintln!("i2i: {msg}"),
        None => {}
    }
}

/// The library path that will be (or was) used: `ORT_DYLIB_PATH` if set and not empty,
/// else [`DEFAULT_ORT_DYLIB_PATH`].
pub fn library_path() -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_ORT_DYLIB_PATH),
    }
}

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<Environment, EngineError> {
    let mut guard = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(env) = guard.as_ref() {
        return Ok(env.clone());
    }
    let path = library_path();
    let from_env = std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| !p.is_empty());
    let origin = if from_env {
        "ORT_DYLIB_PATH"
    } else {
        "the built-in default path"
    };
    let err = |reason: String| EngineError::Runtime {
        path: Some(path.clone()),
        reason,
        fix: FIX.to_string(),
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(err(format!("{origin} does not name a file"))),
        Err(e) => {
            return Err(err(format!(
                "{origin} names a file that cannot be read ({e})"
            )));
        }
    }
    let built = catch_unwind(AssertUnwindSafe(|| -> Result<Environment, String> {
        let builder = ort::init_from(&path).map_err(|e| e.to_string())?;
        builder
            .with_name("i2i")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())
    }));
    let env = match built {
        Ok(Ok(env)) => env,
        Ok(Err(reason)) => return Err(err(reason)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "ONNX Runtime initialisation panicked".into());
            return Err(err(msg));
        }
    };
    log(
        LogLevel::Debug,
        &format!("ONNX Runtime loaded from {}", path.display()),
    );
    *guard = Some(env.clone());
    Ok(env)
}

/// The execution providers this ONNX Runtime build was compiled with (e.g.
/// `CPUExecutionProvider`, `CUDAExecutionProvider`), after loading the library.
pub fn available_providers() -> Result<Vec<String>, EngineError> {
    use ort::ep::ExecutionProvider as _;
    environment()?;
    let mut out = vec!["CPUExecutionProvider".to_string()];
    if ort::ep::CUDA::is_available().unwrap_or(false) {
        out.push("CUDAExecutionProvider".into());
    }
    if ort::ep::TensorRT::is_available().unwrap_or(false) {
        out.push("TensorrtExecutionProvider".into());
    }
    Ok(out)
}
