// SPDX-License-Identifier: MPL-2.0
//! The messages between `zmqdispatchsink` (ROUTER, on the primary) and `zmqworkersrc`
//! (DEALER, on each worker), free of GStreamer.
//!
//! Every message is a ZeroMQ multipart message whose first frame names its kind; the
//! ROUTER adds and strips the worker's identity frame in front of it.
//!
//! Worker to primary:
//! - `["ready", {session, credit, taken, batch, name}]`: sent whenever the worker takes
//!   frames into its pipeline, and as a heartbeat. `credit` is absolute: the number of
//!   frames of this session the worker is prepared to have received in total (frames it
//!   has taken plus the room it has), so repeating or losing a ready message never
//!   over- or under-commits. `session` is the primary's session the counts refer to (0
//!   before the worker has heard from a primary).
//! - `["bye"]`: the worker leaves after finishing its frames.
//!
//! Primary to worker:
//! - `["job", frame or batch message]`: one frame as `[timestamp, index, jpg]`, or
//!   consecutive frames as the original system's batch map `{timestamp, index, frames,
//!   indices}` with an extra key `timestamps` holding each frame's own timestamp (readers
//!   that do not know it use `timestamp` for all).
//! - `["job", tensor message, tensor message, ...]`: latent frames
//!   (`application/x-i2i-latent`), each part one frame in the transport's tensor form
//!   `[timestamp, index, payload, meta]` ([`i2i_core::tensor`]), self-describing frame by
//!   frame; a batch is one part per frame. A worker that only knows the JPEG forms reads
//!   the first part, sees an array of 4, and drops it by name.
//! - `["hb", {session}]`: the primary's heartbeat; a new session tells the worker to
//!   count from zero again (the primary restarted).
//! - `["drain", {session}]`: the input ended; the worker should finish its in-flight frames.

use std::fmt;

pub const KIND_READY: &[u8] = b"ready";
pub const KIND_BYE: &[u8] = b"bye";
pub const KIND_JOB: &[u8] = b"job";
pub const KIND_HEARTBEAT: &[u8] = b"hb";
pub const KIND_DRAIN: &[u8] = b"drain";

/// Longest worker name carried in a ready message; longer names are cut.
pub const MAX_NAME_LEN: usize = 128;

/// Why a control message could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

fn err(msg: impl Into<String>) -> WireError {
    WireError(msg.into())
}

/// A worker's state, as sent in its ready messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub session: u64,
    pub credit: u64,
    pub taken: u64,
    pub batch: u32,
    pub name: String,
}

/// A message from a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerMsg {
    Ready(Ready),
    Bye,
}

