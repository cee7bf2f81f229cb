// SPDX-License-Identifier: MPL-2.0
//! What `onnxtransform`'s threads do with its model, on the shared inference base
//! ([`crate::infer::element`]): the task collects batches of `batch-size` and only runs
//! the model; the output thread turns output tensors into RGB pictures.

use gst::prelude::*;
use gst::subclass::prelude::*;

use super::imp::{CAT, OnnxTransform};
use super::model::{ImageModel, OutPicture, TensorData};
use crate::infer::convert::OutputConverter;
use crate::infer::element::{OutItem, Rendered};
use crate::infer::input::{Deferred, Queued};
use crate::infer::task::InferTask;

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

impl OnnxTransform {
    pub(super) fn batch_frame(
        &self,
        w: &mut Worker,
        f: Queued<ModelInput>,
    ) -> Result<(), gst::FlowError> {
        // A new size (caps) ends the batch before it.
        let resized = w
            .batch
            .first()
            .is_some_and(|b| (b.data.width, b.data.height) != (f.data.width, f.data.height));
        if resized {
            self.run_batch(w)?;
        }
        w.batch.push(f);
        if w.batch.len() >= w.batch_size {
            self.run_batch(w)
        } else {
            Ok(())
        }
    }

    pub(super) fn batch_event(&self, w: &mut Worker, d: Deferred) -> Result<(), gst::FlowError> {
        if w.batch.is_empty() {
            self.send_out(OutItem::Event(d))
        } else {
            w.deferred.push(d);
            Ok(())
        }
    }

    /// Runs the partial or full batch, hands its pictures to the output thread, then the
    /// events that waited for them.
    pub(super) fn run_batch(&self, w: &mut Worker) -> Result<(), gst::FlowError> {
        let frames = std::mem::take(&mut w.batch);
        if let Some(first) = frames.first() {
            if let Some(rt) = first.running_time {
                let _ = self.obj().sync_values(rt);
            }
            let (fw, fh) = (first.data.width, first.data.height);
            let mut metas = Vec::with_capacity(frames.len());
            let mut inputs = Vec::with_capacity(frames.len());
            for f in frames {
                metas.push(f.meta);
                inputs.push(f.data.data);
            }
            let outs = self
                .timed(|| w.model.run(inputs, fw, fh))
                .map_err(|e| self.engine_failed(e))?;
            for (pic, meta) in outs.into_iter().zip(metas) {
                self.send_out(OutItem::Frame(pic, meta))?;
            }
        }
        for d in std::mem::take(&mut w.deferred) {
            self.send_out(OutItem::Event(d))?;
        }
        Ok(())
    }

    /// Output thread: the model's output tensor as RGB8 at the negotiated size.
    pub(super) fn render_picture(
        &self,
        pic: &OutPicture,
        conv: &OutputConverter,
    ) -> Result<Rendered, gst::FlowError> {
        let info = conv.out_info();
        if (pic.width as u32, pic.height as u32) != (info.width(), info.height()) {
            gst::element_imp_error!(
                self,
                gst::StreamError::Failed,
                (
                    "The model gave a {}x{} picture, {}x{} were negotiated",
                    pic.width,
                    pic.height,
                    info.width(),
                    info.height()
                ),
                ["A model whose output size changes from frame to frame is not supported"]
            );
            return Err(gst::FlowError::Error);
        }
        let post = self.post.lock().unwrap();
        let Some(post) = post.as_ref() else {
            gst::debug!(CAT, imp = self, "stopped: no postprocessing");
            return Err(gst::FlowError::Flushing);
        };
        let mut rgb = Vec::new();
        post.run(pic, &mut rgb);
        Ok(Rendered::Rgb(rgb))
    }
}
