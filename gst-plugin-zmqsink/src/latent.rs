// SPDX-License-Identifier: MPL-2.0
//! Latents on the wire. Sent (`zmqmsgpacksink`, `zmqdispatchsink`): [`meta_from_caps`] and
//! [`encode_into`] make one tensor message per frame from `application/x-i2i-latent`
//! caps and buffers. Received (`zmqmsgpacksrc`, `zmqworkersrc`, `zmqcollectsrc`): one tensor message
//! ([`i2i_core::tensor`]) checked and turned into the `application/x-i2i-latent` caps and
//! float32 payload that `i2itransform output=latent` makes and `i2idecode` takes.
//!
//! A message is believed only once it is one frame: the payload matches the meta, the
//! dtype is float32 or float16, the shape is `[1, C, H, W]` (or NHWC) within `max-pixels`
//! elements, the image size (when given) is 8 x the latent size, and channels, layout and
//! scaling factor are those of the stream's first latents (a decoder downstream is built
//! for one model; only the size may change). Each refusal says why, by kind, so the
//! sources count each.

use i2i_core::tensor::{self, Dtype, LATENT_CAPS_NAME, TensorErrorKind, TensorMeta};

/// What the elements that carry either JPEG frames or latents take or give: `image/jpeg`,
/// then [`LATENT_CAPS_NAME`].
pub fn jpeg_or_latent_caps() -> gst::Caps {
    let mut caps = gst::Caps::new_empty_simple("image/jpeg");
    caps.get_mut()
        .expect("a new caps is writable")
        .append(gst::Caps::new_empty_simple(LATENT_CAPS_NAME));
    caps
}

/// Why a latent message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentDrop {
    /// Not msgpack, or not `[int, int, bin, map]`.
    Malformed,
    /// A payload whose length is not what the meta says (truncated, or wrong meta).
    Size,
    /// A dtype other than float32 or float16.
    Dtype,
    /// Not one `[1, C, H, W]` frame of positive sizes, or over the element bound.
    Shape,
    /// An image size that is not 8 x the latent size, or channels, layout or scaling
    /// factor other than the stream's.
    Meta,
    /// An image over `max-pixels`.
    Oversize,
}

/// Latent frames refused for a latent's own reasons, by reason; a malformed message and an
/// image over `max-pixels` count with the element's `dropped-malformed` and `dropped-oversize` figures.
#[derive(Debug, Default, Clone, Copy)]
pub struct LatentDrops {
    pub size: u64,
    pub dtype: u64,
    pub shape: u64,
    pub meta: u64,
}

impl LatentDrops {
    /// Counts `why`; false for `Malformed` and `Oversize`, which the caller counts.
    pub fn count(&mut self, why: LatentDrop) -> bool {
        match why {
            LatentDrop::Size => self.size += 1,
            LatentDrop::Dtype => self.dtype += 1,
            LatentDrop::Shape => self.shape += 1,
            LatentDrop::Meta => self.meta += 1,
            LatentDrop::Malformed | LatentDrop::Oversize => return false,
        }
        true
    }

    pub fn total(&self) -> u64 {
        self.size + self.dtype + self.shape + self.meta
    }

    /// `b` with the `dropped-latent-*` fields.
    pub fn fields(&self, b: gst::structure::Builder) -> gst::structure::Builder {
        b.field("dropped-latent-size", self.size)
            .field("dropped-latent-dtype", self.dtype)
            .field("dropped-latent-shape", self.shape)
            .field("dropped-latent-meta", self.meta)
    }
}

/// What latents of one stream share.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentStream {
    pub channels: i32,
    pub layout: String,
    pub scaling_factor: Option<f64>,
}

/// A checked latent frame; the payload borrows from the message when it can be used as
/// it is (float32 on a little-endian machine).
pub struct Latent<'a> {
    pub index: u64,
    pub timestamp_ms: i64,
    pub caps: gst::Caps,
    pub payload: LatentPayload<'a>,
}

pub enum LatentPayload<'a> {
    /// Float32 in native byte order, inside the message.
    InMessage(&'a [u8]),
    /// Float32 widened (or byte-swapped) from the wire.
    Converted(Vec<u8>),
}

