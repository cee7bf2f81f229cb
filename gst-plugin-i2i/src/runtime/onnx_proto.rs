// SPDX-License-Identifier: MPL-2.0
//! Reads the declared graph inputs (name, element type, dimensions) of an ONNX file without
//! ONNX Runtime, streaming over the protobuf and seeking past nodes and weights. TensorRT
//! needs the inputs' ranks before its session exists (its optimisation profiles name every
//! dynamic input, and a scalar timestep must not be named).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// A graph input: `dims[i] = None` for a dynamic dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredInput {
    pub name: String,
    /// ONNX `TensorProto.DataType` (1 float, 10 float16, 7 int64, 6 int32, ...).
    pub elem_type: i32,
    pub dims: Vec<Option<i64>>,
}

impl DeclaredInput {
    pub fn is_dynamic(&self) -> bool {
        self.dims.iter().any(Option::is_none)
    }
}

fn varint<R: Read>(r: &mut R) -> std::io::Result<Option<u64>> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let mut b = [0u8; 1];
        if r.read(&mut b)? == 0 {
            return if shift == 0 {
                Ok(None)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "truncated varint",
                ))
            };
        }
        v |= ((b[0] & 0x7f) as u64) << shift;
        if b[0] & 0x80 == 0 {
            return Ok(Some(v));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "varint too long",
    ))
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// Skips a field of wire type `wt` whose tag was just read.
fn skip<R: Read + Seek>(r: &mut R, wt: u64) -> std::io::Result<()> {
    match wt {
        0 => {
            varint(r)?.ok_or_else(|| bad("truncated"))?;
        }
        1 => {
            r.seek(SeekFrom::Current(8))?;
        }
        2 => {
            let len = varint(r)?.ok_or_else(|| bad("truncated"))?;
            r.seek(SeekFrom::Current(len as i64))?;
        }
        5 => {
            r.seek(SeekFrom::Current(4))?;
        }
        _ => return Err(bad("unsupported wire type")),
    }
    Ok(())
}

/// One field of an in-memory message: (field number, wire type, bytes, varint value).
type Field<'a> = (u64, u64, &'a [u8], u64);

/// The fields of an in-memory message.
fn fields(mut buf: &[u8]) -> std::io::Result<Vec<Field<'_>>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let mut cur = std::io::Cursor::new(buf);
        let tag = varint(&mut cur)?.ok_or_else(|| bad("truncated"))?;
        let (field, wt) = (tag >> 3, tag & 7);
        let (bytes, value, end): (&[u8], u64, usize) = match wt {
            0 => {
                let v = varint(&mut cur)?.ok_or_else(|| bad("truncated"))?;
                (&[], v, cur.position() as usize)
            }
            2 => {
                let len = varint(&mut cur)?.ok_or_else(|| bad("truncated"))? as usize;
                let start = cur.position() as usize;
                let end = start
                    .checked_add(len)
                    .filter(|&e| e <= buf.len())
                    .ok_or_else(|| bad("truncated"))?;
                (&buf[start..end], 0, end)
            }
            1 => (&[], 0, cur.position() as usize + 8),
            5 => (&[], 0, cur.position() as usize + 4),
            _ => return Err(bad("unsupported wire type")),
        };
        if end > buf.len() {
            return Err(bad("truncated"));
        }
        out.push((field, wt, bytes, value));
        buf = &buf[end..];
    }
    Ok(out)
}

fn parse_value_info(buf: &[u8]) -> std::io::Result<DeclaredInput> {
    let mut input = DeclaredInput {
        name: String::new(),
        elem_type: 0,
        dims: Vec::new(),
    };
    for (f, wt, bytes, _) in fields(buf)? {
        match (f, wt) {
            (1, 2) => input.name = String::from_utf8_lossy(bytes).into_owned(),
            (2, 2) => {
                // TypeProto: 1 = tensor_type { 1 elem_type, 2 shape { 1 dim { 1 value | 2 param } } }
                for (tf, twt, tbytes, _) in fields(bytes)? {
                    if (tf, twt) != (1, 2) {
                        continue;
                    }
                    for (xf, xwt, xbytes, xv) in fields(tbytes)? {
                        match (xf, xwt) {
                            (1, 0) => input.elem_type = xv as i32,
                            (2, 2) => {
                                for (df, dwt, dbytes, _) in fields(xbytes)? {
                                    if (df, dwt) != (1, 2) {
                                        continue;
                                    }
                                    let mut dim = None;
                                    for (vf, vwt, _, vv) in fields(dbytes)? {
                                        if (vf, vwt) == (1, 0) {
                                            dim = Some(vv as i64);
                                        }
                                    }
                                    input.dims.push(dim);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(input)
}

/// The graph inputs of `path` that are not initializers.
pub fn graph_inputs(path: &Path) -> std::io::Result<Vec<DeclaredInput>> {
    let file = File::open(path)?;
    let total = file.metadata()?.len();
    let mut r = BufReader::new(file);
    // ModelProto: field 7 = graph.
    loop {
        let Some(tag) = varint(&mut r)? else {
            return Err(bad("no graph in the model"));
        };
        let (field, wt) = (tag >> 3, tag & 7);
        if field == 7 && wt == 2 {
            let len = varint(&mut r)?.ok_or_else(|| bad("truncated"))?;
            let start = r.stream_position()?;
            let end = start
                .checked_add(len)
                .filter(|&e| e <= total)
                .ok_or_else(|| bad("truncated graph"))?;
            let mut inputs = Vec::new();
            let mut initializers = Vec::new();
            while r.stream_position()? < end {
                let tag = varint(&mut r)?.ok_or_else(|| bad("truncated"))?;
                let (f, w) = (tag >> 3, tag & 7);
                if (f == 11 || f == 5) && w == 2 {
                    let len = varint(&mut r)?.ok_or_else(|| bad("truncated"))?;
                    if f == 5 {
                        // An initializer: only its name (field 8) matters; weights are skipped.
                        let body_end = r
                            .stream_position()?
                            .checked_add(len)
                            .filter(|&e| e <= end)
                            .ok_or_else(|| bad("truncated initializer"))?;
                        let mut name = String::new();
                        while r.stream_position()? < body_end {
                            let t = varint(&mut r)?.ok_or_else(|| bad("truncated"))?;
                            if t >> 3 == 8 && t & 7 == 2 {
                                let l = varint(&mut r)?.ok_or_else(|| bad("truncated"))?;
                                if l > 1 << 16 {
                                    return Err(bad("initializer name too long"));
                                }
                                let mut b = vec![0u8; l as usize];
                                r.read_exact(&mut b)?;
                                name = String::from_utf8_lossy(&b).into_owned();
                            } else {
                                skip(&mut r, t & 7)?;
                            }
                        }
                        initializers.push(name);
                    } else {
                        if len > 1 << 20 {
                            return Err(bad("graph input description too long"));
                        }
                        let mut b = vec![0u8; len as usize];
                        r.read_exact(&mut b)?;
                        inputs.push(parse_value_info(&b)?);
                    }
                } else {
                    skip(&mut r, w)?;
                }
            }
            inputs.retain(|i| !initializers.contains(&i.name));
            return Ok(inputs);
        }
        skip(&mut r, wt)?;
    }
}
