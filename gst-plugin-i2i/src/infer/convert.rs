// SPDX-License-Identifier: MPL-2.0
//! Picture conversion around a model: any accepted input to packed RGB8 at the model size,
//! and the model's packed RGB8 to the negotiated output format (`i2itransform`,
//! `onnxtransform`).
//!
//! Both sides reuse one `gst_video::VideoConverter` per caps and skip it where the bytes
//! are already right (RGB at the model size with a tight stride).

use gst_video::prelude::*;

use i2i_core::infer::ResizeMode;

/// Sink formats: what decoders and cameras hand out, so `jpegdec` links directly.
/// YUY2 and UYVY are what USB cameras and capture cards give, GRAY8 what machine-vision and
/// infrared cameras do.
pub const SINK_FORMATS: [&str; 11] = [
    "RGB", "RGBx", "RGBA", "BGR", "BGRx", "BGRA", "I420", "NV12", "YUY2", "UYVY", "GRAY8",
];
/// Src formats in the order offered when downstream has no preference.
pub const SRC_FORMATS: [&str; 3] = ["RGB", "RGBA", "I420"];

/// Where the input picture goes: the part of the input used (x, y, width, height) and the
/// part of the model picture it fills, for `resize-mode`. The input's size is taken with
/// its pixel aspect ratio, so anamorphic video keeps its shape.
pub fn resize_rects(
    in_w: u32,
    in_h: u32,
    par: gst::Fraction,
    w: u32,
    h: u32,
    mode: ResizeMode,
) -> ([u32; 4], [u32; 4]) {
    let full_in = [0, 0, in_w, in_h];
    let full_out = [0, 0, w, h];
    // Display width of the input in units of its rows.
    let (pn, pd) = (par.numer().max(1) as u64, par.denom().max(1) as u64);
    let dw = in_w as u64 * pn;
    let dh = in_h as u64 * pd;
    // Compare dw / dh with w / h.
    let wider = dw * h as u64 > w as u64 * dh;
    match mode {
        ResizeMode::Stretch => (full_in, full_out),
        ResizeMode::Crop if wider => {
            // Keep the full height, cut the sides.
            let cw = ((in_h as u64 * w as u64 * pd) / (h as u64 * pn)).clamp(1, in_w as u64) as u32;
            ([(in_w - cw) / 2, 0, cw, in_h], full_out)
        }
        ResizeMode::Crop => {
            let ch = ((in_w as u64 * h as u64 * pn) / (w as u64 * pd)).clamp(1, in_h as u64) as u32;
            ([0, (in_h - ch) / 2, in_w, ch], full_out)
        }
        ResizeMode::Fit if wider => {
            let oh = ((w as u64 * dh) / dw).clamp(1, h as u64) as u32;
            (full_in, [0, (h - oh) / 2, w, oh])
        }
        ResizeMode::Fit => {
            let ow = ((h as u64 * dw) / dh).clamp(1, w as u64) as u32;
            (full_in, [(w - ow) / 2, 0, ow, h])
        }
    }
}

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
        mode: ResizeMode,
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
            let mut config = converter_config(threads);
            let (src, dst) = resize_rects(
                in_info.width(),
                in_info.height(),
                in_info.par(),
                width,
                height,
                mode,
            );
            config.set_src_x(src[0] as i32);
            config.set_src_y(src[1] as i32);
            config.set_src_width(Some(src[2] as i32));
            config.set_src_height(Some(src[3] as i32));
            config.set_dest_x(dst[0] as i32);
            config.set_dest_y(dst[1] as i32);
            config.set_dest_width(Some(dst[2] as i32));
            config.set_dest_height(Some(dst[3] as i32));
            config.set_fill_border(true);
            config.set_border_argb(0xff00_0000);
            Some(
                gst_video::VideoConverter::new(in_info, &model_info, Some(config)).map_err(
                    |e| {
                        format!(
                            "cannot convert {:?} {}x{} to RGB {width}x{height}: {e}",
                            in_info.format(),
                            in_info.width(),
                            in_info.height()
                        )
                    },
                )?,
            )
        };
        Ok(InputConverter {
            in_info: in_info.clone(),
            model_info,
            converter,
        })
    }

    /// The model size this converter produces.
    pub fn model_size(&self) -> (u32, u32) {
        (self.model_info.width(), self.model_info.height())
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
        // GStreamer pads RGB rows to 4 bytes: a picture whose width is not a multiple of 4
        // (a 1x1 output, say) is laid out again with that stride before it is mapped.
        let row = self.rgb_info.width() as usize * 3;
        let stride = self.rgb_info.stride()[0] as usize;
        let rgb = if stride == row {
            rgb
        } else {
            let mut padded = vec![0u8; self.rgb_info.size()];
            for (dst, src) in padded.chunks_mut(stride).zip(rgb.chunks_exact(row)) {
                dst[..row].copy_from_slice(src);
            }
            padded
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_rects_keep_the_aspect_ratio_when_asked() {
        let par = gst::Fraction::new(1, 1);
        let (src, dst) = resize_rects(640, 480, par, 512, 512, ResizeMode::Stretch);
        assert_eq!((src, dst), ([0, 0, 640, 480], [0, 0, 512, 512]));
        // 4:3 into a square: crop cuts the sides, fit adds borders top and bottom.
        let (src, dst) = resize_rects(640, 480, par, 512, 512, ResizeMode::Crop);
        assert_eq!((src, dst), ([80, 0, 480, 480], [0, 0, 512, 512]));
        let (src, dst) = resize_rects(640, 480, par, 512, 512, ResizeMode::Fit);
        assert_eq!((src, dst), ([0, 0, 640, 480], [0, 64, 512, 384]));
        // Taller than the model picture.
        let (src, dst) = resize_rects(480, 640, par, 512, 512, ResizeMode::Crop);
        assert_eq!((src, dst), ([0, 80, 480, 480], [0, 0, 512, 512]));
        let (src, dst) = resize_rects(480, 640, par, 512, 512, ResizeMode::Fit);
        assert_eq!((src, dst), ([0, 0, 480, 640], [64, 0, 384, 512]));
        // Anamorphic: 720x576 at 16:11 is about 1.82:1 on screen.
        let (src, _) = resize_rects(
            720,
            576,
            gst::Fraction::new(16, 11),
            512,
            512,
            ResizeMode::Crop,
        );
        assert_eq!(src, [162, 0, 396, 576]);
    }
}
