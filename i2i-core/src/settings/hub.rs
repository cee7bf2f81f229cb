// SPDX-License-Identifier: MPL-2.0
//! The settings state holder behind `i2i-prompt`: it keeps the full current settings,
//! publishes them (see [`super::state`]) on a PUB socket on every change and as a
//! heartbeat, and takes commands on a ROUTER socket, answering each with `ok ...` or
//! `error: ...`.
//!
//! Control socket protocol (ROUTER; clients use DEALER with an empty delimiter frame, or REQ):
//! * `[payload]`: one settings message (chat text, msgpack map or JSON object, as
//!   [`super::message::decode_message`] reads them). Answer: `ok seq=N <changes>`,
//!   `ok seq=N {state JSON}` for `/status`, the command table for `/help`, or
//!   `error: <what was wrong>`.
//! * `[i2i-applied, report JSON]`: a transform reports what it applied; no answer; the
//!   report is republished on the PUB socket for every console. A report frame without
//!   its JSON is refused (it is never taken for the prompt "i2i-applied").
//! * In-process clients (the console, the OSC input) may add a second frame naming where
//!   the message came from (`osc 10.0.0.7:9000`), which the holder's log shows.
//!
//! Changes are applied and answered at once; the state is published at most once per
//! `min_publish_interval` (a flood of changes costs every transform one snapshot per
//! interval, carrying the latest values), and as a heartbeat. Each socket holds at most
//! `max_peers` TCP peers (see [`super::peers`]).
//!
//! With CURVE both sockets are CURVE servers. The ZAP policy lets controller keys send
//! commands, lets subscriber keys (transforms) subscribe and report, and refuses every
//! other key. Without a subscriber allow-list any key may subscribe (reading stays
//! encrypted, but changing settings still needs a controller key).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::command::{Command, HELP};
use super::limits::Pacer;
use super::message::decode_message;
use super::peers::{DEFAULT_MAX_PEERS, PeerEvent, PeerGuard, set_peer_timeouts};
use super::state::{APPLIED_TOPIC, AppliedReport, Snapshot};
use super::{DEFAULT_T_INDEX_LIST, SettingsUpdate, strength_of_t_index_list};
use crate::curve::{AllowList, KeyPair, ZapHandler, ZapRequest, make_client, make_server};

/// Default heartbeat: a late joiner has the state within this (plus connection time).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(300);
/// Default shortest time between two published changes: one frame at 30 frames/s.
pub const DEFAULT_MIN_PUBLISH_INTERVAL: Duration = Duration::from_millis(33);
/// Messages up to this size are read and answered (`error: ... larger than the limit`);
/// libzmq closes the connection of a peer sending a larger one, and its client reports
/// no answer.
pub const MAX_ANSWERED_MESSAGE_BYTES: i64 = 16 * 1024 * 1024;
/// ZAP domains of the two sockets.
pub const CONTROL_DOMAIN: &str = "i2i-control";
pub const STATE_DOMAIN: &str = "i2i-state";

/// CURVE set-up of a state holder.
#[derive(Clone, Debug)]
pub struct HubCurve {
    /// The holder's own key pair (clients need its public key).
    pub keys: KeyPair,
    /// Keys that may change settings.
    pub controllers: AllowList,
    /// Keys that may subscribe and report; `None` lets any CURVE client subscribe.
    pub subscribers: Option<AllowList>,
}

#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Where the state PUB socket binds (`tcp://*:5556`).
    pub state_bind: String,
    /// Where the command ROUTER socket binds (`tcp://*:5560`).
    pub control_bind: String,
    pub heartbeat: Duration,
    pub curve: Option<HubCurve>,
    /// Settings to start from.
    pub initial: SettingsUpdate,
    /// The transforms' `num-inference-steps`: t-index lists are checked against it, as
    /// the transforms check them, so a command they would refuse is refused here.
    pub num_inference_steps: u32,
    /// At most one published change per this; changes in between are merged (0: publish
    /// every batch of changes at once).
    pub min_publish_interval: Duration,
    /// Most TCP peers per socket (see [`super::peers::peer_budget`] for what fits).
    pub max_peers: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            state_bind: format!("tcp://*:{}", super::DEFAULT_STATE_PORT),
            control_bind: format!("tcp://*:{}", super::DEFAULT_CONTROL_PORT),
            heartbeat: DEFAULT_HEARTBEAT,
            curve: None,
            initial: SettingsUpdate::default(),
            num_inference_steps: super::DEFAULT_NUM_INFERENCE_STEPS,
            min_publish_interval: DEFAULT_MIN_PUBLISH_INTERVAL,
            max_peers: DEFAULT_MAX_PEERS,
        }
    }
}

