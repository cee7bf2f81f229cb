// SPDX-License-Identifier: MPL-2.0
//! The tensor form of the wire protocol, free of GStreamer: one message
//! `[timestamp, index, payload, meta]` carries one tensor (a frame's latents), so a UNet
//! machine can send latents to a decoder machine instead of pictures.
//!
//! - `timestamp`, `index`: as in the JPEG form `[timestamp, index, jpg]` ([`crate::protocol`]);
//! - `payload`: msgpack `bin`, the tensor's elements in row-major order, little-endian;
//! - `meta`: a msgpack map that describes the payload, so a receiver needs no side channel:
//!   `dtype` ("float32" or "float16"), `shape` (array of positive integers, e.g.
//!   `[1, 4, 64, 64]`), `layout` ("nchw"), and, for latents, `scaling-factor` (float),
//!   `image-width` and `image-height` (the picture the latents decode to).
//!
//! The JPEG form is unchanged: a receiver of the JPEG form sees an array of 4 and refuses
//! it by name. A message is checked before it is believed: the payload must hold exactly
//! `prod(shape) * dtype size` bytes, the shape at most [`MAX_DIMS`] dimensions whose product
//! fits the receiver's bound, and the meta map is walked marker by marker before anything
//! is built, as [`crate::protocol`] does.

use std::fmt;

use crate::protocol::type_name;

/// Caps name of latent frames in GStreamer (`i2itransform output=latent`, `i2idecode`, the
/// ZeroMQ elements): float32 `[1, channels, height, width]` (the VAE decoder's input,
/// already divided by `scaling-factor`), native byte order.
pub const LATENT_CAPS_NAME: &str = "application/x-i2i-latent";

/// Element types a tensor message may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
}

impl Dtype {
    /// The name on the wire and in caps.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
        }
    }

    pub fn from_name(name: &str) -> Option<Dtype> {
        match name {
            "float32" => Some(Dtype::F32),
            "float16" => Some(Dtype::F16),
            _ => None,
        }
    }
}

/// Most dimensions a shape may have.
pub const MAX_DIMS: usize = 8;
/// Most keys a meta map may hold (six are read, a few more are tolerated).
const MAX_META_KEYS: u32 = 16;

/// What describes a tensor payload.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub layout: String,
    pub scaling_factor: Option<f64>,
    pub image_width: Option<u32>,
    pub image_height: Option<u32>,
}

impl TensorMeta {
    /// Number of elements, `None` on overflow.
    pub fn elements(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Payload bytes the meta promises, `None` on overflow.
    pub fn payload_len(&self) -> Option<u64> {
        self.elements()?.checked_mul(self.dtype.size() as u64)
    }
}

/// Why a tensor message was refused, by kind, so receivers can count each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorErrorKind {
    /// Not msgpack, or not `[int, int, bin, map]`, or a meta field of the wrong type.
    Malformed,
    /// A dtype this receiver does not know.
    Dtype,
    /// A shape with no, too many, zero or overflowing dimensions, or over the bound.
    Shape,
    /// A payload whose length is not `prod(shape) * dtype size` (truncated or wrong meta).
    Size,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorError {
    pub kind: TensorErrorKind,
    pub text: String,
}

impl fmt::Display for TensorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for TensorError {}

fn terr(kind: TensorErrorKind, text: impl Into<String>) -> TensorError {
    TensorError {
        kind,
        text: text.into(),
    }
}

/// One tensor as received; the payload borrows from the message.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorFrame<'a> {
    pub timestamp_ms: i64,
    pub index: u64,
    pub payload: &'a [u8],
    pub meta: TensorMeta,
}

/// True when `msg` has the tensor form's first marker (an array of 4): the JPEG form and
/// the batch map do not.
pub fn is_tensor_message(msg: &[u8]) -> bool {
    matches!(msg.first(), Some(0x94))
}

