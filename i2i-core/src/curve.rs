// SPDX-License-Identifier: MPL-2.0
//! ZeroMQ CURVE for every link of the project (frames, scale-out, settings): key files,
//! allow-lists and the ZAP handler that lets only allowed public keys in.
//!
//! Every connection the ZAP handler lets in carries the peer's Z85 public key as its ZAP
//! user id, so each message's `User-Id` property names the sender's key; the role the
//! policy gives it (e.g. "controller") travels as the `X-Role` metadata property.
//!
//! Key files are the ZeroMQ certificate files that pyzmq's `zmq.auth.create_certificates`
//! and czmq write, so keys can be made with either tool:
//!
//! ```text
//! NAME.key          public certificate:  curve / public-key = "<40 Z85 chars>"
//! NAME.key_secret   secret certificate:  curve / public-key = "..." / secret-key = "..."
//! ```
//!
//! An allow-list is a directory of public certificates (`*.key`), a single certificate, or
//! a text file with one Z85 public key per line (`#` starts a comment; text after the key
//! on a line is ignored).
//!
//! [`ElementCurve`] is the one place where the ZeroMQ elements (the five frame elements and
//! `settingssrc`) get their CURVE: the `curve-key`, `curve-server-key` and `curve-allow`
//! properties (their ParamSpecs with the `glib` feature), the set-up of a socket as CURVE
//! server (binding side, ZAP allow-list) or client (connecting side), and the count and
//! rate-limited warning of every peer refused: a stranger's key, a plain-text peer, a wrong
//! server key. The warnings go where the element says ([`Warn`]): the plugins post them on
//! the bus.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::rate_limit::RateLimit;

/// The well-known endpoint a ZAP handler binds in its ZeroMQ context.
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

/// True when the linked libzmq supports CURVE.
pub fn curve_available() -> bool {
    zmq::has("curve").unwrap_or(false)
}

/// The error for a libzmq without CURVE.
pub fn require_curve() -> Result<(), String> {
    if curve_available() {
        Ok(())
    } else {
        Err(
            "the linked libzmq has no CURVE support: install a libzmq built with libsodium \
             (Debian: libzmq5 from the distribution has it)"
                .to_string(),
        )
    }
}

/// A CURVE key pair, Z85-encoded (40 characters each).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub public: String,
    pub secret: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    pub fn generate() -> Result<KeyPair, String> {
        require_curve()?;
        let pair =
            zmq::CurveKeyPair::new().map_err(|e| format!("CURVE key generation failed: {e}"))?;
        Ok(KeyPair {
            public: zmq::z85_encode(&pair.public_key).map_err(|e| e.to_string())?,
            secret: zmq::z85_encode(&pair.secret_key).map_err(|e| e.to_string())?,
        })
    }

    /// Reads a secret certificate (`NAME.key_secret`).
    pub fn load(path: &Path) -> Result<KeyPair, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read CURVE key file {}: {e}", path.display()))?;
        let public = cert_field(&text, "public-key");
        let secret = cert_field(&text, "secret-key");
        match (public, secret) {
            (Some(public), Some(secret)) => {
                check_z85(&public).map_err(|e| format!("{}: public-key {e}", path.display()))?;
                check_z85(&secret).map_err(|e| format!("{}: secret-key {e}", path.display()))?;
                Ok(KeyPair { public, secret })
            }
            (_, None) => Err(format!(
                "{} has no secret-key: give the secret certificate (NAME.key_secret written by `i2i-prompt keygen`)",
                path.display()
            )),
            (None, _) => Err(format!("{} has no public-key", path.display())),
        }
    }

    /// Writes `DIR/NAME.key` and `DIR/NAME.key_secret` (mode 0600), refusing to overwrite.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), String> {
        if name.is_empty() || name.contains(['/', '\\']) {
            return Err(format!("key name \"{name}\" must be a plain file name"));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create key directory {}: {e}", dir.display()))?;
        let public_path = dir.join(format!("{name}.key"));
        let secret_path = dir.join(format!("{name}.key_secret"));
        for p in [&public_path, &secret_path] {
            if p.exists() {
                return Err(format!(
                    "{} already exists: pick another name or directory (keys are never overwritten)",
                    p.display()
                ));
            }
        }
        let header = "#   ZeroMQ CURVE certificate written by i2i-prompt keygen\n";
        let public_text = format!(
            "{header}#   Public certificate: give it to the hub's allow-list.\n\nmetadata\ncurve\n    public-key = \"{}\"\n",
            self.public
        );
        let secret_text = format!(
            "{header}#   Secret certificate: DO NOT share this file.\n\nmetadata\ncurve\n    public-key = \"{}\"\n    secret-key = \"{}\"\n",
            self.public, self.secret
        );
        write_file(&public_path, &public_text, 0o644)?;
        write_file(&secret_path, &secret_text, 0o600)?;
        Ok((public_path, secret_path))
    }

    pub fn public_bytes(&self) -> Vec<u8> {
        zmq::z85_decode(&self.public).unwrap_or_default()
    }

    pub fn secret_bytes(&self) -> Vec<u8> {
        zmq::z85_decode(&self.secret).unwrap_or_default()
    }
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The value of `name = "..."` in a ZeroMQ certificate.
fn cert_field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
    })
}

