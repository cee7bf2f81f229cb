// SPDX-License-Identifier: MPL-2.0
//! The socket thread of the three scale-out elements, written once.
//!
//! Each of `zmqdispatchsink`, `zmqworkersrc` and `zmqcollectsrc` keeps its ZeroMQ socket
//! on a thread of its own (ZeroMQ sockets must stay on one thread) and shares a core with
//! the streaming thread: the element's own state under a mutex, a condvar the streaming
//! thread waits on, and the [`Interrupt`] that wakes the socket thread from its poll. What
//! they all need around that lives here: the flushing and shutdown flags under the same
//! lock ([`Flagged`]), `unlock`/`unlock_stop`, the head of the poll loop, and spawning
//! and stopping the thread.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::interrupt::Interrupt;

/// An element's core with the two flags every socket thread needs.
#[derive(Debug)]
pub struct Flagged<C> {
    /// `unlock()` was called: waits in the streaming thread give up.
    pub flushing: bool,
    /// The element stops: the socket thread ends.
    pub shutdown: bool,
    pub core: C,
}

impl<C> Deref for Flagged<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.core
    }
}

impl<C> DerefMut for Flagged<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.core
    }
}

/// What the streaming thread and the socket thread share. `extra` is what else they share
/// without the lock (the scale-out ledger).
pub struct Shared<C, X = ()> {
    core: Mutex<Flagged<C>>,
    pub cond: Condvar,
    pub waker: Interrupt,
    pub extra: X,
}

impl<C, X> Shared<C, X> {
    pub fn new(core: C, extra: X) -> Result<Arc<Self>, gst::ErrorMessage> {
        let waker = Interrupt::new().map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                ("Could not create the wake-up socket pair: {e}")
            )
        })?;
        Ok(Arc::new(Shared {
            core: Mutex::new(Flagged {
                flushing: false,
                shutdown: false,
                core,
            }),
            cond: Condvar::new(),
            waker,
            extra,
        }))
    }

    /// The core (a panic elsewhere does not poison it for good).
    pub fn lock(&self) -> MutexGuard<'_, Flagged<C>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits on the condvar at most `timeout`.
    pub fn wait_timeout<'a>(
        &self,
        guard: MutexGuard<'a, Flagged<C>>,
        timeout: Duration,
    ) -> MutexGuard<'a, Flagged<C>> {
        self.cond
            .wait_timeout(guard, timeout)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// Waits on the condvar.
    pub fn wait<'a>(&self, guard: MutexGuard<'a, Flagged<C>>) -> MutexGuard<'a, Flagged<C>> {
        self.cond.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// `BaseSrc/BaseSink::unlock`: waits of the streaming thread end with `Flushing`.
    pub fn unlock(&self) {
        self.lock().flushing = true;
        self.cond.notify_all();
    }

    /// `unlock_stop`: the streaming thread may wait again.
    pub fn unlock_stop(&self) {
        self.lock().flushing = false;
    }

    /// The head of a socket thread's loop: waits up to `timeout` for input on `socket` or
    /// a wake-up; false when the thread must end.
    pub fn poll(&self, socket: &zmq::Socket, timeout: Duration, cat: gst::DebugCategory) -> bool {
        let mut items = [socket.as_poll_item(zmq::POLLIN), self.waker.poll_item()];
        if let Err(e) = zmq::poll(&mut items, (timeout.as_millis() as i64).max(1)) {
            gst::warning!(cat, "poll failed: {e}");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.waker.drain();
        !self.lock().shutdown
    }
}

/// A running socket thread.
pub struct SocketThread<C, X = ()> {
    shared: Arc<Shared<C, X>>,
    thread: Option<JoinHandle<()>>,
}

impl<C, X> SocketThread<C, X> {
    /// Starts `run` on a thread called `name`.
    pub fn spawn(
        name: &str,
        shared: Arc<Shared<C, X>>,
        run: impl FnOnce() + Send + 'static,
    ) -> Result<Self, gst::ErrorMessage> {
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(run)
            .map_err(|e| {
                gst::error_msg!(
                    gst::CoreError::Thread,
                    ("Could not start the socket thread: {e}")
                )
            })?;
        Ok(SocketThread {
            shared,
            thread: Some(thread),
        })
    }

    pub fn shared(&self) -> &Arc<Shared<C, X>> {
        &self.shared
    }

    /// Ends the thread: raises both flags, wakes everyone and waits for it.
    pub fn stop(mut self) -> Arc<Shared<C, X>> {
        {
            let mut core = self.shared.lock();
            core.shutdown = true;
            core.flushing = true;
        }
        self.shared.cond.notify_all();
        self.shared.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_ends_a_thread_waiting_in_poll_and_unlock_ends_a_wait() {
        gst::init().unwrap();
        let cat =
            gst::DebugCategory::new("socket-thread-test", gst::DebugColorFlags::empty(), None);
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::PULL).unwrap();
        let shared = Shared::new(0u32, ()).unwrap();
        let s = shared.clone();
        let io = SocketThread::spawn("test-io", shared.clone(), move || {
            while s.poll(&socket, Duration::from_secs(3600), cat) {
                s.lock().core += 1;
            }
        })
        .unwrap();

        let waiter = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut g = shared.lock();
                while !g.flushing {
                    g = shared.wait(g);
                }
            })
        };
        shared.unlock();
        waiter.join().unwrap();
        shared.unlock_stop();
        assert!(!shared.lock().flushing);

        let t0 = std::time::Instant::now();
        let shared = io.stop();
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert!(shared.lock().shutdown && shared.lock().flushing);
    }
}
