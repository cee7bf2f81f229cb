// SPDX-License-Identifier: MPL-2.0
//! ONNX Runtime's adapter files (`.onnx_adapter`, written by `onnxruntime.AdapterFormat`),
//! read without ONNX Runtime: its C API loads an adapter but cannot list the parameters,
//! and its active adapters do not apply to runs with IoBinding, so the engine binds the
//! tensors as ordinary inputs itself (see `diffusion::lora`).
//!
//! The file is a FlatBuffer (onnxruntime/lora/adapter_format/adapter_schema.fbs, file
//! identifier `TORT` at byte 4):
//!
//! ```text
//! table Parameter { name:string; dims:[int64]; data_type:TensorDataType; raw_data:[uint8]; }
//! table Adapter { format_version:int; adapter_version:int; model_version:int; parameters:[Parameter]; }
//! ```
//!
//! All little-endian: the file starts with a uint32 offset to the root table; a table starts
//! with an int32 `soffset` to its vtable (`table - soffset`: uint16 vtable size, uint16
//! table size, one uint16 field offset per field, 0 = absent); a string or vector field
//! holds a uint32 offset, relative to the field, to a uint32 length and the elements.
//! Every offset is checked: a damaged file is an error naming the file and what is wrong,
//! never a read outside it (tests/python/onnx_adapter.py is the same reader in Python).

use std::path::Path;

use half::f16;

/// The format version this reader knows.
pub const FORMAT_VERSION: i32 = 1;
const MAX_DIMS: usize = 8;

/// ONNX's element type numbers (TensorDataType) of the types an adapter may hold here.
pub const FLOAT32: i32 = 1;
pub const FLOAT16: i32 = 10;

/// One parameter: its name, shape, ONNX element type and data (float16 widened).
#[derive(Clone, Debug, PartialEq)]
pub struct Parameter {
    pub name: String,
    pub dims: Vec<usize>,
    pub data_type: i32,
    pub data: Vec<f32>,
}

/// The parameters of one adapter file, in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterFile {
    pub adapter_version: i32,
    pub model_version: i32,
    pub parameters: Vec<Parameter>,
}

impl AdapterFile {
    pub fn get(&self, name: &str) -> Option<&Parameter> {
        self.parameters.iter().find(|p| p.name == name)
    }
}

/// ONNX's name of an element type number.
pub fn type_name(t: i32) -> String {
    match t {
        1 => "float32".into(),
        2 => "uint8".into(),
        3 => "int8".into(),
        6 => "int32".into(),
        7 => "int64".into(),
        10 => "float16".into(),
        11 => "float64".into(),
        16 => "bfloat16".into(),
        other => format!("element type {other}"),
    }
}

/// Size in bytes of an element type's values, for the types whose data is checked.
fn item_size(t: i32) -> Option<usize> {
    match t {
        1 | 6 | 12 => Some(4),
        2 | 3 | 9 => Some(1),
        4 | 5 | 10 | 16 => Some(2),
        7 | 11 | 13 => Some(8),
        _ => None,
    }
}

struct Buf<'a> {
    b: &'a [u8],
    where_: &'a str,
}

impl Buf<'_> {
    fn need(&self, pos: usize, n: usize, what: &str) -> Result<(), String> {
        match pos.checked_add(n) {
            Some(end) if end <= self.b.len() => Ok(()),
            _ => Err(format!(
                "{}: {what} at byte {pos} (+{n}) lies outside the file ({} bytes): not an ONNX Runtime adapter file, or damaged",
                self.where_,
                self.b.len()
            )),
        }
    }

    fn u16(&self, pos: usize, what: &str) -> Result<u16, String> {
        self.need(pos, 2, what)?;
        Ok(u16::from_le_bytes([self.b[pos], self.b[pos + 1]]))
    }

    fn u32(&self, pos: usize, what: &str) -> Result<u32, String> {
        self.need(pos, 4, what)?;
        let mut v = [0u8; 4];
        v.copy_from_slice(&self.b[pos..pos + 4]);
        Ok(u32::from_le_bytes(v))
    }

    fn i32(&self, pos: usize, what: &str) -> Result<i32, String> {
        self.u32(pos, what).map(|v| v as i32)
    }

    /// The position of field `index` of the table at `table`, or None when absent.
    fn field(&self, table: usize, index: usize, what: &str) -> Result<Option<usize>, String> {
        let soff = self.i32(table, &format!("{what} table"))? as i64;
        let vtable = table as i64 - soff;
        if vtable < 0 {
            return Err(format!(
                "{}: {what} vtable at byte {vtable} lies outside the file",
                self.where_
            ));
        }
        let vtable = vtable as usize;
        let vsize = self.u16(vtable, &format!("{what} vtable"))? as usize;
        if vsize < 4 || !vsize.is_multiple_of(2) {
            return Err(format!(
                "{}: {what} vtable size {vsize} is invalid",
                self.where_
            ));
        }
        let slot = 4 + 2 * index;
        if slot + 2 > vsize {
            return Ok(None);
        }
        let off = self.u16(vtable + slot, &format!("{what} vtable"))? as usize;
        Ok((off != 0).then_some(table + off))
    }

    fn deref(&self, pos: usize, what: &str) -> Result<usize, String> {
        Ok(pos + self.u32(pos, what)? as usize)
    }

    /// (start, count) of the vector the uoffset at `pos` points to; `elem` bytes each.
    fn vector(&self, pos: usize, elem: usize, what: &str) -> Result<(usize, usize), String> {
        let start = self.deref(pos, what)?;
        let n = self.u32(start, &format!("{what} length"))? as usize;
        self.need(start + 4, n.saturating_mul(elem), what)?;
        Ok((start + 4, n))
    }
}

