// SPDX-License-Identifier: MPL-2.0
//! Hearing an application's end-of-stream request in a sink that waits for its peers.
//!
//! `gst-launch-1.0 -e` (and any application that ends a pipeline with
//! `pipeline.send_event(eos)`) sends EOS to the pipeline's *sources*; the EOS then travels
//! down the streaming thread. A sink that holds that thread while it waits for a reader
//! (`zmqmsgpacksink socket-type=push` with nobody pulling, `zmqdispatchsink` with no worker)
//! never sees it: the first Ctrl-C did nothing. A bin sends such an event to every child
//! flagged `SOURCE`, so the waiting sinks carry that flag too and take the request in
//! `send_event`: from then on a frame nobody takes within [`GRACE`] is given up and counted,
//! the streaming thread moves on and the real EOS arrives. The flag changes nothing else
//! for a sink: a bin uses it only to pick the elements it sends downstream events to.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst::subclass::prelude::*;

/// How long a frame may still wait for a reader once the end was requested.
pub const GRACE: Duration = Duration::from_millis(500);

/// Makes the bin holding `element` send it the application's EOS (see the module text).
pub fn listen(element: &impl IsA<gst::Element>) {
    element.set_element_flags(gst::ElementFlags::SOURCE);
}

/// When the end was requested, reset at each start.
#[derive(Debug, Default)]
pub struct EosRequest(Mutex<Option<Instant>>);

impl EosRequest {
    /// Notes the request (the first one counts).
    pub fn request(&self) {
        self.0.lock().unwrap().get_or_insert_with(Instant::now);
    }

    pub fn clear(&self) {
        *self.0.lock().unwrap() = None;
    }

    pub fn requested(&self) -> bool {
        self.0.lock().unwrap().is_some()
    }

    /// The first step of the sink's `send_event`: notes an EOS request and answers it;
    /// other downstream events, which the bin sends here only because of the `SOURCE`
    /// flag (the real sources got them too), are answered as passed over. `None`: an
    /// upstream event for the base class.
    pub fn intercept(&self, event: &gst::Event) -> Option<bool> {
        if event.type_() == gst::EventType::Eos {
            self.request();
            return Some(true);
        }
        if !event.is_upstream() {
            return Some(true);
        }
        None
    }

    /// A sink's `send_event`: [`EosRequest::intercept`], else the base class's.
    pub fn send_event<T: ElementImpl>(
        &self,
        imp: &T,
        cat: gst::DebugCategory,
        event: gst::Event,
    ) -> bool {
        if let Some(answer) = self.intercept(&event) {
            gst::debug!(
                cat,
                imp = imp,
                "{:?} event sent to the element",
                event.type_()
            );
            return answer;
        }
        imp.parent_send_event(event)
    }

    /// Whether a frame still waiting for a reader should be given up now.
    pub fn give_up(&self) -> bool {
        self.0.lock().unwrap().is_some_and(|t| t.elapsed() >= GRACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_up_only_after_the_grace_once_requested() {
        gst::init().unwrap();
        let r = EosRequest::default();
        assert!(!r.requested() && !r.give_up());
        // Other downstream events are passed over, upstream ones go to the base class.
        assert_eq!(r.intercept(&gst::event::StreamStart::new("s")), Some(true));
        assert_eq!(r.intercept(&gst::event::Reconfigure::new()), None);
        assert!(!r.requested());
        assert_eq!(r.intercept(&gst::event::Eos::new()), Some(true));
        assert!(r.requested() && !r.give_up());
        std::thread::sleep(GRACE + Duration::from_millis(20));
        assert!(r.give_up());
        r.clear();
        assert!(!r.give_up());
    }
}
