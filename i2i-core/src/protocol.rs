// SPDX-License-Identifier: MPL-2.0
//! The wire format of the frame transport, free of GStreamer.
//!
//! A frame message is a msgpack array of three: `[timestamp, index, jpg]`.
//! - `timestamp`: integer, milliseconds since the Unix epoch at which the frame entered
//!   the first pipeline, so that a receiver's `now - timestamp` is the end-to-end latency;
//! - `index`: integer, the frame index;
//! - `jpg`: msgpack `bin`, one JPEG image.
//!
//! The original system also sends batch messages to its workers: a msgpack map with
//! the keys `timestamp`, `index`, `frames` and `indices`, where `frames` holds JPEG
//! bytes or paths to JPEG files. [`decode`] accepts both shapes.
//!
//! Tensors (latents) travel in a fourth shape, `[timestamp, index, payload, meta]`, read
//! by [`crate::tensor`]; [`decode`] refuses it by name.

use std::fmt;

/// One frame as carried on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub timestamp_ms: i64,
    pub index: u64,
    pub jpeg: Payload<'a>,
}

/// What a message holds for one frame: the JPEG bytes, or (batch messages only) the
/// path of a JPEG file on the receiver's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload<'a> {
    Bytes(std::borrow::Cow<'a, [u8]>),
    Path(String),
}

/// Why a message could not be read. The text names the field and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn err(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

/// Bytes of msgpack framing around the JPEG in one frame message, at most.
pub const FRAME_OVERHEAD: usize = 1 + 9 + 9 + 5;

/// Encodes `[timestamp_ms, index, jpg]` into `out` (cleared first), reusing its allocation.
pub fn encode_frame_into(out: &mut Vec<u8>, timestamp_ms: i64, index: u64, jpeg: &[u8]) {
    out.clear();
    out.reserve(jpeg.len() + FRAME_OVERHEAD);
    // Writing into a Vec cannot fail.
    rmp::encode::write_array_len(out, 3).expect("write to Vec");
    rmp::encode::write_sint(out, timestamp_ms).expect("write to Vec");
    rmp::encode::write_uint(out, index).expect("write to Vec");
    rmp::encode::write_bin_len(out, jpeg.len() as u32).expect("write to Vec");
    out.extend_from_slice(jpeg);
}

/// Encodes `[timestamp_ms, index, jpg]` into a new buffer.
pub fn encode_frame(timestamp_ms: i64, index: u64, jpeg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_into(&mut out, timestamp_ms, index, jpeg);
    out
}

/// Encodes the original system's batch message
/// `{"timestamp": t, "index": first index, "frames": [jpg, ...], "indices": [i, ...]}`.
pub fn encode_batch(timestamp_ms: i64, frames: &[(u64, &[u8])]) -> Vec<u8> {
    let first = frames.first().map(|f| f.0).unwrap_or(0);
    let mut out = Vec::with_capacity(64 + frames.iter().map(|f| f.1.len() + 5).sum::<usize>());
    rmp::encode::write_map_len(&mut out, 4).expect("write to Vec");
    rmp::encode::write_str(&mut out, "timestamp").expect("write to Vec");
    rmp::encode::write_sint(&mut out, timestamp_ms).expect("write to Vec");
    rmp::encode::write_str(&mut out, "index").expect("write to Vec");
    rmp::encode::write_uint(&mut out, first).expect("write to Vec");
    rmp::encode::write_str(&mut out, "frames").expect("write to Vec");
    rmp::encode::write_array_len(&mut out, frames.len() as u32).expect("write to Vec");
    for (_, jpeg) in frames {
        rmp::encode::write_bin(&mut out, jpeg).expect("write to Vec");
    }
    rmp::encode::write_str(&mut out, "indices").expect("write to Vec");
    rmp::encode::write_array_len(&mut out, frames.len() as u32).expect("write to Vec");
    for (index, _) in frames {
        rmp::encode::write_uint(&mut out, *index).expect("write to Vec");
    }
    out
}

