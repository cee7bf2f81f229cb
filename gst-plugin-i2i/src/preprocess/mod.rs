// SPDX-License-Identifier: MPL-2.0
//! ControlNet preprocessors, free of GStreamer: what each ControlNet of a fused model sees.
//!
//! `i2itransform` runs them on the streaming thread (where the frame is converted), so the
//! inference thread only runs model calls. Images are packed RGB8 at the model size; the
//! engine turns them into `v / 255`. The image work is imageproc's and image's (greyscale,
//! Canny), not hand-written filters.

use imageproc::image::{GrayImage, RgbImage, imageops};

pub mod depth;

/// Canny thresholds when `canny` has none: lllyasviel's ControlNet annotator defaults.
pub const DEFAULT_CANNY: (f32, f32) = (100.0, 200.0);
/// Weight of the previous output in `feedback` when none is given.
pub const DEFAULT_FEEDBACK: f32 = 0.5;
/// The names, for messages.
pub const NAMES: &str = "input, canny[:LOW:HIGH], feedback[:WEIGHT], depth, pad";

/// What one ControlNet sees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Preprocess {
    /// The frame itself (tile ControlNets).
    Input,
    /// Canny edges of the frame, white on black, with hysteresis thresholds (0..1140,
    /// low <= high).
    Canny { low: f32, high: f32 },
    /// The previous output blended with the frame: `w * previous + (1 - w) * frame`
    /// (the frame itself until there is an output).
    Feedback { weight: f32 },
    /// The picture from the element's `control_N` pad.
    Pad,
    /// The depth map of the frame by an image-to-depth ONNX model
    /// ([`crate::diffusion::depth::DepthModel`], the element's `depth-model`).
    Depth,
}

impl Preprocess {
    /// `input`, `canny`, `canny:100:200`, `feedback`, `feedback:0.3`, `pad`.
    pub fn parse(text: &str) -> Result<Preprocess, String> {
        let text = text.trim();
        let mut parts = text.split(':');
        let name = parts.next().unwrap_or("").trim();
        let args: Vec<&str> = parts.map(str::trim).collect();
        let num = |s: &str| {
            s.parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("\"{s}\" in \"{text}\" is not a number"))
        };
        let p = match (name, args.len()) {
            ("input", 0) => Preprocess::Input,
            ("pad", 0) => Preprocess::Pad,
            ("depth", 0) => Preprocess::Depth,
            ("canny", 0) => Preprocess::Canny {
                low: DEFAULT_CANNY.0,
                high: DEFAULT_CANNY.1,
            },
            ("canny", 2) => {
                let (low, high) = (num(args[0])?, num(args[1])?);
                // The largest gradient of the Sobel filter on 8-bit pictures is 4 * 255 * sqrt(2).
                if !(0.0..=1140.0).contains(&low) || !(0.0..=1140.0).contains(&high) || low > high {
                    return Err(format!(
                        "\"{text}\": canny thresholds must be 0 to 1140 with LOW <= HIGH, e.g. canny:100:200"
                    ));
                }
                Preprocess::Canny { low, high }
            }
            ("feedback", 0) => Preprocess::Feedback {
                weight: DEFAULT_FEEDBACK,
            },
            ("feedback", 1) => {
                let weight = num(args[0])?;
                if !(0.0..=1.0).contains(&weight) {
                    return Err(format!(
                        "\"{text}\": the feedback weight must be 0 to 1, e.g. feedback:0.5"
                    ));
                }
                Preprocess::Feedback { weight }
            }
            _ => {
                return Err(format!(
                    "\"{text}\" is not a ControlNet preprocessor (expected one of {NAMES})"
                ));
            }
        };
        Ok(p)
    }

    /// The text [`Preprocess::parse`] reads back.
    pub fn name(&self) -> String {
        match self {
            Preprocess::Input => "input".into(),
            Preprocess::Pad => "pad".into(),
            Preprocess::Depth => "depth".into(),
            Preprocess::Canny { low, high } => format!("canny:{low}:{high}"),
            Preprocess::Feedback { weight } => format!("feedback:{weight}"),
        }
    }
}

