// SPDX-License-Identifier: MPL-2.0
//! The properties the inference elements share, defined once: the ONNX Runtime options
//! every element loads its model with ([`RuntimeSettings`]: `execution-provider`,
//! `device-id`, `fp16`, `threads`, and `engine-cache-dir` where the element caches
//! TensorRT engines), the streaming options of the elements that take raw video
//! ([`StreamSettings`]: `max-queue`, `drop-frames`, `resize-mode`, `stats-interval`), and
//! the read-only `stats` and `provider`.
//!
//! Each group gives its ParamSpecs, a `set_property` that takes the names it owns (true
//! when it took one) and a `property` that answers them, so an element's imp.rs handles
//! only its own properties and hands the rest here.

use gst::glib;
use gst::prelude::*;

use i2i_core::infer::{DropFrames, ExecutionProvider, ResizeMode};

pub const DEFAULT_DEVICE_ID: i32 = 0;
pub const DEFAULT_FP16: bool = true;
pub const DEFAULT_THREADS: u32 = 0;
pub const DEFAULT_CPU_ARENA: bool = true;
pub const DEFAULT_MAX_QUEUE: u32 = 4;
pub const DEFAULT_STATS_INTERVAL_MS: u32 = 5000;

/// The ONNX Runtime options a model is loaded with.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    pub execution_provider: ExecutionProvider,
    pub device_id: i32,
    pub fp16: bool,
    pub threads: u32,
    /// Only where the element registers `engine-cache-dir`; None otherwise.
    pub engine_cache_dir: Option<String>,
    /// `trt-profile` (i2itransform): the image sizes one TensorRT engine covers, parsed at start.
    pub trt_profile: String,
    /// `cpu-arena`: ONNX Runtime's CPU memory arena (see [`RuntimeSettings::param_specs`]).
    pub cpu_arena: bool,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            execution_provider: ExecutionProvider::default(),
            device_id: DEFAULT_DEVICE_ID,
            fp16: DEFAULT_FP16,
            threads: DEFAULT_THREADS,
            engine_cache_dir: None,
            trt_profile: crate::runtime::provider::DEFAULT_TRT_PROFILE.to_string(),
            cpu_arena: DEFAULT_CPU_ARENA,
        }
    }
}

impl RuntimeSettings {
    /// `execution-provider`, `device-id`, `fp16`, `threads`, `cpu-arena`, and
    /// `engine-cache-dir` when the element keeps TensorRT engines; all read when the model
    /// loads.
    pub fn param_specs(engine_cache_dir: bool) -> Vec<glib::ParamSpec> {
        let mut specs = vec![
            glib::ParamSpecEnum::builder_with_default(
                "execution-provider",
                ExecutionProvider::Auto,
            )
            .nick("Execution provider")
            .blurb("ONNX Runtime execution provider; naming an unavailable one is an error")
            .mutable_ready()
            .build(),
            glib::ParamSpecInt::builder("device-id")
                .nick("Device ID")
                .blurb("GPU index for CUDA / TensorRT")
                .minimum(0)
                .maximum(255)
                .default_value(DEFAULT_DEVICE_ID)
                .mutable_ready()
                .build(),
            // Only the TensorRT provider is given the precision; CUDA runs the model's own.
            glib::ParamSpecBoolean::builder("fp16")
                .nick("FP16")
                .blurb("Half precision where the provider supports it (TensorRT)")
                .default_value(DEFAULT_FP16)
                .mutable_ready()
                .build(),
            glib::ParamSpecUInt::builder("threads")
                .nick("Threads")
                .blurb("ONNX Runtime intra-op threads; 0 = the CPUs this process may use")
                .maximum(1024)
                .default_value(DEFAULT_THREADS)
                .mutable_ready()
                .build(),
            // The arena keeps the largest call's memory for the next calls (faster); without
            // it each call allocates what it needs and frees it (large models at batch > 1
            // peak far lower: docs/engine.md "CPU memory").
            glib::ParamSpecBoolean::builder("cpu-arena")
                .nick("CPU memory arena")
                .blurb("ONNX Runtime's CPU memory arena: keeps the largest model call's memory for reuse (faster); false = each call frees what it used (far lower peak memory for large models at batch-size > 1, a few % slower)")
                .default_value(DEFAULT_CPU_ARENA)
                .mutable_ready()
                .build(),
        ];
        if engine_cache_dir {
            specs.push(
                glib::ParamSpecString::builder("engine-cache-dir")
                    .nick("Engine cache directory")
                    .blurb("Where TensorRT keeps built engines and timing caches")
                    .mutable_ready()
                    .build(),
            );
        }
        specs
    }

    /// `trt-profile`, for the elements whose TensorRT engines take a range of image sizes.
    pub fn trt_profile_spec() -> glib::ParamSpec {
        glib::ParamSpecString::builder("trt-profile")
            .nick("TensorRT size profile")
            .blurb("Image sizes one TensorRT engine covers, MINWxMINH:OPTWxOPTH:MAXWxMAXH (tuned for OPT): size changes within it reuse the engine; a size outside it is refused")
            .default_value(Some(crate::runtime::provider::DEFAULT_TRT_PROFILE))
            .mutable_ready()
            .build()
    }

