// SPDX-License-Identifier: MPL-2.0
//! What browsers and seed-001 clients send, checked before anything is published.
//!
//! Text messages are JSON objects with a `type`: seed 001's `image` message
//! (`{"type": "image", "format": "jpeg"|"png", "data": base64, "timestamp": seconds}`),
//! and the control room's `control` (a chat command for the settings holder) and
//! `settings` (a JSON object of settings). Binary messages are frames as the elements
//! carry them, msgpack `[timestamp_ms, index, jpg]`, or a bare JPEG.
//!
//! Every image leaves this module as an [`Image`] whose header was read (libjpeg-turbo's
//! header read, the `png` crate's header info) and whose declared size is within
//! `--max-pixels`, before anything is decoded: a small file that declares a huge picture
//! (a decompression bomb) costs a header read. The caller then charges the declared pixels
//! to the client's budget and only then converts a PNG to JPEG ([`Image::into_jpeg`]).
//! Free of the network, so every refusal is unit-tested.

use std::fmt;

use base64::Engine as _;
use i2i_core::jpeg::{Encoder, JpegCheckError, PackedFormat, Plane, jpeg_size};
use i2i_core::protocol::{self, Payload};
use serde_json::Value;

/// JPEG quality of converted PNG images.
const PNG_TO_JPEG_QUALITY: i32 = 90;
/// Memory the PNG decoder may use for ancillary chunks (text, colour profile).
const PNG_METADATA_BYTES: usize = 1 << 20;

/// The limits an image is checked against before anything is decoded.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Largest image file (`--max-image-bytes`).
    pub max_bytes: usize,
    /// Largest declared width x height (`--max-pixels`).
    pub max_pixels: u64,
}

/// Why a message was refused.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// Bad input: malformed, not an image, over the byte limit.
    Bad(String),
    /// An image whose header declares more than `--max-pixels` (counted apart).
    Oversize(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Bad(t) | Refusal::Oversize(t) => f.write_str(t),
        }
    }
}

impl From<String> for Refusal {
    fn from(s: String) -> Refusal {
        Refusal::Bad(s)
    }
}