/// What happened, for the console.
#[derive(Clone, Debug)]
pub enum HubEvent {
    /// A command changed the state.
    Changed {
        seq: u64,
        from: String,
        changes: SettingsUpdate,
    },
    /// A message was refused (malformed, unknown command, bad value).
    Rejected { from: String, error: String },
    /// A CURVE key was refused, or a subscriber key tried to change settings.
    Refused {
        domain: String,
        address: String,
        key: String,
        reason: String,
    },
    /// A transform applied settings.
    Applied(AppliedReport),
    /// A peer of the `socket` ("state" or "command") at `endpoint` was closed to keep the
    /// socket within its peer limit.
    Peers {
        socket: &'static str,
        endpoint: String,
        event: PeerEvent,
    },
}

pub type EventSink = Arc<dyn Fn(HubEvent) + Send + Sync>;

pub struct Hub {
    ctx: zmq::Context,
    publisher: zmq::Socket,
    control: zmq::Socket,
    local: zmq::Socket,
    local_endpoint: String,
    state_endpoint: String,
    control_endpoint: String,
    control_port: Option<u16>,
    heartbeat: Duration,
    /// With CURVE: the keys that may change settings (the ZAP user id of a message is
    /// the sender's Z85 public key).
    controllers: Option<AllowList>,
    num_inference_steps: u32,
    epoch: u64,
    seq: u64,
    state: SettingsUpdate,
    /// The state changed since it was last published.
    unpublished: bool,
    pacer: Pacer,
    published: PublishCounts,
    state_peers: PeerGuard,
    control_peers: PeerGuard,
    events: EventSink,
    stop: Arc<AtomicBool>,
    _zap: Option<ZapHandler>,
}

/// Snapshots the holder published, and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PublishCounts {
    pub snapshots: u64,
    pub bytes: u64,
}

fn port_of(endpoint: &str) -> Option<u16> {
    endpoint.rsplit(':').next()?.parse().ok()
}

fn new_epoch() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 40)
}

impl Hub {
    /// Binds both sockets (and the ZAP handler with CURVE). Errors name the endpoint.
    pub fn bind(config: &HubConfig, events: EventSink) -> Result<Hub, String> {
        config
            .initial
            .validate_for_steps(config.num_inference_steps)
            .map_err(|e| format!("initial settings: {e}"))?;
        let ctx = zmq::Context::new();
        let zap = match &config.curve {
            Some(c) => {
                let controllers = c.controllers.clone();
                let subscribers = c.subscribers.clone();
                let ev = events.clone();
                Some(ZapHandler::start(&ctx, move |req: &ZapRequest| {
                    let decision = policy(req, &controllers, subscribers.as_ref());
                    if let Err(reason) = &decision {
                        ev(HubEvent::Refused {
                            domain: req.domain.clone(),
                            address: req.address.clone(),
                            key: req.public_key_z85(),
                            reason: reason.clone(),
                        });
                    }
                    decision
                })?)
            }
            None => None,
        };
        let sock = |kind, what: &str| {
            ctx.socket(kind)
                .map_err(|e| format!("cannot create the {what} socket: {e}"))
        };
        let publisher = sock(zmq::PUB, "state")?;
        let control = sock(zmq::ROUTER, "control")?;
        let local = sock(zmq::ROUTER, "local control")?;
        for s in [&publisher, &control, &local] {
            s.set_linger(0).ok();
        }
        publisher.set_sndhwm(10_000).ok();
        for s in [&publisher, &control] {
            set_peer_timeouts(s);
        }
        // Watched before they bind, so no peer is missed.
        let state_peers = PeerGuard::watch(&ctx, &publisher, "state", config.max_peers)?;
        let control_peers = PeerGuard::watch(&ctx, &control, "command", config.max_peers)?;
        // A peer sending more than this is disconnected by libzmq; smaller oversize
        // messages get a clear error from decode_message.
        control.set_maxmsgsize(MAX_ANSWERED_MESSAGE_BYTES).ok();
        if let Some(c) = &config.curve {
            make_server(&publisher, &c.keys, STATE_DOMAIN)?;
            make_server(&control, &c.keys, CONTROL_DOMAIN)?;
        }
        let control_port = port_of(&config.control_bind).unwrap_or(super::DEFAULT_CONTROL_PORT);
        let bind = |s: &zmq::Socket, ep: &str, what: &str| -> Result<String, String> {
            s.bind(ep).map_err(|e| {
                format!(
                    "cannot bind the {what} socket at {ep}: {e} (is another i2i-prompt running there? \
                     to type into it, attach a console: i2i-prompt --endpoint tcp://localhost:{control_port}; \
                     or pick other ports with --state-bind and --control-bind)"
                )
            })?;
            Ok(s.get_last_endpoint()
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_else(|| ep.to_string()))
        };
        let state_endpoint = bind(&publisher, &config.state_bind, "state")?;
        let control_endpoint = bind(&control, &config.control_bind, "control")?;
        let epoch = new_epoch();
        let local_endpoint = format!("inproc://i2i-hub-local-{epoch:x}");
        bind(&local, &local_endpoint, "local control")?;
        Ok(Hub {
            ctx,
            publisher,
            control,
            local,
            local_endpoint,
            control_port: port_of(&control_endpoint),
            state_endpoint,
            control_endpoint,
            heartbeat: config.heartbeat,
            controllers: config.curve.as_ref().map(|c| c.controllers.clone()),
            num_inference_steps: config.num_inference_steps,
            epoch,
            seq: 0,
            state: config.initial.clone(),
            unpublished: false,
            pacer: Pacer::new(config.min_publish_interval),
            published: PublishCounts::default(),
            state_peers,
            control_peers,
            events,
            stop: Arc::new(AtomicBool::new(false)),
            _zap: zap,
        })
    }