/// The msgpack type of `v`, as error messages name it.
pub(crate) fn type_name(v: &rmpv::ValueRef<'_>) -> &'static str {
    use rmpv::ValueRef::*;
    match v {
        Nil => "nil",
        Boolean(_) => "bool",
        Integer(_) => "int",
        F32(_) | F64(_) => "float",
        String(_) => "str",
        Binary(_) => "bin",
        Array(_) => "array",
        Map(_) => "map",
        Ext(..) => "ext",
    }
}

fn as_timestamp(v: &rmpv::ValueRef<'_>, what: &str) -> Result<i64, ProtocolError> {
    match v {
        rmpv::ValueRef::Integer(i) => i
            .as_i64()
            .ok_or_else(|| err(format!("{what}: integer {i} does not fit in i64"))),
        // Some senders (Python's time.time() * 1000) send floats: accept whole milliseconds.
        rmpv::ValueRef::F64(f) if f.is_finite() => Ok(*f as i64),
        rmpv::ValueRef::F32(f) if f.is_finite() => Ok(*f as i64),
        other => Err(err(format!(
            "{what}: expected an integer (ms since the Unix epoch), found {}",
            type_name(other)
        ))),
    }
}

fn as_index(v: &rmpv::ValueRef<'_>, what: &str) -> Result<u64, ProtocolError> {
    match v {
        rmpv::ValueRef::Integer(i) => i.as_u64().ok_or_else(|| {
            err(format!(
                "{what}: expected a non-negative integer, found {i}"
            ))
        }),
        other => Err(err(format!(
            "{what}: expected a non-negative integer, found {}",
            type_name(other)
        ))),
    }
}

/// Decodes one message into its frames: one for `[timestamp, index, jpg]`, one per entry
/// of `frames` for a batch map. JPEG bytes borrow from `msg`.
pub fn decode(msg: &[u8]) -> Result<Vec<Frame<'_>>, ProtocolError> {
    check_shape(msg).map_err(|e| {
        if e.0.contains("ends early") {
            err(format!(
                "not a msgpack message ({} bytes): {}",
                msg.len(),
                e.0
            ))
        } else {
            e
        }
    })?;
    let mut rd = msg;
    let value = rmpv::decode::read_value_ref(&mut rd)
        .map_err(|e| err(format!("not a msgpack message ({} bytes): {e}", msg.len())))?;
    if !rd.is_empty() {
        return Err(err(format!(
            "{} trailing bytes after the msgpack value",
            rd.len()
        )));
    }
    match value {
        rmpv::ValueRef::Array(items) => {
            if items.len() != 3 {
                return Err(err(format!(
                    "expected an array of 3 [timestamp, index, jpg], found an array of {}",
                    items.len()
                )));
            }
            let timestamp_ms = as_timestamp(&items[0], "timestamp (element 0)")?;
            let index = as_index(&items[1], "index (element 1)")?;
            let jpeg = match &items[2] {
                rmpv::ValueRef::Binary(b) => Payload::Bytes(std::borrow::Cow::Borrowed(b)),
                other => {
                    return Err(err(format!(
                        "jpg (element 2): expected bin, found {}",
                        type_name(other)
                    )));
                }
            };
            Ok(vec![Frame {
                timestamp_ms,
                index,
                jpeg,
            }])
        }
        rmpv::ValueRef::Map(entries) => decode_batch(&entries),
        other => Err(err(format!(
            "expected an array [timestamp, index, jpg] or a batch map, found {}",
            type_name(&other)
        ))),
    }
}

/// Most frames (and indices) a batch message may hold.
pub const MAX_BATCH_FRAMES: u32 = 4096;
/// Most keys a batch map may hold (four are read, a few more are tolerated).
const MAX_BATCH_KEYS: u32 = 16;

