// SPDX-License-Identifier: MPL-2.0
//! What one connection may cost, below HTTP and WebSocket: a cap on connections at once
//! (`--max-connections`; the one past it gets a 503 and a counted, logged refusal), a write
//! timeout for peers that take none of the data waiting for them (`--write-timeout`: a
//! viewer that never reads, a pong flood from a client that never reads), and a count of
//! the bytes each connection read, with which the WebSocket side sees a message that
//! arrives too slowly.
//!
//! It sits in axum-server's accept step, so plain HTTP, TLS, MJPEG and upgraded WebSocket
//! connections all go through it. A connection that sends nothing at all is closed after
//! `--idle-timeout` here; from its first byte on, hyper's header-read timeout covers slow
//! request heads and idle keep-alive connections (see main.rs).

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum_server::accept::Accept;
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::stats::Stats;

/// How often a refusal of connections is logged, at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Bytes read by one connection so far.
#[derive(Default)]
pub struct Meter {
    pub read: AtomicU64,
}

pub struct Limits {
    permits: Arc<Semaphore>,
    max: usize,
    idle_timeout: Duration,
    write_timeout: Duration,
    stats: Arc<Stats>,
    /// The open connections' meters, by peer address (what the WebSocket handler knows).
    meters: Mutex<HashMap<SocketAddr, Arc<Meter>>>,
    /// When a refusal was last logged, and how many since.
    refusals: Mutex<(Option<Instant>, u64)>,
}

impl Limits {
    pub fn new(
        max: usize,
        idle_timeout: Duration,
        write_timeout: Duration,
        stats: Arc<Stats>,
    ) -> Arc<Limits> {
        Arc::new(Limits {
            permits: Arc::new(Semaphore::new(max)),
            max,
            idle_timeout,
            write_timeout,
            stats,
            meters: Mutex::new(HashMap::new()),
            refusals: Mutex::new((None, 0)),
        })
    }

    /// The byte count of the open connection from `peer`.
    pub fn meter(&self, peer: &SocketAddr) -> Option<Arc<Meter>> {
        self.meters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .cloned()
    }

    /// Counts a refused connection and says so on stderr, at most every 10 s.
    fn note_refusal(&self) {
        self.stats.add(&self.stats.refused_connections, 1);
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        r.1 += 1;
        if r.0.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
            eprintln!(
                "i2i-web: refused {} connection(s): {} are open, the limit set by --max-connections",
                r.1, self.max
            );
            *r = (Some(Instant::now()), 0);
        }
    }
}

/// The accept step: takes a connection slot or refuses the connection.
#[derive(Clone)]
pub struct LimitAcceptor {
    pub limits: Arc<Limits>,
    /// Over TLS a plain-text 503 means nothing to the client: the connection is just closed.
    pub tls: bool,
}

impl<S: Send + 'static> Accept<TcpStream, S> for LimitAcceptor {
    type Stream = Guarded;
    type Service = S;
    type Future = BoxFuture<'static, io::Result<(Guarded, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let limits = self.limits.clone();
        let tls = self.tls;
        Box::pin(async move {
            let Ok(permit) = limits.permits.clone().try_acquire_owned() else {
                limits.note_refusal();
                if !tls {
                    refuse(stream, limits.max).await;
                }
                return Err(io::Error::other("too many connections"));
            };
            stream.set_nodelay(true).ok();
            let peer = stream.peer_addr()?;
            let meter = Arc::new(Meter::default());
            limits
                .meters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(peer, meter.clone());
            let first_byte = Some(Box::pin(tokio::time::sleep(limits.idle_timeout)));
            Ok((
                Guarded {
                    io: stream,
                    first_byte,
                    stall: None,
                    timed_out: AtomicBool::new(false),
                    meter,
                    peer,
                    limits,
                    _permit: permit,
                },
                service,
            ))
        })
    }
}

/// Answers 503 to a connection over the limit, then closes it within about a second.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = format!(
        "i2i-web: too many connections ({max} open, the limit set by --max-connections); try again shortly\n"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Retry-After: 5\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent, so that closing does not reset the connection before
        // the client has read the answer.
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => total += n,
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

/// One accepted connection: holds its slot, times out stalled writes, counts bytes read.
pub struct Guarded {
    io: TcpStream,
    /// Running until the first byte arrives.
    first_byte: Option<Pin<Box<Sleep>>>,
    /// Running while a write waits for the peer to take data.
    stall: Option<Pin<Box<Sleep>>>,
    timed_out: AtomicBool,
    meter: Arc<Meter>,
    peer: SocketAddr,
    limits: Arc<Limits>,
    _permit: OwnedSemaphorePermit,
}

impl Guarded {
    /// Passes a write's result on; a write that stays pending for --write-timeout fails.
    fn writing<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(r) => {
                self.stall = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.limits.write_timeout;
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stall.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if !self.timed_out.swap(true, Ordering::Relaxed) {
                    self.limits.stats.add(&self.limits.stats.closed_slow, 1);
                }
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} took none of the data sent to it for {} ms (--write-timeout)",
                        self.peer,
                        timeout.as_millis()
                    ),
                )))
            }
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.limits
            .meters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.peer);
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.meter.read.fetch_add(n as u64, Ordering::Relaxed);
            self.first_byte = None;
        }
        if r.is_pending()
            && let Some(sleep) = self.first_byte.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            self.first_byte = None;
            self.limits.stats.add(&self.limits.stats.closed_idle, 1);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} sent nothing for {} ms (--idle-timeout)",
                    self.peer,
                    self.limits.idle_timeout.as_millis()
                ),
            )));
        }
        r
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.writing(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.writing(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.writing(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Makes room for `connections` descriptors: raises the soft limit towards the hard one, or
/// lowers the connection cap (with a warning) so that new clients are refused with a 503
/// and a log line instead of finding accept() failing silently.
pub fn fit_descriptor_limit(connections: usize) -> usize {
    // ZeroMQ's sockets and threads, the runtime, stdio: a margin for what is not a client.
    const RESERVE: u64 = 64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return connections;
    }
    let want = connections as u64 + RESERVE;
    if lim.rlim_cur >= want {
        return connections;
    }
    let raised = libc::rlimit {
        rlim_cur: want.min(lim.rlim_max),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        lim.rlim_cur = raised.rlim_cur;
    }
    if lim.rlim_cur >= want {
        return connections;
    }
    let fit = lim.rlim_cur.saturating_sub(RESERVE).max(1) as usize;
    eprintln!(
        "i2i-web: the descriptor limit ({}, ulimit -n) leaves room for {fit} connections: \
         --max-connections {connections} lowered to {fit}",
        lim.rlim_cur
    );
    fit
}