    /// Takes `value` when `name` is one of these properties.
    pub fn set_property(&mut self, name: &str, value: &glib::Value) -> bool {
        let v = value;
        match name {
            "execution-provider" => self.execution_provider = v.get().expect("type checked"),
            "device-id" => self.device_id = v.get().expect("type checked"),
            "fp16" => self.fp16 = v.get().expect("type checked"),
            "threads" => self.threads = v.get().expect("type checked"),
            "cpu-arena" => self.cpu_arena = v.get().expect("type checked"),
            "engine-cache-dir" => self.engine_cache_dir = v.get().expect("type checked"),
            "trt-profile" => {
                self.trt_profile = v
                    .get::<Option<String>>()
                    .expect("type checked")
                    .unwrap_or_else(|| crate::runtime::provider::DEFAULT_TRT_PROFILE.to_string())
            }
            _ => return false,
        }
        true
    }

    pub fn property(&self, name: &str) -> Option<glib::Value> {
        Some(match name {
            "execution-provider" => self.execution_provider.to_value(),
            "device-id" => self.device_id.to_value(),
            "fp16" => self.fp16.to_value(),
            "threads" => self.threads.to_value(),
            "cpu-arena" => self.cpu_arena.to_value(),
            "engine-cache-dir" => self.engine_cache_dir.to_value(),
            "trt-profile" => self.trt_profile.to_value(),
            _ => return None,
        })
    }

    /// ONNX Runtime's intra-op threads: `threads`, or the CPUs this process may use.
    pub fn intra_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        }
    }
}

/// How a raw video stream meets the model: the queue before inference, its live drop
/// policy, how frames fill the model size, and how often the stats are posted.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    pub max_queue: u32,
    pub drop_frames: DropFrames,
    pub resize_mode: ResizeMode,
    pub stats_interval_ms: u32,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            max_queue: DEFAULT_MAX_QUEUE,
            drop_frames: DropFrames::default(),
            resize_mode: ResizeMode::default(),
            stats_interval_ms: DEFAULT_STATS_INTERVAL_MS,
        }
    }
}

impl StreamSettings {
    /// `max-queue`, `drop-frames`, `resize-mode`, `stats-interval` (of the messages named
    /// `stats_name`) and the read-only `provider`.
    pub fn param_specs(stats_name: &str) -> Vec<glib::ParamSpec> {
        StreamSettings::default().param_specs_from(stats_name, true)
    }

    /// The same with these settings as the defaults, and `resize-mode` only when the
    /// element resizes its input (`i2idecode` takes latents at their own size).
    pub fn param_specs_from(&self, stats_name: &str, resize_mode: bool) -> Vec<glib::ParamSpec> {
        let mut specs = vec![
            glib::ParamSpecUInt::builder("max-queue")
                .nick("Max queue")
                .blurb("Frames waiting for inference before upstream blocks")
                .minimum(1)
                .maximum(1024)
                .default_value(self.max_queue)
                .mutable_playing()
                .build(),
            glib::ParamSpecEnum::builder_with_default("drop-frames", self.drop_frames)
                .nick("Drop frames")
                .blurb("When frames come faster than inference: drop the oldest waiting frame so latency stays bounded (counted in stats dropped-late, posted as QoS messages), or keep every frame and make upstream wait (latency grows on live input). auto drops on live sources only")
                .mutable_playing()
                .build(),
            glib::ParamSpecEnum::builder_with_default("resize-mode", self.resize_mode)
                .nick("Resize mode")
                .blurb("How the input fills the model size: stretch (aspect ratio not kept), crop (fill, cutting what sticks out) or fit (whole picture, black borders)")
                .mutable_ready()
                .build(),
            glib::ParamSpecUInt::builder("stats-interval")
                .nick("Stats interval")
                .blurb(&format!("Milliseconds between {stats_name} element messages (the stats property's structure; gst-launch-1.0 -m shows them), also posted at EOS; 0 = only at EOS"))
                .maximum(3_600_000)
                .default_value(self.stats_interval_ms)
                .mutable_playing()
                .build(),
            glib::ParamSpecString::builder("provider")
                .nick("Provider")
                .blurb("The execution provider actually running (after start)")
                .read_only()
                .build(),
        ];
        if !resize_mode {
            specs.retain(|p| p.name() != "resize-mode");
        }
        specs
    }

    /// Takes `value` when `name` is one of these properties (the element then tells its
    /// queue, see [`super::element::InferElementExt::stream_settings_changed`]).
    pub fn set_property(&mut self, name: &str, value: &glib::Value) -> bool {
        let v = value;
        match name {
            "max-queue" => self.max_queue = v.get().expect("type checked"),
            "drop-frames" => self.drop_frames = v.get().expect("type checked"),
            "resize-mode" => self.resize_mode = v.get().expect("type checked"),
            "stats-interval" => self.stats_interval_ms = v.get().expect("type checked"),
            _ => return false,
        }
        true
    }