/// Checks that `msg` is one of the two accepted shapes by walking its msgpack markers,
/// before anything is built in memory: a message of millions of one-byte values (which a
/// generic decoder turns into gigabytes of values) is refused at its first marker.
fn check_shape(msg: &[u8]) -> Result<(), ProtocolError> {
    let mut rd = msg;
    let not_msgpack = |e: String| err(format!("not a msgpack message ({} bytes): {e}", msg.len()));
    match read_marker(&mut rd).map_err(not_msgpack)? {
        rmp::Marker::FixArray(3) => {
            for i in 0..3 {
                skip_scalar(&mut rd, &format!("element {i} of the frame array"))?;
            }
        }
        rmp::Marker::FixArray(4) => {
            return Err(err(
                "expected an array of 3 [timestamp, index, jpg], found an array of 4: a tensor \
                 message [timestamp, index, payload, meta] (latents), which this receiver does \
                 not take (zmqmsgpacksrc does)",
            ));
        }
        rmp::Marker::FixArray(n) => {
            return Err(err(format!(
                "expected an array of 3 [timestamp, index, jpg], found an array of {n}"
            )));
        }
        m @ (rmp::Marker::Array16 | rmp::Marker::Array32) => {
            let n = container_len(&mut rd, m)?;
            return Err(err(format!(
                "expected an array of 3 [timestamp, index, jpg], found an array of {n}"
            )));
        }
        m @ (rmp::Marker::FixMap(_) | rmp::Marker::Map16 | rmp::Marker::Map32) => {
            let n = container_len(&mut rd, m)?;
            if n > MAX_BATCH_KEYS {
                return Err(err(format!(
                    "batch map: {n} keys, at most {MAX_BATCH_KEYS} accepted"
                )));
            }
            for _ in 0..n {
                let key = read_str(&mut rd)?;
                let key = String::from_utf8_lossy(key).into_owned();
                match read_marker(&mut rd).map_err(not_msgpack)? {
                    // Per-frame lists ("frames", "indices", "timestamps"): scalars only,
                    // bounded in length.
                    m
                    @ (rmp::Marker::FixArray(_) | rmp::Marker::Array16 | rmp::Marker::Array32) => {
                        let len = container_len(&mut rd, m)?;
                        if len > MAX_BATCH_FRAMES {
                            return Err(err(format!(
                                "batch {key}: {len} entries, at most {MAX_BATCH_FRAMES} accepted"
                            )));
                        }
                        for i in 0..len {
                            skip_scalar(&mut rd, &format!("batch {key}[{i}]"))?;
                        }
                    }
                    m => skip_scalar_after(&mut rd, m, &format!("batch value of '{key}'"))?,
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn read_marker(rd: &mut &[u8]) -> Result<rmp::Marker, String> {
    rmp::decode::read_marker(rd).map_err(|_| "the message ends early".to_string())
}

fn take<'a>(rd: &mut &'a [u8], n: usize) -> Result<&'a [u8], ProtocolError> {
    if rd.len() < n {
        return Err(err(format!(
            "the message ends early (a value of {n} bytes, {} left)",
            rd.len()
        )));
    }
    let (head, tail) = rd.split_at(n);
    *rd = tail;
    Ok(head)
}

fn be_len(rd: &mut &[u8], bytes: usize) -> Result<usize, ProtocolError> {
    Ok(take(rd, bytes)?
        .iter()
        .fold(0usize, |acc, &b| (acc << 8) | b as usize))
}

fn container_len(rd: &mut &[u8], m: rmp::Marker) -> Result<u32, ProtocolError> {
    Ok(match m {
        rmp::Marker::FixArray(n) | rmp::Marker::FixMap(n) => n as u32,
        rmp::Marker::Array16 | rmp::Marker::Map16 => be_len(rd, 2)? as u32,
        rmp::Marker::Array32 | rmp::Marker::Map32 => be_len(rd, 4)? as u32,
        _ => 0,
    })
}

fn read_str<'a>(rd: &mut &'a [u8]) -> Result<&'a [u8], ProtocolError> {
    let m = read_marker(rd).map_err(err)?;
    let n = match m {
        rmp::Marker::FixStr(n) => n as usize,
        rmp::Marker::Str8 | rmp::Marker::Bin8 => be_len(rd, 1)?,
        rmp::Marker::Str16 | rmp::Marker::Bin16 => be_len(rd, 2)?,
        rmp::Marker::Str32 | rmp::Marker::Bin32 => be_len(rd, 4)?,
        other => {
            return Err(err(format!(
                "batch map: expected a string key, found marker {other:?}"
            )));
        }
    };
    take(rd, n)
}

fn skip_scalar(rd: &mut &[u8], what: &str) -> Result<(), ProtocolError> {
    let m = read_marker(rd).map_err(err)?;
    skip_scalar_after(rd, m, what)
}

/// Skips the value that starts with marker `m`; an array, map or extension is refused.
fn skip_scalar_after(rd: &mut &[u8], m: rmp::Marker, what: &str) -> Result<(), ProtocolError> {
    use rmp::Marker as M;
    let n = match m {
        M::FixPos(_) | M::FixNeg(_) | M::Null | M::True | M::False => 0,
        M::U8 | M::I8 => 1,
        M::U16 | M::I16 => 2,
        M::U32 | M::I32 | M::F32 => 4,
        M::U64 | M::I64 | M::F64 => 8,
        M::FixStr(n) => n as usize,
        M::Str8 | M::Bin8 => be_len(rd, 1)?,
        M::Str16 | M::Bin16 => be_len(rd, 2)?,
        M::Str32 | M::Bin32 => be_len(rd, 4)?,
        other => {
            return Err(err(format!(
                "{what}: expected a number, string or bin, found {}",
                match other {
                    M::FixArray(_) | M::Array16 | M::Array32 => "an array",
                    M::FixMap(_) | M::Map16 | M::Map32 => "a map",
                    _ => "an extension or reserved marker",
                }
            )));
        }
    };
    take(rd, n).map(|_| ())
}

fn decode_batch<'a>(
    entries: &[(rmpv::ValueRef<'a>, rmpv::ValueRef<'a>)],
) -> Result<Vec<Frame<'a>>, ProtocolError> {
    let field = |name: &str| {
        entries.iter().find_map(|(k, v)| match k {
            rmpv::ValueRef::String(s) if s.as_str() == Some(name) => Some(v),
            rmpv::ValueRef::Binary(s) if *s == name.as_bytes() => Some(v),
            _ => None,
        })
    };
    let missing = |name: &str| err(format!("batch map: missing key '{name}'"));
    let timestamp_ms = as_timestamp(
        field("timestamp").ok_or_else(|| missing("timestamp"))?,
        "batch timestamp",
    )?;
    let first_index = as_index(
        field("index").ok_or_else(|| missing("index"))?,
        "batch index",
    )?;
    let frames = match field("frames").ok_or_else(|| missing("frames"))? {
        rmpv::ValueRef::Array(a) => a,
        other => {
            return Err(err(format!(
                "batch frames: expected an array, found {}",
                type_name(other)
            )));
        }
    };
    let indices: Vec<u64> = match field("indices") {
        Some(rmpv::ValueRef::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| as_index(v, &format!("batch indices[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(rmpv::ValueRef::Nil) | None => {
            (0..frames.len() as u64).map(|i| first_index + i).collect()
        }
        Some(other) => {
            return Err(err(format!(
                "batch indices: expected an array, found {}",
                type_name(other)
            )));
        }
    };
    if indices.len() != frames.len() {
        return Err(err(format!(
            "batch: {} frames but {} indices",
            frames.len(),
            indices.len()
        )));
    }
    frames
        .iter()
        .zip(indices)
        .enumerate()
        .map(|(i, (f, index))| {
            let jpeg = match f {
                rmpv::ValueRef::Binary(b) => Payload::Bytes(std::borrow::Cow::Borrowed(b)),
                rmpv::ValueRef::String(s) => match s.as_str() {
                    Some(p) => Payload::Path(p.to_owned()),
                    None => {
                        return Err(err(format!("batch frames[{i}]: path is not valid UTF-8")));
                    }
                },
                other => {
                    return Err(err(format!(
                        "batch frames[{i}]: expected bin (JPEG) or str (path), found {}",
                        type_name(other)
                    )));
                }
            };
            Ok(Frame {
                timestamp_ms,
                index,
                jpeg,
            })
        })
        .collect()
}

/// True when `data` starts like a JPEG file (SOI marker followed by another marker).
pub fn looks_like_jpeg(data: &[u8]) -> bool {
    data.len() >= 4 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF
}

/// Where `part` (a slice borrowed from `msg`, e.g. a [`Payload::Bytes`] from [`decode`])
/// lies inside `msg`, so a receiver can share that byte range instead of copying it.
pub fn range_in(msg: &[u8], part: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(msg.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= msg.len()).then_some(start..end)
}

/// The Unix time (ns) at which a frame entered the pipeline, from clock readings taken
/// together: `unix_now` and `clock_now` are "now" on the Unix clock and on the pipeline
/// clock; `clock_time` is the frame's running time plus the pipeline's base time. A frame
/// cannot have entered after now, so a later result (a non-live source running ahead
/// of the clock) is clamped to `unix_now`.
pub fn unix_time_of_clock_time(unix_now: u64, clock_now: u64, clock_time: u64) -> u64 {
    let age = clock_now.saturating_sub(clock_time);
    unix_now.saturating_sub(age)
}

/// Nanoseconds since the Unix epoch for a wire timestamp in milliseconds; `None` before
/// the epoch or past what fits in 64 bits of nanoseconds.
pub fn timestamp_ms_to_ns(timestamp_ms: i64) -> Option<u64> {
    u64::try_from(timestamp_ms).ok()?.checked_mul(1_000_000)
}

/// Milliseconds since the Unix epoch for nanoseconds since it (truncated, as the
/// original system's `int(time.time() * 1000)`).
pub fn ns_to_timestamp_ms(unix_ns: u64) -> i64 {
    (unix_ns / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_small_values_is_refused_before_it_is_built() {
        // 8 MB of one-byte values in an array, a map and a batch's frames: each is refused
        // at its first markers (a generic decoder would build millions of values).
        let n = 8_000_000u32;
        for head in [
            {
                let mut v = Vec::new();
                rmp::encode::write_array_len(&mut v, n).unwrap();
                v
            },
            {
                let mut v = Vec::new();
                rmp::encode::write_map_len(&mut v, 1).unwrap();
                rmp::encode::write_str(&mut v, "frames").unwrap();
                rmp::encode::write_array_len(&mut v, n).unwrap();
                v
            },
            {
                let mut v = Vec::new();
                rmp::encode::write_array_len(&mut v, 3).unwrap();
                rmp::encode::write_array_len(&mut v, n).unwrap();
                v
            },
        ] {
            let mut msg = head;
            msg.resize(msg.len() + n as usize, 0x01);
            // check_shape alone refuses it: nothing is built.
            assert!(check_shape(&msg).is_err());
            let e = decode(&msg).unwrap_err();
            assert!(
                e.0.contains("array of")
                    || e.0.contains("at most")
                    || e.0.contains("found an array"),
                "{e}"
            );
        }
        // The two accepted shapes still pass the check.
        assert!(check_shape(&encode_frame(1, 2, b"\xff\xd8")).is_ok());
        assert!(check_shape(&encode_batch(1, &[(1, &b"a"[..]), (2, &b"b"[..])])).is_ok());
    }

    fn bytes<'a>(p: &'a Payload<'_>) -> &'a [u8] {
        match p {
            Payload::Bytes(b) => b,
            Payload::Path(_) => panic!("expected bytes"),
        }
    }

    #[test]
    fn frame_round_trip() {
        let msg = encode_frame(1_700_000_000_123, 42, b"\xff\xd8\xff\xe0jpeg");
        let frames = decode(&msg).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].timestamp_ms, 1_700_000_000_123);
        assert_eq!(frames[0].index, 42);
        assert_eq!(bytes(&frames[0].jpeg), b"\xff\xd8\xff\xe0jpeg");
    }

    #[test]
    fn frame_layout_is_array_int_int_bin() {
        let msg = encode_frame(5, 7, &[1, 2, 3]);
        // fixarray(3), positive fixint 5, positive fixint 7, bin8 len 3, bytes
        assert_eq!(msg, vec![0x93, 0x05, 0x07, 0xc4, 0x03, 1, 2, 3]);
    }

    #[test]
    fn encode_into_reuses_buffer() {
        let mut out = Vec::new();
        encode_frame_into(&mut out, 1, 2, &[9; 100]);
        let cap = out.capacity();
        encode_frame_into(&mut out, 1, 3, &[9; 50]);
        assert_eq!(out.capacity(), cap);
        assert_eq!(decode(&out).unwrap()[0].index, 3);
    }

    #[test]
    fn batch_round_trip() {
        let a = b"\xff\xd8\xff\xe0a".as_slice();
        let b = b"\xff\xd8\xff\xe0b".as_slice();
        let msg = encode_batch(99, &[(10, a), (11, b)]);
        let frames = decode(&msg).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!((frames[0].index, frames[1].index), (10, 11));
        assert_eq!(frames[1].timestamp_ms, 99);
        assert_eq!(bytes(&frames[1].jpeg), b);
    }

    #[test]
    fn batch_with_paths() {
        // {"timestamp": 1, "index": 3, "frames": ["/a.jpg"], "indices": [3]}
        let mut m = Vec::new();
        rmp::encode::write_map_len(&mut m, 4).unwrap();
        rmp::encode::write_str(&mut m, "timestamp").unwrap();
        rmp::encode::write_uint(&mut m, 1).unwrap();
        rmp::encode::write_str(&mut m, "index").unwrap();
        rmp::encode::write_uint(&mut m, 3).unwrap();
        rmp::encode::write_str(&mut m, "frames").unwrap();
        rmp::encode::write_array_len(&mut m, 1).unwrap();
        rmp::encode::write_str(&mut m, "/a.jpg").unwrap();
        rmp::encode::write_str(&mut m, "indices").unwrap();
        rmp::encode::write_array_len(&mut m, 1).unwrap();
        rmp::encode::write_uint(&mut m, 3).unwrap();
        let frames = decode(&m).unwrap();
        assert_eq!(frames[0].jpeg, Payload::Path("/a.jpg".into()));
        assert_eq!(frames[0].index, 3);
    }

    #[test]
    fn bad_messages_name_the_problem() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "not a msgpack message"),
            (vec![0xdc], "not a msgpack message"),
            (vec![0x92, 0x01, 0x02], "array of 2"),
            (
                vec![0x93, 0xa1, b'x', 0x01, 0xc4, 0x00],
                "timestamp (element 0)",
            ),
            (vec![0x93, 0x01, 0xff, 0xc4, 0x00], "index (element 1)"),
            (
                vec![0x93, 0x01, 0x02, 0xa1, b'x'],
                "jpg (element 2): expected bin, found str",
            ),
            (vec![0x05], "found int"),
            (vec![0x93, 0x01, 0x02, 0xc4, 0x00, 0x00], "trailing bytes"),
            (vec![0x80], "missing key 'timestamp'"),
        ];
        for (msg, expected) in cases {
            let e = decode(&msg).unwrap_err();
            assert!(
                e.0.contains(expected),
                "message {msg:02x?}: error '{e}' does not mention '{expected}'"
            );
        }
    }

    #[test]
    fn truncated_message_is_an_error_not_a_panic() {
        let msg = encode_frame(1, 2, &[7; 300]);
        for cut in 0..msg.len() {
            assert!(decode(&msg[..cut]).is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn jpeg_sniffing() {
        assert!(looks_like_jpeg(b"\xff\xd8\xff\xe0\x00\x10JFIF"));
        assert!(!looks_like_jpeg(b"\x89PNG\r\n"));
        assert!(!looks_like_jpeg(b"\xff\xd8"));
    }

    #[test]
    fn range_of_a_decoded_payload() {
        let msg = encode_frame(1_700_000_000_000, 300, &[0xab; 1000]);
        let frames = decode(&msg).unwrap();
        let r = range_in(&msg, bytes(&frames[0].jpeg)).unwrap();
        assert_eq!(r.len(), 1000);
        assert_eq!(r.end, msg.len());
        assert!(msg[r].iter().all(|&b| b == 0xab));
        let other = [0u8; 4];
        assert_eq!(range_in(&msg, &other), None);
    }

    #[test]
    fn clock_to_unix_time() {
        // A frame that entered 30 ms ago on the pipeline clock entered 30 ms ago in Unix time.
        assert_eq!(
            unix_time_of_clock_time(10_000_000_000, 500_000_000, 470_000_000),
            9_970_000_000
        );
        // Ahead of the clock (sync=false on a non-live source): clamped to now.
        assert_eq!(
            unix_time_of_clock_time(10_000_000_000, 500_000_000, 900_000_000),
            10_000_000_000
        );
        assert_eq!(
            timestamp_ms_to_ns(1_700_000_000_123),
            Some(1_700_000_000_123_000_000)
        );
        assert_eq!(timestamp_ms_to_ns(-1), None);
        assert_eq!(
            ns_to_timestamp_ms(1_700_000_000_123_999_999),
            1_700_000_000_123
        );
    }
}