impl Latent<'_> {
    pub fn len(&self) -> usize {
        match &self.payload {
            LatentPayload::InMessage(p) => p.len(),
            LatentPayload::Converted(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The wire meta (float32, as `i2itransform output=latent` makes them) for latent caps;
/// `element` names the sink in the refusal.
pub fn meta_from_caps(s: &gst::StructureRef, element: &str) -> Result<TensorMeta, String> {
    let dtype = s.get::<&str>("dtype").unwrap_or("float32");
    if dtype != "float32" {
        return Err(format!(
            "latent caps dtype {dtype} refused: {element} takes float32 latents (latent-dtype=f16 halves them on the wire)"
        ));
    }
    let layout = s.get::<&str>("layout").unwrap_or("nchw");
    let dim = |f: &str| -> Result<u64, String> {
        s.get::<i32>(f)
            .ok()
            .and_then(|v| u64::try_from(v).ok())
            .filter(|&v| v > 0)
            .ok_or_else(|| format!("latent caps lack a positive integer {f}"))
    };
    let (c, h, w) = (dim("channels")?, dim("height")?, dim("width")?);
    let image = |f: &str| s.get::<i32>(f).ok().and_then(|v| u32::try_from(v).ok());
    Ok(TensorMeta {
        dtype: Dtype::F32,
        shape: if layout == "nhwc" {
            vec![1, h, w, c]
        } else {
            vec![1, c, h, w]
        },
        layout: layout.to_owned(),
        scaling_factor: s.get::<f64>("scaling-factor").ok(),
        image_width: image("image-width"),
        image_height: image("image-height"),
    })
}

/// Bytes of a float32 buffer for `meta` (what a sink checks a latent buffer against).
pub fn f32_len(meta: &TensorMeta) -> u64 {
    meta.elements()
        .and_then(|n| n.checked_mul(4))
        .unwrap_or(u64::MAX)
}

/// What is wrong with a latent buffer of `size` bytes that is not one float32 frame of
/// `meta`, for the sink's warning; `None` when it is one.
pub fn f32_size_error(size: usize, meta: &TensorMeta) -> Option<String> {
    let expected = f32_len(meta);
    (size as u64 != expected).then(|| {
        format!(
            "{size} bytes where the caps say float32 {:?} = {expected} bytes (truncated, or caps of another model)",
            meta.shape
        )
    })
}

/// Packs one frame's float32 latents (native byte order) into `msg` as the tensor form,
/// in `meta.dtype` on the wire; `wire` holds the converted payload when one is needed.
pub fn encode_into(
    msg: &mut Vec<u8>,
    wire: &mut Vec<u8>,
    timestamp_ms: i64,
    index: u64,
    f32_ne: &[u8],
    meta: &TensorMeta,
) {
    if meta.dtype == Dtype::F32 && cfg!(target_endian = "little") {
        tensor::encode_into(msg, timestamp_ms, index, f32_ne, meta);
    } else {
        tensor::f32_ne_to_wire(f32_ne, meta.dtype, wire);
        tensor::encode_into(msg, timestamp_ms, index, wire, meta);
    }
}

/// `application/x-i2i-latent` caps (float32, as `i2itransform` makes them) for `meta`.
fn caps_for(
    meta: &TensorMeta,
    framerate: gst::Fraction,
) -> Result<(gst::Caps, LatentStream), (LatentDrop, String)> {
    let dims: Option<[i32; 3]> = match (meta.layout.as_str(), meta.shape.as_slice()) {
        ("nchw", &[1, c, h, w]) | ("nhwc", &[1, h, w, c]) => {
            match (i32::try_from(c), i32::try_from(h), i32::try_from(w)) {
                (Ok(c), Ok(h), Ok(w)) => Some([c, h, w]),
                _ => None,
            }
        }
        _ => None,
    };
    let [c, h, w] = dims.ok_or_else(|| {
        (
            LatentDrop::Shape,
            format!(
                "layout {:?}: latents are one frame, [1, C, H, W] (nchw) or [1, H, W, C] (nhwc)",
                meta.layout
            ),
        )
    })?;
    let image = |v: Option<u32>, latent: i32, name: &str| -> Result<i32, (LatentDrop, String)> {
        match v {
            None => i32::try_from(8 * latent as i64).map_err(|_| {
                (
                    LatentDrop::Shape,
                    format!("latent {name} {latent} is too large"),
                )
            }),
            Some(v) if v as i64 == 8 * latent as i64 => Ok(v as i32),
            Some(v) => Err((
                LatentDrop::Meta,
                format!("meta image-{name} {v} is not 8 x the latent {name} {latent}"),
            )),
        }
    };
    let image_width = image(meta.image_width, w, "width")?;
    let image_height = image(meta.image_height, h, "height")?;
    let mut b = gst::Caps::builder(LATENT_CAPS_NAME)
        .field("dtype", Dtype::F32.name())
        .field("layout", meta.layout.as_str())
        .field("channels", c)
        .field("width", w)
        .field("height", h)
        .field("image-width", image_width)
        .field("image-height", image_height);
    if let Some(v) = meta.scaling_factor {
        b = b.field("scaling-factor", v);
    }
    if framerate.numer() > 0 {
        b = b.field("framerate", framerate);
    }
    let stream = LatentStream {
        channels: c,
        layout: meta.layout.clone(),
        scaling_factor: meta.scaling_factor,
    };
    Ok((b.build(), stream))
}

/// Checks one tensor message (see the module text); `stream` holds the stream's first
/// latents' channels, layout and scaling factor, set by the first good message.
pub fn check<'a>(
    msg: &'a [u8],
    max_pixels: u64,
    framerate: gst::Fraction,
    stream: &mut Option<LatentStream>,
) -> Result<Latent<'a>, (LatentDrop, String)> {
    let frame = tensor::decode(msg, max_pixels).map_err(|e| {
        let why = match e.kind {
            TensorErrorKind::Malformed => LatentDrop::Malformed,
            TensorErrorKind::Dtype => LatentDrop::Dtype,
            TensorErrorKind::Shape => LatentDrop::Shape,
            TensorErrorKind::Size => LatentDrop::Size,
        };
        (
            why,
            format!("Dropped a latent message of {} bytes: {e}", msg.len()),
        )
    })?;
    let meta = &frame.meta;
    let dropped = |(why, e): (LatentDrop, String)| {
        (
            why,
            format!(
                "Dropped latent frame {} ({} bytes, {} {:?}): {e}",
                frame.index,
                msg.len(),
                meta.dtype.name(),
                meta.shape
            ),
        )
    };
    if let (Some(w), Some(h)) = (meta.image_width, meta.image_height)
        && max_pixels > 0
        && w as u64 * h as u64 > max_pixels
    {
        return Err(dropped((
            LatentDrop::Oversize,
            format!("image {w}x{h} is over max-pixels ({max_pixels})"),
        )));
    }
    let (caps, this) = caps_for(meta, framerate).map_err(dropped)?;
    match stream {
        Some(first) if *first != this => {
            return Err(dropped((
                LatentDrop::Meta,
                format!(
                    "{} channels, layout {}, scaling factor {:?} where the stream's first latents had {} channels, layout {}, scaling factor {:?} (another model's latents; restart the receiver to change models)",
                    this.channels,
                    this.layout,
                    this.scaling_factor,
                    first.channels,
                    first.layout,
                    first.scaling_factor
                ),
            )));
        }
        Some(_) => {}
        None => *stream = Some(this),
    }
    let payload = if meta.dtype == Dtype::F32 && cfg!(target_endian = "little") {
        LatentPayload::InMessage(frame.payload)
    } else {
        LatentPayload::Converted(tensor::wire_to_f32_ne(frame.payload, meta.dtype))
    };
    Ok(Latent {
        index: frame.index,
        timestamp_ms: frame.timestamp_ms,
        caps,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(shape: &[u64], w: u32, h: u32) -> TensorMeta {
        TensorMeta {
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            layout: "nchw".into(),
            scaling_factor: Some(0.18215),
            image_width: Some(w),
            image_height: Some(h),
        }
    }

    #[test]
    fn caps_from_the_meta_and_the_stream_rule() {
        gst::init().unwrap();
        let fps = gst::Fraction::new(25, 1);
        let mut stream = None;
        let payload = vec![0u8; 4 * 6 * 8 * 4];
        let msg = tensor::encode(5, 7, &payload, &meta(&[1, 4, 6, 8], 64, 48));
        let l = check(&msg, 0, fps, &mut stream).unwrap();
        assert_eq!((l.index, l.timestamp_ms, l.len()), (7, 5, payload.len()));
        let s = l.caps.structure(0).unwrap();
        assert_eq!(s.name(), LATENT_CAPS_NAME);
        assert_eq!(s.get::<i32>("width").unwrap(), 8);
        assert_eq!(s.get::<i32>("image-height").unwrap(), 48);
        assert_eq!(s.get::<gst::Fraction>("framerate").unwrap(), fps);
        // Another size of the same model: new caps, accepted.
        let small = tensor::encode(
            5,
            8,
            &payload[..4 * 4 * 4 * 4],
            &meta(&[1, 4, 4, 4], 32, 32),
        );
        assert!(check(&small, 0, fps, &mut stream).is_ok());
        // Three channels: another model.
        let other = tensor::encode(
            5,
            9,
            &payload[..3 * 8 * 8 * 4],
            &meta(&[1, 3, 8, 8], 64, 64),
        );
        let Err((why, text)) = check(&other, 0, fps, &mut stream) else {
            panic!("accepted")
        };
        assert_eq!(why, LatentDrop::Meta);
        assert!(
            text.contains("latent frame 9") && text.contains("3 channels"),
            "{text}"
        );
        // An image size that is not 8 x the latents.
        let odd = tensor::encode(5, 10, &payload, &meta(&[1, 4, 6, 8], 65, 48));
        assert_eq!(
            check(&odd, 0, fps, &mut stream).err().unwrap().0,
            LatentDrop::Meta
        );
        // A batch of two is not one frame.
        let two = tensor::encode(5, 11, &payload, &meta(&[2, 4, 3, 8], 64, 48));
        assert_eq!(
            check(&two, 0, fps, &mut stream).err().unwrap().0,
            LatentDrop::Shape
        );
        // float16 is widened to float32.
        let mut half = meta(&[1, 4, 6, 8], 64, 48);
        half.dtype = Dtype::F16;
        let msg = tensor::encode(5, 12, &payload[..payload.len() / 2], &half);
        let l = check(&msg, 0, fps, &mut stream).unwrap();
        assert!(matches!(l.payload, LatentPayload::Converted(ref v) if v.len() == payload.len()));
    }
}