    /// The state endpoint as bound (`tcp://0.0.0.0:5556`).
    pub fn state_endpoint(&self) -> &str {
        &self.state_endpoint
    }

    pub fn control_endpoint(&self) -> &str {
        &self.control_endpoint
    }

    pub fn state(&self) -> &SettingsUpdate {
        &self.state
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            epoch: self.epoch,
            seq: self.seq,
            control_port: self.control_port,
            settings: self.state.clone(),
        }
    }

    fn publish(&mut self) {
        let frames = self.snapshot().encode();
        self.published.snapshots += 1;
        self.published.bytes += frames.iter().map(|f| f.len() as u64).sum::<u64>();
        // PUB never blocks; a full queue drops, and the next heartbeat repairs it.
        let _ = self.publisher.send_multipart(frames, zmq::DONTWAIT);
    }

    /// Snapshots published so far (changes and heartbeats).
    pub fn published(&self) -> PublishCounts {
        self.published
    }

    /// The t-index list the transforms run with: the state's, else their default.
    fn current_t_index_list(&self) -> Vec<u32> {
        self.state
            .t_index_list
            .clone()
            .unwrap_or_else(|| DEFAULT_T_INDEX_LIST.to_vec())
    }

    /// Applies one decoded message; the answer is what the sender gets back.
    fn handle(&mut self, payload: &[u8], from: &str) -> String {
        match decode_message(payload) {
            Ok(Command::Update(mut u)) => {
                // A strength moves the list the transforms run with; the state then
                // holds that list (so every transform agrees), never the strength.
                let checked = u
                    .resolve_strength(&self.current_t_index_list(), self.num_inference_steps)
                    .and_then(|()| u.validate_for_steps(self.num_inference_steps));
                if let Err(error) = checked {
                    (self.events)(HubEvent::Rejected {
                        from: from.to_string(),
                        error: error.clone(),
                    });
                    return format!(
                        "error: {error} (the transforms would refuse it; `i2i-prompt --steps N` tells the holder their num-inference-steps)"
                    );
                }
                let changes = u.changes_since(&self.state);
                if changes.is_empty() {
                    return format!("ok seq={} (no change)", self.seq);
                }
                self.state.merge(u);
                self.seq += 1;
                self.unpublished = true;
                let answer = format!("ok seq={} {}", self.seq, changes.summary());
                (self.events)(HubEvent::Changed {
                    seq: self.seq,
                    from: from.to_string(),
                    changes,
                });
                answer
            }
            Ok(Command::Help) => HELP.to_string(),
            Ok(Command::Status) => {
                // With the strength its t-index list stands for, for strength controls.
                let mut shown = self.state.clone();
                shown.strength = strength_of_t_index_list(
                    &self.current_t_index_list(),
                    self.num_inference_steps,
                );
                format!(
                    "ok seq={} {}",
                    self.seq,
                    String::from_utf8_lossy(&shown.to_json())
                )
            }
            Err(error) => {
                (self.events)(HubEvent::Rejected {
                    from: from.to_string(),
                    error: error.clone(),
                });
                format!("error: {error}")
            }
        }
    }

    /// Reads every waiting message of a ROUTER socket and answers it.
    fn serve(&mut self, local: bool) {
        loop {
            let sock = if local { &self.local } else { &self.control };
            let mut frames = Vec::new();
            let mut user: Option<String> = None;
            let mut address = if local {
                "console".to_string()
            } else {
                String::new()
            };
            loop {
                let mut m = match sock.recv_msg(zmq::DONTWAIT) {
                    Ok(m) => m,
                    Err(_) => return,
                };
                if user.is_none() {
                    // The ZAP handler gives every CURVE connection its Z85 key as User-Id.
                    user = m.gets("User-Id").map(str::to_string);
                }
                if address.is_empty()
                    && let Some(a) = m.gets("Peer-Address")
                {
                    address = a.to_string();
                }
                let more = m.get_more();
                frames.push(m.to_vec());
                if !more {
                    break;
                }
            }
            if frames.len() < 2 {
                continue;
            }
            let identity = frames.remove(0);
            let delimited = frames.first().is_some_and(|f| f.is_empty());
            if delimited {
                frames.remove(0);
            }
            if frames[0] == APPLIED_TOPIC {
                // Reports get no answer, a refused one neither.
                if frames.len() != 2 {
                    (self.events)(HubEvent::Rejected {
                        from: address.clone(),
                        error: format!(
                            "an i2i-applied report needs its JSON as the next frame, found {} frames (refused; to set that text as the prompt send /prompt i2i-applied)",
                            frames.len() - 1
                        ),
                    });
                    continue;
                }
                match AppliedReport::decode(&frames[1]) {
                    Ok(mut r) => {
                        // The authenticated key, never the sender's own claim.
                        r.key = if self.controllers.is_some() {
                            user.clone()
                        } else {
                            None
                        };
                        let _ = self.publisher.send_multipart(r.encode(), zmq::DONTWAIT);
                        (self.events)(HubEvent::Applied(r));
                    }
                    Err(error) => (self.events)(HubEvent::Rejected {
                        from: address.clone(),
                        error,
                    }),
                }
                continue;
            }
            // In-process clients name where a message came from in a second frame.
            if local && frames.len() == 2 {
                let origin = frames.pop().unwrap_or_default();
                address = String::from_utf8_lossy(&origin).into_owned();
            }
            let answer = if frames.len() != 1 {
                let error = format!(
                    "expected one message frame, found {} (send chat text, a msgpack map or a JSON object)",
                    frames.len()
                );
                (self.events)(HubEvent::Rejected {
                    from: address.clone(),
                    error: error.clone(),
                });
                format!("error: {error}")
            } else if !local && !self.may_control(user.as_deref()) {
                let reason =
                    "this key may subscribe and report but not change settings".to_string();
                (self.events)(HubEvent::Refused {
                    domain: CONTROL_DOMAIN.to_string(),
                    address: address.clone(),
                    key: user.clone().unwrap_or_default(),
                    reason: reason.clone(),
                });
                format!("error: {reason}")
            } else {
                self.handle(&frames[0], &address)
            };
            let mut reply = vec![identity];
            if delimited {
                reply.push(Vec::new());
            }
            reply.push(answer.into_bytes());
            let sock = if local { &self.local } else { &self.control };
            let _ = sock.send_multipart(reply, zmq::DONTWAIT);
        }
    }

    /// Without CURVE anyone may send commands; with it, only keys of the controller
    /// allow-list (`user` is the ZAP user id: the sender's Z85 public key).
    fn may_control(&self, user: Option<&str>) -> bool {
        match &self.controllers {
            None => true,
            Some(list) => user
                .and_then(|k| zmq::z85_decode(k).ok())
                .is_some_and(|k| list.contains(&k)),
        }
    }

    /// Serves until [`Hub::stop_flag`] is set.
    pub fn run(&mut self) -> Result<(), String> {
        let mut next_beat = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            // A change goes out as soon as the pacer allows; a heartbeat carries the
            // latest state anyway.
            if (self.unpublished && self.pacer.take(now)) || now >= next_beat {
                self.publish();
                self.pacer.mark(now);
                self.unpublished = false;
                next_beat = now + self.heartbeat;
            }
            let mut wait = (next_beat - now).min(Duration::from_millis(100));
            if self.unpublished {
                wait = wait.min(self.pacer.wait(now));
            }
            let ready = {
                let mut items = [
                    self.control.as_poll_item(zmq::POLLIN),
                    self.local.as_poll_item(zmq::POLLIN),
                    self.state_peers.as_poll_item(),
                    self.control_peers.as_poll_item(),
                ];
                // Rounded up, so a wait of less than 1 ms does not spin.
                zmq::poll(&mut items, wait.as_micros().div_ceil(1000) as i64)
                    .map_err(|e| format!("polling the settings sockets failed: {e}"))?;
                [
                    items[0].is_readable(),
                    items[1].is_readable(),
                    items[2].is_readable() || items[3].is_readable(),
                ]
            };
            if ready[0] {
                self.serve(false);
            }
            if ready[1] {
                self.serve(true);
            }
            if ready[2] {
                self.guard_peers();
            }
        }
        Ok(())
    }

    /// Holds both sockets to their peer limit and reports what was closed.
    fn guard_peers(&mut self) {
        for (socket, guard, endpoint) in [
            ("state", &mut self.state_peers, &self.state_endpoint),
            ("command", &mut self.control_peers, &self.control_endpoint),
        ] {
            for event in guard.service() {
                (self.events)(HubEvent::Peers {
                    socket,
                    endpoint: endpoint.clone(),
                    event,
                });
            }
        }
    }

    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// A client for this holder in the same process (no network, no CURVE): the console.
    pub fn local_client(&self) -> Result<ControlClient, String> {
        ControlClient::connect_in(&self.ctx, &self.local_endpoint, None)
    }

    /// Runs the holder on its own thread.
    pub fn spawn(mut self) -> Result<HubHandle, String> {
        let stop = self.stop.clone();
        let info = HubInfo {
            state_endpoint: self.state_endpoint.clone(),
            control_endpoint: self.control_endpoint.clone(),
        };
        let local = self.local_client()?;
        let thread = std::thread::Builder::new()
            .name("i2i-hub".into())
            .spawn(move || self.run())
            .map_err(|e| format!("cannot start the settings thread: {e}"))?;
        Ok(HubHandle {
            info,
            local: Some(local),
            stop,
            thread: Some(thread),
        })
    }
}

