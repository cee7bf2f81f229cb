// SPDX-License-Identifier: MPL-2.0
//! What browsers and seed-001 clients send, checked before anything is published.
//!
//! Text messages are JSON objects with a `type`: seed 001's `image` message
//! (`{"type": "image", "format": "jpeg"|"png", "data": base64, "timestamp": seconds}`),
//! and the control room's `control` (a chat command for the settings holder) and
//! `settings` (a JSON object of settings). Binary messages are frames as the elements
//! carry them, msgpack `[timestamp_ms, index, jpg]`, or a bare JPEG. Every image leaves
//! this module as a JPEG whose header decodes, within the size limits; PNG is converted.
//! Free of the network, so every refusal is unit-tested.

use base64::Engine as _;
use gstzmqmsgpack::jpeg::{Encoder, PackedFormat, Plane, jpeg_size};
use gstzmqmsgpack::protocol::{self, Payload};
use serde_json::Value;

/// Largest width or height accepted (a decoded 8192 x 8192 RGB frame is 192 MiB).
pub const MAX_DIMENSION: usize = 8192;
/// JPEG quality of converted PNG images.
const PNG_TO_JPEG_QUALITY: i32 = 90;

/// One checked message.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// A frame to publish (and, for seed-001 JSON, to relay as it came).
    Image {
        jpeg: Vec<u8>,
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
pub fn parse_text(text: &str, max_image_bytes: usize, now_ms: i64) -> Result<Incoming, String> {
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
                    "image: {} bytes of base64 is over the limit of {max_image_bytes} bytes per image",
                    data.len()
                ));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| format!("image: \"data\" is not base64: {e}"))?;
            let timestamp_ms = match field(&obj, "timestamp") {
                None => now_ms,
                Some(Value::Number(n)) => match n.as_f64() {
                    Some(s) if (0.0..1e11).contains(&s) => (s * 1000.0) as i64,
                    _ => {
                        return Err(format!(
                            "image: \"timestamp\" {n} is not seconds since 1970"
                        ));
                    }
                },
                Some(other) => {
                    return Err(format!(
                        "image: \"timestamp\" must be a number of seconds, found {other}"
                    ));
                }
            };
            let jpeg = to_jpeg(format, bytes, max_image_bytes)?;
            Ok(Incoming::Image {
                jpeg,
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
                )),
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
        )),
    }
}

/// Reads a binary message: msgpack `[timestamp_ms, index, jpg]` or a bare JPEG.
pub fn parse_binary(bytes: &[u8], max_image_bytes: usize, now_ms: i64) -> Result<Incoming, String> {
    if protocol::looks_like_jpeg(bytes) {
        let jpeg = to_jpeg("jpeg", bytes.to_vec(), max_image_bytes)?;
        return Ok(Incoming::Image {
            jpeg,
            timestamp_ms: now_ms,
            relay: false,
        });
    }
    let frames = protocol::decode(bytes).map_err(|e| {
        format!("binary message: expected msgpack [timestamp_ms, index, jpg] or a JPEG: {e}")
    })?;
    let [frame] = frames.as_slice() else {
        return Err(format!(
            "binary message: expected one frame, found {}",
            frames.len()
        ));
    };
    let Payload::Bytes(jpeg) = &frame.jpeg else {
        return Err("binary message: file paths are not accepted over the network".into());
    };
    let jpeg = to_jpeg("jpeg", jpeg.to_vec(), max_image_bytes)?;
    Ok(Incoming::Image {
        jpeg,
        timestamp_ms: frame.timestamp_ms,
        relay: false,
    })
}

/// Checks a JPEG, or converts a PNG to JPEG.
pub fn to_jpeg(format: &str, bytes: Vec<u8>, max_image_bytes: usize) -> Result<Vec<u8>, String> {
    if bytes.len() > max_image_bytes {
        return Err(format!(
            "image: {} bytes is over the limit of {max_image_bytes} bytes per image",
            bytes.len()
        ));
    }
    match format.to_ascii_lowercase().as_str() {
        "jpeg" | "jpg" => {
            // No pixel limit here: check_dimensions says what the limit is.
            let (w, h) = jpeg_size(&bytes, 0).map_err(|e| format!("image: {e}"))?;
            check_dimensions(w, h)?;
            Ok(bytes)
        }
        "png" => png_to_jpeg(&bytes, max_image_bytes),
        other => Err(format!(
            "image: format \"{}\" is not supported: send jpeg or png",
            other.chars().take(20).collect::<String>()
        )),
    }
}

