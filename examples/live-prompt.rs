// SPDX-License-Identifier: MPL-2.0
//! Embedding `i2itransform` in a gstreamer-rs program: test frames through the transform,
//! the prompt changed while the pipeline plays, and its stats read off the bus.
//!
//! ```sh
//! . .deps/env.sh   # or the plugins linked by scripts/setup.sh
//! cargo run --release -p i2i-examples --bin live-prompt -- models/demo 40
//! ```

use gst::prelude::*;

const FIRST_PROMPT: &str = "a watercolor landscape";
const SECOND_PROMPT: &str = "an oil painting of a harbour at night";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    gst::init()?;
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "models/demo".into());
    let frames: i32 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(40);

    // videotestsrc ! capsfilter ! i2itransform ! fakesink, built element by element; the
    // test source plays in real time, as a camera would.
    let src = gst::ElementFactory::make("videotestsrc")
        .property("num-buffers", frames)
        .property("is-live", true)
        .build()?;
    let caps = gst::Caps::builder("video/x-raw")
        .field("width", 256)
        .field("height", 256)
        .field("framerate", gst::Fraction::new(15, 1))
        .build();
    let filter = gst::ElementFactory::make("capsfilter")
        .property("caps", &caps)
        .build()?;
    let transform = gst::ElementFactory::make("i2itransform")
        .property("model", &model)
        .property("width", 256u32)
        .property("height", 256u32)
        .property("prompt", FIRST_PROMPT)
        // An i2itransform-stats message every 500 ms (and one at the end of the stream).
        .property("stats-interval", 500u32)
        .build()
        .map_err(|_| "no i2itransform element: run scripts/setup.sh, or . .deps/env.sh")?;
    let sink = gst::ElementFactory::make("fakesink").build()?;
    let pipeline = gst::Pipeline::new();
    pipeline.add_many([&src, &filter, &transform, &sink])?;
    gst::Element::link_many([&src, &filter, &transform, &sink])?;

    pipeline.set_state(gst::State::Playing)?;
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let mut changed = false;
    let mut result = Ok(());
    for msg in bus.iter_timed(gst::ClockTime::NONE) {
        match msg.view() {
            gst::MessageView::Element(e) => {
                let Some(s) = e.structure() else { continue };
                match s.name().as_str() {
                    "i2itransform-stats" => {
                        let n = |f: &str| s.get::<u64>(f).unwrap_or(0);
                        println!(
                            "stats: {} frames in, {} out, {} dropped, {:.0} ms per batch",
                            n("frames-in"),
                            n("frames-out"),
                            n("dropped"),
                            s.get::<f64>("avg-inference-ms").unwrap_or(0.0)
                        );
                        // Change the prompt once frames flow: it applies at the next batch.
                        if !changed && n("frames-out") > 0 {
                            transform.set_property("prompt", SECOND_PROMPT);
                            changed = true;
                            println!("prompt changed");
                        }
                    }
                    // What the transform applied, and from which frame on.
                    "i2i-settings-applied" => println!(
                        "frame {}: now \"{}\"",
                        s.get::<u64>("frame-index").unwrap_or(0),
                        s.get::<&str>("prompt").unwrap_or("")
                    ),
                    _ => {}
                }
            }
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                result = Err(format!("{}: {}", e.error(), e.debug().unwrap_or_default()).into());
                break;
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null)?;
    result
}
