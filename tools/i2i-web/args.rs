// SPDX-License-Identifier: MPL-2.0
//! Command line of `i2i-web`.

use std::ffi::OsString;
use std::path::PathBuf;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8765";
pub const DEFAULT_PUBLISH: &str = "tcp://*:5555";
pub const DEFAULT_SUBSCRIBE: &str = "tcp://localhost:5557";
pub const DEFAULT_CONTROL: &str = "tcp://localhost:5560";
pub const DEFAULT_MAX_IMAGE_BYTES: usize = 8 << 20;
pub const DEFAULT_MAX_RATE: u32 = 60;

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
        --publish EP         ZeroMQ PUB endpoint for received images (default tcp://*:5555)
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
        --max-image-bytes N  largest accepted image, decoded (default 8388608)
        --max-rate N         messages per second and client before they are dropped
                             (default 60)
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
    pub max_image_bytes: usize,
    pub max_rate: u32,
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
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_rate: DEFAULT_MAX_RATE,
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
            Long("max-image-bytes") => {
                o.max_image_bytes = number(parser.value().map_err(e)?, "--max-image-bytes", 1024)?
            }
            Long("max-rate") => o.max_rate = number(parser.value().map_err(e)?, "--max-rate", 1)?,
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
    fn defaults_are_seed_001_ports() {
        let o = run(&[]).unwrap();
        assert_eq!(o.listen, "127.0.0.1:8765");
        assert_eq!(o.publish, "tcp://*:5555");
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
        assert_eq!(run(&["--control", "none"]).unwrap().control, None);
    }
}
