// SPDX-License-Identifier: MPL-2.0
//! Execution-provider set-up: which providers to try ([`candidates`]), how a session is
//! opened on one of them ([`SessionFactory`]), the TensorRT optimisation profiles (one
//! engine covers the range of image sizes of [`TrtSizeProfile`], `trt-profile`) and the
//! TensorRT engine cache directory, keyed so that a changed model or setting never picks a
//! stale engine.

use std::path::{Path, PathBuf};

use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use i2i_core::infer::ExecutionProvider;

use super::error::EngineError;
use super::graph::Graph;
use super::onnx_proto::DeclaredInput;

/// The providers to try in order for `requested`: for `Auto`, TensorRT, CUDA and the CPU
/// as the library offers them; an explicit provider the library lacks is an error.
pub fn candidates(requested: ExecutionProvider) -> Result<Vec<ExecutionProvider>, EngineError> {
    let available = super::available_providers()?;
    let has = |n: &str| available.iter().any(|p| p == n);
    let lacking = |p: ExecutionProvider| {
        provider_error(
            p,
            format!(
                "the ONNX Runtime library {} was built without it (it offers {available:?})",
                super::library_path().display()
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
    Ok(profile_for(&declared, parts))
}

/// [`trt_profile`] on inputs already read: dimensions the graph fixes keep the graph's
/// value in all three shapes (a graph exported at 512 x 512 with a dynamic batch gets a
/// batch range only), since TensorRT refuses a profile that contradicts the graph.
pub fn profile_for(declared: &[DeclaredInput], parts: &[ProfilePart<'_>]) -> TrtProfile {
    let kept: Vec<(&ProfilePart<'_>, &DeclaredInput)> = parts
        .iter()
        .filter_map(|p| {
            declared
                .iter()
                .find(|d| d.name == p.0 && d.is_dynamic() && d.dims.len() == p.1.len())
                .map(|d| (p, d))
        })
        .collect();
    let join = |pick: &dyn for<'p> Fn(&'p ProfilePart<'_>) -> &'p [usize]| {
        kept.iter()
            .map(|(p, d)| {
                let dims: Vec<usize> = pick(p)
                    .iter()
                    .zip(&d.dims)
                    .map(|(&want, fixed)| fixed.map_or(want, |f| f.max(0) as usize))
                    .collect();
                trt_dims(p.0, &dims)
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    TrtProfile {
        min: join(&|p| &p.1),
        opt: join(&|p| &p.2),
        max: join(&|p| &p.3),
    }
}

/// The image sizes one TensorRT engine covers (`trt-profile=MINWxMINH:OPTWxOPTH:MAXWxMAXH`):
/// the engine is built for every size from `min` to `max` (each side a multiple of 8) and
/// tuned for `opt`, so a new input size within the range (`size-from-input`, a changed
/// `width` / `height`) reuses the cached engine instead of building another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrtSizeProfile {
    /// (width, height) of each end and of the size TensorRT tunes for.
    pub min: (u32, u32),
    pub opt: (u32, u32),
    pub max: (u32, u32),
}

/// `trt-profile`'s default: one engine for 256 x 256 up to 1024 x 1024, tuned for 512 x 512.
pub const DEFAULT_TRT_PROFILE: &str = "256x256:512x512:1024x1024";

impl Default for TrtSizeProfile {
    fn default() -> Self {
        TrtSizeProfile {
            min: (256, 256),
            opt: (512, 512),
            max: (1024, 1024),
        }
    }
}

impl std::fmt::Display for TrtSizeProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c] = [self.min, self.opt, self.max];
        write!(f, "{}x{}:{}x{}:{}x{}", a.0, a.1, b.0, b.1, c.0, c.1)
    }
}

impl std::str::FromStr for TrtSizeProfile {
    type Err = EngineError;

    /// `MINWxMINH:OPTWxOPTH:MAXWxMAXH`, each side a positive multiple of 8 and
    /// `min <= opt <= max` side by side.
    fn from_str(s: &str) -> Result<Self, EngineError> {
        let bad = |why: &str| {
            EngineError::argument(
                "trt-profile",
                format!("MINWxMINH:OPTWxOPTH:MAXWxMAXH (e.g. {DEFAULT_TRT_PROFILE}), {why}"),
                format!("'{s}'"),
            )
        };
        let sizes: Vec<(u32, u32)> = s
            .trim()
            .split(':')
            .map(|part| {
                let (w, h) = part.trim().split_once(['x', 'X'])?;
                Some((w.trim().parse().ok()?, h.trim().parse().ok()?))
            })
            .collect::<Option<_>>()
            .ok_or_else(|| bad("three sizes WIDTHxHEIGHT"))?;
        let [min, opt, max] = sizes[..] else {
            return Err(bad("three sizes WIDTHxHEIGHT"));
        };
        if sizes
            .iter()
            .any(|&(w, h)| w == 0 || h == 0 || w % 8 != 0 || h % 8 != 0)
        {
            return Err(bad("each side a positive multiple of 8"));
        }
        let le = |a: (u32, u32), b: (u32, u32)| a.0 <= b.0 && a.1 <= b.1;
        if !le(min, opt) || !le(opt, max) {
            return Err(bad("min <= opt <= max in width and in height"));
        }
        Ok(TrtSizeProfile { min, opt, max })
    }
}

impl TrtSizeProfile {
    pub fn contains(&self, width: u32, height: u32) -> bool {
        (self.min.0..=self.max.0).contains(&width) && (self.min.1..=self.max.1).contains(&height)
    }

    /// A size outside the range is refused before TensorRT builds anything.
    pub fn check(&self, width: u32, height: u32) -> Result<(), EngineError> {
        if self.contains(width, height) {
            return Ok(());
        }
        Err(EngineError::argument(
            "width/height",
            format!(
                "a size within the TensorRT profile {}x{} to {}x{} (trt-profile={self}; one engine covers that range: \
                 widen trt-profile to take this size, which builds a new engine once)",
                self.min.0, self.min.1, self.max.0, self.max.1
            ),
            format!("{width}x{height}"),
        ))
    }

    /// `[min, opt, max]` of an image dimension pair divided by `div` (8 for latents):
    /// (height, width) each.
    pub fn hw(&self, div: u32) -> [(usize, usize); 3] {
        [self.min, self.opt, self.max].map(|(w, h)| ((h / div) as usize, (w / div) as usize))
    }
}

/// Where and how sessions are created.
pub struct SessionFactory {
    pub env: ort::environment::Environment,
    pub provider: ExecutionProvider,
    pub intra_threads: usize,
    pub device_id: i32,
    pub fp16: bool,
    pub cache_dir: Option<PathBuf>,
    /// ONNX Runtime's CPU memory arena; false: every call frees what it allocated.
    pub cpu_arena: bool,
}

impl SessionFactory {
    fn eps(&self, trt_profile: Option<&TrtProfile>) -> Vec<ep::ExecutionProviderDispatch> {
        let mut eps = self.device_eps(trt_profile);
        if !self.cpu_arena {
            // Last: nodes no other provider takes run here, without the arena.
            eps.push(ep::CPU::default().with_arena_allocator(false).build());
        }
        eps
    }

    /// The providers before the CPU, in order.
    fn device_eps(&self, trt_profile: Option<&TrtProfile>) -> Vec<ep::ExecutionProviderDispatch> {
        match self.provider {
            ExecutionProvider::Cpu | ExecutionProvider::Auto => Vec::new(),
            ExecutionProvider::Cuda => vec![
                ep::CUDA::default()
                    .with_device_id(self.device_id)
                    .build()
                    .error_on_failure(),
            ],
            ExecutionProvider::TensorRt => {
                let trt = self
                    .trt_options(trt_profile)
                    .into_iter()
                    .fold(ep::TensorRT::default(), |t, (k, v)| {
                        t.with_arbitrary_config(k, v)
                    });
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

    /// The options handed to ONNX Runtime's TensorRT provider (its option names), in order:
    /// device, precision, engine and timing caches, and the profile shapes when the graph
    /// has dynamic inputs.
    pub fn trt_options(&self, trt_profile: Option<&TrtProfile>) -> Vec<(&'static str, String)> {
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        let mut o = vec![
            ("device_id", self.device_id.to_string()),
            ("trt_fp16_enable", flag(self.fp16)),
            ("trt_engine_cache_enable", flag(true)),
            ("trt_timing_cache_enable", flag(true)),
        ];
        if let Some(dir) = &self.cache_dir {
            let d = dir.display().to_string();
            o.push(("trt_engine_cache_path", d.clone()));
            o.push(("trt_timing_cache_path", d));
        }
        if let Some(p) = trt_profile
            && !p.min.is_empty()
        {
            o.push(("trt_profile_min_shapes", p.min.clone()));
            o.push(("trt_profile_opt_shapes", p.opt.clone()));
            o.push(("trt_profile_max_shapes", p.max.clone()));
        }
        o
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
             ORT_DYLIB_PATH, with TensorRT 10, cuDNN 9 and the CUDA libraries it was built for (CUDA 13 for \
             onnxruntime-gpu 1.31) on the library path), or \
             execution-provider=cuda / cpu / auto"
        }
        ExecutionProvider::Cuda => {
            "use an ONNX Runtime build with CUDA (the onnxruntime-gpu wheel's libonnxruntime.so via \
             ORT_DYLIB_PATH, with cuDNN 9 and the CUDA libraries it was built for (CUDA 13 for onnxruntime-gpu \
             1.31) on the library path and a GPU), or \
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
    fn size_profile_parses_prints_and_checks() {
        let p: TrtSizeProfile = DEFAULT_TRT_PROFILE.parse().unwrap();
        assert_eq!(p, TrtSizeProfile::default());
        assert_eq!(p.to_string(), DEFAULT_TRT_PROFILE);
        let q: TrtSizeProfile = " 320X240 : 640x480:1280x720 ".parse().unwrap();
        assert_eq!((q.min, q.opt, q.max), ((320, 240), (640, 480), (1280, 720)));
        assert_eq!(q.hw(8), [(30, 40), (60, 80), (90, 160)]);
        for bad in [
            "",
            "512x512",
            "256x256:512x512",
            "256x256:512x512:1024x1024:2048x2048",
            "256x256:512:1024x1024",
            "256x256:512x51a:1024x1024",
            "250x256:512x512:1024x1024",
            "0x0:512x512:1024x1024",
            "256x256:1024x512:512x1024",
            "512x512:256x256:1024x1024",
        ] {
            let e = bad.parse::<TrtSizeProfile>().unwrap_err().to_string();
            assert!(
                e.contains("trt-profile") && e.contains(&format!("'{bad}'")),
                "{bad}: {e}"
            );
        }
        assert!(p.check(256, 256).is_ok() && p.check(1024, 1024).is_ok());
        assert!(p.check(640, 360).is_ok());
        let e = p.check(1280, 720).unwrap_err().to_string();
        assert!(
            e.contains("256x256 to 1024x1024")
                && e.contains("trt-profile=256x256:512x512:1024x1024")
                && e.contains("1280x720"),
            "{e}"
        );
        assert!(p.check(512, 248).is_err());
    }

    fn declared(name: &str, dims: &[Option<i64>]) -> DeclaredInput {
        DeclaredInput {
            name: name.into(),
            elem_type: 1,
            dims: dims.to_vec(),
        }
    }

    #[test]
    fn profile_names_dynamic_inputs_and_keeps_fixed_dims() {
        let inputs = [
            // optimum's UNet: everything dynamic but the channels.
            declared("sample", &[None, Some(4), None, None]),
            // a scalar timestep is not named.
            declared("timestep", &[]),
            // exported at a fixed 77 x 1024 but a dynamic batch.
            declared("encoder_hidden_states", &[None, Some(77), Some(1024)]),
            // a fixed input is not named.
            declared("text_embeds", &[Some(1), Some(1280)]),
        ];
        let p = TrtSizeProfile::default();
        let [a, b, c] = p.hw(8);
        let parts = [
            (
                "sample",
                vec![1, 4, a.0, a.1],
                vec![2, 4, b.0, b.1],
                vec![8, 4, c.0, c.1],
            ),
            ("timestep", vec![1], vec![2], vec![8]),
            (
                "encoder_hidden_states",
                vec![1, 99, 99],
                vec![2, 99, 99],
                vec![8, 99, 99],
            ),
            ("text_embeds", vec![1, 1280], vec![2, 1280], vec![8, 1280]),
            ("missing", vec![1], vec![1], vec![1]),
        ];
        let t = profile_for(&inputs, &parts);
        assert_eq!(t.min, "sample:1x4x32x32,encoder_hidden_states:1x77x1024");
        assert_eq!(t.opt, "sample:2x4x64x64,encoder_hidden_states:2x77x1024");
        assert_eq!(t.max, "sample:8x4x128x128,encoder_hidden_states:8x77x1024");
    }

    #[test]
    fn tensorrt_options_handed_to_onnx_runtime() {
        // No TensorRT here: the options are checked as ONNX Runtime receives them.
        let env =
            crate::runtime::environment().expect("the ONNX Runtime library (scripts/setup.sh)");
        let f = SessionFactory {
            env,
            provider: ExecutionProvider::TensorRt,
            intra_threads: 1,
            device_id: 1,
            fp16: true,
            cache_dir: Some(PathBuf::from("/cache/m")),
            cpu_arena: true,
        };
        let profile = TrtProfile {
            min: "sample:1x4x32x32".into(),
            opt: "sample:2x4x64x64".into(),
            max: "sample:8x4x128x128".into(),
        };
        let o = f.trt_options(Some(&profile));
        let get = |k: &str| o.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("device_id"), Some("1"));
        assert_eq!(get("trt_fp16_enable"), Some("1"));
        assert_eq!(get("trt_engine_cache_enable"), Some("1"));
        assert_eq!(get("trt_engine_cache_path"), Some("/cache/m"));
        assert_eq!(get("trt_timing_cache_path"), Some("/cache/m"));
        assert_eq!(get("trt_profile_min_shapes"), Some("sample:1x4x32x32"));
        assert_eq!(get("trt_profile_opt_shapes"), Some("sample:2x4x64x64"));
        assert_eq!(get("trt_profile_max_shapes"), Some("sample:8x4x128x128"));
        // A graph without dynamic inputs gets no profile options at all.
        let o = f.trt_options(Some(&TrtProfile::default()));
        assert!(!o.iter().any(|(k, _)| k.starts_with("trt_profile")));
        let o = SessionFactory {
            fp16: false,
            cache_dir: None,
            cpu_arena: true,
            ..f
        }
        .trt_options(None);
        assert!(o.contains(&("trt_fp16_enable", "0".into())));
        assert!(!o.iter().any(|(k, _)| k.ends_with("cache_path")));
    }

    #[test]
    fn without_the_cpu_arena_the_cpu_provider_comes_last_and_loads() {
        let env =
            crate::runtime::environment().expect("the ONNX Runtime library (scripts/setup.sh)");
        let f = SessionFactory {
            env,
            provider: ExecutionProvider::Cpu,
            intra_threads: 1,
            device_id: 0,
            fp16: false,
            cache_dir: None,
            cpu_arena: true,
        };
        // With the arena: ONNX Runtime's own CPU provider, nothing registered.
        assert!(f.eps(None).is_empty());
        let f = SessionFactory {
            cpu_arena: false,
            ..f
        };
        assert_eq!(f.eps(None).len(), 1);
        let file =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo/vae_decoder/model.onnx");
        assert!(file.is_file(), "{} (scripts/setup.sh)", file.display());
        f.session(&file, None)
            .expect("a session without the CPU arena");
    }
}
