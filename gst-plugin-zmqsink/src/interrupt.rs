// SPDX-License-Identifier: MPL-2.0
//! Ending a blocking ZeroMQ wait from another thread: the one wake-up mechanism of the
//! five elements.
//!
//! A thread waits in `zmq_poll` on its sockets and on the read end of a Unix socket pair;
//! another thread writes one byte to the other end ([`Interrupt::wake`]), so the poll
//! returns at once instead of at the next timeout. `unlock()` also raises a flushing flag
//! ([`Interrupt::interrupt`]). ZeroMQ sockets must not be shared between threads; a plain
//! file descriptor may.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A flushing flag with a file descriptor that becomes readable when it is raised.
#[derive(Debug)]
pub struct Interrupt {
    flushing: AtomicBool,
    wake_tx: UnixStream,
    wake_rx: UnixStream,
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The socket has the event asked for.
    Ready,
    /// [`Interrupt::interrupt`] was called: give up and return `Flushing`.
    Interrupted,
    /// The timeout passed first.
    TimedOut,
}

impl Interrupt {
    pub fn new() -> io::Result<Interrupt> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        Ok(Interrupt {
            flushing: AtomicBool::new(false),
            wake_tx,
            wake_rx,
        })
    }

    /// Raises the flag and wakes a thread waiting in [`Interrupt::wait`].
    pub fn interrupt(&self) {
        self.flushing.store(true, Ordering::SeqCst);
        // A full pipe already wakes the waiter, so a failed write loses nothing.
        let _ = (&self.wake_tx).write(&[1]);
    }

    /// Wakes a thread polling [`Interrupt::poll_item`] or waiting in [`Interrupt::wait`]
    /// without raising the flag.
    pub fn wake(&self) {
        // A full pipe already wakes the poller: a failed write loses nothing.
        let _ = (&self.wake_tx).write(&[1]);
    }

    /// A poll item that is readable after [`Interrupt::wake`] or [`Interrupt::interrupt`],
    /// for threads that poll several sockets themselves.
    pub fn poll_item(&self) -> zmq::PollItem<'static> {
        zmq::PollItem::from_fd(self.wake_rx.as_raw_fd(), zmq::POLLIN)
    }

    /// Lowers the flag and empties the pipe, so the next wait blocks again.
    pub fn clear(&self) {
        self.flushing.store(false, Ordering::SeqCst);
        self.drain();
    }

    /// Empties the pipe (after a wake-up was seen), leaving the flag as it is.
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.wake_rx).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }

    pub fn is_interrupted(&self) -> bool {
        self.flushing.load(Ordering::SeqCst)
    }

    /// Waits until `socket` has `events`, the flag is raised, or `timeout` passes
    /// (`None`: no timeout). `extra` sockets (e.g. a monitor) are polled for input too;
    /// their readiness also ends the wait, and `extra_ready` tells which.
    pub fn wait(
        &self,
        socket: &zmq::Socket,
        events: zmq::PollEvents,
        extra: &[&zmq::Socket],
        extra_ready: &mut [bool],
        timeout: Option<Duration>,
    ) -> Result<Wait, zmq::Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut items = Vec::with_capacity(2 + extra.len());
        items.push(socket.as_poll_item(events));
        items.push(zmq::PollItem::from_fd(
            self.wake_rx.as_raw_fd(),
            zmq::POLLIN,
        ));
        for s in extra {
            items.push(s.as_poll_item(zmq::POLLIN));
        }
        loop {
            // Checked before every poll: the byte written by interrupt() stays in the pipe
            // until clear(), so an interrupt between this check and the poll is not lost.
            if self.is_interrupted() {
                return Ok(Wait::Interrupted);
            }
            let timeout_ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Wait::TimedOut);
                    }
                    left.as_millis().max(1) as i64
                }
            };
            match zmq::poll(&mut items, timeout_ms) {
                Ok(_) => {}
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e),
            }
            let mut any_extra = false;
            for (i, ready) in extra_ready.iter_mut().enumerate() {
                *ready = items.get(2 + i).is_some_and(|it| it.is_readable());
                any_extra |= *ready;
            }
            if self.is_interrupted() {
                return Ok(Wait::Interrupted);
            }
            if !(items[0].get_revents() & events).is_empty() || any_extra {
                return Ok(Wait::Ready);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn interrupt_ends_a_blocking_wait_promptly() {
        let ctx = zmq::Context::new();
        let sock = ctx.socket(zmq::PULL).unwrap();
        sock.bind("tcp://127.0.0.1:*").unwrap();
        let intr = Arc::new(Interrupt::new().unwrap());
        let i2 = intr.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let at = Instant::now();
            i2.interrupt();
            at
        });
        let r = intr.wait(&sock, zmq::POLLIN, &[], &mut [], None).unwrap();
        let woke = Instant::now();
        let at = t.join().unwrap();
        assert_eq!(r, Wait::Interrupted);
        assert!(woke.duration_since(at) < Duration::from_millis(50));

        // Still interrupted until cleared; then waits time out normally.
        assert_eq!(
            intr.wait(
                &sock,
                zmq::POLLIN,
                &[],
                &mut [],
                Some(Duration::from_millis(5))
            )
            .unwrap(),
            Wait::Interrupted
        );
        intr.clear();
        assert_eq!(
            intr.wait(
                &sock,
                zmq::POLLIN,
                &[],
                &mut [],
                Some(Duration::from_millis(20))
            )
            .unwrap(),
            Wait::TimedOut
        );
    }

    #[test]
    fn ready_when_a_message_arrives() {
        let ctx = zmq::Context::new();
        let pull = ctx.socket(zmq::PULL).unwrap();
        pull.bind("tcp://127.0.0.1:*").unwrap();
        let ep = pull.get_last_endpoint().unwrap().unwrap();
        let push = ctx.socket(zmq::PUSH).unwrap();
        push.connect(&ep).unwrap();
        push.send(&b"x"[..], 0).unwrap();
        let intr = Interrupt::new().unwrap();
        let r = intr
            .wait(
                &pull,
                zmq::POLLIN,
                &[],
                &mut [],
                Some(Duration::from_secs(5)),
            )
            .unwrap();
        assert_eq!(r, Wait::Ready);
        assert_eq!(pull.recv_bytes(zmq::DONTWAIT).unwrap(), b"x");
    }
}