/// Encodes `[timestamp_ms, index, payload, meta]` into `out` (cleared first).
pub fn encode_into(
    out: &mut Vec<u8>,
    timestamp_ms: i64,
    index: u64,
    payload: &[u8],
    meta: &TensorMeta,
) {
    out.clear();
    out.reserve(payload.len() + 160);
    // Writing into a Vec cannot fail.
    fn w<T, E: fmt::Debug>(r: Result<T, E>) {
        r.expect("write to Vec");
    }
    w(rmp::encode::write_array_len(out, 4));
    w(rmp::encode::write_sint(out, timestamp_ms));
    w(rmp::encode::write_uint(out, index));
    w(rmp::encode::write_bin_len(out, payload.len() as u32));
    out.extend_from_slice(payload);
    let n = 3
        + meta.scaling_factor.is_some() as u32
        + meta.image_width.is_some() as u32
        + meta.image_height.is_some() as u32;
    w(rmp::encode::write_map_len(out, n));
    w(rmp::encode::write_str(out, "dtype"));
    w(rmp::encode::write_str(out, meta.dtype.name()));
    w(rmp::encode::write_str(out, "shape"));
    w(rmp::encode::write_array_len(out, meta.shape.len() as u32));
    for &d in &meta.shape {
        w(rmp::encode::write_uint(out, d));
    }
    w(rmp::encode::write_str(out, "layout"));
    w(rmp::encode::write_str(out, &meta.layout));
    if let Some(s) = meta.scaling_factor {
        w(rmp::encode::write_str(out, "scaling-factor"));
        w(rmp::encode::write_f64(out, s));
    }
    if let Some(v) = meta.image_width {
        w(rmp::encode::write_str(out, "image-width"));
        w(rmp::encode::write_uint(out, v as u64));
    }
    if let Some(v) = meta.image_height {
        w(rmp::encode::write_str(out, "image-height"));
        w(rmp::encode::write_uint(out, v as u64));
    }
}

/// Encodes a tensor message into a new buffer.
pub fn encode(timestamp_ms: i64, index: u64, payload: &[u8], meta: &TensorMeta) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, timestamp_ms, index, payload, meta);
    out
}