fn policy(
    req: &ZapRequest,
    controllers: &AllowList,
    subscribers: Option<&AllowList>,
) -> Result<String, String> {
    let key = &req.public_key;
    let is_controller = controllers.contains(key);
    let is_subscriber = subscribers.is_some_and(|s| s.contains(key));
    // The user id is the key itself, so a report names who really sent it.
    let user = req.public_key_z85();
    match req.domain.as_str() {
        CONTROL_DOMAIN if is_controller || is_subscriber => Ok(user),
        CONTROL_DOMAIN => Err(format!(
            "key is not in the allow-list {}",
            controllers.source
        )),
        STATE_DOMAIN if subscribers.is_none() || is_controller || is_subscriber => Ok(user),
        STATE_DOMAIN => Err("key is not in the subscriber allow-list".to_string()),
        other => Err(format!("unknown ZAP domain \"{other}\"")),
    }
}

#[derive(Clone, Debug)]
pub struct HubInfo {
    pub state_endpoint: String,
    pub control_endpoint: String,
}

/// A holder running on its own thread; stops when dropped.
pub struct HubHandle {
    pub info: HubInfo,
    local: Option<ControlClient>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl HubHandle {
    /// Sends a message as the local console would and returns the answer.
    pub fn send(&self, payload: &[u8]) -> Result<String, String> {
        match &self.local {
            Some(c) => c.request(payload, Duration::from_secs(5)),
            None => Err("settings holder stopped".to_string()),
        }
    }

    /// Stops the holder and returns how it ended.
    pub fn stop(mut self) -> Result<(), String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), String> {
        self.local = None;
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err("settings thread panicked".to_string())),
            None => Ok(()),
        }
    }
}

