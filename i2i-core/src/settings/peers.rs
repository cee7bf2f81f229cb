// SPDX-License-Identifier: MPL-2.0
//! Caps the TCP peers of a socket the settings holder binds, so that idle connections
//! (a port scan, a stranger holding connections open) cannot use up the process's file
//! descriptors and lock operators and late transforms out.
//!
//! libzmq has no per-socket connection limit, so a socket monitor (ZeroMQ's own event
//! stream: `ACCEPTED` and `DISCONNECTED` with the connection's descriptor) keeps the list
//! of peers. Past `max` peers, a peer that has been connected for [`IDLE_GRACE`] without
//! sending one byte is closed to make room (a ZeroMQ peer sends its greeting at once, so
//! such a peer is not one); else the newcomer is closed. Either is counted and reported.
//! Closing is `shutdown(2)`: the descriptor stays libzmq's, which sees the end of the
//! connection and closes it itself. Peers that never finish the ZeroMQ handshake are also
//! closed by libzmq after [`HANDSHAKE_TIMEOUT`], and silent peers (a machine that
//! vanished) after [`HEARTBEAT_TIMEOUT`] without an answer to ZeroMQ heartbeats.

use std::mem::ManuallyDrop;
use std::net::{Shutdown, TcpStream};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use crate::rate_limit::RateLimit;

/// Default most peers per socket.
pub const DEFAULT_MAX_PEERS: usize = 256;
/// A peer that sent nothing for this long after connecting may be closed to make room.
pub const IDLE_GRACE: Duration = Duration::from_secs(1);
/// libzmq closes connections that have not finished the ZeroMQ handshake by then.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// ZeroMQ heartbeats: a PING this often, and a peer that answers nothing for
/// [`HEARTBEAT_TIMEOUT`] is closed.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors kept for everything else (libzmq's own, stdio, OSC, history file).
const RESERVED_DESCRIPTORS: u64 = 64;
/// Reports per second about closed peers; the rest are counted.
const REPORTS_PER_SECOND: u32 = 5;

/// The timeouts above, on a socket the holder binds.
pub fn set_peer_timeouts(sock: &zmq::Socket) {
    let ms = |d: Duration| d.as_millis() as i32;
    sock.set_handshake_ivl(ms(HANDSHAKE_TIMEOUT)).ok();
    sock.set_heartbeat_ivl(ms(HEARTBEAT_INTERVAL)).ok();
    sock.set_heartbeat_timeout(ms(HEARTBEAT_TIMEOUT)).ok();
}

/// Raises this process's descriptor limit to its hard limit and returns the most peers
/// per socket that `sockets` sockets can hold within it (at most `requested`), and the
/// limit when it is what lowered the answer.
pub fn peer_budget(requested: usize, sockets: u64) -> (usize, Option<u64>) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    let limit = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return (requested, None);
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    let fits = (limit.saturating_sub(RESERVED_DESCRIPTORS) / sockets.max(1)).max(4);
    if (fits as usize) < requested {
        (fits as usize, Some(limit))
    } else {
        (requested, None)
    }
}

/// Something a person should know about the peers of a socket.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerEvent {
    /// A newcomer was closed: `max` peers were connected and none was idle.
    Refused {
        address: String,
        max: usize,
        total: u64,
        held_back: u64,
    },
    /// An idle peer was closed to make room for a newcomer.
    Evicted {
        address: String,
        connected_for: Duration,
        total: u64,
        held_back: u64,
    },
}

struct Peer {
    fd: i32,
    since: Instant,
}

/// The peers of one socket, from its monitor.
pub struct PeerGuard {
    monitor: zmq::Socket,
    max: usize,
    peers: Vec<Peer>,
    refused: u64,
    evicted: u64,
    reports: RateLimit,
}

impl PeerGuard {
    /// Starts monitoring `sock` (before it binds, so no peer is missed).
    pub fn watch(
        ctx: &zmq::Context,
        sock: &zmq::Socket,
        name: &str,
        max: usize,
    ) -> Result<PeerGuard, String> {
        let endpoint = format!(
            "inproc://i2i-peers-{name}-{:x}",
            sock as *const zmq::Socket as usize ^ u64::from(std::process::id()) as usize
        );
        let events = zmq::SocketEvent::ACCEPTED as i32 | zmq::SocketEvent::DISCONNECTED as i32;
        sock.monitor(&endpoint, events)
            .map_err(|e| format!("cannot watch the peers of the {name} socket: {e}"))?;
        let monitor = ctx
            .socket(zmq::PAIR)
            .map_err(|e| format!("cannot create the {name} peer monitor: {e}"))?;
        monitor.set_linger(0).ok();
        monitor
            .connect(&endpoint)
            .map_err(|e| format!("cannot watch the peers of the {name} socket: {e}"))?;
        Ok(PeerGuard {
            monitor,
            max: max.max(1),
            peers: Vec::new(),
            refused: 0,
            evicted: 0,
            reports: RateLimit::per_second(REPORTS_PER_SECOND),
        })
    }

