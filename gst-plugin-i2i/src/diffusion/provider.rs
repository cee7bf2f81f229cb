// SPDX-License-Identifier: MPL-2.0
//! Execution-provider set-up: which providers to try ([`candidates`]), how a session is
//! opened on one of them ([`SessionFactory`]), the TensorRT optimisation profiles and the
//! TensorRT engine cache directory, keyed so that a changed model or setting never picks a
//! stale engine.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use ort::ep;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use super::graph::Graph;
use super::runtime::{LogLevel, log};
use super::{EngineError, ExecutionProvider, LoadOptions};

/// The providers to try in order for `requested`: for `Auto`, TensorRT, CUDA and the CPU
/// as the library offers them; an explicit provider the library lacks is an error.
pub fn candidates(requested: ExecutionProvider) -> Result<Vec<ExecutionProvider>, EngineError> {
    let available = super::runtime::available_providers()?;
    let has = |n: &str| available.iter().any(|p| p == n);
    let lacking = |p: ExecutionProvider| {
        provider_error(
            p,
            format!(
                "the ONNX Runtime library {} was built without it (it offers {available:?})",
                super::runtime::library_path().display()
            ),
        )
    };
    Ok(match requested {
        ExecutionProvider::Auto => {
            let mut c = Vec::new();
            if has("TensorrtExecutionProvider") {
                c.push(ExecutionProvider::TensorRt);
            }
            if has("CUDAExecutionProvider") {
                c.push(ExecutionProvider::Cuda);
            }
            c.push(ExecutionProvider::Cpu);
            c
        }
        ExecutionProvider::TensorRt if !has("TensorrtExecutionProvider") => {
            return Err(lacking(ExecutionProvider::TensorRt));
        }
        ExecutionProvider::Cuda if !has("CUDAExecutionProvider") => {
            return Err(lacking(ExecutionProvider::Cuda));
        }
        p => vec![p],
    })
}

/// One input's TensorRT profile: name, then the min, opt and max dimensions.
pub type ProfilePart<'a> = (&'a str, Vec<usize>, Vec<usize>, Vec<usize>);

