// SPDX-License-Identifier: MPL-2.0
//! Command line of `i2i-web`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8765";
/// Loopback only: the camera frames are for the pipeline on this machine (`--publish
/// tcp://*:5554` shares them with other machines, with no authentication).
pub const DEFAULT_PUBLISH: &str = "tcp://127.0.0.1:5554";
pub const DEFAULT_SUBSCRIBE: &str = "tcp://localhost:5557";
pub const DEFAULT_CONTROL: &str = "tcp://localhost:5560";
pub const DEFAULT_MAX_IMAGE_BYTES: usize = 8 << 20;
pub const DEFAULT_MAX_RATE: u32 = 60;
/// A 4K UHD frame (3840 x 2160): larger declared sizes are refused before any decoding.
pub const DEFAULT_MAX_PIXELS: u64 = 3840 * 2160;
/// Decoded pixels a second per client: one 1080p camera at 30 fps.
pub const DEFAULT_MAX_PIXEL_RATE: u64 = 1920 * 1080 * 30;
/// WebSocket and HTTP connections at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;
/// No request, message or pong for this long: the connection is closed.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 30_000;
/// A peer that takes none of the data waiting for it for this long is dropped; an incoming
/// message must arrive whole within it.
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MESSAGE_TIMEOUT_MS: u64 = 10_000;

pub const HELP: &str = "\
i2i-web: the browser side of the i2i pipelines, on one HTTP port

Serves the control room page, relays seed-001 style WebSocket image messages, publishes
every received image on ZeroMQ as msgpack [timestamp_ms, index, jpg] (for zmqmsgpacksrc),
sends a pipeline's output frames to browsers (binary WebSocket, JSON on request, MJPEG)
and passes the page's controls to the settings holder (i2i-prompt).

USAGE:
    i2i-web [OPTIONS]

    -l, --listen ADDR        HTTP/WebSocket address (default 127.0.0.1:8765; 0.0.0.0:8765
                             for other machines, with --token)
        --publish EP         ZeroMQ PUB endpoint for received images (default
                             tcp://127.0.0.1:5554: this machine only; tcp://*:5554 shares
                             the camera with any machine that reaches the port)
        --subscribe EP       ZeroMQ endpoint of the pipeline's output (default
                             tcp://localhost:5557)
        --control EP         the settings holder's command socket (default
                             tcp://localhost:5560; `none` hides the controls)
        --key FILE           CURVE: this program's secret certificate (NAME.key_secret)
        --server-key KEY     CURVE: the holder's public key (NAME.key or Z85 text)
        --token TOKEN        require ?token=TOKEN on every request (also I2I_WEB_TOKEN)
        --tls-cert FILE      serve https:// and wss:// with this PEM certificate (chain)
        --tls-key FILE       and its PEM private key (browsers on other machines need
                             https to give the page the camera)
        --allow-origin URL   also accept pages from this origin (repeatable); by default
                             only pages served by i2i-web itself may connect
        --allowed-host NAME  also accept requests for this host name (repeatable); without
                             --token only this machine's names and addresses are accepted
                             (a guard against DNS rebinding)
        --max-image-bytes N  largest accepted image file (default 8388608)
        --max-message-size N largest WebSocket message (default: an image at
                             --max-image-bytes in base64, plus 64 KiB)
        --max-pixels N       largest declared image size in pixels, checked before any
                             decoding (default 8294400, 3840 x 2160)
        --max-pixel-rate N   image pixels per second and client (default 62208000: 1080p
                             at 30 fps); images beyond it are dropped
        --max-rate N         messages (pings included) per second and client before they
                             are dropped (default 60)
        --max-connections N  HTTP and WebSocket connections at once (default 32)
        --idle-timeout MS    close a connection with no request, message or pong for this
                             long (default 30000)
        --write-timeout MS   drop a peer that takes none of our data for this long
                             (default 10000)
        --message-timeout MS an incoming WebSocket message must arrive whole within this
                             (default 10000)
    -h, --help               this text
    -V, --version            version

Paths: /  the page (WebSocket upgrade on / too: seed-001 clients), /ws  WebSocket
(?output=binary|json, ?relay=0), /stream.mjpg  MJPEG, /frame.jpg  latest frame,
/api/stats  counters as JSON.
";

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub listen: String,
    pub publish: String,
    pub subscribe: String,
    pub control: Option<String>,
    pub key: Option<PathBuf>,
    pub server_key: Option<String>,
    pub token: Option<String>,
    /// PEM certificate chain and private key: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub allow_origins: Vec<String>,
    pub allowed_hosts: Vec<String>,
    pub max_image_bytes: usize,
    /// None: derived from max_image_bytes (see [`Options::max_message_size`]).
    pub max_message_size: Option<usize>,
    pub max_pixels: u64,
    pub max_pixel_rate: u64,
    pub max_rate: u32,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub message_timeout: Duration,
}

