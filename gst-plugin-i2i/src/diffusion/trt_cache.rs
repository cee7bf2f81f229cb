// SPDX-License-Identifier: MPL-2.0
//! Where a diffusion model's TensorRT engines are kept: one directory per model, size
//! profile, batch, UNet row count and precision, so a changed model or setting never
//! picks a stale engine (the provider set-up is [`crate::runtime::provider`]).

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use super::LoadOptions;
use crate::runtime::error::EngineError;
use crate::runtime::{LogLevel, log};

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

/// `<engine_cache_dir>/<key>`: the key hashes the graph files (size, mtime), the size
/// profile (not the image size: every size within `trt-profile` shares the engine), the
/// batch sizes and the precision, so a changed model or setting never picks a stale
/// engine.
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
    (opts.trt_profile, opts.batch_size, unet_rows, opts.fp16).hash(&mut h);
    let name = format!(
        "{}-{}-b{}-r{}-{}-{:016x}",
        opts.model_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("model"),
        opts.trt_profile.to_string().replace(':', "-"),
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
    fn cache_key_follows_the_profile_not_the_size() {
        let base = std::env::temp_dir().join(format!("i2i-trt-key-{}", std::process::id()));
        let opts = LoadOptions {
            model_dir: PathBuf::from("m"),
            engine_cache_dir: Some(base.clone()),
            ..Default::default()
        };
        let files: [PathBuf; 4] = Default::default();
        let a = trt_cache_dir(&opts, &files, (2, 8)).unwrap();
        assert_eq!(a, trt_cache_dir(&opts, &files, (2, 8)).unwrap());
        assert_eq!(
            a.file_name().unwrap().to_str().unwrap()[..37].to_string(),
            "m-256x256-512x512-1024x1024-b1-r8-fp1"
        );
        // Another size within the profile: the same engine.
        let resized = LoadOptions {
            width: 768,
            height: 432,
            ..opts.clone()
        };
        assert_eq!(a, trt_cache_dir(&resized, &files, (2, 8)).unwrap());
        // Another profile, batch, row count or precision: another engine.
        let other = LoadOptions {
            trt_profile: "256x256:512x512:2048x2048".parse().unwrap(),
            ..opts.clone()
        };
        let b = trt_cache_dir(&other, &files, (2, 8)).unwrap();
        assert_ne!(a, b);
        assert!(b.to_str().unwrap().contains("256x256-512x512-2048x2048"));
        assert_ne!(a, trt_cache_dir(&opts, &files, (2, 16)).unwrap());
        let fp32 = LoadOptions {
            fp16: false,
            ..opts.clone()
        };
        assert_ne!(a, trt_cache_dir(&fp32, &files, (2, 8)).unwrap());
        let _ = std::fs::remove_dir_all(&base);
    }
}