fn check_z85(key: &str) -> Result<Vec<u8>, String> {
    if key.len() != 40 {
        return Err(format!(
            "\"{key}\" is not a CURVE key: expected 40 Z85 characters, found {}",
            key.len()
        ));
    }
    let b = zmq::z85_decode(key).map_err(|_| format!("\"{key}\" is not valid Z85"))?;
    if b.len() != 32 {
        return Err(format!("\"{key}\" does not decode to 32 bytes"));
    }
    Ok(b)
}

/// A public key given as the 40-character Z85 text itself, or as a path to a file holding
/// it (a certificate or a file whose first key-like line is the key).
pub fn load_public_key(key_or_path: &str) -> Result<String, String> {
    let k = key_or_path.trim();
    if k.len() == 40 && check_z85(k).is_ok() && !Path::new(k).exists() {
        return Ok(k.to_string());
    }
    let path = Path::new(k);
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!("\"{k}\" is neither a 40-character Z85 public key nor a readable key file: {e}")
    })?;
    let keys = keys_in_text(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    keys.into_iter()
        .next()
        .ok_or_else(|| format!("{} holds no public key", path.display()))
}

/// Public keys in a certificate or a one-key-per-line list.
fn keys_in_text(text: &str) -> Result<Vec<String>, String> {
    if let Some(k) = cert_field(text, "public-key") {
        check_z85(&k)?;
        return Ok(vec![k]);
    }
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        // `#` is a Z85 character too: only a word starting with it is a comment.
        let Some(first) = line.split_whitespace().next() else {
            continue;
        };
        if first.starts_with('#') {
            continue;
        }
        check_z85(first).map_err(|e| format!("line {}: {e}", n + 1))?;
        keys.push(first.to_string());
    }
    Ok(keys)
}

/// The public keys allowed in.
#[derive(Clone, Debug, Default)]
pub struct AllowList {
    keys: HashSet<[u8; 32]>,
    pub source: String,
}

impl AllowList {
    /// From a directory of `*.key` certificates, one certificate, or a list file.
    pub fn load(path: &Path) -> Result<AllowList, String> {
        let mut texts = Vec::new();
        if path.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| format!("cannot read allow-list directory {}: {e}", path.display()))?;
            for entry in entries.flatten() {
                let p = entry.path();
                if p.extension().is_some_and(|x| x == "key") {
                    let t = std::fs::read_to_string(&p)
                        .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                    texts.push((p, t));
                }
            }
        } else {
            let t = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read allow-list {}: {e}", path.display()))?;
            texts.push((path.to_path_buf(), t));
        }
        let mut list = AllowList {
            keys: HashSet::new(),
            source: path.display().to_string(),
        };
        for (p, t) in texts {
            for k in keys_in_text(&t).map_err(|e| format!("{}: {e}", p.display()))? {
                list.add(&k)?;
            }
        }
        if list.keys.is_empty() {
            return Err(format!(
                "allow-list {} holds no public keys (nobody could connect)",
                path.display()
            ));
        }
        Ok(list)
    }

    pub fn from_keys(keys: &[&str]) -> Result<AllowList, String> {
        let mut list = AllowList::default();
        for k in keys {
            list.add(k)?;
        }
        Ok(list)
    }

    fn add(&mut self, z85: &str) -> Result<(), String> {
        let b = check_z85(z85)?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&b);
        self.keys.insert(k);
        Ok(())
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key.len() == 32 && self.keys.iter().any(|k| k[..] == *key)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// One authentication request, as the ZAP handler's policy sees it.
#[derive(Clone, Debug)]
pub struct ZapRequest {
    /// The ZAP domain of the socket (set with `set_zap_domain`).
    pub domain: String,
    /// The peer's IP address.
    pub address: String,
    /// "CURVE", "NULL" or "PLAIN".
    pub mechanism: String,
    /// The client's 32-byte public key (CURVE only).
    pub public_key: Vec<u8>,
}