/// Reads an adapter from its bytes; `where_` names it in errors.
pub fn read_bytes(data: &[u8], where_: &str) -> Result<AdapterFile, String> {
    if data.len() < 8 || &data[4..8] != b"TORT" {
        return Err(format!(
            "{where_}: not an ONNX Runtime adapter file (no 'TORT' identifier at byte 4)"
        ));
    }
    let b = Buf { b: data, where_ };
    let root = b.u32(0, "root offset")? as usize;
    let int_field = |index: usize, name: &str| -> Result<i32, String> {
        match b.field(root, index, "Adapter")? {
            Some(pos) => b.i32(pos, name),
            None => Ok(0),
        }
    };
    let format = int_field(0, "format_version")?;
    if format != FORMAT_VERSION {
        return Err(format!(
            "{where_}: adapter format version {format}, this reader knows {FORMAT_VERSION}"
        ));
    }
    let mut parameters: Vec<Parameter> = Vec::new();
    if let Some(ppos) = b.field(root, 3, "Adapter")? {
        let (start, count) = b.vector(ppos, 4, "parameters")?;
        for i in 0..count {
            let t = b.deref(start + 4 * i, &format!("parameter {i}"))?;
            let what = format!("parameter {i}");
            let Some(npos) = b.field(t, 0, &what)? else {
                return Err(format!("{where_}: parameter {i} has no name"));
            };
            let (s0, n) = b.vector(npos, 1, &format!("parameter {i} name"))?;
            let name = std::str::from_utf8(&data[s0..s0 + n])
                .map_err(|_| format!("{where_}: parameter {i}: name is not UTF-8"))?
                .to_string();
            let mut dims = Vec::new();
            if let Some(dpos) = b.field(t, 1, &name)? {
                let (d0, nd) = b.vector(dpos, 8, &format!("{name} dims"))?;
                if nd > MAX_DIMS {
                    return Err(format!("{where_}: {name}: {nd} dimensions"));
                }
                for k in 0..nd {
                    let mut v = [0u8; 8];
                    v.copy_from_slice(&data[d0 + 8 * k..d0 + 8 * k + 8]);
                    let d = i64::from_le_bytes(v);
                    if d < 0 {
                        return Err(format!("{where_}: {name}: negative dimension {d}"));
                    }
                    dims.push(d as usize);
                }
            }
            let data_type = match b.field(t, 2, &name)? {
                Some(pos) => b.i32(pos, &format!("{name} data_type"))?,
                None => 0,
            };
            let Some(item) = item_size(data_type) else {
                return Err(format!(
                    "{where_}: {name}: data type {data_type} is not supported"
                ));
            };
            let (r0, nr) = match b.field(t, 3, &name)? {
                Some(pos) => b.vector(pos, 1, &format!("{name} raw_data"))?,
                None => (0, 0),
            };
            let count_el = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| format!("{where_}: {name}: shape {dims:?} is too large"))?;
            if Some(nr) != count_el.checked_mul(item) {
                return Err(format!(
                    "{where_}: {name}: {nr} bytes of data for shape {dims:?} of {} ({} expected)",
                    type_name(data_type),
                    count_el.saturating_mul(item)
                ));
            }
            if parameters.iter().any(|p| p.name == name) {
                return Err(format!("{where_}: parameter {name} appears twice"));
            }
            let raw = &data[r0..r0 + nr];
            // Only float data is widened; other types are kept as their type number (and
            // refused by the LoRA check with it).
            let values = match data_type {
                FLOAT32 => raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                FLOAT16 => raw
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                _ => Vec::new(),
            };
            parameters.push(Parameter {
                name,
                dims,
                data_type,
                data: values,
            });
        }
    }
    Ok(AdapterFile {
        adapter_version: int_field(1, "adapter_version")?,
        model_version: int_field(2, "model_version")?,
        parameters,
    })
}

