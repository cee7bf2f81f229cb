// SPDX-License-Identifier: MPL-2.0
//! A missing or unusable ONNX Runtime library is a clear error with the fix, not a panic.
//! Its own test binary (one test): loading the library is process-wide.

use std::path::{Path, PathBuf};

use gsti2i::diffusion::{Engine, EngineError, ExecutionProvider, LoadOptions, StreamParams};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn missing_library_is_a_clear_error_then_recovers() {
    let model = root().join("models").join("tiny-sd15");
    assert!(
        model.is_dir(),
        "{} is missing: run scripts/setup.sh",
        model.display()
    );
    let opts = LoadOptions {
        model_dir: model,
        width: 64,
        height: 64,
        batch_size: 1,
        execution_provider: ExecutionProvider::Cpu,
        device_id: 0,
        fp16: false,
        engine_cache_dir: None,
        intra_threads: 1,
        ..Default::default()
    };
    let params = StreamParams::default();

    // SAFETY: the only test of this binary; no other thread reads the environment.
    unsafe { std::env::set_var("ORT_DYLIB_PATH", "/nonexistent/dir/libonnxruntime.so") };
    let err = Engine::load(&opts, &params).unwrap_err();
    assert!(matches!(err, EngineError::Runtime { .. }), "{err}");
    let msg = err.to_string();
    for part in [
        "/nonexistent/dir/libonnxruntime.so",
        "ORT_DYLIB_PATH",
        "scripts/setup.sh",
        "Fix:",
    ] {
        assert!(msg.contains(part), "{msg:?} does not mention {part:?}");
    }

    // A file that is not a library.
    let not_lib = root().join("Cargo.toml");
    unsafe { std::env::set_var("ORT_DYLIB_PATH", &not_lib) };
    let err = Engine::load(&opts, &params).unwrap_err();
    assert!(matches!(err, EngineError::Runtime { .. }), "{err}");
    assert!(err.to_string().contains("Cargo.toml"), "{err}");

    // Nothing was cached: pointing at the real library works in the same process.
    let lib = root().join(".deps").join("lib").join("libonnxruntime.so");
    assert!(
        lib.exists(),
        "{} missing: run scripts/setup.sh",
        lib.display()
    );
    unsafe { std::env::set_var("ORT_DYLIB_PATH", &lib) };
    let engine = Engine::load(&opts, &params).unwrap();
    assert_eq!(engine.provider(), ExecutionProvider::Cpu);
}