impl Drop for HubHandle {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// A client of a holder's control socket (DEALER): one-shot commands, the remote console,
/// and transforms' reports.
pub struct ControlClient {
    sock: zmq::Socket,
    monitor: Option<zmq::Socket>,
    endpoint: String,
}

impl ControlClient {
    /// Connects to `endpoint`; with `curve` = (own keys, server public key) over CURVE.
    pub fn connect(
        endpoint: &str,
        curve: Option<(&KeyPair, &str)>,
    ) -> Result<ControlClient, String> {
        ControlClient::connect_in(&zmq::Context::new(), endpoint, curve)
    }

    pub fn connect_in(
        ctx: &zmq::Context,
        endpoint: &str,
        curve: Option<(&KeyPair, &str)>,
    ) -> Result<ControlClient, String> {
        let sock = ctx
            .socket(zmq::DEALER)
            .map_err(|e| format!("cannot create the control socket: {e}"))?;
        sock.set_linger(200).ok();
        // Queue only for a completed connection, so a refused key shows up as no answer
        // instead of a message waiting forever.
        sock.set_immediate(true).ok();
        let mut monitor = None;
        if let Some((keys, server)) = curve {
            make_client(&sock, keys, server)?;
            // Watch the handshake, to tell a refused key from a holder that is not there.
            let ep = format!("inproc://i2i-client-monitor-{:x}", new_epoch());
            if sock
                .monitor(&ep, zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32)
                .is_ok()
                && let Ok(m) = ctx.socket(zmq::PAIR)
                && m.connect(&ep).is_ok()
            {
                monitor = Some(m);
            }
        }
        sock.connect(endpoint).map_err(|e| {
            format!("cannot connect to {endpoint}: {e} (expected e.g. tcp://host:5560)")
        })?;
        Ok(ControlClient {
            sock,
            monitor,
            endpoint: endpoint.to_string(),
        })
    }