/// An adapter file's bytes (for tests and benchmarks), written by hand in the layout
/// flatc emits: root offset, identifier, then the tables and vectors after them. Each
/// parameter: name, dims, ONNX element type, raw little-endian data.
pub fn write_bytes(params: &[(&str, &[i64], i32, &[u8])]) -> Vec<u8> {
    let mut b = vec![0u8; 8];
    b[4..8].copy_from_slice(b"TORT");
    fn push_u32(b: &mut Vec<u8>, v: u32) {
        b.extend_from_slice(&v.to_le_bytes());
    }
    fn align(b: &mut Vec<u8>, a: usize) {
        while !b.len().is_multiple_of(a) {
            b.push(0);
        }
    }
    // Root vtable (4 fields) then the root table.
    let vt = b.len();
    for v in [12u16, 12, 4, 0, 0, 8] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    align(&mut b, 4);
    let root = b.len();
    push_u32(&mut b, (root - vt) as u32);
    push_u32(&mut b, FORMAT_VERSION as u32);
    let params_field = b.len();
    push_u32(&mut b, 0);
    b[0..4].copy_from_slice(&(root as u32).to_le_bytes());
    // The parameters vector, its offsets patched below.
    let vec_at = b.len();
    push_u32(&mut b, params.len() as u32);
    let slots = b.len();
    for _ in params {
        push_u32(&mut b, 0);
    }
    let at = (vec_at - params_field) as u32;
    b[params_field..params_field + 4].copy_from_slice(&at.to_le_bytes());
    for (i, (name, dims, ty, raw)) in params.iter().enumerate() {
        let vt = b.len();
        for v in [12u16, 20, 4, 8, 12, 16] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        align(&mut b, 4);
        let t = b.len();
        push_u32(&mut b, (t - vt) as u32);
        let fields = b.len();
        for _ in 0..4 {
            push_u32(&mut b, 0);
        }
        let slot = slots + 4 * i;
        b[slot..slot + 4].copy_from_slice(&((t - slot) as u32).to_le_bytes());
        b[fields + 8..fields + 12].copy_from_slice(&(*ty as u32).to_le_bytes());
        let put = |b: &mut Vec<u8>, field: usize, len: u32, bytes: &[u8], al: usize| {
            align(b, al);
            if al == 8 && !(b.len() + 4).is_multiple_of(8) {
                push_u32(b, 0);
            }
            let v = b.len();
            push_u32(b, len);
            b.extend_from_slice(bytes);
            b[field..field + 4].copy_from_slice(&((v - field) as u32).to_le_bytes());
        };
        put(&mut b, fields, name.len() as u32, name.as_bytes(), 4);
        let d: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
        put(&mut b, fields + 4, dims.len() as u32, &d, 8);
        put(&mut b, fields + 12, raw.len() as u32, raw, 8);
    }
    b
}

/// The largest adapter file read: a FlatBuffer addresses at most 2 GiB.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// Reads an adapter file (a regular file or a FIFO, at most [`MAX_FILE_BYTES`]); the error
/// names the file and what is wrong with it.
pub fn read(path: &Path) -> Result<AdapterFile, String> {
    let data = i2i_core::files::read_at_most(path, MAX_FILE_BYTES, "an adapter file")?;
    read_bytes(&data, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_names_shapes_and_data() {
        let a = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let h: Vec<u8> = [0.5f32, -2.0]
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect();
        let bytes = write_bytes(&[("x.lora_A.weight", &[3, 2], 1, &a), ("y", &[2], 10, &h)]);
        let f = read_bytes(&bytes, "t").unwrap();
        assert_eq!(f.parameters.len(), 2);
        assert_eq!(f.parameters[0].name, "x.lora_A.weight");
        assert_eq!(f.parameters[0].dims, vec![3, 2]);
        assert_eq!(f.parameters[0].data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(f.parameters[1].data_type, FLOAT16);
        assert_eq!(f.parameters[1].data, vec![0.5, -2.0]);
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let a = f32_bytes(&[1.0, 2.0]);
        let good = write_bytes(&[("p.lora_A.weight", &[1, 2], 1, &a)]);
        assert!(read_bytes(&good, "t").is_ok());
        assert!(read_bytes(b"hello", "t").unwrap_err().contains("TORT"));
        // Every truncation and every single-byte corruption: an error or a parse, never a
        // panic or a read outside the buffer.
        for n in 0..good.len() {
            let e = read_bytes(&good[..n], "cut.onnx_adapter");
            assert!(e.is_err(), "truncated to {n} bytes");
            assert!(e.unwrap_err().starts_with("cut.onnx_adapter: "));
        }
        for i in 0..good.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = read_bytes(&b, "t");
            }
        }
        let wrong = write_bytes(&[("p", &[3, 2], 1, &a)]);
        let e = read_bytes(&wrong, "w").unwrap_err();
        assert!(e.contains("8 bytes of data for shape [3, 2]"), "{e}");
    }
}