impl From<&str> for Refusal {
    fn from(s: &str) -> Refusal {
        Refusal::Bad(s.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Jpeg,
    Png,
}

/// An image whose header was read and whose declared size is within the limits; nothing
/// of it decoded yet.
#[derive(Debug, PartialEq)]
pub struct Image {
    format: Format,
    bytes: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

impl Image {
    /// The declared width x height: what decoding it will cost.
    pub fn pixels(&self) -> u64 {
        self.width as u64 * self.height as u64
    }

    /// The image as JPEG: a JPEG as it came, a PNG decoded and encoded (quality 90).
    pub fn into_jpeg(self) -> Result<Vec<u8>, String> {
        match self.format {
            Format::Jpeg => Ok(self.bytes),
            Format::Png => png_to_jpeg(&self.bytes, self.pixels()),
        }
    }
}

/// One checked message.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// A frame to publish (and, for seed-001 JSON, to relay as it came).
    Image {
        image: Image,
        timestamp_ms: i64,
        /// Seed 001's JSON message: relayed to the other clients.
        relay: bool,
    },
    /// A chat command for the settings holder (`/seed 5`, a plain prompt, ...).
    Control { id: Value, command: String },
    /// A settings object for the holder (`{"prompt": "...", "seed": 5}`).
    Settings { id: Value, settings: Value },
    /// Seed 001's `{"type": "register", "client_type": "producer"|"consumer"}`.
    Register { client_type: String },
    /// Seed 001's `{"type": "ping"}`.
    Ping,
}

fn field<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// Reads a text message.
pub fn parse_text(text: &str, limits: &ImageLimits, now_ms: i64) -> Result<Incoming, Refusal> {
    let max_image_bytes = limits.max_bytes;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "malformed JSON ({} bytes): {e}; expected e.g. {{\"type\": \"image\", \"format\": \"jpeg\", \"data\": BASE64, \"timestamp\": SECONDS}}",
            text.len()
        )
    })?;
    let Value::Object(obj) = value else {
        return Err("expected a JSON object with a \"type\" key".into());
    };
    let kind = field(&obj, "type")
        .and_then(Value::as_str)
        .ok_or("missing \"type\" (a string: image, control or settings)")?;
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    match kind {
        "image" => {
            let format = field(&obj, "format")
                .and_then(Value::as_str)
                .unwrap_or("jpeg");
            let data = field(&obj, "data")
                .and_then(Value::as_str)
                .ok_or("image: missing \"data\" (the image as a base64 string)")?;
            // base64 grows by 4/3: refuse before decoding anything far too big.
            if data.len() / 4 * 3 > max_image_bytes + 3 {
                return Err(format!(
                    "image: {} bytes of base64 is over the limit of {max_image_bytes} bytes per image (--max-image-bytes)",
                    data.len()
                )
                .into());
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| format!("image: \"data\" is not base64: {e}"))?;
            let timestamp_ms = match field(&obj, "timestamp") {
                None => now_ms,
                Some(Value::Number(n)) => match n.as_f64() {
                    Some(s) if (0.0..1e11).contains(&s) => (s * 1000.0) as i64,
                    _ => {
                        return Err(
                            format!("image: \"timestamp\" {n} is not seconds since 1970").into(),
                        );
                    }
                },
                Some(other) => {
                    return Err(format!(
                        "image: \"timestamp\" must be a number of seconds, found {other}"
                    )
                    .into());
                }
            };
            let image = check_image(format, bytes, limits)?;
            Ok(Incoming::Image {
                image,
                timestamp_ms,
                relay: true,
            })
        }
        "control" => {
            let command = field(&obj, "command")
                .and_then(Value::as_str)
                .ok_or("control: missing \"command\" (a string, e.g. \"/seed 5\")")?;
            Ok(Incoming::Control {
                id,
                command: command.to_string(),
            })
        }
        "register" => {
            let client_type = field(&obj, "client_type")
                .and_then(Value::as_str)
                .unwrap_or("producer");
            match client_type {
                "producer" | "consumer" => Ok(Incoming::Register {
                    client_type: client_type.to_string(),
                }),
                other => Err(format!(
                    "register: client_type \"{}\" is not known: producer or consumer",
                    other.chars().take(40).collect::<String>()
                )
                .into()),
            }
        }
        "ping" => Ok(Incoming::Ping),
        "settings" => match field(&obj, "settings") {
            Some(s @ Value::Object(_)) => Ok(Incoming::Settings {
                id,
                settings: s.clone(),
            }),
            _ => Err("settings: missing \"settings\" (an object, e.g. {\"seed\": 5})".into()),
        },
        other => Err(format!(
            "unknown message type \"{}\": expected image, register, ping, control or settings",
            other.chars().take(40).collect::<String>()
        )
        .into()),
    }
}

/// Reads a binary message: msgpack `[timestamp_ms, index, jpg]` or a bare JPEG.
pub fn parse_binary(bytes: &[u8], limits: &ImageLimits, now_ms: i64) -> Result<Incoming, Refusal> {
    if protocol::looks_like_jpeg(bytes) {
        let image = check_image("jpeg", bytes.to_vec(), limits)?;
        return Ok(Incoming::Image {
            image,
            timestamp_ms: now_ms,
            relay: false,
        });
    }
    let frames = protocol::decode(bytes).map_err(|e| {
        format!("binary message: expected msgpack [timestamp_ms, index, jpg] or a JPEG: {e}")
    })?;
    let [frame] = frames.as_slice() else {
        return Err(format!("binary message: expected one frame, found {}", frames.len()).into());
    };
    let Payload::Bytes(jpeg) = &frame.jpeg else {
        return Err("binary message: file paths are not accepted over the network".into());
    };
    let image = check_image("jpeg", jpeg.to_vec(), limits)?;
    Ok(Incoming::Image {
        image,
        timestamp_ms: frame.timestamp_ms,
        relay: false,
    })
}