    /// The settable ones; `provider` is the base's ([`super::element::InferElementExt::base_property`]).
    pub fn property(&self, name: &str) -> Option<glib::Value> {
        Some(match name {
            "max-queue" => self.max_queue.to_value(),
            "drop-frames" => self.drop_frames.to_value(),
            "resize-mode" => self.resize_mode.to_value(),
            "stats-interval" => self.stats_interval_ms.to_value(),
            _ => return None,
        })
    }
}

/// The fields every inference element's stats structure has.
const STATS_FIELDS: &str = "frames-in, frames-out, dropped (sum of dropped-flush: at a flush or stop, dropped-late: to keep up with live input, dropped-invalid: buffers not matching their caps), batches, avg-inference-ms, first-inference-ms, queued, provider";

/// The read-only `stats` property: the base's fields, then the element's `extra` ones.
pub fn stats_param_spec(extra: &str) -> glib::ParamSpec {
    let blurb = if extra.is_empty() {
        STATS_FIELDS.to_string()
    } else {
        format!("{STATS_FIELDS}, {extra}")
    };
    glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
        .nick("Statistics")
        .blurb(&blurb)
        .read_only()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_settings_take_their_names_only() {
        let mut r = RuntimeSettings::default();
        assert!(r.set_property("device-id", &3i32.to_value()));
        assert!(r.set_property("fp16", &false.to_value()));
        assert!(r.set_property("threads", &2u32.to_value()));
        assert!(r.set_property("execution-provider", &ExecutionProvider::Cpu.to_value()));
        assert!(r.set_property("engine-cache-dir", &Some("/tmp/trt").to_value()));
        assert!(r.set_property("trt-profile", &Some("320x240:640x480:1280x720").to_value()));
        assert_eq!(r.trt_profile, "320x240:640x480:1280x720");
        assert!(r.set_property("trt-profile", &None::<String>.to_value()));
        assert_eq!(r.trt_profile, crate::runtime::provider::DEFAULT_TRT_PROFILE);
        assert!(!r.set_property("max-queue", &8u32.to_value()));
        assert_eq!(r.property("device-id").unwrap().get::<i32>().unwrap(), 3);
        assert!(!r.property("fp16").unwrap().get::<bool>().unwrap());
        assert_eq!(
            r.property("execution-provider")
                .unwrap()
                .get::<ExecutionProvider>()
                .unwrap(),
            ExecutionProvider::Cpu
        );
        assert_eq!(
            r.property("engine-cache-dir")
                .unwrap()
                .get::<Option<String>>()
                .unwrap()
                .as_deref(),
            Some("/tmp/trt")
        );
        assert!(r.property("model").is_none());
        assert_eq!(r.intra_threads(), 2);
        r.threads = 0;
        assert!(r.intra_threads() >= 1);
    }

    #[test]
    fn stream_settings_take_their_names_only() {
        let mut s = StreamSettings::default();
        assert!(s.set_property("max-queue", &9u32.to_value()));
        assert!(s.set_property("drop-frames", &DropFrames::Always.to_value()));
        assert!(s.set_property("resize-mode", &ResizeMode::Fit.to_value()));
        assert!(s.set_property("stats-interval", &0u32.to_value()));
        assert!(!s.set_property("threads", &1u32.to_value()));
        assert_eq!(s.max_queue, 9);
        assert_eq!(s.drop_frames, DropFrames::Always);
        assert_eq!(s.resize_mode, ResizeMode::Fit);
        assert_eq!(s.stats_interval_ms, 0);
        assert_eq!(s.property("max-queue").unwrap().get::<u32>().unwrap(), 9);
        // `provider` is read-only and answered by the element's base.
        assert!(s.property("provider").is_none());
    }

    #[test]
    fn param_specs_defaults_are_the_settings_defaults() {
        // Value has no equality: its printed contents (type and value) stand for it.
        let same = |p: &glib::ParamSpec, v: glib::Value| {
            assert_eq!(
                format!("{:?}", p.default_value()),
                format!("{v:?}"),
                "{}",
                p.name()
            );
        };
        let runtime = RuntimeSettings::default();
        for p in RuntimeSettings::param_specs(true)
            .into_iter()
            .chain([RuntimeSettings::trt_profile_spec()])
        {
            same(&p, runtime.property(p.name()).unwrap());
        }
        assert!(
            !RuntimeSettings::param_specs(false)
                .iter()
                .any(|p| p.name() == "engine-cache-dir")
        );
        let stream = StreamSettings::default();
        for p in StreamSettings::param_specs("x-stats") {
            if p.name() != "provider" {
                same(&p, stream.property(p.name()).unwrap());
            }
        }
        let decoder = StreamSettings {
            drop_frames: DropFrames::Never,
            stats_interval_ms: 0,
            ..StreamSettings::default()
        };
        let specs = decoder.param_specs_from("x-stats", false);
        assert!(!specs.iter().any(|p| p.name() == "resize-mode"));
        for p in specs {
            if p.name() != "provider" {
                same(&p, decoder.property(p.name()).unwrap());
            }
        }
    }
}
