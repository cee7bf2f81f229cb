// SPDX-License-Identifier: MPL-2.0
//! The latency an inference element adds, for its LATENCY answer (`i2itransform`,
//! `onnxtransform`): batching, frames the model holds back, one model call, and the wait
//! behind the call in progress when late frames are dropped.

/// What the element adds to the upstream latency: a frame waits for its batch to fill
/// (`batch_size - 1` frames), behind the stream batch (`latency_frames`), then for one
/// model call. Frames move on at the input rate, or at the inference rate when that is
/// slower (the element then drops frames on live input); a frame dropped-behind may also
/// wait for the model call in progress (`dropping`).
pub fn added_latency(
    latency_frames: usize,
    batch_size: usize,
    frame_duration: gst::ClockTime,
    inference: gst::ClockTime,
    dropping: bool,
) -> gst::ClockTime {
    let frames = (latency_frames + batch_size.saturating_sub(1)) as u64;
    let per_frame = frame_duration.max(inference / batch_size.max(1) as u64);
    let waiting = if dropping {
        inference
    } else {
        gst::ClockTime::ZERO
    };
    per_frame * frames + inference + waiting
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_adds_batching_stream_batch_and_one_call() {
        let frame = gst::ClockTime::from_mseconds(40);
        let call = gst::ClockTime::from_mseconds(30);
        let ms = gst::ClockTime::from_mseconds;
        // n = 2, batch 1: one frame behind, plus the call.
        assert_eq!(added_latency(1, 1, frame, call, false), ms(70));
        // n = 3, batch 3: (n-1)*b = 6 frames in the stream batch, 2 waiting for the batch.
        assert_eq!(added_latency(6, 3, frame, call, false), ms(350));
        assert_eq!(added_latency(0, 1, frame, call, false), call);
        // Slower than the input: frames move on at the inference rate (per frame of a
        // batch), and when dropping a frame may wait for the call in progress.
        assert_eq!(added_latency(1, 1, ms(20), ms(70), true), ms(210));
        assert_eq!(added_latency(6, 3, ms(20), ms(90), false), ms(330));
    }
}
