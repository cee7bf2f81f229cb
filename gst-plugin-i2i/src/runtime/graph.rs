// SPDX-License-Identifier: MPL-2.0
//! The graph binding: one ONNX session with its inputs and outputs as declared (names,
//! element types, shapes), the casts at its boundary, and the split of a run of rows into
//! graph calls ([`chunks`]) for graphs exported with a fixed batch size.
//!
//! Kept apart from the four sessions (model.rs) and from the execution-provider set-up
//! (provider.rs) so each can be read alone.

use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::{DynTensor, Shape, Tensor, TensorElementType, ValueType};

use super::error::EngineError;

/// Element types the engine can feed or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    I64,
    I32,
}

impl Elem {
    fn from_ort(t: TensorElementType) -> Option<Elem> {
        match t {
            TensorElementType::Float32 => Some(Elem::F32),
            TensorElementType::Float16 => Some(Elem::F16),
            TensorElementType::Int64 => Some(Elem::I64),
            TensorElementType::Int32 => Some(Elem::I32),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Elem::F32 => "float32",
            Elem::F16 => "float16",
            Elem::I64 => "int64",
            Elem::I32 => "int32",
        }
    }

    fn to_ort(self) -> TensorElementType {
        match self {
            Elem::F32 => TensorElementType::Float32,
            Elem::F16 => TensorElementType::Float16,
            Elem::I64 => TensorElementType::Int64,
            Elem::I32 => TensorElementType::Int32,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Elem::F32 | Elem::F16)
    }
}

/// A graph input or output as the session declares it (`-1` for a dynamic dimension).
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub name: String,
    pub elem: Elem,
    pub shape: Vec<i64>,
}

impl Spec {
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The fixed size of dimension `d`, if the graph fixes it.
    pub fn dim(&self, d: usize) -> Option<usize> {
        self.shape
            .get(d)
            .and_then(|&v| (v >= 0).then_some(v as usize))
    }
}

pub fn shape_str(shape: &[i64]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|&d| {
            if d < 0 {
                "?".to_string()
            } else {
                d.to_string()
            }
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.elem.name(), shape_str(&self.shape))
    }
}

/// Data handed to a graph input; converted to the declared element type.
pub enum Feed<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
    /// Data that stays the same as long as the key does (text embeddings): written and
    /// bound (on a GPU: uploaded) only when the key or the shape changes, so it stays on
    /// the device between calls.
    Keyed(&'a [f32], u64),
    /// A float32 host tensor of the declared shape, bound as it is: on the CPU the session
    /// reads it in place, without a copy. Only for float32 inputs.
    Tensor(&'a Tensor<f32>),
}

/// An input's tensor, owned by the graph and bound to the session: written in place each
/// call (no allocation while the shape stays), rebound after each write.
struct BoundInput {
    shape: Vec<i64>,
    tensor: DynTensor,
    /// The key of the `Feed::Keyed` data it holds, if any.
    key: Option<u64>,
}

/// One ONNX session and its declared inputs and outputs.
pub struct Graph {
    pub file: PathBuf,
    session: Session,
    pub inputs: Vec<Spec>,
    pub outputs: Vec<Spec>,
    /// Inputs and outputs are bound once and reused (ONNX Runtime's IoBinding).
    binding: IoBinding,
    /// Per declared input, the tensor bound to it.
    bound: Vec<Option<BoundInput>>,
    /// The output bound to host memory, by name.
    bound_output: Option<String>,
    /// The input shapes when the output was bound (ONNX Runtime then reuses the output's
    /// buffer, which must have the call's shape): bound again when they change.
    bound_shapes: Vec<i64>,
    scratch_out: Vec<f32>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("file", &self.file)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

fn specs(file: &Path, list: &[ort::value::Outlet], what: &str) -> Result<Vec<Spec>, EngineError> {
    list.iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                let elem = Elem::from_ort(*ty).ok_or_else(|| {
                    EngineError::tensor(
                        file,
                        o.name(),
                        format!("a float32, float16, int64 or int32 {what}"),
                        format!("element type {ty}"),
                    )
                })?;
                Ok(Spec {
                    name: o.name().to_string(),
                    elem,
                    shape: shape.iter().copied().collect(),
                })
            }
            other => Err(EngineError::tensor(
                file,
                o.name(),
                format!("a tensor {what}"),
                other.to_string(),
            )),
        })
        .collect()
}