/// Walks the markers of `[scalar, scalar, scalar, {str: scalar | [scalar; <= MAX_DIMS]}]`
/// without building anything, so a meta of millions of values is refused at its head.
fn check_markers(msg: &[u8]) -> Result<(), String> {
    use rmp::Marker as M;
    let mut rd = msg;
    let marker = |rd: &mut &[u8]| {
        rmp::decode::read_marker(rd).map_err(|_| "the message ends early".to_string())
    };
    let take = |rd: &mut &[u8], n: usize| -> Result<(), String> {
        if rd.len() < n {
            return Err(format!(
                "the message ends early (a value of {n} bytes, {} left)",
                rd.len()
            ));
        }
        *rd = &rd[n..];
        Ok(())
    };
    let be = |rd: &mut &[u8], n: usize| -> Result<usize, String> {
        if rd.len() < n {
            return Err("the message ends early".into());
        }
        let v = rd[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        *rd = &rd[n..];
        Ok(v)
    };
    let scalar = |rd: &mut &[u8], m: M, what: &str| -> Result<(), String> {
        let n = match m {
            M::FixPos(_) | M::FixNeg(_) | M::Null | M::True | M::False => 0,
            M::U8 | M::I8 => 1,
            M::U16 | M::I16 => 2,
            M::U32 | M::I32 | M::F32 => 4,
            M::U64 | M::I64 | M::F64 => 8,
            M::FixStr(n) => n as usize,
            M::Str8 | M::Bin8 => be(rd, 1)?,
            M::Str16 | M::Bin16 => be(rd, 2)?,
            M::Str32 | M::Bin32 => be(rd, 4)?,
            _ => return Err(format!("{what}: expected a number, string or bin")),
        };
        take(rd, n)
    };
    if marker(&mut rd)? != M::FixArray(4) {
        return Err("expected an array of 4 [timestamp, index, payload, meta]".into());
    }
    for i in 0..3 {
        let m = marker(&mut rd)?;
        scalar(&mut rd, m, &format!("element {i}"))?;
    }
    let n = match marker(&mut rd)? {
        M::FixMap(n) => n as usize,
        M::Map16 => be(&mut rd, 2)?,
        M::Map32 => be(&mut rd, 4)?,
        _ => return Err("meta (element 3): expected a map".into()),
    };
    if n > MAX_META_KEYS as usize {
        return Err(format!(
            "meta (element 3): {n} keys, at most {MAX_META_KEYS} accepted"
        ));
    }
    for k in 0..n {
        let m = marker(&mut rd)?;
        scalar(&mut rd, m, &format!("meta key {k}"))?;
        let dims = match marker(&mut rd)? {
            M::FixArray(d) => d as usize,
            M::Array16 => be(&mut rd, 2)?,
            M::Array32 => be(&mut rd, 4)?,
            m => {
                scalar(&mut rd, m, &format!("meta value {k}"))?;
                continue;
            }
        };
        if dims > MAX_DIMS {
            return Err(format!(
                "meta value {k}: an array of {dims}, at most {MAX_DIMS} accepted"
            ));
        }
        for _ in 0..dims {
            let m = marker(&mut rd)?;
            scalar(&mut rd, m, &format!("meta value {k}"))?;
        }
    }
    Ok(())
}

/// Decodes and checks one tensor message. `max_elements` bounds `prod(shape)` (0 = no
/// bound beyond overflow). The payload borrows from `msg`.
pub fn decode(msg: &[u8], max_elements: u64) -> Result<TensorFrame<'_>, TensorError> {
    use TensorErrorKind as K;
    let malformed = |t: String| terr(K::Malformed, t);
    check_markers(msg).map_err(|e| {
        malformed(format!(
            "not a tensor message [timestamp, index, payload, meta] ({} bytes): {e}",
            msg.len()
        ))
    })?;
    let mut rd = msg;
    let value = rmpv::decode::read_value_ref(&mut rd)
        .map_err(|e| malformed(format!("not a msgpack message ({} bytes): {e}", msg.len())))?;
    if !rd.is_empty() {
        return Err(malformed(format!(
            "{} trailing bytes after the msgpack value",
            rd.len()
        )));
    }
    let rmpv::ValueRef::Array(items) = value else {
        return Err(malformed("expected an array of 4".into()));
    };
    let timestamp_ms = match &items[0] {
        rmpv::ValueRef::Integer(i) => i.as_i64(),
        rmpv::ValueRef::F64(f) if f.is_finite() => Some(*f as i64),
        _ => None,
    }
    .ok_or_else(|| {
        malformed(format!(
            "timestamp (element 0): expected an integer (ms since the Unix epoch), found {}",
            type_name(&items[0])
        ))
    })?;
    let index = match &items[1] {
        rmpv::ValueRef::Integer(i) => i.as_u64(),
        _ => None,
    }
    .ok_or_else(|| {
        malformed(format!(
            "index (element 1): expected a non-negative integer, found {}",
            type_name(&items[1])
        ))
    })?;
    let rmpv::ValueRef::Binary(payload) = items[2] else {
        return Err(malformed(format!(
            "payload (element 2): expected bin, found {}",
            type_name(&items[2])
        )));
    };
    let rmpv::ValueRef::Map(entries) = &items[3] else {
        return Err(malformed("meta (element 3): expected a map".into()));
    };
    let field = |name: &str| {
        entries.iter().find_map(|(k, v)| match k {
            rmpv::ValueRef::String(s) if s.as_str() == Some(name) => Some(v),
            _ => None,
        })
    };
    let text = |name: &str| -> Result<Option<&str>, TensorError> {
        match field(name) {
            None => Ok(None),
            Some(rmpv::ValueRef::String(s)) => s
                .as_str()
                .map(Some)
                .ok_or_else(|| malformed(format!("meta {name}: not valid UTF-8"))),
            Some(v) => Err(malformed(format!(
                "meta {name}: expected a string, found {}",
                type_name(v)
            ))),
        }
    };
    let size = |name: &str| -> Result<Option<u32>, TensorError> {
        match field(name) {
            None => Ok(None),
            Some(rmpv::ValueRef::Integer(i)) => i
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| v > 0)
                .map(Some)
                .ok_or_else(|| terr(K::Shape, format!("meta {name}: {i} is not a size"))),
            Some(v) => Err(malformed(format!(
                "meta {name}: expected an integer, found {}",
                type_name(v)
            ))),
        }
    };
    let dtype_name = text("dtype")?.ok_or_else(|| malformed("meta: missing key 'dtype'".into()))?;
    let dtype = Dtype::from_name(dtype_name).ok_or_else(|| {
        terr(
            K::Dtype,
            format!("meta dtype {dtype_name:?} unknown: float32 and float16 are carried"),
        )
    })?;
    let shape = match field("shape") {
        None => return Err(malformed("meta: missing key 'shape'".into())),
        Some(rmpv::ValueRef::Array(dims)) => {
            dims.iter()
                .enumerate()
                .map(|(i, d)| match d {
                    rmpv::ValueRef::Integer(v) => v.as_u64().filter(|&v| v > 0).ok_or_else(|| {
                        terr(K::Shape, format!("meta shape[{i}]: {v} is not positive"))
                    }),
                    other => Err(malformed(format!(
                        "meta shape[{i}]: expected an integer, found {}",
                        type_name(other)
                    ))),
                })
                .collect::<Result<Vec<u64>, _>>()?
        }
        Some(other) => {
            return Err(malformed(format!(
                "meta shape: expected an array, found {}",
                type_name(other)
            )));
        }
    };
    if shape.is_empty() {
        return Err(terr(K::Shape, "meta shape: no dimensions"));
    }
    let scaling_factor = match field("scaling-factor") {
        None | Some(rmpv::ValueRef::Nil) => None,
        Some(rmpv::ValueRef::F64(f)) if f.is_finite() => Some(*f),
        Some(rmpv::ValueRef::F32(f)) if f.is_finite() => Some(*f as f64),
        Some(rmpv::ValueRef::Integer(i)) => i.as_f64(),
        Some(v) => {
            return Err(malformed(format!(
                "meta scaling-factor: expected a finite number, found {}",
                type_name(v)
            )));
        }
    };
    let meta = TensorMeta {
        dtype,
        layout: text("layout")?.unwrap_or("nchw").to_owned(),
        scaling_factor,
        image_width: size("image-width")?,
        image_height: size("image-height")?,
        shape,
    };
    let shape_text = format!("{:?}", meta.shape);
    let elements = meta.elements().ok_or_else(|| {
        terr(
            K::Shape,
            format!("meta shape {shape_text}: the element count overflows"),
        )
    })?;
    if max_elements > 0 && elements > max_elements {
        return Err(terr(
            K::Shape,
            format!(
                "meta shape {shape_text}: {elements} elements, at most {max_elements} accepted (max-pixels)"
            ),
        ));
    }
    let expected = meta.payload_len().unwrap_or(u64::MAX);
    if payload.len() as u64 != expected {
        return Err(terr(
            K::Size,
            format!(
                "payload of {} bytes where meta {} {shape_text} says {expected} bytes (truncated, or meta of another tensor)",
                payload.len(),
                meta.dtype.name()
            ),
        ));
    }
    Ok(TensorFrame {
        timestamp_ms,
        index,
        payload,
        meta,
    })
}