/// A message from the primary. `Job` borrows the frame or batch message, `LatentJob` the
/// tensor messages, one per frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryMsg<'a> {
    Job(&'a [u8]),
    LatentJob(Vec<&'a [u8]>),
    Heartbeat { session: u64 },
    Drain { session: u64 },
}

fn write_map_u64(out: &mut Vec<u8>, key: &str, value: u64) {
    rmp::encode::write_str(out, key).expect("write to Vec");
    rmp::encode::write_uint(out, value).expect("write to Vec");
}

/// The parts of a ready message.
pub fn encode_ready(ready: &Ready) -> [Vec<u8>; 2] {
    let mut body = Vec::with_capacity(64 + ready.name.len());
    rmp::encode::write_map_len(&mut body, 5).expect("write to Vec");
    write_map_u64(&mut body, "session", ready.session);
    write_map_u64(&mut body, "credit", ready.credit);
    write_map_u64(&mut body, "taken", ready.taken);
    write_map_u64(&mut body, "batch", u64::from(ready.batch));
    rmp::encode::write_str(&mut body, "name").expect("write to Vec");
    let name = truncate_name(&ready.name);
    rmp::encode::write_str(&mut body, name).expect("write to Vec");
    [KIND_READY.to_vec(), body]
}

fn truncate_name(name: &str) -> &str {
    if name.len() <= MAX_NAME_LEN {
        return name;
    }
    let mut end = MAX_NAME_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The parts of a bye message.
pub fn encode_bye() -> [Vec<u8>; 1] {
    [KIND_BYE.to_vec()]
}

fn encode_session(kind: &[u8], session: u64) -> [Vec<u8>; 2] {
    let mut body = Vec::with_capacity(16);
    rmp::encode::write_map_len(&mut body, 1).expect("write to Vec");
    write_map_u64(&mut body, "session", session);
    [kind.to_vec(), body]
}

/// The parts of a heartbeat from the primary.
pub fn encode_heartbeat(session: u64) -> [Vec<u8>; 2] {
    encode_session(KIND_HEARTBEAT, session)
}

/// The parts of a drain request from the primary.
pub fn encode_drain(session: u64) -> [Vec<u8>; 2] {
    encode_session(KIND_DRAIN, session)
}

/// One frame of a job: its index, its entry timestamp (ms since the Unix epoch), its JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobFrame<'a> {
    pub index: u64,
    pub timestamp_ms: i64,
    pub jpeg: &'a [u8],
}

/// The body of a job message: `[timestamp, index, jpg]` for one frame, the batch map with
/// per-frame `timestamps` for more.
pub fn encode_job(frames: &[JobFrame<'_>]) -> Vec<u8> {
    if let [one] = frames {
        return i2i_core::protocol::encode_frame(one.timestamp_ms, one.index, one.jpeg);
    }
    let first = frames.first();
    let mut out = Vec::with_capacity(96 + frames.iter().map(|f| f.jpeg.len() + 24).sum::<usize>());
    rmp::encode::write_map_len(&mut out, 5).expect("write to Vec");
    rmp::encode::write_str(&mut out, "timestamp").expect("write to Vec");
    rmp::encode::write_sint(&mut out, first.map(|f| f.timestamp_ms).unwrap_or(0))
        .expect("write to Vec");
    write_map_u64(&mut out, "index", first.map(|f| f.index).unwrap_or(0));
    rmp::encode::write_str(&mut out, "frames").expect("write to Vec");
    rmp::encode::write_array_len(&mut out, frames.len() as u32).expect("write to Vec");
    for f in frames {
        rmp::encode::write_bin(&mut out, f.jpeg).expect("write to Vec");
    }
    rmp::encode::write_str(&mut out, "indices").expect("write to Vec");
    rmp::encode::write_array_len(&mut out, frames.len() as u32).expect("write to Vec");
    for f in frames {
        rmp::encode::write_uint(&mut out, f.index).expect("write to Vec");
    }
    rmp::encode::write_str(&mut out, "timestamps").expect("write to Vec");
    rmp::encode::write_array_len(&mut out, frames.len() as u32).expect("write to Vec");
    for f in frames {
        rmp::encode::write_sint(&mut out, f.timestamp_ms).expect("write to Vec");
    }
    out
}

/// The parts of a job of latent frames, each already a tensor message.
pub fn latent_job_parts<'a>(messages: impl IntoIterator<Item = &'a [u8]>) -> Vec<&'a [u8]> {
    std::iter::once(KIND_JOB).chain(messages).collect()
}

/// The per-frame `timestamps` of a batch map, when the message has them and they are
/// well formed; `None` for a frame message or a batch from another sender.
pub fn batch_timestamps(msg: &[u8]) -> Option<Vec<i64>> {
    let mut rd = msg;
    let value = rmpv::decode::read_value_ref(&mut rd).ok()?;
    let rmpv::ValueRef::Map(entries) = value else {
        return None;
    };
    let (_, v) = entries.iter().find(|(k, _)| match k {
        rmpv::ValueRef::String(s) => s.as_str() == Some("timestamps"),
        _ => false,
    })?;
    let rmpv::ValueRef::Array(items) = v else {
        return None;
    };
    items
        .iter()
        .map(|item| match item {
            rmpv::ValueRef::Integer(i) => i.as_i64(),
            _ => None,
        })
        .collect()
}

fn read_map<'a>(
    body: &'a [u8],
    what: &str,
) -> Result<Vec<(String, rmpv::ValueRef<'a>)>, WireError> {
    let mut rd = body;
    let value = rmpv::decode::read_value_ref(&mut rd).map_err(|e| {
        err(format!(
            "{what}: body is not msgpack ({} bytes): {e}",
            body.len()
        ))
    })?;
    let rmpv::ValueRef::Map(entries) = value else {
        return Err(err(format!("{what}: body is not a msgpack map")));
    };
    Ok(entries
        .into_iter()
        .filter_map(|(k, v)| match k {
            rmpv::ValueRef::String(s) => s.as_str().map(|s| (s.to_owned(), v)),
            _ => None,
        })
        .collect())
}