/// The TensorRT profile for the inputs of `file` that the graph declares with a dynamic
/// dimension, at the graph's rank (a scalar timestep is left out). Read from the file,
/// since the session does not exist yet.
pub fn trt_profile(file: &Path, parts: &[ProfilePart<'_>]) -> Result<TrtProfile, EngineError> {
    let declared = super::onnx_proto::graph_inputs(file)
        .map_err(|e| EngineError::invalid(file, format!("cannot read the graph inputs: {e}")))?;
    let kept: Vec<&ProfilePart<'_>> = parts
        .iter()
        .filter(|p| {
            declared
                .iter()
                .any(|d| d.name == p.0 && d.is_dynamic() && d.dims.len() == p.1.len())
        })
        .collect();
    let join = |f: &dyn Fn(&ProfilePart<'_>) -> String| {
        kept.iter().map(|p| f(p)).collect::<Vec<_>>().join(",")
    };
    Ok(TrtProfile {
        min: join(&|p| trt_dims(p.0, &p.1)),
        opt: join(&|p| trt_dims(p.0, &p.2)),
        max: join(&|p| trt_dims(p.0, &p.3)),
    })
}

/// Where and how sessions are created.
pub struct SessionFactory {
    pub env: ort::environment::Environment,
    pub provider: ExecutionProvider,
    pub intra_threads: usize,
    pub device_id: i32,
    pub fp16: bool,
    pub cache_dir: Option<PathBuf>,
}

impl SessionFactory {
    fn eps(&self, trt_profile: Option<&TrtProfile>) -> Vec<ep::ExecutionProviderDispatch> {
        match self.provider {
            ExecutionProvider::Cpu | ExecutionProvider::Auto => Vec::new(),
            ExecutionProvider::Cuda => vec![
                ep::CUDA::default()
                    .with_device_id(self.device_id)
                    .build()
                    .error_on_failure(),
            ],
            ExecutionProvider::TensorRt => {
                let mut trt = ep::TensorRT::default()
                    .with_device_id(self.device_id)
                    .with_fp16(self.fp16)
                    .with_engine_cache(true)
                    .with_timing_cache(true);
                if let Some(dir) = &self.cache_dir {
                    let d = dir.display().to_string();
                    trt = trt
                        .with_engine_cache_path(d.clone())
                        .with_timing_cache_path(d);
                }
                if let Some(p) = trt_profile
                    && !p.min.is_empty()
                {
                    trt = trt
                        .with_profile_min_shapes(p.min.clone())
                        .with_profile_opt_shapes(p.opt.clone())
                        .with_profile_max_shapes(p.max.clone());
                }
                vec![
                    trt.build().error_on_failure(),
                    // Nodes TensorRT does not take run on CUDA, not on the CPU.
                    ep::CUDA::default()
                        .with_device_id(self.device_id)
                        .build()
                        .error_on_failure(),
                ]
            }
        }
    }

    pub fn open(
        &self,
        file: &Path,
        trt_profile: Option<&TrtProfile>,
    ) -> Result<Graph, EngineError> {
        Graph::new(file.to_path_buf(), self.session(file, trt_profile)?)
    }

    /// A session on `file` with this provider, for callers that bind their own tensors
    /// (`onnxtransform`); a provider that cannot run is a [`EngineError::Provider`], a file
    /// that does not load an [`EngineError::InvalidFile`].
    pub fn session(
        &self,
        file: &Path,
        trt_profile: Option<&TrtProfile>,
    ) -> Result<Session, EngineError> {
        let build =
            |eps: Vec<ep::ExecutionProviderDispatch>| -> Result<Session, (bool, ort::Error)> {
                let mut b = Session::builder(&self.env)
                    .map_err(|e| (false, e))?
                    .with_optimization_level(GraphOptimizationLevel::Level3)
                    .map_err(|e| (false, e.into()))?;
                if self.intra_threads > 0 {
                    b = b
                        .with_intra_threads(self.intra_threads)
                        .map_err(|e| (false, e.into()))?;
                }
                // Idle ONNX Runtime threads sleep instead of spinning: the engine shares
                // the CPU with the rest of the pipeline (decoding, conversion).
                b = b
                    .with_intra_op_spinning(false)
                    .map_err(|e| (false, e.into()))?;
                if !eps.is_empty() {
                    b = b
                        .with_execution_providers(eps)
                        .map_err(|e| (true, e.into()))?;
                }
                b.commit_from_file(file).map_err(|e| (false, e))
            };
        match build(self.eps(trt_profile)) {
            Ok(s) => Ok(s),
            Err((true, e)) => Err(provider_error(self.provider, e.to_string())),
            Err((false, e))
                if self.provider == ExecutionProvider::Cpu
                    || self.provider == ExecutionProvider::Auto =>
            {
                Err(EngineError::invalid(
                    file,
                    format!("cannot load the ONNX graph: {e}"),
                ))
            }
            Err((false, e)) => {
                // The file loads on the CPU: the provider is at fault.
                match build(Vec::new()) {
                    Ok(_) => Err(provider_error(self.provider, e.to_string())),
                    Err((_, cpu_e)) => Err(EngineError::invalid(
                        file,
                        format!("cannot load the ONNX graph: {cpu_e}"),
                    )),
                }
            }
        }
    }
}

pub fn provider_error(p: ExecutionProvider, reason: String) -> EngineError {
    let fix = match p {
        ExecutionProvider::TensorRt => {
            "use an ONNX Runtime build with TensorRT (the onnxruntime-gpu wheel's libonnxruntime.so via \
             ORT_DYLIB_PATH, with TensorRT 10, CUDA 12 and cuDNN 9 libraries on the library path), or \
             execution-provider=cuda / cpu / auto"
        }
        ExecutionProvider::Cuda => {
            "use an ONNX Runtime build with CUDA (the onnxruntime-gpu wheel's libonnxruntime.so via \
             ORT_DYLIB_PATH, with CUDA 12 and cuDNN 9 libraries on the library path and a GPU), or \
             execution-provider=cpu / auto"
        }
        _ => "use execution-provider=cpu",
    };
    EngineError::Provider {
        provider: p,
        reason,
        fix: fix.to_string(),
    }
}

/// TensorRT optimisation profile shapes (`name:dims,name:dims`).
#[derive(Clone, Debug, Default)]
pub struct TrtProfile {
    pub min: String,
    pub opt: String,
    pub max: String,
}

fn trt_dims(name: &str, dims: &[usize]) -> String {
    let d: Vec<String> = dims.iter().map(|x| x.to_string()).collect();
    format!("{name}:{}", d.join("x"))
}

/// FNV-1a: a hash that stays the same across builds, for cache keys.
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// `<engine_cache_dir>/<key>`: the key hashes the graph files (size, mtime), the image
/// size, the batch sizes and the precision, so a changed model or setting never picks a
/// stale engine.
pub fn trt_cache_dir(
    opts: &LoadOptions,
    files: &[PathBuf; 4],
    unet_rows: (usize, usize),
) -> Result<PathBuf, EngineError> {
    let base = match &opts.engine_cache_dir {
        Some(d) => d.clone(),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("i2i")
            .join("tensorrt"),
    };
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    for f in files {
        f.hash(&mut h);
        for extra in [f.clone(), f.with_extension("onnx_data")] {
            if let Ok(m) = std::fs::metadata(&extra) {
                m.len().hash(&mut h);
                if let Ok(t) = m.modified()
                    && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
                {
                    d.as_nanos().hash(&mut h);
                }
            }
        }
    }
    (
        opts.width,
        opts.height,
        opts.batch_size,
        unet_rows,
        opts.fp16,
    )
        .hash(&mut h);
    let name = format!(
        "{}-{}x{}-b{}-r{}-{}-{:016x}",
        opts.model_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("model"),
        opts.width,
        opts.height,
        opts.batch_size,
        unet_rows.1,
        if opts.fp16 { "fp16" } else { "fp32" },
        h.finish()
    );
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| {
        EngineError::invalid(
            &dir,
            format!("cannot create the TensorRT engine cache directory: {e}"),
        )
    })?;
    let has_engine = std::fs::read_dir(&dir)
        .map(|r| {
            r.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "engine"))
        })
        .unwrap_or(false);
    if !has_engine {
        log(
            LogLevel::Info,
            &format!(
                "TensorRT: no cached engine in {}; the first build takes minutes (it is cached for next time)",
                dir.display()
            ),
        );
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dims_are_joined_by_x() {
        assert_eq!(
            trt_dims("sample", &[2, 4, 64, 64]),
            "sample:2x4x64x64".to_string()
        );
    }

    #[test]
    fn cache_key_changes_with_the_size() {
        let base = std::env::temp_dir().join(format!("i2i-trt-key-{}", std::process::id()));
        let opts = LoadOptions {
            model_dir: PathBuf::from("m"),
            engine_cache_dir: Some(base.clone()),
            ..Default::default()
        };
        let files: [PathBuf; 4] = Default::default();
        let a = trt_cache_dir(&opts, &files, (2, 8)).unwrap();
        let b = trt_cache_dir(
            &LoadOptions {
                width: 256,
                ..opts.clone()
            },
            &files,
            (2, 8),
        )
        .unwrap();
        assert_ne!(a, b);
        assert_eq!(a, trt_cache_dir(&opts, &files, (2, 8)).unwrap());
        let _ = std::fs::remove_dir_all(&base);
    }
}