impl Options {
    /// The largest WebSocket message: given, or room for a base64 image at
    /// `max_image_bytes` plus the JSON around it.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
            .unwrap_or(self.max_image_bytes.div_ceil(3) * 4 + 64 * 1024)
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: DEFAULT_LISTEN.into(),
            publish: DEFAULT_PUBLISH.into(),
            subscribe: DEFAULT_SUBSCRIBE.into(),
            control: Some(DEFAULT_CONTROL.into()),
            key: None,
            server_key: None,
            token: None,
            tls: None,
            allow_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_message_size: None,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_pixel_rate: DEFAULT_MAX_PIXEL_RATE,
            max_rate: DEFAULT_MAX_RATE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            write_timeout: Duration::from_millis(DEFAULT_WRITE_TIMEOUT_MS),
            message_timeout: Duration::from_millis(DEFAULT_MESSAGE_TIMEOUT_MS),
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Box<Options>),
    Help,
    Version,
}

fn string(v: OsString, what: &str) -> Result<String, String> {
    v.into_string()
        .map_err(|v| format!("{what}: not valid UTF-8: {}", v.to_string_lossy()))
}

fn number<T>(v: OsString, what: &str, lo: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let s = string(v, what)?;
    match s.parse::<T>() {
        Ok(n) if n >= lo => Ok(n),
        _ => Err(format!(
            "{what}: expected a whole number >= {lo}, found '{s}'"
        )),
    }
}

/// A time in ms, at least 100 ms.
fn millis(parser: &mut lexopt::Parser, what: &str) -> Result<Duration, String> {
    let v = parser.value().map_err(|e| e.to_string())?;
    Ok(Duration::from_millis(number::<u64>(v, what, 100)?))
}

fn endpoint(v: OsString, what: &str) -> Result<String, String> {
    let s = string(v, what)?;
    if !s.contains("://") {
        return Err(format!(
            "{what} '{s}': expected TRANSPORT://ADDRESS, e.g. tcp://localhost:5557"
        ));
    }
    Ok(s)
}

pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env_token: Option<String>,
) -> Result<Command, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args.into_iter().skip(1));
    let mut o = Options {
        token: env_token.filter(|t| !t.is_empty()),
        ..Options::default()
    };
    let e = |e: lexopt::Error| e.to_string();
    let mut tls_cert: Option<PathBuf> = None;
    let mut tls_key: Option<PathBuf> = None;
    while let Some(arg) = parser.next().map_err(e)? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Short('l') | Long("listen") => {
                o.listen = string(parser.value().map_err(e)?, "--listen")?
            }
            Long("publish") => o.publish = endpoint(parser.value().map_err(e)?, "--publish")?,
            Long("subscribe") => o.subscribe = endpoint(parser.value().map_err(e)?, "--subscribe")?,
            Long("control") => {
                let v = string(parser.value().map_err(e)?, "--control")?;
                o.control = if v == "none" {
                    None
                } else if v.contains("://") {
                    Some(v)
                } else {
                    return Err(format!("--control '{v}': expected tcp://HOST:5560 or none"));
                };
            }
            Long("key") => o.key = Some(parser.value().map_err(e)?.into()),
            Long("server-key") => {
                o.server_key = Some(string(parser.value().map_err(e)?, "--server-key")?)
            }
            Long("token") => {
                let t = string(parser.value().map_err(e)?, "--token")?;
                if t.is_empty()
                    || !t
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'&' && b != b'#')
                {
                    return Err("--token: use printable ASCII without spaces, '&' or '#' (it travels in URLs)".into());
                }
                o.token = Some(t);
            }
            Long("tls-cert") => tls_cert = Some(parser.value().map_err(e)?.into()),
            Long("tls-key") => tls_key = Some(parser.value().map_err(e)?.into()),
            Long("allow-origin") => {
                let v = string(parser.value().map_err(e)?, "--allow-origin")?;
                if !(v.starts_with("http://") || v.starts_with("https://")) {
                    return Err(format!(
                        "--allow-origin '{v}': expected an origin such as https://show.example:8443"
                    ));
                }
                o.allow_origins.push(v.trim_end_matches('/').to_string());
            }
            Long("allowed-host") => {
                let v = string(parser.value().map_err(e)?, "--allowed-host")?;
                match crate::hosts::normalise(&v) {
                    Some(h) if !h.contains(['/', ' ', '@']) => o.allowed_hosts.push(h),
                    _ => {
                        return Err(format!(
                            "--allowed-host '{v}': expected a host name or address without port, e.g. show.local"
                        ));
                    }
                }
            }
            Long("max-image-bytes") => {
                o.max_image_bytes = number(parser.value().map_err(e)?, "--max-image-bytes", 1024)?
            }
            Long("max-message-size") => {
                o.max_message_size = Some(number(
                    parser.value().map_err(e)?,
                    "--max-message-size",
                    4096,
                )?)
            }
            Long("max-pixels") => {
                o.max_pixels = number(parser.value().map_err(e)?, "--max-pixels", 64)?
            }
            Long("max-pixel-rate") => {
                o.max_pixel_rate = number(parser.value().map_err(e)?, "--max-pixel-rate", 64)?
            }
            Long("max-rate") => o.max_rate = number(parser.value().map_err(e)?, "--max-rate", 1)?,
            Long("max-connections") => {
                o.max_connections = number(parser.value().map_err(e)?, "--max-connections", 1)?
            }
            Long("idle-timeout") => o.idle_timeout = millis(&mut parser, "--idle-timeout")?,
            Long("write-timeout") => o.write_timeout = millis(&mut parser, "--write-timeout")?,
            Long("message-timeout") => {
                o.message_timeout = millis(&mut parser, "--message-timeout")?
            }
            _ => return Err(format!("{} (see i2i-web --help)", arg.unexpected())),
        }
    }
    o.tls = match (tls_cert, tls_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    if o.key.is_some() != o.server_key.is_some() {
        return Err("--key and --server-key go together (CURVE needs both)".into());
    }
    Ok(Command::Run(Box::new(o)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, String> {
        let mut v = vec![OsString::from("i2i-web")];
        v.extend(args.iter().map(OsString::from));
        match parse(v, None)? {
            Command::Run(o) => Ok(*o),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn default_ports() {
        let o = run(&[]).unwrap();
        assert_eq!(o.listen, "127.0.0.1:8765");
        assert_eq!(o.publish, "tcp://127.0.0.1:5554");
        assert_eq!(o.subscribe, "tcp://localhost:5557");
        assert_eq!(o.control.as_deref(), Some("tcp://localhost:5560"));
    }

    #[test]
    fn bad_values_are_named() {
        assert!(
            run(&["--publish", "5555"])
                .unwrap_err()
                .contains("--publish")
        );
        assert!(
            run(&["--max-rate", "0"])
                .unwrap_err()
                .contains("--max-rate")
        );
        assert!(
            run(&["--allow-origin", "evil"])
                .unwrap_err()
                .contains("--allow-origin")
        );
        assert!(run(&["--token", "a b"]).unwrap_err().contains("--token"));
        assert!(run(&["--key", "k"]).unwrap_err().contains("--server-key"));
        assert!(
            run(&["--tls-cert", "c.pem"])
                .unwrap_err()
                .contains("--tls-key")
        );
        assert!(run(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(
            run(&["--idle-timeout", "5"])
                .unwrap_err()
                .contains("--idle-timeout")
        );
        assert!(
            run(&["--allowed-host", "http://x"])
                .unwrap_err()
                .contains("--allowed-host")
        );
        assert!(
            run(&["--max-connections", "0"])
                .unwrap_err()
                .contains("--max-connections")
        );
        assert_eq!(run(&["--control", "none"]).unwrap().control, None);
    }

    #[test]
    fn limits() {
        let o = run(&[]).unwrap();
        // A base64 image at the limit fits a message, with room for the JSON around it.
        assert!(o.max_message_size() >= o.max_image_bytes / 3 * 4 + 1024);
        assert!(o.max_message_size() < o.max_image_bytes * 2);
        let o = run(&[
            "--max-message-size",
            "65536",
            "--allowed-host",
            "Show.Local",
            "--idle-timeout",
            "2500",
        ])
        .unwrap();
        assert_eq!(o.max_message_size(), 65536);
        assert_eq!(o.allowed_hosts, ["show.local"]);
        assert_eq!(o.idle_timeout, Duration::from_millis(2500));
    }
}