/// Float32 elements in native byte order to the wire's little-endian `dtype`.
pub fn f32_ne_to_wire(src: &[u8], dtype: Dtype, out: &mut Vec<u8>) {
    out.clear();
    let values = src
        .chunks_exact(4)
        .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
    match dtype {
        Dtype::F32 => {
            out.reserve(src.len());
            values.for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        Dtype::F16 => {
            out.reserve(src.len() / 2);
            values.for_each(|v| out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()));
        }
    }
}

/// The wire's little-endian `dtype` elements to float32 in native byte order.
pub fn wire_to_f32_ne(src: &[u8], dtype: Dtype) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / dtype.size() * 4);
    match dtype {
        Dtype::F32 => src.chunks_exact(4).for_each(|c| {
            out.extend_from_slice(&f32::from_le_bytes([c[0], c[1], c[2], c[3]]).to_ne_bytes())
        }),
        Dtype::F16 => src.chunks_exact(2).for_each(|c| {
            out.extend_from_slice(
                &half::f16::from_le_bytes([c[0], c[1]])
                    .to_f32()
                    .to_ne_bytes(),
            )
        }),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(dtype: Dtype, shape: &[u64]) -> TensorMeta {
        TensorMeta {
            dtype,
            shape: shape.to_vec(),
            layout: "nchw".into(),
            scaling_factor: Some(0.18215),
            image_width: Some(64),
            image_height: Some(48),
        }
    }

    #[test]
    fn round_trip() {
        let m = meta(Dtype::F32, &[1, 4, 6, 8]);
        let payload: Vec<u8> = (0..4 * 6 * 8 * 4).map(|i| i as u8).collect();
        let msg = encode(1_700_000_000_123, 42, &payload, &m);
        assert!(is_tensor_message(&msg));
        assert!(!is_tensor_message(&crate::protocol::encode_frame(
            1, 2, b"x"
        )));
        let t = decode(&msg, 0).unwrap();
        assert_eq!(t.timestamp_ms, 1_700_000_000_123);
        assert_eq!(t.index, 42);
        assert_eq!(t.payload, &payload[..]);
        assert_eq!(t.meta, m);
        // The JPEG decoder refuses it by name.
        let e = crate::protocol::decode(&msg).unwrap_err();
        assert!(e.0.contains("array of 4"), "{e}");
    }

    #[test]
    fn bad_tensors_are_refused_by_kind() {
        use TensorErrorKind as K;
        let m = meta(Dtype::F32, &[1, 4, 6, 8]);
        let good = vec![0u8; 4 * 6 * 8 * 4];
        let msg = encode(1, 2, &good, &m);
        // Truncated payload (meta says more).
        let e = decode(&encode(1, 2, &good[..good.len() - 4], &m), 0).unwrap_err();
        assert_eq!(e.kind, K::Size, "{e}");
        assert!(e.text.contains("768 bytes"), "{e}");
        // Meta of another dtype for the same bytes.
        let e = decode(&encode(1, 2, &good, &meta(Dtype::F16, &[1, 4, 6, 8])), 0).unwrap_err();
        assert_eq!(e.kind, K::Size);
        // Unknown dtype.
        let mut bad = encode(1, 2, &good, &m);
        let at = bad.windows(7).position(|w| w == b"float32").unwrap();
        bad[at..at + 7].copy_from_slice(b"int8xyz");
        let e = decode(&bad, 0).unwrap_err();
        assert_eq!(e.kind, K::Dtype);
        assert!(e.text.contains("int8xyz"), "{e}");
        // Absurd shapes: over the bound, overflowing, zero, too many dimensions.
        let huge = meta(Dtype::F32, &[1, 4, 1 << 20, 1 << 20]);
        assert_eq!(
            decode(&encode(1, 2, &good, &huge), 1 << 26)
                .unwrap_err()
                .kind,
            K::Shape
        );
        let overflow = meta(Dtype::F32, &[u64::MAX, u64::MAX]);
        assert_eq!(
            decode(&encode(1, 2, &good, &overflow), 0).unwrap_err().kind,
            K::Shape
        );
        let zero = meta(Dtype::F32, &[1, 0, 6, 8]);
        assert_eq!(
            decode(&encode(1, 2, &good, &zero), 0).unwrap_err().kind,
            K::Shape
        );
        let many = meta(Dtype::F32, &[1; 9]);
        assert_eq!(
            decode(&encode(1, 2, &good, &many), 0).unwrap_err().kind,
            K::Malformed
        );
        // Every truncation of a whole message is an error, not a panic.
        for cut in 0..msg.len() {
            assert!(decode(&msg[..cut], 0).is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn float16_on_the_wire_halves_the_payload() {
        let values = [0.0f32, 1.0, -2.5, 0.333, 1e-3];
        let ne: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut wire = Vec::new();
        f32_ne_to_wire(&ne, Dtype::F16, &mut wire);
        assert_eq!(wire.len(), ne.len() / 2);
        let back = wire_to_f32_ne(&wire, Dtype::F16);
        for (c, v) in back.chunks_exact(4).zip(values) {
            let b = f32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            assert!(
                (b - v).abs() <= v.abs() * 1e-3 + 1e-6,
                "{v} came back as {b}"
            );
        }
        f32_ne_to_wire(&ne, Dtype::F32, &mut wire);
        assert_eq!(wire_to_f32_ne(&wire, Dtype::F32), ne);
    }
}