impl ZapRequest {
    pub fn public_key_z85(&self) -> String {
        zmq::z85_encode(&self.public_key).unwrap_or_else(|_| "(no key)".to_string())
    }
}

/// The policy's answer: `Ok(role)` lets the peer in (its messages carry its Z85 public key
/// as `User-Id` and the role as `X-Role`), `Err(reason)` refuses it.
pub type ZapDecision = Result<String, String>;

/// Answers ZAP requests for every socket of one ZeroMQ context on its own thread, until
/// dropped. Must be started before any CURVE server socket of the context binds.
pub struct ZapHandler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ZapHandler {
    pub fn start<F>(ctx: &zmq::Context, policy: F) -> Result<ZapHandler, String>
    where
        F: FnMut(&ZapRequest) -> ZapDecision + Send + 'static,
    {
        let sock = ctx
            .socket(zmq::REP)
            .map_err(|e| format!("ZAP socket: {e}"))?;
        sock.set_linger(0).ok();
        sock.bind(ZAP_ENDPOINT)
            .map_err(|e| format!("cannot bind the ZAP handler at {ZAP_ENDPOINT}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let mut policy = policy;
        let thread = std::thread::Builder::new()
            .name("i2i-zap".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    match sock.poll(zmq::POLLIN, 100) {
                        Ok(n) if n > 0 => {}
                        Ok(_) => continue,
                        Err(_) => break,
                    }
                    let Ok(frames) = sock.recv_multipart(0) else {
                        break;
                    };
                    let reply = answer(&frames, &mut policy);
                    if sock.send_multipart(reply, 0).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("cannot start the ZAP thread: {e}"))?;
        Ok(ZapHandler {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ZapHandler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// ZAP/1.0 (RFC 27): request frames are version, request id, domain, address, identity,
/// mechanism, credentials...; the reply is version, request id, status code, status text,
/// user id, metadata.
fn answer<F>(frames: &[Vec<u8>], policy: &mut F) -> Vec<Vec<u8>>
where
    F: FnMut(&ZapRequest) -> ZapDecision,
{
    let text = |i: usize| {
        frames
            .get(i)
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .unwrap_or_default()
    };
    let request_id = frames.get(1).cloned().unwrap_or_default();
    if frames.len() < 6 || frames[0] != b"1.0" {
        return vec![
            b"1.0".to_vec(),
            request_id,
            b"500".to_vec(),
            b"malformed ZAP request".to_vec(),
            Vec::new(),
            Vec::new(),
        ];
    }
    let req = ZapRequest {
        domain: text(2),
        address: text(3),
        mechanism: text(5),
        public_key: frames.get(6).cloned().unwrap_or_default(),
    };
    let decision = if req.mechanism == "CURVE" {
        policy(&req)
    } else {
        Err(format!("mechanism {} is not accepted", req.mechanism))
    };
    match decision {
        Ok(role) => vec![
            b"1.0".to_vec(),
            request_id,
            b"200".to_vec(),
            b"OK".to_vec(),
            req.public_key_z85().into_bytes(),
            zap_metadata(ROLE_PROPERTY, role.as_bytes()),
        ],
        Err(reason) => vec![
            b"1.0".to_vec(),
            request_id,
            b"400".to_vec(),
            reason.into_bytes(),
            Vec::new(),
            Vec::new(),
        ],
    }
}

/// The metadata property that carries the role the ZAP policy gave a connection.
pub const ROLE_PROPERTY: &str = "X-Role";

/// One ZMTP metadata property (name length byte, name, 4-byte big-endian value length,
/// value), the encoding of a ZAP reply's metadata frame.
fn zap_metadata(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + name.len() + 4 + value.len());
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// Sets a socket up as a CURVE server with this key pair.
pub fn make_server(sock: &zmq::Socket, keys: &KeyPair, domain: &str) -> Result<(), String> {
    require_curve()?;
    sock.set_zap_domain(domain)
        .and_then(|_| sock.set_curve_server(true))
        .and_then(|_| sock.set_curve_secretkey(&keys.secret_bytes()))
        .map_err(|e| format!("cannot make the socket a CURVE server: {e}"))
}

/// Sets a socket up as a CURVE client of the server with public key `server` (Z85).
pub fn make_client(sock: &zmq::Socket, keys: &KeyPair, server: &str) -> Result<(), String> {
    require_curve()?;
    let server = check_z85(server).map_err(|e| format!("server key: {e}"))?;
    sock.set_curve_serverkey(&server)
        .and_then(|_| sock.set_curve_publickey(&keys.public_bytes()))
        .and_then(|_| sock.set_curve_secretkey(&keys.secret_bytes()))
        .map_err(|e| format!("cannot make the socket a CURVE client: {e}"))
}

/// The three CURVE properties of an element, as set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurveSettings {
    /// This element's secret certificate (`NAME.key_secret`).
    pub key: Option<String>,
    /// Connecting side: the server's public key (Z85 text or key file).
    pub server_key: Option<String>,
    /// Binding side: the public keys allowed to connect.
    pub allow: Option<String>,
}

impl CurveSettings {
    /// Whether CURVE is on (a key or a server key is set).
    pub fn enabled(&self) -> bool {
        self.key.is_some() || self.server_key.is_some()
    }
}

/// The socket events that tell a CURVE handshake failed.
pub const HANDSHAKE_EVENTS: u16 = zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL as u16
    | zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL as u16
    | zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_AUTH as u16;

/// Where an element's CURVE warnings go: called with each refusal's text, and whether the
/// rate limit lets it through to people (the bus) or only to the log.
pub type Warn = Arc<dyn Fn(&str, bool) + Send + Sync>;

/// What a running element's CURVE reports with: where its warnings go, who its peers are,
/// whether it binds, its endpoint.
struct Reporter {
    warn: Warn,
    /// Who connects to a binding element ("worker", "settings publisher").
    peer: String,
    bind: bool,
    /// As set, then as bound (with the port picked for `:*`).
    endpoint: Mutex<String>,
    public_key: String,
    refused: Arc<AtomicU64>,
    /// One limit for refused keys, one for failed handshakes: a plain-text peer retrying
    /// every 100 ms must not hide the stranger's key.
    limits: [Mutex<RateLimit>; 2],
}

impl Reporter {
    /// Counts one refused or failed connection attempt and posts `text` (rate-limited per
    /// `kind`: 0 refused key, 1 failed handshake) as a warning.
    fn refused(&self, kind: usize, text: String) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let text = format!("{text} ({n} refused in all)");
        (self.warn)(&text, false);
        if let Some(text) = self.limits[kind].lock().unwrap().message(text) {
            (self.warn)(&text, true);
        }
    }

    /// A handshake event of the element's socket (event number, value, endpoint).
    fn handshake_event(&self, event: u16, value: u32, address: &str) {
        let on = if address.is_empty() {
            self.endpoint.lock().unwrap().clone()
        } else {
            address.to_string()
        };
        const AUTH: u32 = zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
        const NO_DETAIL: u32 = zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL;
        const MISMATCH: u32 = zmq_sys::ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH;
        let what = match (u32::from(event), self.bind) {
            // The ZAP handler already counted and named the refused key.
            (AUTH, true) => return,
            // Either side may notice a mechanism mismatch first: the other sees the
            // connection close. (A refused key's connection may be counted here again.)
            (NO_DETAIL, true) => format!(
                "A peer on {on} closed the connection during the CURVE handshake (a plain-text peer, or a refused key)"
            ),
            (AUTH, false) => format!(
                "The CURVE server at {on} refused this element's CURVE key {} (status {value}): add its public certificate (NAME.key) to the server's curve-allow",
                self.public_key
            ),
            (NO_DETAIL, false) => format!(
                "The CURVE handshake with {on} failed (the server closed the connection): check curve-server-key (the server's public key) and that this element's key {} is in the server's curve-allow",
                self.public_key
            ),
            (_, true) if value == MISMATCH => format!(
                "Refused a {} on {on}: it does not use CURVE (a plain-text peer, or one without curve-server-key)",
                self.peer
            ),
            (_, true) => format!(
                "Refused a {} on {on}: its CURVE handshake failed ({}): it may use another server key than this element's curve-key",
                self.peer,
                protocol_error_text(value)
            ),
            (_, false) if value == MISMATCH => format!(
                "The CURVE handshake with {on} failed: the peer does not use CURVE (set its curve-key and curve-allow, or unset curve-server-key here)"
            ),
            (_, false) => format!(
                "The CURVE handshake with {on} failed ({}): check curve-server-key (the server's public key)",
                protocol_error_text(value)
            ),
        };
        self.refused(1, what);
    }
}

fn protocol_error_text(value: u32) -> String {
    match value {
        zmq_sys::ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC => "cryptographic error".into(),
        zmq_sys::ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH => "mechanism mismatch".into(),
        0 => "no detail".into(),
        v => format!("protocol error {v:#x}"),
    }
}

/// What runs while an element's socket uses CURVE: the ZAP handler (binding side) and,
/// unless the element reads its own socket monitor, a thread reading the handshake events.
struct CurveLink {
    _zap: Option<ZapHandler>,
    /// Connecting side: this element's key pair and the server's public key.
    client: Option<(KeyPair, String)>,
    monitor: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    reporter: Arc<Reporter>,
}

impl Drop for CurveLink {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.monitor.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

static MONITOR_ID: AtomicU64 = AtomicU64::new(0);

/// The CURVE part of one element: its three properties and, from start to stop, the link.
#[derive(Default)]
pub struct ElementCurve {
    settings: Mutex<CurveSettings>,
    link: Mutex<Option<CurveLink>>,
    refused: Arc<AtomicU64>,
}

/// GStreamer's `GST_PARAM_MUTABLE_READY` (gst's `mutable_ready()`, without GStreamer):
/// the CURVE properties change only in the NULL and READY states.
#[cfg(feature = "glib")]
const MUTABLE_READY: glib::ParamFlags = glib::ParamFlags::from_bits_retain(1 << 10);

#[cfg(feature = "glib")]
impl ElementCurve {
    /// The `curve-key`, `curve-server-key` and `curve-allow` properties; `peers` names who
    /// connects to a binding element (e.g. "workers").
    pub fn param_specs(peers: &str) -> Vec<glib::ParamSpec> {
        use glib::prelude::*;
        let flags = glib::ParamFlags::READWRITE | MUTABLE_READY;
        let allow_blurb = format!(
            "When binding with curve-key: the {peers} allowed to connect (a directory of NAME.key files, one certificate, or a file with one Z85 public key per line); anyone else is refused and counted"
        );
        vec![
            glib::ParamSpecString::builder("curve-key")
                .nick("CURVE key")
                .blurb("Secret certificate of this element (NAME.key_secret from `i2i-prompt keygen`); turns CURVE on. Binding: needs curve-allow; connecting: needs curve-server-key")
                .flags(flags)
                .build(),
            glib::ParamSpecString::builder("curve-server-key")
                .nick("CURVE server key")
                .blurb("When connecting: the public key of the element bound at the endpoint (its NAME.key file, or the 40-character Z85 key); turns CURVE on (without curve-key a throw-away key pair is used)")
                .flags(flags)
                .build(),
            glib::ParamSpecString::builder("curve-allow")
                .nick("CURVE allow-list")
                .blurb(&allow_blurb)
                .flags(flags)
                .build(),
        ]
    }

    /// Sets one of the three properties; false when `name` is not one of them.
    pub fn set_property(&self, name: &str, value: &glib::Value) -> bool {
        let v = value
            .get::<Option<String>>()
            .ok()
            .flatten()
            .filter(|s| !s.trim().is_empty());
        let mut s = self.settings.lock().unwrap();
        match name {
            "curve-key" => s.key = v,
            "curve-server-key" => s.server_key = v,
            "curve-allow" => s.allow = v,
            _ => return false,
        }
        true
    }

    /// The value of one of the three properties, `None` for other names.
    pub fn property(&self, name: &str) -> Option<glib::Value> {
        use glib::prelude::*;
        let s = self.settings.lock().unwrap();
        Some(match name {
            "curve-key" => s.key.to_value(),
            "curve-server-key" => s.server_key.to_value(),
            "curve-allow" => s.allow.to_value(),
            _ => return None,
        })
    }
}

impl ElementCurve {
    pub fn settings(&self) -> CurveSettings {
        self.settings.lock().unwrap().clone()
    }

    /// Peers refused (or handshakes failed) since the last start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Sets `socket` (of `ctx`, not yet bound or connected) up for CURVE when it is on:
    /// a server with a ZAP allow-list when `bind`, else a client. With `own_monitor` the
    /// element reads the socket's monitor itself and passes the events in
    /// [`HANDSHAKE_EVENTS`] to [`ElementCurve::handshake_event`]; else a thread here does.
    /// Refusals go to `warn`, naming the refused one a `peer` ("worker"). The error (a
    /// settings error) names the property to fix.
    #[allow(clippy::too_many_arguments)]
    pub fn secure(
        &self,
        warn: Warn,
        peer: &str,
        ctx: &zmq::Context,
        socket: &zmq::Socket,
        bind: bool,
        endpoint: &str,
        own_monitor: bool,
    ) -> Result<(), String> {
        self.refused.store(0, Ordering::Relaxed);
        *self.link.lock().unwrap() = None;
        let s = self.settings();
        if !s.enabled() {
            return Ok(());
        }
        let fail = |text: String| format!("CURVE on {endpoint}: {text}");
        require_curve().map_err(fail)?;
        let own_keys = match &s.key {
            Some(p) => {
                Some(KeyPair::load(Path::new(p)).map_err(|e| fail(format!("curve-key: {e}")))?)
            }
            None => None,
        };
        let reporter = |public_key: String| {
            Arc::new(Reporter {
                warn: warn.clone(),
                peer: peer.to_string(),
                bind,
                endpoint: Mutex::new(endpoint.to_string()),
                public_key,
                refused: self.refused.clone(),
                limits: Default::default(),
            })
        };
        let (zap, reporter, client) = if bind {
            if s.server_key.is_some() {
                return Err(fail(
                    "a binding element is the CURVE server: set curve-key (its own secret certificate) and curve-allow, not curve-server-key".into(),
                ));
            }
            let Some(keys) = own_keys else {
                return Err(fail("curve-allow needs curve-key".into()));
            };
            let Some(allow) = &s.allow else {
                return Err(fail(
                    "curve-key on a binding element needs curve-allow: the public keys allowed to connect".into(),
                ));
            };
            let allow =
                AllowList::load(Path::new(allow)).map_err(|e| fail(format!("curve-allow: {e}")))?;
            let reporter = reporter(keys.public.clone());
            let r = reporter.clone();
            let zap = ZapHandler::start(ctx, move |req: &ZapRequest| {
                if allow.contains(&req.public_key) {
                    return Ok("peer".to_string());
                }
                let reason = format!("key not in curve-allow ({})", allow.source);
                r.refused(
                    0,
                    format!(
                        "CURVE on {}: refused a {} from {}: its key {} is not in curve-allow ({})",
                        r.endpoint.lock().unwrap(),
                        r.peer,
                        req.address,
                        req.public_key_z85(),
                        allow.source
                    ),
                );
                Err(reason)
            })
            .map_err(fail)?;
            make_server(socket, &keys, "i2i").map_err(fail)?;
            (Some(zap), reporter, None)
        } else {
            let Some(server) = &s.server_key else {
                return Err(fail(
                    "curve-key on a connecting element needs curve-server-key: the public key of the element bound at the endpoint".into(),
                ));
            };
            let server =
                load_public_key(server).map_err(|e| fail(format!("curve-server-key: {e}")))?;
            let keys = match own_keys {
                Some(k) => k,
                None => KeyPair::generate().map_err(fail)?,
            };
            make_client(socket, &keys, &server).map_err(fail)?;
            let reporter = reporter(keys.public.clone());
            (None, reporter, Some((keys, server)))
        };
        let monitor = if own_monitor {
            None
        } else {
            Some(
                spawn_monitor(ctx, socket, reporter.clone())
                    .map_err(|e| fail(format!("cannot watch the handshakes: {e}")))?,
            )
        };
        *self.link.lock().unwrap() = Some(CurveLink {
            _zap: zap,
            client,
            monitor,
            reporter,
        });
        Ok(())
    }

    /// A socket monitor event of an element that reads its monitor itself; events other
    /// than the failed handshakes are ignored.
    pub fn handshake_event(&self, event: u16, value: u32, address: &str) {
        if event & HANDSHAKE_EVENTS == 0 {
            return;
        }
        if let Some(link) = self.link.lock().unwrap().as_ref() {
            link.reporter.handshake_event(event, value, address);
        }
    }

    /// Connecting with CURVE: this element's key pair and the server's public key (for a
    /// second connection to the same server with the same keys).
    pub fn client_keys(&self) -> Option<(KeyPair, String)> {
        self.link.lock().unwrap().as_ref()?.client.clone()
    }

    /// The endpoint really bound or connected, for the warnings.
    pub fn set_endpoint(&self, endpoint: &str) {
        if let Some(link) = self.link.lock().unwrap().as_ref() {
            *link.reporter.endpoint.lock().unwrap() = endpoint.to_string();
        }
    }

    /// Stops the ZAP handler and the monitor thread (at the element's stop).
    pub fn stop(&self) {
        *self.link.lock().unwrap() = None;
    }
}

/// Reads `socket`'s failed handshakes on a thread until stopped.
fn spawn_monitor(
    ctx: &zmq::Context,
    socket: &zmq::Socket,
    reporter: Arc<Reporter>,
) -> Result<(Arc<AtomicBool>, JoinHandle<()>), zmq::Error> {
    let ep = format!(
        "inproc://i2i-curve-monitor-{}",
        MONITOR_ID.fetch_add(1, Ordering::Relaxed)
    );
    socket.monitor(&ep, i32::from(HANDSHAKE_EVENTS))?;
    let m = ctx.socket(zmq::PAIR)?;
    m.set_linger(0)?;
    m.connect(&ep)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("i2i-curve-monitor".into())
        .spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match m.poll(zmq::POLLIN, 100) {
                    Ok(n) if n > 0 => {}
                    Ok(_) => continue,
                    Err(_) => break,
                }
                while let Some((event, value, address)) = read_monitor_event(&m) {
                    reporter.handshake_event(event, value, &address);
                }
            }
        })
        .map_err(|_| zmq::Error::EMFILE)?;
    Ok((stop, thread))
}

/// One socket monitor event (event number, value, endpoint), if one is waiting.
pub fn read_monitor_event(monitor: &zmq::Socket) -> Option<(u16, u32, String)> {
    let head = monitor.recv_msg(zmq::DONTWAIT).ok()?;
    let address = if monitor.get_rcvmore().unwrap_or(false) {
        monitor
            .recv_msg(zmq::DONTWAIT)
            .map(|m| String::from_utf8_lossy(&m).into_owned())
            .unwrap_or_default()
    } else {
        String::new()
    };
    if head.len() < 6 {
        return Some((0, 0, address));
    }
    Some((
        u16::from_le_bytes([head[0], head[1]]),
        u32::from_le_bytes([head[2], head[3], head[4], head[5]]),
        address,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_sender_key_as_user_id_and_the_role() {
        if !curve_available() {
            eprintln!("libzmq without CURVE: skipped");
            return;
        }
        let ctx = zmq::Context::new();
        let server_keys = KeyPair::generate().unwrap();
        let client_keys = KeyPair::generate().unwrap();
        let stranger = KeyPair::generate().unwrap();
        let allow = AllowList::from_keys(&[&client_keys.public]).unwrap();
        let _zap = ZapHandler::start(&ctx, move |req: &ZapRequest| {
            if allow.contains(&req.public_key) {
                Ok("sender".to_string())
            } else {
                Err("not allowed".to_string())
            }
        })
        .unwrap();
        let pull = ctx.socket(zmq::PULL).unwrap();
        pull.set_linger(0).unwrap();
        make_server(&pull, &server_keys, "test").unwrap();
        pull.bind("tcp://127.0.0.1:*").unwrap();
        let ep = pull.get_last_endpoint().unwrap().unwrap();
        let mut senders = Vec::new();
        for (keys, body) in [
            (&stranger, &b"stranger"[..]),
            (&client_keys, &b"friend"[..]),
        ] {
            let push = ctx.socket(zmq::PUSH).unwrap();
            push.set_linger(0).unwrap();
            make_client(&push, keys, &server_keys.public).unwrap();
            push.connect(&ep).unwrap();
            push.send(body, zmq::DONTWAIT).ok();
            senders.push(push);
        }
        pull.set_rcvtimeo(10_000).unwrap();
        let mut msg = pull.recv_msg(0).unwrap();
        assert_eq!(&msg[..], b"friend");
        assert_eq!(msg.gets("User-Id"), Some(client_keys.public.as_str()));
        assert_eq!(msg.gets(ROLE_PROPERTY), Some("sender"));
        pull.set_rcvtimeo(300).unwrap();
        assert!(pull.recv_msg(0).is_err(), "the stranger's message came in");
    }

    #[test]
    fn key_files_round_trip_and_are_never_overwritten() {
        if !curve_available() {
            eprintln!("libzmq without CURVE: skipped");
            return;
        }
        let dir = std::env::temp_dir().join(format!("i2i-curve-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pair = KeyPair::generate().unwrap();
        let (public, secret) = pair.write(&dir, "op").unwrap();
        assert_eq!(KeyPair::load(&secret).unwrap(), pair);
        assert!(
            KeyPair::load(&public)
                .unwrap_err()
                .contains("no secret-key")
        );
        assert_eq!(
            load_public_key(public.to_str().unwrap()).unwrap(),
            pair.public
        );
        assert_eq!(load_public_key(&pair.public).unwrap(), pair.public);
        assert!(
            pair.write(&dir, "op")
                .unwrap_err()
                .contains("already exists")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A directory of certificates, or a list file, is an allow-list.
        let other = KeyPair::generate().unwrap();
        let list = AllowList::load(&dir).unwrap();
        assert!(list.contains(&pair.public_bytes()));
        assert!(!list.contains(&other.public_bytes()));
        let list_file = dir.join("allowed.txt");
        std::fs::write(
            &list_file,
            format!("# operators\n{} alice\n\n{}\n", pair.public, other.public),
        )
        .unwrap();
        let list = AllowList::load(&list_file).unwrap();
        assert_eq!(list.len(), 2);
        // `#` is a Z85 character: a key containing it is still read whole.
        let hash_key = zmq::z85_encode(&[0x5a; 32]).unwrap();
        let hash_key = (0..=255u8)
            .map(|b| zmq::z85_encode(&[b; 32]).unwrap())
            .find(|k| k.contains('#'))
            .unwrap_or(hash_key);
        assert!(hash_key.contains('#'), "{hash_key}");
        std::fs::write(&list_file, format!("{hash_key}\n")).unwrap();
        let list = AllowList::load(&list_file).unwrap();
        assert!(list.contains(&zmq::z85_decode(&hash_key).unwrap()));
        std::fs::write(&list_file, "not-a-key\n").unwrap();
        let e = AllowList::load(&list_file).unwrap_err();
        assert!(e.contains("line 1") && e.contains("not a CURVE key"), "{e}");
        std::fs::write(&list_file, "# nobody\n").unwrap();
        assert!(
            AllowList::load(&list_file)
                .unwrap_err()
                .contains("no public keys")
        );
        assert!(
            load_public_key("/nonexistent/key")
                .unwrap_err()
                .contains("neither")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