fn check_dimensions(w: usize, h: usize) -> Result<(), String> {
    if w > MAX_DIMENSION || h > MAX_DIMENSION {
        return Err(format!(
            "image: {w} x {h} is larger than {MAX_DIMENSION} x {MAX_DIMENSION}"
        ));
    }
    Ok(())
}

fn png_to_jpeg(bytes: &[u8], max_image_bytes: usize) -> Result<Vec<u8>, String> {
    let limits = png::Limits {
        bytes: (max_image_bytes * 4).max(1 << 20),
    };
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("image: not a PNG that decodes: {e}"))?;
    {
        let info = reader.info();
        check_dimensions(info.width as usize, info.height as usize)?;
    }
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("image: PNG data does not decode: {e}"))?;
    let (w, h, stride) = (frame.width as usize, frame.height as usize, frame.line_size);
    let (format, pixels) = match frame.color_type {
        png::ColorType::Rgb => (PackedFormat::Rgb, buf),
        png::ColorType::Rgba => (PackedFormat::Rgba, buf),
        png::ColorType::Grayscale => (PackedFormat::Gray, buf),
        png::ColorType::GrayscaleAlpha => {
            // Drop the alpha channel: gray + alpha has no TurboJPEG pixel format.
            let mut gray = Vec::with_capacity(w * h);
            for row in buf.chunks(stride).take(h) {
                gray.extend(row.chunks_exact(2).take(w).map(|p| p[0]));
            }
            (PackedFormat::Gray, gray)
        }
        other => return Err(format!("image: PNG colour type {other:?} is not supported")),
    };
    let stride =
        if format == PackedFormat::Gray && frame.color_type == png::ColorType::GrayscaleAlpha {
            w
        } else {
            stride
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

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn seed_001_image_message() {
        let text = format!(
            r#"{{"type": "image", "format": "jpeg", "data": "{}", "timestamp": 1700000000.25}}"#,
            b64(&jpeg_4x4())
        );
        match parse_text(&text, 1 << 20, 0).unwrap() {
            Incoming::Image {
                jpeg,
                timestamp_ms,
                relay,
            } => {
                assert_eq!(jpeg, jpeg_4x4());
                assert_eq!(timestamp_ms, 1_700_000_000_250);
                assert!(relay);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn png_becomes_jpeg() {
        let text = format!(
            r#"{{"type":"image","format":"PNG","data":"{}"}}"#,
            b64(&png_rgb(8, 6))
        );
        let Incoming::Image {
            jpeg, timestamp_ms, ..
        } = parse_text(&text, 1 << 20, 42).unwrap()
        else {
            panic!()
        };
        assert_eq!(timestamp_ms, 42);
        assert_eq!(jpeg_size(&jpeg, 0).unwrap(), (8, 6));
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        assert_eq!(
            parse_text(r#"{"type":"register","client_type":"consumer"}"#, 1, 0),
            Ok(Incoming::Register {
                client_type: "consumer".into()
            })
        );
        assert_eq!(parse_text(r#"{"type":"ping"}"#, 1, 0), Ok(Incoming::Ping));
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
            let e = parse_text(text, 1 << 20, 0).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn size_limits() {
        let big = b64(&vec![0xffu8; 5000]);
        let e = parse_text(&format!(r#"{{"type":"image","data":"{big}"}}"#), 2048, 0).unwrap_err();
        assert!(e.contains("over the limit of 2048"), "{e}");
        let e = to_jpeg("png", png_rgb(9000, 1), 1 << 26).unwrap_err();
        assert!(e.contains("larger than 8192"), "{e}");
    }

    #[test]
    fn binary_frames() {
        let msg = protocol::encode_frame(77, 3, &jpeg_4x4());
        assert_eq!(
            parse_binary(&msg, 1 << 20, 0).unwrap(),
            Incoming::Image {
                jpeg: jpeg_4x4(),
                timestamp_ms: 77,
                relay: false
            }
        );
        assert!(matches!(
            parse_binary(&jpeg_4x4(), 1 << 20, 5).unwrap(),
            Incoming::Image {
                timestamp_ms: 5,
                ..
            }
        ));
        let e = parse_binary(b"\x93\x01", 1 << 20, 0).unwrap_err();
        assert!(e.contains("binary message"), "{e}");
        let e = parse_binary(&protocol::encode_frame(1, 1, b"junk"), 1 << 20, 0).unwrap_err();
        assert!(e.contains("not a JPEG"), "{e}");
    }
}
