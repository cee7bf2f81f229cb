// SPDX-License-Identifier: MPL-2.0
//! The properties renamed for the one vocabulary (docs/properties.md): every old name of
//! the five ZeroMQ elements still works, is flagged deprecated and warns once per element.

mod common;

use gst::prelude::*;

#[test]
fn old_property_names_work_and_warn_once() {
    common::init();
    let renamed = gstzmqsink::renamed_properties();
    assert!(renamed.len() >= 6, "{renamed:?}");
    i2i_compat::check_renamed("zmqsink", &renamed, |e| {
        // Sinks open their socket at READY: a free port, not the default one.
        e.set_property("endpoint", "tcp://127.0.0.1:*");
    });
}

#[test]
fn properties_that_never_acted_are_gone() {
    common::init();
    let worker = gst::ElementFactory::make("zmqworkersrc").build().unwrap();
    assert!(worker.find_property("curve-allow").is_none());
    assert!(worker.find_property("curve-server-key").is_some());
    let dispatch = gst::ElementFactory::make("zmqdispatchsink")
        .build()
        .unwrap();
    assert!(dispatch.find_property("curve-server-key").is_none());
    assert!(dispatch.find_property("curve-allow").is_some());
    // The address in use has one name on every ZeroMQ element.
    for name in [
        "zmqmsgpacksink",
        "zmqmsgpacksrc",
        "zmqdispatchsink",
        "zmqworkersrc",
        "zmqcollectsrc",
    ] {
        let e = gst::ElementFactory::make(name).build().unwrap();
        assert!(e.find_property("last-endpoint").is_some(), "{name}");
    }
}

#[test]
fn the_enums_of_the_properties_are_plugin_api() {
    common::init();
    i2i_compat::check_enums_are_plugin_api("zmqsink");
}
