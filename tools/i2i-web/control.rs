// SPDX-License-Identifier: MPL-2.0
//! The page's controls, passed to the settings holder (`i2i-prompt`'s command socket) with
//! the holder's own client and message checks from `gst-plugin-i2i`, so the page speaks
//! exactly what `i2i-prompt --endpoint` speaks, CURVE included. A message the holder would
//! refuse is refused here first, without a round trip.
//!
//! One thread owns the holder connection and sends one control at a time from a bounded
//! queue. A holder that stops answering must not turn the controls into a backlog that is
//! answered late and then replayed when it returns, so:
//! - a control waits at most [`TIMEOUT`] in all (queue and answer); one that waited that
//!   long in the queue is answered "not sent" and dropped, never sent later;
//! - after a control got no answer, the holder counts as down: every control is answered at
//!   once that it was not sent, and only a read-only `/status` probe goes to the holder
//!   (every [`PROBE_EVERY`]) until it answers again;
//! - a full queue answers at once too.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError, TrySendError};
use std::time::{Duration, Instant};

use i2i_core::curve::{KeyPair, load_public_key};
use i2i_core::settings::command::Command;
use i2i_core::settings::hub::ControlClient;
use i2i_core::settings::message::decode_message;
use tokio::sync::oneshot;

/// The longest a control waits for its answer, queue included.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Controls waiting for the holder; more are answered at once.
const QUEUE: usize = 32;
/// While the holder is down: how often a `/status` probe asks whether it is back.
const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

struct Job {
    payload: Vec<u8>,
    queued: Instant,
    reply: oneshot::Sender<Reply>,
}

/// The control thread's answer to one queued control.
pub enum Reply {
    /// The holder's answer (`ok seq=N ...`), or its refusal, or no answer in time.
    Answer(Result<String, String>),
    /// Not sent: it waited too long, or the holder went down meanwhile.
    NotSent(String),
}

/// What a control became.
pub enum Outcome {
    /// Answered without the holder (help).
    Local(String),
    /// Refused by the local checks.
    Refused(String),
    /// Not sent: the holder does not answer, or too many controls wait.
    NotSent(String),
    /// Queued for the holder; the answer comes on this channel within [`TIMEOUT`].
    Queued(oneshot::Receiver<Reply>),
}

pub struct Control {
    endpoint: String,
    jobs: mpsc::SyncSender<Job>,
    /// When the holder last failed to answer; None while it answers.
    down_since: Arc<Mutex<Option<Instant>>>,
}

impl Control {
    pub fn new(
        endpoint: &str,
        key: Option<&std::path::Path>,
        server_key: Option<&str>,
    ) -> Result<Control, String> {
        let curve = match (key, server_key) {
            (Some(k), Some(s)) => Some((
                KeyPair::load(k).map_err(|e| format!("--key: {e}"))?,
                load_public_key(s).map_err(|e| format!("--server-key: {e}"))?,
            )),
            _ => None,
        };
        let (jobs, rx) = mpsc::sync_channel(QUEUE);
        let down_since = Arc::new(Mutex::new(None));
        let worker = Worker {
            endpoint: endpoint.to_string(),
            curve,
            client: None,
            down_since: down_since.clone(),
            last_probe: None,
        };
        std::thread::Builder::new()
            .name("i2i-web-control".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| format!("cannot start the control thread: {e}"))?;
        Ok(Control {
            endpoint: endpoint.to_string(),
            jobs,
            down_since,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Checks one message (chat text or a JSON object) and queues it for the holder, or
    /// says at once why it is not sent. Never blocks.
    pub fn submit(&self, payload: Vec<u8>) -> Outcome {
        match decode_message(&payload) {
            Err(e) => return Outcome::Refused(e),
            Ok(Command::Help) => return Outcome::Local(i2i_core::settings::command::HELP.into()),
            Ok(Command::Update(_) | Command::Status) => {}
        }
        if let Some(since) = *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) {
            return Outcome::NotSent(down_message(&self.endpoint, since));
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            payload,
            queued: Instant::now(),
            reply,
        };
        match self.jobs.try_send(job) {
            Ok(()) => Outcome::Queued(answer),
            Err(TrySendError::Full(_)) => Outcome::NotSent(format!(
                "{QUEUE} controls are already waiting for the holder at {}: not sent",
                self.endpoint
            )),
            Err(TrySendError::Disconnected(_)) => {
                Outcome::NotSent("the control thread stopped: not sent".into())
            }
        }
    }
}

fn down_message(endpoint: &str, since: Instant) -> String {
    format!(
        "the settings holder at {endpoint} does not answer (for {:.0} s): not sent; is \
         `i2i-prompt serve` running there and the port open?",
        since.elapsed().as_secs_f64().max(TIMEOUT.as_secs_f64())
    )
}

struct Worker {
    endpoint: String,
    curve: Option<(KeyPair, String)>,
    /// Connected on first use; ZeroMQ reconnects it to a holder that restarts.
    client: Option<ControlClient>,
    down_since: Arc<Mutex<Option<Instant>>>,
    last_probe: Option<Instant>,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            let job = match rx.recv_timeout(PROBE_EVERY) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let down = *self.down_since.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(since) = down {
                if let Some(job) = job {
                    let _ = job
                        .reply
                        .send(Reply::NotSent(down_message(&self.endpoint, since)));
                }
                if self.last_probe.is_none_or(|t| t.elapsed() >= PROBE_EVERY) {
                    self.probe();
                }
                continue;
            }
            let Some(job) = job else { continue };
            let waited = job.queued.elapsed();
            if waited >= TIMEOUT {
                let _ = job.reply.send(Reply::NotSent(format!(
                    "waited {:.1} s behind other controls for the holder at {}: dropped, not sent",
                    waited.as_secs_f64(),
                    self.endpoint
                )));
                continue;
            }
            // At least half a second for the answer, so a control is never refused unsent
            // only because others queued before it.
            let timeout = (TIMEOUT - waited).max(Duration::from_millis(500));
            let answer = self.request(&job.payload, timeout);
            if let Err(e) = &answer
                && e.starts_with("no answer")
            {
                *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                eprintln!(
                    "i2i-web: the settings holder at {} does not answer: controls are refused at once until it does",
                    self.endpoint
                );
            }
            let answer = answer.and_then(|a| match a.strip_prefix("error: ") {
                Some(e) => Err(e.to_string()),
                None => Ok(a),
            });
            let _ = job.reply.send(Reply::Answer(answer));
        }
    }

    fn request(&mut self, payload: &[u8], timeout: Duration) -> Result<String, String> {
        if self.client.is_none() {
            let curve = self.curve.as_ref().map(|(k, s)| (k, s.as_str()));
            self.client = Some(ControlClient::connect(&self.endpoint, curve)?);
        }
        let client = self.client.as_ref().expect("connected above");
        let answer = client.request(payload, timeout);
        if let Err(e) = &answer
            && !e.starts_with("no answer")
        {
            // A refused key or a broken socket: a fresh one next time.
            self.client = None;
        }
        answer
    }

    /// Asks a holder that did not answer whether it is back (`/status` changes nothing).
    fn probe(&mut self) {
        self.last_probe = Some(Instant::now());
        if self.request(b"/status", PROBE_TIMEOUT).is_ok() {
            *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
            eprintln!(
                "i2i-web: the settings holder at {} answers again",
                self.endpoint
            );
        }
    }
}
