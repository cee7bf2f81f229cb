// SPDX-License-Identifier: MPL-2.0
//! Command line of `i2i-stats`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use i2i_core::zmq_endpoint::ReceiveSocketType;

use crate::stats::Thresholds;

pub const DEFAULT_ENDPOINT: &str = "tcp://localhost:5557";
pub const DEFAULT_TIMEOUT_S: f64 = 10.0;

pub const HELP: &str = "\
i2i-stats: receive a ZeroMQ msgpack frame stream and report its real-time statistics

Each message is a msgpack array [timestamp_ms, index, jpg] as sent by zmqmsgpacksink.
At the end (frame count or duration reached, silence timeout, Ctrl-C) it prints frames,
frame rate, frame intervals, latency (receive time - timestamp), bandwidth, lost,
out-of-order and duplicate indices, malformed messages and a real-time verdict.

USAGE:
    i2i-stats [OPTIONS] [ENDPOINT]

CONNECTION:
    -e, --endpoint EP        ZeroMQ endpoint (default tcp://localhost:5557), or
                             ws://HOST:8765/ws: the frames i2i-web sends to browsers
    -p, --port N             shorthand for tcp://localhost:N (tcp://*:N with --bind)
        --bind               bind the endpoint instead of connecting to it
        --socket-type T      sub (default, receives from a PUB sink) or pull (from PUSH)

STOPPING (whichever comes first; Ctrl-C also stops and reports):
    -n, --frames N           stop after N frames
    -d, --duration S         stop S seconds after start
    -t, --timeout S          stop when nothing arrived for S seconds, waiting for the
                             first message included (default 10; 0 waits forever)

OUTPUT:
        --json               print one JSON object on stdout at the end instead of the text
        --progress           live progress line on stderr even when it is not a terminal
        --no-progress        no progress line (default: shown when stderr is a terminal)
        --save DIR           write each received JPEG to DIR/NNNN.jpg, named by its frame
                             index as the input files are (0000.jpg, ...; a repeated index
                             keeps the first; after a sender restart: DIR/RUN-NNNN.jpg)
    -q, --quiet              no start-up line on stderr

REAL-TIME VERDICT:
        --min-fps F          lowest average frame rate (default: keep up with the input,
                             whose rate the frame indices and timestamps show; 22.5
                             when it cannot be measured)
        --max-interval-ms M  highest mean frame interval (default: from the input rate;
                             60 when it cannot be measured)
        --max-latency-ms M   highest 95th percentile latency (default 3000)
        --require-realtime   exit with status 1 when the verdict fails

    -h, --help               this text
    -V, --version            version and commit

EXIT STATUS: 0 done, 1 nothing received, or the verdict failed with --require-realtime,
2 bad usage or socket error.
";

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub endpoint: String,
    pub bind: bool,
    pub socket_type: ReceiveSocketType,
    pub frames: Option<u64>,
    pub duration: Option<Duration>,
    /// `None`: wait forever.
    pub timeout: Option<Duration>,
    pub json: bool,
    /// `None`: decide by whether stderr is a terminal.
    pub progress: Option<bool>,
    pub save: Option<PathBuf>,
    pub quiet: bool,
    pub thresholds: Thresholds,
    pub require_realtime: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Run(Options),
    Help,
    Version,
}

fn seconds(value: OsString, flag: &str, allow_zero: bool) -> Result<f64, String> {
    let s = value.to_string_lossy();
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{flag}: expected a number of seconds, found '{s}'"))?;
    if !v.is_finite() || v < 0.0 || (!allow_zero && v == 0.0) {
        return Err(format!(
            "{flag}: expected a {} number of seconds, found '{s}'",
            if allow_zero {
                "non-negative"
            } else {
                "positive"
            }
        ));
    }
    Ok(v)
}

fn positive(value: OsString, flag: &str) -> Result<f64, String> {
    let s = value.to_string_lossy();
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{flag}: expected a positive number, found '{s}'")),
    }
}

