// SPDX-License-Identifier: MPL-2.0
//! The properties renamed for the one vocabulary (docs/properties.md): every old name of
//! the i2i plugin's elements still works, is flagged deprecated and warns once per element.

use std::sync::Once;

use gst::prelude::*;

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gsti2i::plugin_register_static().expect("register i2i plugin");
    });
}

#[test]
fn old_property_names_work_and_warn_once() {
    init();
    let renamed = gsti2i::renamed_properties();
    assert!(!renamed.is_empty());
    i2i_compat::check_renamed("i2i", &renamed, |_| {});
}

#[test]
fn settingssrc_tells_its_address_and_i2idecode_takes_the_queue_properties() {
    init();
    let src = gst::ElementFactory::make("settingssrc").build().unwrap();
    assert!(src.find_property("last-endpoint").is_some());
    let decode = gst::ElementFactory::make("i2idecode").build().unwrap();
    for name in ["max-queue", "drop-frames", "stats-interval"] {
        assert!(decode.find_property(name).is_some(), "{name}");
    }
    // A decoder resizes nothing.
    assert!(decode.find_property("resize-mode").is_none());
    decode.set_property("max-queue", 9u32);
    assert_eq!(decode.property::<u32>("max-queue"), 9);
    decode.set_property("stats-interval", 250u32);
    assert_eq!(decode.property::<u32>("stats-interval"), 250);
    // Every frame is decoded by default; stats at EOS only.
    let fresh = gst::ElementFactory::make("i2idecode").build().unwrap();
    assert_eq!(fresh.property::<u32>("stats-interval"), 0);
    assert_eq!(
        fresh.property_value("drop-frames").serialize().unwrap(),
        "never"
    );
}

#[test]
fn the_enums_of_the_properties_are_plugin_api() {
    init();
    i2i_compat::check_enums_are_plugin_api("i2i");
}