fn get_u64(map: &[(String, rmpv::ValueRef<'_>)], key: &str, what: &str) -> Result<u64, WireError> {
    match map.iter().find(|(k, _)| k == key).map(|(_, v)| v) {
        Some(rmpv::ValueRef::Integer(i)) => i.as_u64().ok_or_else(|| {
            err(format!(
                "{what}: '{key}' must be a non-negative integer, found {i}"
            ))
        }),
        Some(_) => Err(err(format!("{what}: '{key}' must be an integer"))),
        None => Err(err(format!("{what}: missing key '{key}'"))),
    }
}

/// Reads a message from a worker, as received by the ROUTER after the identity frame.
pub fn decode_worker<T: AsRef<[u8]>>(parts: &[T]) -> Result<WorkerMsg, WireError> {
    let Some(kind) = parts.first().map(|p| p.as_ref()) else {
        return Err(err("empty message from a worker"));
    };
    match kind {
        KIND_READY => {
            let body = parts
                .get(1)
                .ok_or_else(|| err("ready message without a body"))?
                .as_ref();
            let map = read_map(body, "ready message")?;
            let batch = get_u64(&map, "batch", "ready message")?;
            let name = match map.iter().find(|(k, _)| k == "name").map(|(_, v)| v) {
                Some(rmpv::ValueRef::String(s)) => {
                    truncate_name(s.as_str().unwrap_or("")).to_owned()
                }
                _ => String::new(),
            };
            Ok(WorkerMsg::Ready(Ready {
                session: get_u64(&map, "session", "ready message")?,
                credit: get_u64(&map, "credit", "ready message")?,
                taken: get_u64(&map, "taken", "ready message")?,
                batch: u32::try_from(batch.clamp(1, 1024)).unwrap_or(1),
                name,
            }))
        }
        KIND_BYE => Ok(WorkerMsg::Bye),
        other => Err(err(format!(
            "unknown message kind '{}' from a worker (expected ready or bye)",
            String::from_utf8_lossy(&other[..other.len().min(32)])
        ))),
    }
}

/// Reads a message from the primary, as received by the DEALER.
pub fn decode_primary<T: AsRef<[u8]>>(parts: &[T]) -> Result<PrimaryMsg<'_>, WireError> {
    let Some(kind) = parts.first().map(|p| p.as_ref()) else {
        return Err(err("empty message from the primary"));
    };
    let body = |what: &str| {
        parts
            .get(1)
            .map(|p| p.as_ref())
            .ok_or_else(|| err(format!("{what} message without a body")))
    };
    match kind {
        KIND_JOB => {
            let first = body("job")?;
            if i2i_core::tensor::is_tensor_message(first) {
                Ok(PrimaryMsg::LatentJob(
                    parts[1..].iter().map(|p| p.as_ref()).collect(),
                ))
            } else {
                Ok(PrimaryMsg::Job(first))
            }
        }
        KIND_HEARTBEAT => {
            let map = read_map(body("heartbeat")?, "heartbeat")?;
            Ok(PrimaryMsg::Heartbeat {
                session: get_u64(&map, "session", "heartbeat")?,
            })
        }
        KIND_DRAIN => {
            let map = read_map(body("drain")?, "drain")?;
            Ok(PrimaryMsg::Drain {
                session: get_u64(&map, "session", "drain")?,
            })
        }
        other => Err(err(format!(
            "unknown message kind '{}' from the primary (expected job, hb or drain)",
            String::from_utf8_lossy(&other[..other.len().min(32)])
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use i2i_core::protocol::{self, Payload};

    #[test]
    fn ready_round_trip() {
        let ready = Ready {
            session: 0xDEAD_BEEF_0000_0001,
            credit: 12,
            taken: 10,
            batch: 2,
            name: "gpu-box:1234".into(),
        };
        let parts = encode_ready(&ready);
        assert_eq!(decode_worker(&parts).unwrap(), WorkerMsg::Ready(ready));
        assert_eq!(decode_worker(&encode_bye()).unwrap(), WorkerMsg::Bye);
    }

    #[test]
    fn long_names_are_cut_on_a_char_boundary() {
        let ready = Ready {
            session: 1,
            credit: 1,
            taken: 0,
            batch: 1,
            name: "é".repeat(200),
        };
        let WorkerMsg::Ready(back) = decode_worker(&encode_ready(&ready)).unwrap() else {
            panic!("not ready");
        };
        assert!(back.name.len() <= MAX_NAME_LEN);
        assert!(back.name.chars().all(|c| c == 'é'));
    }

    #[test]
    fn primary_messages_round_trip() {
        assert_eq!(
            decode_primary(&encode_heartbeat(7)).unwrap(),
            PrimaryMsg::Heartbeat { session: 7 }
        );
        assert_eq!(
            decode_primary(&encode_drain(9)).unwrap(),
            PrimaryMsg::Drain { session: 9 }
        );
        let job = [KIND_JOB.to_vec(), vec![1, 2, 3]];
        assert_eq!(decode_primary(&job).unwrap(), PrimaryMsg::Job(&[1, 2, 3]));
    }

    #[test]
    fn single_frame_job_is_the_plain_frame_message() {
        let jpeg = b"\xff\xd8\xff\xe0one";
        let body = encode_job(&[JobFrame {
            index: 5,
            timestamp_ms: 1000,
            jpeg,
        }]);
        assert_eq!(body, protocol::encode_frame(1000, 5, jpeg));
        assert_eq!(batch_timestamps(&body), None);
    }

    #[test]
    fn batch_job_is_readable_by_the_transport_decoder() {
        let a = b"\xff\xd8\xff\xe0a".as_slice();
        let b = b"\xff\xd8\xff\xe0b".as_slice();
        let body = encode_job(&[
            JobFrame {
                index: 10,
                timestamp_ms: 100,
                jpeg: a,
            },
            JobFrame {
                index: 11,
                timestamp_ms: 133,
                jpeg: b,
            },
        ]);
        let frames = protocol::decode(&body).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!((frames[0].index, frames[1].index), (10, 11));
        assert_eq!(frames[0].timestamp_ms, 100);
        assert_eq!(frames[1].jpeg, Payload::Bytes(b.into()));
        assert_eq!(batch_timestamps(&body), Some(vec![100, 133]));
    }

    #[test]
    fn latent_job_is_one_tensor_message_per_frame() {
        use i2i_core::tensor::{self, Dtype, TensorMeta};
        let meta = TensorMeta {
            dtype: Dtype::F16,
            shape: vec![1, 4, 2, 2],
            layout: "nchw".into(),
            scaling_factor: Some(0.18215),
            image_width: Some(16),
            image_height: Some(16),
        };
        let payload = [7u8; 32];
        let a = tensor::encode(100, 10, &payload, &meta);
        let b = tensor::encode(133, 11, &payload, &meta);
        let parts = latent_job_parts([a.as_slice(), b.as_slice()]);
        assert_eq!(parts[0], KIND_JOB);
        let PrimaryMsg::LatentJob(frames) = decode_primary(&parts).unwrap() else {
            panic!("not a latent job");
        };
        assert_eq!(frames, vec![a.as_slice(), b.as_slice()]);
        let f = tensor::decode(frames[1], 0).unwrap();
        assert_eq!((f.timestamp_ms, f.index, f.meta), (133, 11, meta));
        // The JPEG forms stay what they were.
        let jpeg = encode_job(&[JobFrame {
            index: 1,
            timestamp_ms: 2,
            jpeg: b"\xff\xd8",
        }]);
        assert!(matches!(
            decode_primary(&[KIND_JOB.to_vec(), jpeg]).unwrap(),
            PrimaryMsg::Job(_)
        ));
    }

    #[test]
    fn bad_control_messages_name_the_problem() {
        let empty: [&[u8]; 0] = [];
        let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
            (vec![b"hello".to_vec()], "unknown message kind 'hello'"),
            (vec![KIND_READY.to_vec()], "without a body"),
            (vec![KIND_READY.to_vec(), vec![0xdc]], "not msgpack"),
            (
                vec![KIND_READY.to_vec(), vec![0x93, 1, 2, 3]],
                "not a msgpack map",
            ),
            (vec![KIND_READY.to_vec(), vec![0x80]], "missing key 'batch'"),
        ];
        assert!(decode_worker(&empty).unwrap_err().0.contains("empty"));
        for (parts, expected) in cases {
            let e = decode_worker(&parts).unwrap_err();
            assert!(
                e.0.contains(expected),
                "{parts:?}: '{e}' lacks '{expected}'"
            );
        }
        let e = decode_primary(&[KIND_HEARTBEAT.to_vec(), vec![0x81, 0xa7]]).unwrap_err();
        assert!(e.0.contains("heartbeat"), "{e}");
        let e = decode_primary(&[b"x".to_vec()]).unwrap_err();
        assert!(e.0.contains("unknown message kind"), "{e}");
    }
}
