// SPDX-License-Identifier: MPL-2.0
//! A socket that cannot be opened (a port in use, an endpoint that is not one) fails the
//! state change with the element's own error, naming the address and the fix, and with no
//! second, generic "state change failed and some element failed to post a proper error
//! message" after it. For all five elements, in real pipelines, against a real socket that
//! holds the port.

mod common;

use common::*;
use gst::prelude::*;

/// The error messages a pipeline posts while failing to start.
fn start_errors(launch: &str) -> Vec<String> {
    init();
    let pipeline = gst::parse::launch(launch).unwrap();
    assert!(
        pipeline.set_state(gst::State::Playing).is_err(),
        "{launch}: started"
    );
    let bus = pipeline.bus().unwrap();
    let errors: Vec<String> = std::iter::from_fn(|| bus.pop_filtered(&[gst::MessageType::Error]))
        .map(|m| match m.view() {
            gst::MessageView::Error(e) => e.error().to_string(),
            _ => unreachable!(),
        })
        .collect();
    pipeline.set_state(gst::State::Null).unwrap();
    errors
}

#[test]
fn a_port_in_use_is_one_clear_error_for_each_binding_element() {
    let ctx = zmq::Context::new();
    let holder = ctx.socket(zmq::PUB).unwrap();
    holder.bind("tcp://127.0.0.1:*").unwrap();
    let taken = holder.get_last_endpoint().unwrap().unwrap();
    for launch in [
        format!("videotestsrc num-buffers=1 ! jpegenc ! zmqmsgpacksink endpoint={taken}"),
        format!("videotestsrc num-buffers=1 ! jpegenc ! zmqdispatchsink endpoint={taken}"),
        format!("zmqmsgpacksrc endpoint={taken} bind=true ! fakesink"),
        format!("zmqcollectsrc endpoint={taken} ! fakesink"),
    ] {
        let errors = start_errors(&launch);
        assert_eq!(errors.len(), 1, "{launch}: {errors:#?}");
        assert!(
            errors[0].contains("Could not bind")
                && errors[0].contains(&taken)
                && errors[0].contains("pick another port"),
            "{launch}: {}",
            errors[0]
        );
    }
}

#[test]
fn an_endpoint_that_is_not_one_is_one_clear_error_for_a_connecting_element() {
    let errors = start_errors("zmqworkersrc endpoint=nonsense ! fakesink");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("nonsense"), "{}", errors[0]);
    assert!(!errors[0].contains("proper error message"), "{}", errors[0]);
}
