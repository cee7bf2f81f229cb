// SPDX-License-Identifier: MPL-2.0
//! Picture conversion around the engine: any accepted input to packed RGB8 at the model
//! size, and the engine's packed RGB8 to the negotiated output format.
//!
//! Both sides reuse one `gst_video::VideoConverter` per caps and skip it where the bytes
//! are already right (RGB at the model size with a tight stride).

use gst_video::prelude::*;

/// Threads for one VideoConverter. Input conversion runs on the upstream streaming
/// thread while inference (which takes most cores) runs on the element's own, so the
/// converter gets a small share: one thread on small machines, up to four on big ones.
pub fn converter_threads() -> u32 {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u32;
    (cores / 4).clamp(1, 4)
}

fn converter_config(threads: u32) -> gst_video::VideoConverterConfig {
    let mut config = gst_video::VideoConverterConfig::new();
    config.set_threads(threads);
    config
}

/// Any accepted input picture to packed RGB8 (`width * height * 3` bytes).
#[derive(Debug)]
pub struct InputConverter {
    in_info: gst_video::VideoInfo,
    model_info: gst_video::VideoInfo,
    /// None when the input already is RGB at the model size: rows are copied as they are.
    converter: Option<gst_video::VideoConverter>,
}

impl InputConverter {
    pub fn new(
        in_info: &gst_video::VideoInfo,
        width: u32,
        height: u32,
        threads: u32,
    ) -> Result<Self, String> {
        let model_info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, width, height)
            .fps(in_info.fps())
            .interlace_mode(in_info.interlace_mode())
            .build()
            .map_err(|e| format!("cannot describe RGB {width}x{height}: {e}"))?;
        if model_info.stride()[0] as usize != width as usize * 3 {
            return Err(format!(
                "RGB at width {width} has a padded stride ({}); use a width that is a multiple of 8",
                model_info.stride()[0]
            ));
        }
        let passthrough = in_info.format() == gst_video::VideoFormat::Rgb
            && in_info.width() == width
            && in_info.height() == height;
        let converter = if passthrough {
            None
        } else {
            Some(
                gst_video::VideoConverter::new(
                    in_info,
                    &model_info,
                    Some(converter_config(threads)),
                )
                .map_err(|e| {
                    format!(
                        "cannot convert {:?} {}x{} to RGB {width}x{height}: {e}",
                        in_info.format(),
                        in_info.width(),
                        in_info.height()
                    )
                })?,
            )
        };
        Ok(InputConverter {
            in_info: in_info.clone(),
            model_info,
            converter,
        })
    }

    pub fn in_info(&self) -> &gst_video::VideoInfo {
        &self.in_info
    }

    /// Converts one input buffer (mapped with its VideoMeta when it has one).
    pub fn convert(&self, buffer: &gst::BufferRef) -> Result<Vec<u8>, String> {
        let src = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &self.in_info)
            .map_err(|_| {
                format!(
                    "input buffer of {} bytes does not hold a {:?} {}x{} picture",
                    buffer.size(),
                    self.in_info.format(),
                    self.in_info.width(),
                    self.in_info.height()
                )
            })?;
        let (w, h) = (self.model_info.width(), self.model_info.height());
        let row = w as usize * 3;
        match &self.converter {
            None => {
                let stride = src.plane_stride()[0] as usize;
                let data = src.plane_data(0).map_err(|e| e.to_string())?;
                let mut rgb = Vec::with_capacity(row * h as usize);
                for y in 0..h as usize {
                    rgb.extend_from_slice(&data[y * stride..y * stride + row]);
                }
                Ok(rgb)
            }
            Some(conv) => {
                // Convert straight into the Vec that becomes the engine's input.
                let mut out = gst::Buffer::from_mut_slice(vec![0u8; self.model_info.size()]);
                {
                    let out = out.get_mut().expect("new buffer is writable");
                    let mut dst =
                        gst_video::VideoFrameRef::from_buffer_ref_writable(out, &self.model_info)
                            .map_err(|_| "cannot map the RGB picture".to_string())?;
                    conv.frame_ref(&src, &mut dst);
                }
                out.try_into_inner::<Vec<u8>>()
                    .map_err(|_| "converted picture is not a plain Vec".to_string())
            }
        }
    }
}

/// Packed RGB8 at the model size to the negotiated output format.
#[derive(Debug)]
pub struct OutputConverter {
    out_info: gst_video::VideoInfo,
    rgb_info: gst_video::VideoInfo,
    /// None when the output is RGB with a tight stride: the RGB Vec becomes the buffer.
    converter: Option<gst_video::VideoConverter>,
}

impl OutputConverter {
    pub fn new(out_info: &gst_video::VideoInfo, threads: u32) -> Result<Self, String> {
        let (w, h) = (out_info.width(), out_info.height());
        let rgb_info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, w, h)
            .fps(out_info.fps())
            .par(out_info.par())
            .interlace_mode(out_info.interlace_mode())
            .build()
            .map_err(|e| format!("cannot describe RGB {w}x{h}: {e}"))?;
        let direct = out_info.format() == gst_video::VideoFormat::Rgb
            && out_info.stride()[0] as usize == w as usize * 3;
        let converter = if direct {
            None
        } else {
            Some(
                gst_video::VideoConverter::new(
                    &rgb_info,
                    out_info,
                    Some(converter_config(threads)),
                )
                .map_err(|e| format!("cannot convert RGB to {:?}: {e}", out_info.format()))?,
            )
        };
        Ok(OutputConverter {
            out_info: out_info.clone(),
            rgb_info,
            converter,
        })
    }

    pub fn out_info(&self) -> &gst_video::VideoInfo {
        &self.out_info
    }

    /// `rgb` holds `width * height * 3` bytes of packed RGB8.
    pub fn convert(&self, rgb: Vec<u8>) -> Result<gst::Buffer, String> {
        let expected = self.rgb_info.width() as usize * self.rgb_info.height() as usize * 3;
        if rgb.len() != expected {
            return Err(format!(
                "engine output holds {} bytes, expected {expected} for RGB {}x{}",
                rgb.len(),
                self.rgb_info.width(),
                self.rgb_info.height()
            ));
        }
        let Some(conv) = &self.converter else {
            return Ok(gst::Buffer::from_mut_slice(rgb));
        };
        let src_buf = gst::Buffer::from_mut_slice(rgb);
        let src =
            gst_video::VideoFrameRef::from_buffer_ref_readable(src_buf.as_ref(), &self.rgb_info)
                .map_err(|_| "cannot map the RGB picture".to_string())?;
        let mut out = gst::Buffer::with_size(self.out_info.size())
            .map_err(|e| format!("cannot allocate an output buffer: {e}"))?;
        {
            let out = out.get_mut().expect("new buffer is writable");
            let mut dst = gst_video::VideoFrameRef::from_buffer_ref_writable(out, &self.out_info)
                .map_err(|_| "cannot map the output picture".to_string())?;
            conv.frame_ref(&src, &mut dst);
        }
        Ok(out)
    }
}