/// A comma-separated list, one per ControlNet (one entry applies to all).
pub fn parse_list(text: &str) -> Result<Vec<Preprocess>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    text.split(',').map(Preprocess::parse).collect()
}

pub fn format_list(list: &[Preprocess]) -> String {
    list.iter()
        .map(Preprocess::name)
        .collect::<Vec<_>>()
        .join(",")
}

/// Canny edges of packed RGB8 `width x height`: white (255) edges on black, packed RGB8.
pub fn canny(rgb: &[u8], width: u32, height: u32, low: f32, high: f32) -> Result<Vec<u8>, String> {
    let img = RgbImage::from_raw(width, height, rgb.to_vec()).ok_or_else(|| {
        format!(
            "canny: {} bytes are not an RGB picture of {width}x{height}",
            rgb.len()
        )
    })?;
    let grey: GrayImage = imageops::grayscale(&img);
    let (low, high) = (low.min(high), high.max(low));
    let edges = imageproc::edges::canny(&grey, low, high);
    Ok(edges.as_raw().iter().flat_map(|&v| [v, v, v]).collect())
}

/// `weight * previous + (1 - weight) * frame`, rounded (packed RGB8 of the same size).
pub fn feedback(frame: &[u8], previous: &[u8], weight: f32) -> Vec<u8> {
    if previous.len() != frame.len() {
        return frame.to_vec();
    }
    frame
        .iter()
        .zip(previous)
        .map(|(&f, &p)| (weight * p as f32 + (1.0 - weight) * f as f32).round() as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let l = parse_list("canny, input,feedback:0.3, pad,canny:50:80").unwrap();
        assert_eq!(
            l,
            [
                Preprocess::Canny {
                    low: 100.0,
                    high: 200.0
                },
                Preprocess::Input,
                Preprocess::Feedback { weight: 0.3 },
                Preprocess::Pad,
                Preprocess::Canny {
                    low: 50.0,
                    high: 80.0
                },
            ]
        );
        assert_eq!(parse_list(&format_list(&l)).unwrap(), l);
        assert!(parse_list("").unwrap().is_empty());
        assert_eq!(parse_list("depth").unwrap(), [Preprocess::Depth]);
        for bad in [
            "midas",
            "canny:1",
            "canny:200:100",
            "canny:a:b",
            "canny:0:5000",
            "feedback:2",
            "input:1",
            "feedback:nan",
        ] {
            let e = parse_list(bad).unwrap_err();
            assert!(e.contains(bad.split(':').next().unwrap()), "{bad}: {e}");
        }
    }

    #[test]
    fn canny_finds_the_edge_of_a_square() {
        let (w, h) = (32u32, 32u32);
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        for y in 8..24 {
            for x in 8..24 {
                let i = ((y * w + x) * 3) as usize;
                rgb[i..i + 3].copy_from_slice(&[200, 180, 220]);
            }
        }
        let e = canny(&rgb, w, h, 50.0, 100.0).unwrap();
        let at = |x: u32, y: u32| e[((y * w + x) * 3) as usize];
        assert!((7..=8).any(|x| at(x, 16) == 255), "left edge of the square");
        assert_eq!(at(16, 16), 0, "inside is flat");
        assert_eq!(at(2, 2), 0, "outside is flat");
        assert!(e.iter().all(|&v| v == 0 || v == 255));
        assert!(canny(&rgb[..10], w, h, 50.0, 100.0).is_err());
    }

    #[test]
    fn feedback_blends() {
        assert_eq!(
            feedback(&[0, 100, 255], &[255, 100, 0], 0.5),
            [128, 100, 128]
        );
        assert_eq!(
            feedback(&[10, 20], &[0], 0.5),
            [10, 20],
            "no previous output yet"
        );
        assert_eq!(feedback(&[10, 20], &[200, 200], 0.0), [10, 20]);
    }
}