/// Reads an image's header (nothing else) and checks its size in bytes and in pixels.
pub fn check_image(format: &str, bytes: Vec<u8>, limits: &ImageLimits) -> Result<Image, Refusal> {
    if bytes.len() > limits.max_bytes {
        return Err(format!(
            "image: {} bytes is over the limit of {} bytes per image (--max-image-bytes)",
            bytes.len(),
            limits.max_bytes
        )
        .into());
    }
    let (format, (width, height)) = match format.to_ascii_lowercase().as_str() {
        "jpeg" | "jpg" => (Format::Jpeg, jpeg_header(&bytes)?),
        "png" => (Format::Png, png_header(&bytes)?),
        other => {
            return Err(format!(
                "image: format \"{}\" is not supported: send jpeg or png",
                other.chars().take(20).collect::<String>()
            )
            .into());
        }
    };
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels {
        return Err(Refusal::Oversize(format!(
            "image: the {} header declares {width} x {height} ({pixels} pixels), over the limit of {} pixels (--max-pixels); nothing was decoded",
            if format == Format::Png { "PNG" } else { "JPEG" },
            limits.max_pixels
        )));
    }
    Ok(Image {
        format,
        bytes,
        width,
        height,
    })
}

/// Width and height from libjpeg-turbo's header read (the pixel limit is checked by the caller).
fn jpeg_header(bytes: &[u8]) -> Result<(usize, usize), Refusal> {
    jpeg_size(bytes, 0).map_err(|e| match e {
        JpegCheckError::NotJpeg(t) | JpegCheckError::TooLarge(t) => format!("image: {t}").into(),
    })
}

/// Width and height from the PNG's header chunk, read before anything else.
fn png_header(bytes: &[u8]) -> Result<(usize, usize), Refusal> {
    let mut decoder = png::Decoder::new_with_limits(
        std::io::Cursor::new(bytes),
        png::Limits {
            bytes: PNG_METADATA_BYTES,
        },
    );
    let info = decoder
        .read_header_info()
        .map_err(|e| format!("image: not a PNG that decodes: {e}"))?;
    Ok((info.width as usize, info.height as usize))
}