    fn refused(&self) -> bool {
        self.monitor
            .as_ref()
            .is_some_and(|m| m.poll(zmq::POLLIN, 0).unwrap_or(0) > 0)
    }

    /// Sends one message and waits up to `timeout` for the answer.
    pub fn request(&self, payload: &[u8], timeout: Duration) -> Result<String, String> {
        self.exchange(&[&b""[..], payload], timeout)
    }

    /// [`ControlClient::request`] naming where the message came from, for the holder's
    /// log (`osc 10.0.0.7:9000`); only the holder's in-process clients may do this.
    pub fn request_from(
        &self,
        payload: &[u8],
        origin: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        self.exchange(&[&b""[..], payload, origin.as_bytes()], timeout)
    }

    fn exchange(&self, frames: &[&[u8]], timeout: Duration) -> Result<String, String> {
        // Drop answers to earlier requests that timed out.
        while self.sock.recv_multipart(zmq::DONTWAIT).is_ok() {}
        let deadline = Instant::now() + timeout;
        let mut sent = false;
        while !sent {
            match self
                .sock
                .send_multipart(frames.iter().copied(), zmq::DONTWAIT)
            {
                Ok(()) => sent = true,
                Err(zmq::Error::EAGAIN) => {
                    if self.refused() {
                        return Err(self.refused_error());
                    }
                    if Instant::now() >= deadline {
                        return Err(self.no_answer(timeout));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("cannot send to {}: {e}", self.endpoint)),
            }
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(if self.refused() {
                    self.refused_error()
                } else {
                    self.no_answer(timeout)
                });
            }
            if self
                .sock
                .poll(zmq::POLLIN, left.as_millis().min(50) as i64)
                .unwrap_or(0)
                > 0
            {
                let frames = self
                    .sock
                    .recv_multipart(0)
                    .map_err(|e| format!("receiving from {} failed: {e}", self.endpoint))?;
                let answer = frames.last().cloned().unwrap_or_default();
                return Ok(String::from_utf8_lossy(&answer).into_owned());
            }
            if self.refused() {
                return Err(self.refused_error());
            }
        }
    }

    /// Sends a report without waiting (transforms); false if it could not be queued.
    pub fn report(&self, report: &AppliedReport) -> bool {
        let mut frames = vec![Vec::new()];
        frames.extend(report.encode());
        self.sock.send_multipart(frames, zmq::DONTWAIT).is_ok()
    }

    fn refused_error(&self) -> String {
        format!(
            "{} refused this CURVE key: add its public key (NAME.key) to the holder's allow-list",
            self.endpoint
        )
    }

    fn no_answer(&self, timeout: Duration) -> String {
        format!(
            "no answer from {} within {:.1} s: is `i2i-prompt serve` running there and the port open? \
             (with CURVE: are the server key and your key right?)",
            self.endpoint,
            timeout.as_secs_f64()
        )
    }
}
