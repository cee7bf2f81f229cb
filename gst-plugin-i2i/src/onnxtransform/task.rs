// SPDX-License-Identifier: MPL-2.0
//! What `onnxtransform`'s task does with its model, on the shared inference base
//! ([`crate::infer::task`]): it collects batches of `batch-size` and only runs the model;
//! the output thread renders the output tensors (the element's `render`).

use gst::prelude::*;
use gst::subclass::prelude::*;

use super::model::{ImageModel, OutPicture, TensorData};
use crate::infer::element::OutItem;
use crate::infer::input::{Deferred, Queued};
use crate::infer::task::InferTask;

/// The element the task runs for: an inference element whose pictures are the model's
/// output tensors.
pub trait Task: InferTask<Picture = OutPicture> {}

impl<T: InferTask<Picture = OutPicture>> Task for T {}

/// A frame preprocessed on the streaming thread: the model input and its size.
pub struct ModelInput {
    pub data: TensorData,
    pub width: usize,
    pub height: usize,
}

/// Task side: the model and the partial batch. Exists from start to stop.
pub struct Worker {
    pub model: ImageModel,
    pub batch_size: usize,
    pub batch: Vec<Queued<ModelInput>>,
    /// Events that came after frames of the partial batch: they leave after them.
    pub deferred: Vec<Deferred>,
}

impl Worker {
    pub fn new(model: ImageModel, batch_size: usize) -> Self {
        Worker {
            model,
            batch_size: batch_size.max(1),
            batch: Vec::new(),
            deferred: Vec::new(),
        }
    }
}

impl Worker {
    /// A frame for the batch; a full batch (or a new size) runs.
    pub fn batch_frame<E: Task>(
        &mut self,
        el: &E,
        f: Queued<ModelInput>,
    ) -> Result<(), gst::FlowError> {
        // A new size (caps) ends the batch before it.
        let resized = self
            .batch
            .first()
            .is_some_and(|b| (b.data.width, b.data.height) != (f.data.width, f.data.height));
        if resized {
            self.run_batch(el)?;
        }
        self.batch.push(f);
        if self.batch.len() >= self.batch_size {
            self.run_batch(el)
        } else {
            Ok(())
        }
    }

    /// An event: it leaves after the frames of the partial batch.
    pub fn batch_event<E: Task>(&mut self, el: &E, d: Deferred) -> Result<(), gst::FlowError> {
        if self.batch.is_empty() {
            el.send_out(OutItem::Event(d))
        } else {
            self.deferred.push(d);
            Ok(())
        }
    }

    /// Runs the partial or full batch, hands its pictures to the output thread, then the
    /// events that waited for them.
    pub fn run_batch<E: Task>(&mut self, el: &E) -> Result<(), gst::FlowError> {
        let frames = std::mem::take(&mut self.batch);
        if let Some(first) = frames.first() {
            if let Some(rt) = first.running_time {
                let _ = el.obj().sync_values(rt);
            }
            let (fw, fh) = (first.data.width, first.data.height);
            let mut metas = Vec::with_capacity(frames.len());
            let mut inputs = Vec::with_capacity(frames.len());
            for f in frames {
                metas.push(f.meta);
                inputs.push(f.data.data);
            }
            let outs = el
                .timed(|| self.model.run(inputs, fw, fh))
                .map_err(|e| el.engine_failed(e))?;
            for (pic, meta) in outs.into_iter().zip(metas) {
                el.send_out(OutItem::Frame(pic, meta))?;
            }
        }
        for d in std::mem::take(&mut self.deferred) {
            el.send_out(OutItem::Event(d))?;
        }
        Ok(())
    }
}
