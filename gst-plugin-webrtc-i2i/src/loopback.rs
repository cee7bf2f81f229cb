// SPDX-License-Identifier: MPL-2.0
//! Extra local ICE addresses for the webrtcbins inside `whipserversrc` / `whepserversink`.
//!
//! libnice never offers 127.0.0.1 as a host candidate by itself, so a publisher or viewer on
//! the same machine that only offers loopback candidates (headless test browsers, a rig with no
//! network) would never connect. The signaller announces each new webrtcbin with
//! `webrtcbin-ready`; before its ICE gathering starts we hand the agent the addresses with the
//! nice agent's `add-local-ip-address` action signal.

use gst::glib;
use gst::prelude::*;

/// Adds `addresses` to the ICE agent of every webrtcbin the `signaller` of `element` creates.
pub fn hook(element: &gst::Element, addresses: Vec<String>, cat: gst::DebugCategory) {
    if addresses.is_empty() || element.find_property("signaller").is_none() {
        return;
    }
    let signaller = element.property::<glib::Object>("signaller");
    signaller.connect("webrtcbin-ready", false, move |args| {
        let webrtcbin = args.get(2).and_then(|v| v.get::<gst::Element>().ok())?;
        add_addresses(&webrtcbin, &addresses, cat);
        None
    });
}

fn add_addresses(webrtcbin: &gst::Element, addresses: &[String], cat: gst::DebugCategory) {
    let Some(agent) = webrtcbin
        .find_property("ice-agent")
        .map(|_| webrtcbin.property::<glib::Object>("ice-agent"))
    else {
        gst::warning!(cat, obj = webrtcbin, "webrtcbin has no ice-agent property");
        return;
    };
    for address in addresses {
        let added = agent.emit_by_name::<bool>("add-local-ip-address", &[address]);
        if added {
            gst::debug!(cat, obj = webrtcbin, "ICE host address {address} added");
        } else {
            gst::warning!(
                cat,
                obj = webrtcbin,
                "ICE agent refused host address {address}"
            );
        }
    }
}

/// Splits a comma-separated address list ("127.0.0.1,10.0.0.2"), dropping blanks.
pub fn parse_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_list;

    #[test]
    fn list_is_split_and_trimmed() {
        assert_eq!(parse_list(" 127.0.0.1, ,::1 "), vec!["127.0.0.1", "::1"]);
        assert!(parse_list("").is_empty());
    }
}