fn string(value: OsString, flag: &str) -> Result<String, String> {
    value
        .into_string()
        .map_err(|v| format!("{flag}: not valid UTF-8: {}", v.to_string_lossy()))
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    use lexopt::prelude::*;

    let mut parser = lexopt::Parser::from_args(args);
    let mut endpoint: Option<String> = None;
    let mut port: Option<u16> = None;
    let mut bind = false;
    let mut socket_type = ReceiveSocketType::Sub;
    let mut frames = None;
    let mut duration = None;
    let mut timeout = Some(Duration::from_secs_f64(DEFAULT_TIMEOUT_S));
    let mut json = false;
    let mut progress = None;
    let mut save = None;
    let mut quiet = false;
    let mut thresholds = Thresholds::default();
    let mut require_realtime = false;

    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        let e = |err: lexopt::Error| err.to_string();
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Short('e') | Long("endpoint") => {
                endpoint = Some(string(parser.value().map_err(e)?, "--endpoint")?);
            }
            Value(v) if endpoint.is_none() => endpoint = Some(string(v, "ENDPOINT")?),
            Short('p') | Long("port") => {
                let v = parser.value().map_err(e)?;
                let s = v.to_string_lossy();
                port = Some(
                    s.parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("--port: expected 1..65535, found '{s}'"))?,
                );
            }
            Long("bind") => bind = true,
            Long("socket-type") => {
                let v = parser.value().map_err(e)?;
                socket_type = match v.to_string_lossy().as_ref() {
                    "sub" => ReceiveSocketType::Sub,
                    "pull" => ReceiveSocketType::Pull,
                    other => {
                        return Err(format!(
                            "--socket-type: expected sub or pull, found '{other}'"
                        ));
                    }
                };
            }
            Short('n') | Long("frames") => {
                let v = parser.value().map_err(e)?;
                let s = v.to_string_lossy();
                frames =
                    Some(s.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("--frames: expected a positive count, found '{s}'")
                    })?);
            }
            Short('d') | Long("duration") => {
                let s = seconds(parser.value().map_err(e)?, "--duration", false)?;
                duration = Some(Duration::from_secs_f64(s));
            }
            Short('t') | Long("timeout") => {
                let s = seconds(parser.value().map_err(e)?, "--timeout", true)?;
                timeout = (s > 0.0).then(|| Duration::from_secs_f64(s));
            }
            Long("json") => json = true,
            Long("progress") => progress = Some(true),
            Long("no-progress") => progress = Some(false),
            Long("save") => save = Some(PathBuf::from(parser.value().map_err(e)?)),
            Short('q') | Long("quiet") => quiet = true,
            Long("min-fps") => {
                thresholds.min_fps = Some(positive(parser.value().map_err(e)?, "--min-fps")?);
            }
            Long("max-interval-ms") => {
                thresholds.max_mean_interval_ms =
                    Some(positive(parser.value().map_err(e)?, "--max-interval-ms")?);
            }
            Long("max-latency-ms") => {
                thresholds.max_latency_p95_ms =
                    positive(parser.value().map_err(e)?, "--max-latency-ms")?;
            }
            Long("require-realtime") => require_realtime = true,
            other => return Err(other.unexpected().to_string()),
        }
    }

    let endpoint = match (endpoint, port) {
        (Some(ep), _) => ep,
        (None, Some(p)) if bind => format!("tcp://*:{p}"),
        (None, Some(p)) => format!("tcp://localhost:{p}"),
        (None, None) => DEFAULT_ENDPOINT.to_owned(),
    };
    if !endpoint.contains("://") {
        return Err(format!(
            "endpoint '{endpoint}': expected TRANSPORT://ADDRESS, e.g. tcp://localhost:5557"
        ));
    }
    Ok(Command::Run(Options {
        endpoint,
        bind,
        socket_type,
        frames,
        duration,
        timeout,
        json,
        progress,
        save,
        quiet,
        thresholds,
        require_realtime,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, String> {
        match parse(args.iter().map(OsString::from))? {
            Command::Run(o) => Ok(o),
            other => panic!("expected options, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let o = run(&[]).unwrap();
        assert_eq!(o.endpoint, DEFAULT_ENDPOINT);
        assert!(!o.bind && !o.json && !o.require_realtime);
        assert_eq!(o.socket_type, ReceiveSocketType::Sub);
        assert_eq!(o.timeout, Some(Duration::from_secs(10)));
        assert_eq!(o.thresholds, Thresholds::default());
        assert_eq!(o.progress, None);
    }

    #[test]
    fn port_shorthand_follows_bind_and_endpoint_wins() {
        assert_eq!(
            run(&["-p", "6000"]).unwrap().endpoint,
            "tcp://localhost:6000"
        );
        assert_eq!(
            run(&["--port", "6000", "--bind"]).unwrap().endpoint,
            "tcp://*:6000"
        );
        assert_eq!(
            run(&["--port", "6000", "--endpoint", "ipc:///tmp/x"])
                .unwrap()
                .endpoint,
            "ipc:///tmp/x"
        );
        assert_eq!(
            run(&["tcp://10.0.0.2:5557"]).unwrap().endpoint,
            "tcp://10.0.0.2:5557"
        );
    }

    #[test]
    fn all_flags() {
        let o = run(&[
            "--socket-type=pull",
            "--frames",
            "30",
            "--duration",
            "2.5",
            "--timeout",
            "0",
            "--json",
            "--no-progress",
            "--save",
            "/tmp/x",
            "--min-fps",
            "10",
            "--max-interval-ms",
            "120",
            "--max-latency-ms",
            "500",
            "--require-realtime",
            "-q",
        ])
        .unwrap();
        assert_eq!(o.socket_type, ReceiveSocketType::Pull);
        assert_eq!(o.frames, Some(30));
        assert_eq!(o.duration, Some(Duration::from_millis(2500)));
        assert_eq!(o.timeout, None);
        assert!(o.json && o.require_realtime && o.quiet);
        assert_eq!(o.progress, Some(false));
        assert_eq!(o.save, Some(PathBuf::from("/tmp/x")));
        assert_eq!(
            o.thresholds,
            Thresholds {
                min_fps: Some(10.0),
                max_mean_interval_ms: Some(120.0),
                max_latency_p95_ms: 500.0
            }
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases: &[(&[&str], &str)] = &[
            (&["--socket-type", "req"], "--socket-type"),
            (&["--frames", "0"], "--frames"),
            (&["--frames", "x"], "--frames"),
            (&["--duration", "0"], "--duration"),
            (&["--timeout", "-1"], "--timeout"),
            (&["--min-fps", "nan"], "--min-fps"),
            (&["--port", "70000"], "--port"),
            (&["--bogus"], "--bogus"),
            (&["localhost:5557"], "TRANSPORT://ADDRESS"),
            (&["tcp://a:1", "tcp://b:2"], "tcp://b:2"),
        ];
        for (args, needle) in cases {
            let err = run(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: '{err}' lacks '{needle}'");
        }
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse([OsString::from("-h")]), Ok(Command::Help));
        assert_eq!(parse([OsString::from("--version")]), Ok(Command::Version));
    }
}
