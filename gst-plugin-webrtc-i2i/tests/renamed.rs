// SPDX-License-Identifier: MPL-2.0
//! The properties renamed for the one vocabulary (docs/properties.md): `i2iwhepsink
//! ts-offset` (ns) still works as `playout-delay` (ms), flagged deprecated, warning once
//! per element.

use std::sync::Once;

use gst::prelude::*;

fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        gst::init().unwrap();
        gstwebrtci2i::plugin_register_static().expect("register the webrtci2i plugin");
    });
}

#[test]
fn old_property_names_work_and_warn_once() {
    init();
    let renamed = gstwebrtci2i::renamed_properties();
    assert!(!renamed.is_empty());
    i2i_compat::check_renamed("webrtci2i", &renamed, |e| {
        // The endpoint listens from READY: a free port, not the default one.
        e.set_property("host-addr", "http://127.0.0.1:0");
    });
}

#[test]
fn ts_offset_in_ns_is_playout_delay_in_ms() {
    init();
    let sink = gst::ElementFactory::make("i2iwhepsink").build().unwrap();
    sink.set_property("ts-offset", 300_000_000u64);
    assert_eq!(sink.property::<u32>("playout-delay"), 300);
    sink.set_property("playout-delay", 1500u32);
    assert_eq!(sink.property::<u64>("ts-offset"), 1_500_000_000);
}

#[test]
fn the_enums_of_the_properties_are_plugin_api() {
    init();
    i2i_compat::check_enums_are_plugin_api("webrtci2i");
}
