use std::path::Path;

fn main() {
    gst_plugin_version_helper::info();

    // Default ONNX Runtime library: <workspace root>/.deps/lib/libonnxruntime.so, where
    // scripts/setup.sh links the wheel's library. ORT_DYLIB_PATH overrides it at run time.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest)
        .parent()
        .unwrap_or_else(|| Path::new(&manifest));
    let lib = root.join(".deps").join("lib").join("libonnxruntime.so");
    println!("cargo:rustc-env=I2I_DEFAULT_ORT_DYLIB={}", lib.display());
}