    pub fn as_poll_item(&self) -> zmq::PollItem<'_> {
        self.monitor.as_poll_item(zmq::POLLIN)
    }

    /// Peers connected now.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    /// Newcomers closed because the socket was full, and idle peers closed for them.
    pub fn counts(&self) -> (u64, u64) {
        (self.refused, self.evicted)
    }

    /// Reads the monitor's waiting events and holds the socket to `max` peers; returns
    /// what to report (rate-limited; `held_back` counts the reports not made).
    pub fn service(&mut self) -> Vec<PeerEvent> {
        while let Ok(frames) = self.monitor.recv_multipart(zmq::DONTWAIT) {
            let Some(head) = frames.first().filter(|f| f.len() >= 6) else {
                continue;
            };
            let event = u16::from_le_bytes([head[0], head[1]]);
            let fd = i32::from_le_bytes([head[2], head[3], head[4], head[5]]);
            if event == zmq::SocketEvent::ACCEPTED as u16 {
                self.peers.push(Peer {
                    fd,
                    since: Instant::now(),
                });
            } else if event == zmq::SocketEvent::DISCONNECTED as u16
                && let Some(i) = self.peers.iter().position(|p| p.fd == fd)
            {
                self.peers.remove(i);
            }
        }
        // Decided once all waiting events are read, so every descriptor in the list is
        // still the connection it was accepted as.
        let mut out = Vec::new();
        while self.peers.len() > self.max {
            let idle = self
                .peers
                .iter()
                .position(|p| p.since.elapsed() >= IDLE_GRACE && bytes_received(p.fd) == Some(0));
            let (peer, evicted) = match idle {
                Some(i) => (self.peers.remove(i), true),
                None => match self.peers.pop() {
                    Some(p) => (p, false),
                    None => break,
                },
            };
            let address = close(peer.fd);
            let held_back = self.reports.allow();
            if evicted {
                self.evicted += 1;
            } else {
                self.refused += 1;
            }
            if let Some(held_back) = held_back {
                out.push(if evicted {
                    PeerEvent::Evicted {
                        address,
                        connected_for: peer.since.elapsed(),
                        total: self.evicted,
                        held_back,
                    }
                } else {
                    PeerEvent::Refused {
                        address,
                        max: self.max,
                        total: self.refused,
                        held_back,
                    }
                });
            }
        }
        out
    }
}

/// Borrows a descriptor libzmq owns as a TcpStream, never closing it.
fn borrowed(fd: i32) -> ManuallyDrop<TcpStream> {
    // SAFETY: the descriptor stays open (ManuallyDrop: never closed here); every call on
    // it only reads socket state or shuts the connection down, which libzmq handles.
    ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) })
}

/// Shuts the connection down (libzmq then closes it) and returns the peer's address.
fn close(fd: i32) -> String {
    let s = borrowed(fd);
    let address = s
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "an unknown address".to_string());
    let _ = s.shutdown(Shutdown::Both);
    address
}

/// Bytes the peer has sent on this TCP connection (None: not a TCP socket).
fn bytes_received(fd: i32) -> Option<u64> {
    // SAFETY: zeroed tcp_info is a valid value; getsockopt writes at most `len` bytes.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(info.tcpi_bytes_received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound_router(ctx: &zmq::Context, max: usize) -> (zmq::Socket, PeerGuard, String) {
        let sock = ctx.socket(zmq::ROUTER).unwrap();
        sock.set_linger(0).unwrap();
        let guard = PeerGuard::watch(ctx, &sock, "test", max).unwrap();
        sock.bind("tcp://127.0.0.1:*").unwrap();
        let ep = sock.get_last_endpoint().unwrap().unwrap();
        (sock, guard, ep.trim_start_matches("tcp://").to_string())
    }

    fn serve_until(guard: &mut PeerGuard, done: impl Fn(&PeerGuard) -> bool) -> Vec<PeerEvent> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut events = Vec::new();
        while !done(guard) {
            assert!(
                Instant::now() < deadline,
                "peers {}, counts {:?}",
                guard.peers(),
                guard.counts()
            );
            events.extend(guard.service());
            std::thread::sleep(Duration::from_millis(20));
        }
        events
    }

    #[test]
    fn a_full_socket_closes_newcomers_then_idle_peers() {
        let ctx = zmq::Context::new();
        let (sock, mut guard, addr) = bound_router(&ctx, 3);
        // Five idle TCP connections: three are kept, two refused.
        let idle: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(&addr).unwrap()).collect();
        // (Closed as newcomers; on a machine so slow that one waited a second before the
        // next came, closed as idle instead.)
        let events = serve_until(&mut guard, |g| {
            g.counts().0 + g.counts().1 == 2 && g.peers() == 3
        });
        assert!(
            matches!(
                &events[0],
                PeerEvent::Refused { max: 3, .. } | PeerEvent::Evicted { .. }
            ),
            "{events:?}"
        );
        // A real ZeroMQ client after the grace time: an idle peer makes room for it.
        std::thread::sleep(IDLE_GRACE);
        let evicted = guard.counts().1;
        let dealer = ctx.socket(zmq::DEALER).unwrap();
        dealer.set_linger(0).unwrap();
        dealer.connect(&format!("tcp://{addr}")).unwrap();
        dealer.send("hello", 0).unwrap();
        let events = serve_until(&mut guard, |g| g.counts().1 > evicted);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, PeerEvent::Evicted { .. })),
            "{events:?}"
        );
        assert!(
            sock.poll(zmq::POLLIN, 10_000).unwrap() > 0,
            "the client never got in"
        );
        let frames = sock.recv_multipart(0).unwrap();
        assert_eq!(frames.last().unwrap(), b"hello");
        // The peers closed here see their connection end.
        let closed = idle.iter().filter(|s| closed_by_server(s)).count();
        assert!(closed >= 3, "{closed} of 5 closed");
    }

    fn closed_by_server(mut s: &TcpStream) -> bool {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 256];
        loop {
            match std::io::Read::read(&mut s, &mut b) {
                Ok(0) => return true,
                // libzmq's greeting, sent to every connection.
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    #[test]
    fn the_budget_fits_the_descriptor_limit() {
        let (n, _) = peer_budget(usize::MAX, 2);
        assert!((4..usize::MAX).contains(&n));
        assert_eq!(peer_budget(3, 2).0, 3);
    }
}