/// Decodes a PNG whose header was checked and encodes it as JPEG.
fn png_to_jpeg(bytes: &[u8], pixels: u64) -> Result<Vec<u8>, String> {
    // The decoded picture (at most 4 bytes a pixel after stripping 16-bit samples) and the
    // ancillary chunks, nothing more.
    let limits = png::Limits {
        bytes: (pixels as usize).saturating_mul(4) + PNG_METADATA_BYTES,
    };
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("image: not a PNG that decodes: {e}"))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("image: PNG data does not decode: {e}"))?;
    let (w, h, stride) = (frame.width as usize, frame.height as usize, frame.line_size);
    let (format, pixels, stride) = match frame.color_type {
        png::ColorType::Rgb => (PackedFormat::Rgb, buf, stride),
        png::ColorType::Rgba => (PackedFormat::Rgba, buf, stride),
        png::ColorType::Grayscale => (PackedFormat::Gray, buf, stride),
        png::ColorType::GrayscaleAlpha => {
            // Drop the alpha channel: gray + alpha has no TurboJPEG pixel format.
            let mut gray = Vec::with_capacity(w * h);
            for row in buf.chunks(stride).take(h) {
                gray.extend(row.chunks_exact(2).take(w).map(|p| p[0]));
            }
            (PackedFormat::Gray, gray, w)
        }
        other => return Err(format!("image: PNG colour type {other:?} is not supported")),
    };
    let mut enc = Encoder::new(PNG_TO_JPEG_QUALITY).map_err(|e| e.to_string())?;
    let jpeg = enc
        .encode_packed(
            format,
            Plane {
                data: &pixels,
                stride,
            },
            w,
            h,
        )
        .map_err(|e| format!("image: converting the PNG to JPEG failed: {e}"))?;
    Ok(jpeg.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg_4x4() -> Vec<u8> {
        let mut enc = Encoder::new(80).unwrap();
        let px = vec![128u8; 4 * 4 * 3];
        enc.encode_packed(
            PackedFormat::Rgb,
            Plane {
                data: &px,
                stride: 12,
            },
            4,
            4,
        )
        .unwrap()
        .to_vec()
    }

    fn png_rgb(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = png::Encoder::new(&mut out, w, h);
        e.set_color(png::ColorType::Rgb);
        e.set_depth(png::BitDepth::Eight);
        let mut wr = e.write_header().unwrap();
        wr.write_image_data(&vec![200u8; (w * h * 3) as usize])
            .unwrap();
        drop(wr);
        out
    }

    const L: ImageLimits = ImageLimits {
        max_bytes: 1 << 20,
        max_pixels: 1 << 24,
    };

    fn small(max_bytes: usize) -> ImageLimits {
        ImageLimits { max_bytes, ..L }
    }

    fn jpeg_of(m: Incoming) -> (Vec<u8>, i64, bool) {
        match m {
            Incoming::Image {
                image,
                timestamp_ms,
                relay,
            } => (image.into_jpeg().unwrap(), timestamp_ms, relay),
            other => panic!("{other:?}"),
        }
    }

    /// A small JPEG whose header says `w` x `h`: the frame marker's size rewritten.
    fn jpeg_declaring(w: u16, h: u16) -> Vec<u8> {
        let mut j = jpeg_4x4();
        let sof = j
            .windows(2)
            .position(|m| m[0] == 0xff && (m[1] == 0xc0 || m[1] == 0xc2))
            .unwrap();
        j[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
        j[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
        j
    }

    /// A PNG of `w` x `h` grey pixels, compressed row by row (small even when huge).
    fn png_grey(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = png::Encoder::new(&mut out, w, h);
        e.set_color(png::ColorType::Grayscale);
        e.set_depth(png::BitDepth::Eight);
        e.set_compression(png::Compression::Best);
        let mut header = e.write_header().unwrap();
        let mut wr = header.stream_writer().unwrap();
        let row = vec![0u8; w as usize];
        for _ in 0..h {
            std::io::Write::write_all(&mut wr, &row).unwrap();
        }
        wr.finish().unwrap();
        drop(header);
        out
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn seed_001_image_message() {
        let text = format!(
            r#"{{"type": "image", "format": "jpeg", "data": "{}", "timestamp": 1700000000.25}}"#,
            b64(&jpeg_4x4())
        );
        let (jpeg, timestamp_ms, relay) = jpeg_of(parse_text(&text, &L, 0).unwrap());
        assert_eq!(jpeg, jpeg_4x4());
        assert_eq!(timestamp_ms, 1_700_000_000_250);
        assert!(relay);
    }

    #[test]
    fn png_becomes_jpeg() {
        let text = format!(
            r#"{{"type":"image","format":"PNG","data":"{}"}}"#,
            b64(&png_rgb(8, 6))
        );
        let (jpeg, timestamp_ms, _) = jpeg_of(parse_text(&text, &L, 42).unwrap());
        assert_eq!(timestamp_ms, 42);
        assert_eq!(jpeg_size(&jpeg, 0).unwrap(), (8, 6));
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        assert_eq!(
            parse_text(r#"{"type":"register","client_type":"consumer"}"#, &L, 0),
            Ok(Incoming::Register {
                client_type: "consumer".into()
            })
        );
        assert_eq!(parse_text(r#"{"type":"ping"}"#, &L, 0), Ok(Incoming::Ping));
        let cases = [
            (
                r#"{"type":"register","client_type":"boss"}"#,
                "client_type \"boss\"",
            ),
            ("{not json", "malformed JSON"),
            ("[1,2]", "JSON object"),
            (r#"{"format":"jpeg"}"#, "missing \"type\""),
            (r#"{"type":"video"}"#, "unknown message type \"video\""),
            (r#"{"type":"image"}"#, "missing \"data\""),
            (r#"{"type":"image","data":"@@@"}"#, "not base64"),
            (
                r#"{"type":"image","data":"aGVsbG8gd29ybGQ="}"#,
                "not a JPEG",
            ),
            (
                r#"{"type":"image","format":"png","data":"aGVsbG8gd29ybGQ="}"#,
                "not a PNG",
            ),
            (
                r#"{"type":"image","format":"gif","data":"aGVsbG8="}"#,
                "\"gif\" is not supported",
            ),
            (
                r#"{"type":"image","data":"aGVsbG8=","timestamp":"x"}"#,
                "timestamp",
            ),
            (r#"{"type":"control"}"#, "missing \"command\""),
            (
                r#"{"type":"settings","settings":5}"#,
                "missing \"settings\"",
            ),
        ];
        for (text, want) in cases {
            let e = parse_text(text, &L, 0).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn size_limits() {
        let big = b64(&vec![0xffu8; 5000]);
        let e = parse_text(
            &format!(r#"{{"type":"image","data":"{big}"}}"#),
            &small(2048),
            0,
        )
        .unwrap_err();
        assert!(e.to_string().contains("over the limit of 2048"), "{e}");
        // A wide picture is fine: the limit is on pixels, not on a side.
        assert!(check_image("png", png_rgb(9000, 1), &small(1 << 26)).is_ok());
        let limits = ImageLimits {
            max_bytes: 1 << 20,
            max_pixels: 8000,
        };
        let e = check_image("png", png_rgb(9000, 1), &limits).unwrap_err();
        assert!(
            matches!(&e, Refusal::Oversize(t) if t.contains("9000 x 1") && t.contains("--max-pixels")),
            "{e}"
        );
    }

    #[test]
    fn declared_sizes_are_refused_before_decoding() {
        // An 8192 x 8192 PNG of one colour is a small file; decoding it would take 64 MiB
        // and a second of CPU. Only its header is read.
        let bomb = png_grey(8192, 8192);
        assert!(bomb.len() < 200_000, "{}", bomb.len());
        let limits = ImageLimits {
            max_bytes: 1 << 20,
            max_pixels: 3840 * 2160,
        };
        let start = std::time::Instant::now();
        let e = check_image("png", bomb, &limits).unwrap_err();
        assert!(
            matches!(&e, Refusal::Oversize(t) if t.contains("8192 x 8192")),
            "{e}"
        );
        // A JPEG of a few hundred bytes declaring 8192 x 8192.
        let tiny = jpeg_declaring(8192, 8192);
        assert!(tiny.len() < 1000);
        let e = parse_binary(&tiny, &limits, 0).unwrap_err();
        assert!(
            matches!(&e, Refusal::Oversize(t) if t.contains("JPEG header declares 8192 x 8192")),
            "{e}"
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        // At the limit they pass the check with their size, for the pixel budget.
        let image = check_image("jpeg", jpeg_declaring(3840, 2160), &limits).unwrap();
        assert_eq!(image.pixels(), 3840 * 2160);
        let image = check_image("png", png_grey(64, 32), &limits).unwrap();
        assert_eq!((image.width, image.height), (64, 32));
        let jpeg = image.into_jpeg().unwrap();
        assert_eq!(jpeg_size(&jpeg, 0).unwrap(), (64, 32));
    }

    #[test]
    fn binary_frames() {
        let msg = protocol::encode_frame(77, 3, &jpeg_4x4());
        assert_eq!(
            jpeg_of(parse_binary(&msg, &L, 0).unwrap()),
            (jpeg_4x4(), 77, false)
        );
        assert_eq!(jpeg_of(parse_binary(&jpeg_4x4(), &L, 5).unwrap()).1, 5);
        let e = parse_binary(b"\x93\x01", &L, 0).unwrap_err().to_string();
        assert!(e.contains("binary message"), "{e}");
        let e = parse_binary(&protocol::encode_frame(1, 1, b"junk"), &L, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a JPEG"), "{e}");
    }
}