impl Graph {
    pub(crate) fn new(file: PathBuf, session: Session) -> Result<Graph, EngineError> {
        let inputs = specs(&file, session.inputs(), "input")?;
        let outputs = specs(&file, session.outputs(), "output")?;
        let binding = session
            .create_binding()
            .map_err(|e| EngineError::inference(&file, e))?;
        Ok(Graph {
            bound: (0..inputs.len()).map(|_| None).collect(),
            file,
            session,
            inputs,
            outputs,
            binding,
            bound_output: None,
            bound_shapes: Vec::new(),
            scratch_out: Vec::new(),
        })
    }

    pub fn input(&self, name: &str) -> Option<&Spec> {
        self.inputs.iter().find(|s| s.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&Spec> {
        self.outputs.iter().find(|s| s.name == name)
    }

    pub(crate) fn require_input(&self, name: &str, what: &str) -> Result<Spec, EngineError> {
        self.input(name).cloned().ok_or_else(|| {
            let found: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
            EngineError::tensor(
                &self.file,
                name,
                format!("an input named '{name}' ({what})"),
                format!("inputs {found:?}"),
            )
        })
    }

    /// The output named one of `names`, else the only output.
    pub(crate) fn pick_output(&self, names: &[&str], what: &str) -> Result<Spec, EngineError> {
        for n in names {
            if let Some(s) = self.output(n) {
                return Ok(s.clone());
            }
        }
        if self.outputs.len() == 1 {
            return Ok(self.outputs[0].clone());
        }
        let found: Vec<&str> = self.outputs.iter().map(|s| s.name.as_str()).collect();
        Err(EngineError::tensor(
            &self.file,
            names.join("' or '"),
            format!("an output named '{}' ({what})", names.join("' or '")),
            format!("outputs {found:?}"),
        ))
    }

    /// Every input must be one the engine feeds.
    pub(crate) fn no_other_inputs(&self, known: &[&str]) -> Result<(), EngineError> {
        for s in &self.inputs {
            if !known.contains(&s.name.as_str()) {
                return Err(EngineError::tensor(
                    &self.file,
                    &s.name,
                    format!("only the inputs {known:?}"),
                    format!(
                        "an extra input '{}' {s} (this model type is not supported)",
                        s.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Runs the graph on `feeds` (name, shape, data) and writes output `output` as float32
    /// into `out`; returns the output's shape.
    pub fn run(
        &mut self,
        feeds: &[(&str, &[i64], Feed<'_>)],
        output: &str,
        out: &mut Vec<f32>,
    ) -> Result<Vec<i64>, EngineError> {
        self.run_with(feeds, output, |shape, data| {
            out.clear();
            out.extend_from_slice(data);
            shape.to_vec()
        })
    }

    /// Writes and binds `feeds`.
    fn bind_inputs(&mut self, feeds: &[(&str, &[i64], Feed<'_>)]) -> Result<(), EngineError> {
        let Graph {
            file,
            inputs,
            binding,
            bound,
            ..
        } = self;
        let ort_err = |e: ort::Error| EngineError::inference(file, e);
        for (name, shape, feed) in feeds {
            let Some(i) = inputs.iter().position(|s| s.name == *name) else {
                return Err(EngineError::tensor(
                    file,
                    *name,
                    "an input of this name",
                    "none",
                ));
            };
            let elem = inputs[i].elem;
            if let Feed::Tensor(t) = feed {
                if elem != Elem::F32 {
                    return Err(EngineError::tensor(
                        file,
                        *name,
                        "float32 (a float32 tensor was given)",
                        elem.name(),
                    ));
                }
                binding.bind_input(*name, *t).map_err(ort_err)?;
                if let Some(b) = bound[i].as_mut() {
                    // The graph's own tensor is no longer the one bound.
                    b.key = None;
                }
                continue;
            }
            let key = match feed {
                Feed::Keyed(_, k) => Some(*k),
                _ => None,
            };
            let slot = &mut bound[i];
            if let Some(b) = slot.as_ref()
                && b.shape == *shape
                && key.is_some()
                && b.key == key
            {
                // Bound already (on a GPU: on the device already).
                continue;
            }
            if slot.as_ref().is_none_or(|b| b.shape != *shape) {
                let tensor = DynTensor::new(
                    &Allocator::default(),
                    elem.to_ort(),
                    Shape::new(shape.iter().copied()),
                )
                .map_err(ort_err)?;
                *slot = Some(BoundInput {
                    shape: shape.to_vec(),
                    tensor,
                    key: None,
                });
            }
            let Some(b) = slot.as_mut() else {
                continue;
            };
            b.key = None;
            write_feed(feed, elem, &mut b.tensor).map_err(|e| match e {
                WriteError::Ort(e) => ort_err(e),
                WriteError::Length { have, want } => EngineError::tensor(
                    file,
                    *name,
                    format!("{want} values for shape {}", shape_str(shape)),
                    format!("{have} values"),
                ),
            })?;
            b.key = key;
            binding.bind_input(*name, &b.tensor).map_err(ort_err)?;
        }
        Ok(())
    }

    /// Runs the graph with its float32 output `output` written into `out`, which has this
    /// call's output shape (ONNX Runtime refuses the run otherwise): the caller keeps the
    /// result without a copy.
    pub fn run_into(
        &mut self,
        feeds: &[(&str, &[i64], Feed<'_>)],
        output: &str,
        out: &mut Tensor<f32>,
    ) -> Result<(), EngineError> {
        self.bind_inputs(feeds)?;
        let ort_err = |e: ort::Error| EngineError::inference(&self.file, e);
        self.binding.clear_outputs();
        self.bound_output = None;
        self.bound_shapes.clear();
        self.binding.bind_output(output, out).map_err(ort_err)?;
        let result = self.session.run_binding(&self.binding).map(drop);
        // Not left bound: the caller hands `out` on.
        self.binding.clear_outputs();
        result.map_err(ort_err)
    }

    /// Like [`Graph::run`], but hands the output (shape, float32 data) to `f` without
    /// copying it first (float16 outputs are converted into a reused buffer).
    pub fn run_with<R>(
        &mut self,
        feeds: &[(&str, &[i64], Feed<'_>)],
        output: &str,
        f: impl FnOnce(&[i64], &[f32]) -> R,
    ) -> Result<R, EngineError> {
        self.bind_inputs(feeds)?;
        // Each input's rank, then its dimensions.
        let same_shapes = {
            let mut it = self.bound_shapes.iter();
            feeds.iter().all(|(_, shape, _)| {
                it.next() == Some(&(shape.len() as i64))
                    && shape.iter().all(|d| it.next() == Some(d))
            }) && it.next().is_none()
        };
        let reshaped = !same_shapes;
        if reshaped {
            self.bound_shapes.clear();
            for (_, shape, _) in feeds {
                self.bound_shapes.push(shape.len() as i64);
                self.bound_shapes.extend_from_slice(shape);
            }
        }
        let Graph {
            file,
            session,
            binding,
            bound_output,
            scratch_out,
            ..
        } = self;
        let ort_err = |e: ort::Error| EngineError::inference(file, e);
        if reshaped || bound_output.as_deref() != Some(output) {
            // Host memory: the engine's step math and the pixels need the values there.
            let host = MemoryInfo::new(
                AllocationDevice::CPU,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            )
            .map_err(ort_err)?;
            binding.clear_outputs();
            binding
                .bind_output_to_device(output, &host)
                .map_err(ort_err)?;
            *bound_output = Some(output.to_string());
        }
        let outputs = session.run_binding(binding).map_err(ort_err)?;
        let value = outputs.get(output).ok_or_else(|| {
            EngineError::tensor(
                file,
                output,
                "an output of this name",
                "none in the results",
            )
        })?;
        let ty = value.dtype().tensor_type();
        let shape: Vec<i64> = match value.dtype().tensor_shape() {
            Some(s) => s.iter().copied().collect(),
            None => Vec::new(),
        };
        match ty {
            Some(TensorElementType::Float32) => {
                let (_, d) = value.try_extract_tensor::<f32>().map_err(ort_err)?;
                Ok(f(&shape, d))
            }
            Some(TensorElementType::Float16) => {
                let (_, d) = value.try_extract_tensor::<f16>().map_err(ort_err)?;
                scratch_out.resize(d.len(), 0.0);
                d.convert_to_f32_slice(scratch_out);
                Ok(f(&shape, scratch_out))
            }
            other => Err(EngineError::tensor(
                file,
                output,
                "a float32 or float16 output",
                format!("{other:?}"),
            )),
        }
    }
}

/// Rows `rows` of `src` (`row` values each) as one graph input of `batch` rows: borrowed as
/// they are when they fill the batch, else copied into `buf` and padded by repeating the
/// last row (graphs exported with a fixed batch size).
pub fn rows_padded<'a>(
    src: &'a [f32],
    row: usize,
    rows: std::ops::Range<usize>,
    batch: usize,
    buf: &'a mut Vec<f32>,
) -> &'a [f32] {
    let (r0, r1) = (rows.start, rows.end);
    if r1 - r0 == batch {
        return &src[r0 * row..r1 * row];
    }
    buf.clear();
    buf.extend_from_slice(&src[r0 * row..r1 * row]);
    for _ in r1 - r0..batch {
        buf.extend_from_slice(&src[(r1 - 1) * row..r1 * row]);
    }
    buf
}

enum WriteError {
    Ort(ort::Error),
    Length { have: usize, want: usize },
}

/// Writes `feed` into `t` (of element type `elem`), casting at the boundary.
fn write_feed(feed: &Feed<'_>, elem: Elem, t: &mut DynTensor) -> Result<(), WriteError> {
    fn fill<T: ort::value::PrimitiveTensorElementType + Copy, S: Copy>(
        t: &mut DynTensor,
        src: &[S],
        f: impl Fn(S) -> T,
    ) -> Result<(), WriteError> {
        let (_, dst) = t.try_extract_tensor_mut::<T>().map_err(WriteError::Ort)?;
        if dst.len() != src.len() {
            return Err(WriteError::Length {
                have: src.len(),
                want: dst.len(),
            });
        }
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = f(v);
        }
        Ok(())
    }
    match (feed, elem) {
        (Feed::F32(d) | Feed::Keyed(d, _), Elem::F32) => {
            let (_, dst) = t.try_extract_tensor_mut::<f32>().map_err(WriteError::Ort)?;
            if dst.len() != d.len() {
                return Err(WriteError::Length {
                    have: d.len(),
                    want: dst.len(),
                });
            }
            dst.copy_from_slice(d);
            Ok(())
        }
        (Feed::F32(d) | Feed::Keyed(d, _), Elem::F16) => {
            let (_, dst) = t.try_extract_tensor_mut::<f16>().map_err(WriteError::Ort)?;
            if dst.len() != d.len() {
                return Err(WriteError::Length {
                    have: d.len(),
                    want: dst.len(),
                });
            }
            dst.convert_from_f32_slice(d);
            Ok(())
        }
        (Feed::F32(d) | Feed::Keyed(d, _), Elem::I64) => fill(t, d, |v: f32| v.round() as i64),
        (Feed::F32(d) | Feed::Keyed(d, _), Elem::I32) => fill(t, d, |v: f32| v.round() as i32),
        (Feed::I64(d), Elem::I64) => fill(t, d, |v: i64| v),
        (Feed::I64(d), Elem::I32) => fill(t, d, |v: i64| v as i32),
        (Feed::I64(d), Elem::F32) => fill(t, d, |v: i64| v as f32),
        (Feed::I64(d), Elem::F16) => fill(t, d, |v: i64| f16::from_f32(v as f32)),
        // Bound as it is by the caller.
        (Feed::Tensor(_), _) => Ok(()),
    }
}

/// One graph call over a run of rows: `rows` of the caller's data, fed as a batch of
/// `batch` rows (`batch > rows.len()` when a fixed graph batch is padded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub rows: std::ops::Range<usize>,
    pub batch: usize,
}

impl Chunk {
    /// Rows of real data in this call.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The calls that cover `rows`: one call when the graph batch is dynamic (`fixed` is
/// `None`), else calls of `fixed` rows, the last one padded.
pub fn chunks(rows: std::ops::Range<usize>, fixed: Option<usize>) -> impl Iterator<Item = Chunk> {
    chunks_at_most(rows, fixed, usize::MAX)
}

/// [`chunks`], with calls of at most `max` rows when the graph batch is dynamic (the last
/// one shorter, not padded): a graph called this way sees only the shapes `1..=max` rows,
/// so ONNX Runtime's memory arena does not grow for a rare larger call.
pub fn chunks_at_most(
    rows: std::ops::Range<usize>,
    fixed: Option<usize>,
    max: usize,
) -> impl Iterator<Item = Chunk> {
    let size = fixed.unwrap_or(rows.len().min(max)).max(1);
    let end = rows.end;
    (rows.start..end).step_by(size).map(move |r0| {
        let r1 = (r0 + size).min(end);
        Chunk {
            rows: r0..r1,
            batch: fixed.unwrap_or(r1 - r0),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_batch_is_one_call() {
        let c: Vec<Chunk> = chunks(2..7, None).collect();
        assert_eq!(
            c,
            vec![Chunk {
                rows: 2..7,
                batch: 5
            }]
        );
        assert_eq!(chunks(3..3, None).count(), 0);
    }

    #[test]
    fn fixed_batch_pads_the_last_call() {
        let c: Vec<Chunk> = chunks(0..5, Some(2)).collect();
        let rows: Vec<_> = c.iter().map(|c| (c.rows.clone(), c.batch)).collect();
        assert_eq!(rows, vec![(0..2, 2), (2..4, 2), (4..5, 2)]);
        let c: Vec<Chunk> = chunks(1..2, Some(4)).collect();
        assert_eq!(
            c,
            vec![Chunk {
                rows: 1..2,
                batch: 4
            }]
        );
    }

    #[test]
    fn dynamic_batch_calls_hold_at_most_max_rows() {
        let c: Vec<_> = chunks_at_most(0..5, None, 2)
            .map(|c| (c.rows, c.batch))
            .collect();
        assert_eq!(c, vec![(0..2, 2), (2..4, 2), (4..5, 1)]);
        // A fixed batch wins over the maximum.
        let c: Vec<_> = chunks_at_most(0..3, Some(4), 1)
            .map(|c| (c.rows, c.batch))
            .collect();
        assert_eq!(c, vec![(0..3, 4)]);
        assert_eq!(chunks_at_most(0..3, None, usize::MAX).count(), 1);
    }

    #[test]
    fn padding_repeats_the_last_row() {
        let src = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut buf = Vec::new();
        assert_eq!(
            rows_padded(&src, 2, 1..3, 2, &mut buf),
            &[3.0, 4.0, 5.0, 6.0]
        );
        assert_eq!(
            rows_padded(&src, 2, 2..3, 3, &mut buf),
            &[5.0, 6.0, 5.0, 6.0, 5.0, 6.0]
        );
    }
}
