// SPDX-License-Identifier: MPL-2.0
//! The page's controls, passed to the settings holder (`i2i-prompt`'s command socket) with
//! the holder's own client and message checks from `gst-plugin-i2i`, so the page speaks
//! exactly what `i2i-prompt --endpoint` speaks, CURVE included. A message the holder would
//! refuse is refused here first, without a round trip.

use std::sync::Mutex;
use std::time::Duration;

use gsti2i::settings::command::Command;
use gsti2i::settings::curve::{KeyPair, load_public_key};
use gsti2i::settings::hub::ControlClient;
use gsti2i::settings::message::decode_message;

const TIMEOUT: Duration = Duration::from_secs(3);

pub struct Control {
    endpoint: String,
    curve: Option<(KeyPair, String)>,
    /// Connected on first use, kept for the next message (one request at a time).
    client: Mutex<Option<ControlClient>>,
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
        Ok(Control {
            endpoint: endpoint.to_string(),
            curve,
            client: Mutex::new(None),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Checks one message (chat text or a JSON object), sends it and returns the holder's
    /// answer (`ok seq=N ...`), or why it was refused. Blocks up to three seconds.
    pub fn send(&self, payload: &[u8]) -> Result<String, String> {
        match decode_message(payload)? {
            Command::Help => {
                return Ok(gsti2i::settings::command::HELP.to_string());
            }
            Command::Update(_) | Command::Status => {}
        }
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let curve = self.curve.as_ref().map(|(k, s)| (k, s.as_str()));
            *guard = Some(ControlClient::connect(&self.endpoint, curve)?);
        }
        let client = guard.as_ref().expect("connected above");
        let answer = client.request(payload, TIMEOUT);
        if answer.is_err() {
            // A fresh socket next time, so a holder that restarts is found again.
            *guard = None;
        }
        let answer = answer?;
        match answer.strip_prefix("error: ") {
            Some(e) => Err(e.to_string()),
            None => Ok(answer),
        }
    }
}
