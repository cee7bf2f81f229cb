// SPDX-License-Identifier: MPL-2.0
//! i2i-prompt: the operator's console and the holder of the live settings.
//!
//! * `i2i-prompt` keeps the current settings, publishes them to every `settingssrc`
//!   (PUB, port 5556: full state on each change and as a heartbeat, so late joiners
//!   catch up), takes commands from other machines (ROUTER, port 5560) and reads commands
//!   from stdin. `i2i-prompt serve` does the same without reading stdin.
//! * `i2i-prompt --endpoint tcp://HOST:5560 "/seed 5"` sends one command and prints the
//!   answer; without a command it is a console for the holder on HOST.
//! * `i2i-prompt keygen DIR [NAME]` writes a CURVE key pair.
//!
//! At start the holder says what listens where and who may use it: the two ZeroMQ
//! sockets (CURVE or not, and their peer limit) and the OSC input (its address and the
//! senders it takes; off with CURVE keys unless asked for, as OSC has no authentication).

mod console;
mod osc;
mod printer;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use i2i_core::curve::{self, AllowList, KeyPair};
use i2i_core::settings::command::{Command, HELP};
use i2i_core::settings::hub::{
    ControlClient, DEFAULT_MIN_PUBLISH_INTERVAL, Hub, HubConfig, HubCurve, HubEvent,
};
use i2i_core::settings::message::decode_message;
use i2i_core::settings::peers::{DEFAULT_MAX_PEERS, PeerEvent, peer_budget};
use i2i_core::settings::state::{APPLIED_TOPIC, AppliedReport};
use i2i_core::settings::{DEFAULT_CONTROL_PORT, DEFAULT_STATE_PORT, SettingsUpdate};

use printer::Printer;

const USAGE: &str = "\
Usage:
  i2i-prompt [HUB OPTIONS]                  hold the settings and read commands from stdin
  i2i-prompt serve [HUB OPTIONS]            hold the settings, no console (primary machine)
  i2i-prompt [CLIENT OPTIONS] COMMAND...    send one command to a holder, print the answer
  i2i-prompt --endpoint tcp://HOST:5560     console for the holder on HOST
  i2i-prompt keygen DIR [NAME]              write DIR/NAME.key (public) and DIR/NAME.key_secret

Hub options:
  --state-bind ENDPOINT      where settingssrc elements subscribe (default tcp://*:5556)
  --control-bind ENDPOINT    where commands and reports arrive (default tcp://*:5560)
  --heartbeat-ms N           republish the full state every N ms (default 300)
  --init COMMAND             apply COMMAND before serving (repeatable), e.g. --init \"/seed 5\"
  --osc HOST:PORT|PORT|off   OSC input over UDP (see below). Default without --key:
                             0.0.0.0:8000; with --key: off (OSC has no authentication),
                             and a bare PORT binds 127.0.0.1
  --osc-port N               the same as --osc PORT, for scripts (0 = off)
  --osc-allow ADDR[,ADDR...] OSC senders taken: addresses or networks (192.168.1.0/24);
                             default anyone, with --key this machine only
  --min-publish-interval MS  publish at most one change per MS ms (default 33, one frame
                             at 30 fps); changes in between are merged, latest values win
  --max-peers N              most connections per ZeroMQ socket (default 256; lowered to
                             what the descriptor limit holds); idle ones make room first
  --steps N                  the transforms' num-inference-steps (default 50): t-index
                             lists they would refuse are refused here
  --key FILE                 the holder's secret certificate: turns CURVE on
  --allow PATH               with --key: public keys that may change settings
                             (a directory of NAME.key files, one certificate, or a key list)
  --allow-subscribers PATH   with --key: public keys that may subscribe and report
                             (default: any key may subscribe; traffic is still encrypted)
Client options:
  --endpoint ENDPOINT        the holder's command socket (default tcp://localhost:5560)
  --state-endpoint ENDPOINT  console only: where applied reports are published
                             (default: the --endpoint host, port 5556)
  --key FILE                 your secret certificate (CURVE)
  --server-key KEY|FILE      the holder's public key (CURVE)
  --timeout-ms N             how long to wait for an answer (default 3000)
  --history FILE|off         consoles: where typed lines are kept (default
                             ~/.local/state/i2i-prompt/history)
  --report-ms N              one-shot: after `ok`, show the transforms' reports for this
                             change for N ms (default 500; 0 = do not wait); exit 1 if
                             one refused it
Commands: type /help, or see below.
";

#[derive(Default)]
struct Options {
    mode: Mode,
    state_bind: Option<String>,
    control_bind: Option<String>,
    heartbeat_ms: Option<u64>,
    init: Vec<String>,
    key: Option<PathBuf>,
    allow: Option<PathBuf>,
    allow_subscribers: Option<PathBuf>,
    endpoint: Option<String>,
    state_endpoint: Option<String>,
    server_key: Option<String>,
    timeout_ms: Option<u64>,
    steps: Option<u32>,
    osc: Option<String>,
    osc_port: Option<u16>,
    osc_allow: Option<String>,
    min_publish_interval_ms: Option<u64>,
    max_peers: Option<usize>,
    history: Option<String>,
    report_ms: Option<u64>,
    words: Vec<String>,
}

#[derive(Default, PartialEq)]
enum Mode {
    #[default]
    Console,
    Serve,
    Keygen,
    Help,
}

fn parse_args(args: Vec<String>) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.into_iter().peekable();
    let mut first = true;
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value (see --help)"))
        };
        match a.as_str() {
            "serve" if first => o.mode = Mode::Serve,
            "keygen" if first => o.mode = Mode::Keygen,
            "-h" | "--help" => o.mode = Mode::Help,
            "--state-bind" => o.state_bind = Some(value(&a)?),
            "--control-bind" => o.control_bind = Some(value(&a)?),
            "--heartbeat-ms" => {
                let v = value(&a)?;
                o.heartbeat_ms = Some(
                    v.parse()
                        .ok()
                        .filter(|&n| (10..=60_000).contains(&n))
                        .ok_or_else(|| format!("--heartbeat-ms: \"{v}\" is not 10..60000"))?,
                )
            }
            "--init" => o.init.push(value(&a)?),
            "--key" => o.key = Some(PathBuf::from(value(&a)?)),
            "--allow" => o.allow = Some(PathBuf::from(value(&a)?)),
            "--allow-subscribers" => o.allow_subscribers = Some(PathBuf::from(value(&a)?)),
            "--endpoint" => o.endpoint = Some(value(&a)?),
            "--state-endpoint" => o.state_endpoint = Some(value(&a)?),
            "--server-key" => o.server_key = Some(value(&a)?),
            "--timeout-ms" => {
                let v = value(&a)?;
                o.timeout_ms = Some(v.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                    format!("--timeout-ms: \"{v}\" is not a number of milliseconds")
                })?)
            }
            "--steps" => {
                let v = value(&a)?;
                let (lo, hi) = i2i_core::settings::NUM_INFERENCE_STEPS_RANGE;
                o.steps = Some(
                    v.parse()
                        .ok()
                        .filter(|n| (lo..=hi).contains(n))
                        .ok_or_else(|| format!("--steps: \"{v}\" is not {lo}..{hi}"))?,
                )
            }
            "--osc" => o.osc = Some(value(&a)?),
            "--osc-port" => {
                let v = value(&a)?;
                o.osc_port = Some(
                    v.parse()
                        .map_err(|_| format!("--osc-port: \"{v}\" is not a UDP port (0 = off)"))?,
                )
            }
            "--osc-allow" => o.osc_allow = Some(value(&a)?),
            "--min-publish-interval" => {
                let v = value(&a)?;
                o.min_publish_interval_ms =
                    Some(v.parse().ok().filter(|&n| n <= 10_000).ok_or_else(|| {
                        format!("--min-publish-interval: \"{v}\" is not 0..10000 ms")
                    })?)
            }
            "--max-peers" => {
                let v = value(&a)?;
                o.max_peers = Some(v.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
                    format!("--max-peers: \"{v}\" is not a number of connections (1 or more)")
                })?)
            }
            "--history" => o.history = Some(value(&a)?),
            "--report-ms" => {
                let v = value(&a)?;
                o.report_ms =
                    Some(v.parse().map_err(|_| {
                        format!("--report-ms: \"{v}\" is not a number of milliseconds")
                    })?)
            }
            "--" => {
                o.words.extend(it.by_ref());
                break;
            }
            s if s.starts_with("--") => {
                return Err(format!("unknown option {s} (see --help)"));
            }
            _ => o.words.push(a),
        }
        first = false;
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("i2i-prompt: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match o.mode {
        Mode::Help => {
            print!("{USAGE}\n{HELP}\n\n{}\n", osc::ADDRESSES);
            Ok(ExitCode::SUCCESS)
        }
        Mode::Keygen => keygen(&o),
        Mode::Serve => run_hub(&o, false),
        Mode::Console if !o.words.is_empty() => one_shot(&o),
        Mode::Console if o.endpoint.is_some() => remote_console(&o),
        Mode::Console => run_hub(&o, true),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("i2i-prompt: {e}");
            ExitCode::from(2)
        }
    }
}

fn keygen(o: &Options) -> Result<ExitCode, String> {
    let (dir, name) = match o.words.as_slice() {
        [dir] => (dir.as_str(), "i2i"),
        [dir, name] => (dir.as_str(), name.as_str()),
        _ => return Err("usage: i2i-prompt keygen DIR [NAME]".to_string()),
    };
    let pair = KeyPair::generate()?;
    let (public, secret) = pair.write(std::path::Path::new(dir), name)?;
    println!("public key  {}", pair.public);
    println!(
        "wrote {} (share it: allow-lists, curve-server-key)",
        public.display()
    );
    println!(
        "wrote {} (keep it secret: --key, curve-key)",
        secret.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// One line for people about what happened at the holder; None for the console's own
/// commands, whose answer it prints itself.
fn event_line(e: HubEvent) -> Option<String> {
    Some(match e {
        HubEvent::Changed { from, .. } | HubEvent::Rejected { from, .. } if from == "console" => {
            return None;
        }
        HubEvent::Changed { seq, from, changes } => {
            format!("[seq {seq}] {} (from {from})", changes.summary())
        }
        HubEvent::Rejected { from, error } => format!("rejected a message from {from}: {error}"),
        HubEvent::Refused {
            domain,
            address,
            key,
            reason,
        } => format!("REFUSED {address} ({domain}, key {key}): {reason}"),
        HubEvent::Applied(r) => applied_line(&r),
        HubEvent::Peers {
            socket,
            endpoint,
            event,
        } => {
            let held = |n: u64| {
                if n > 0 {
                    format!("; {n} more not reported")
                } else {
                    String::new()
                }
            };
            match event {
                PeerEvent::Refused {
                    address,
                    max,
                    total,
                    held_back,
                } => format!(
                    "i2i-prompt: WARNING: closed a new connection from {address} to the {socket} socket {endpoint}: {max} connections are open, the most it takes (--max-peers) [{total} closed so far{}]",
                    held(held_back)
                ),
                PeerEvent::Evicted {
                    address,
                    connected_for,
                    total,
                    held_back,
                } => format!(
                    "i2i-prompt: WARNING: closed an idle connection from {address} to the {socket} socket {endpoint} (open {:.1} s, sent nothing) to make room for a new one [{total} closed so far{}]",
                    connected_for.as_secs_f64(),
                    held(held_back)
                ),
            }
        }
    })
}

fn applied_line(r: &AppliedReport) -> String {
    r.describe()
}

/// Where OSC listens, from `--osc` / `--osc-port`, `--osc-allow` and whether CURVE is on;
/// None: off, with the reason to print.
struct OscPlan {
    addr: String,
    senders: osc::Senders,
    /// Asked for: failing to bind is an error (else a warning).
    asked: bool,
}

fn osc_plan(o: &Options, secured: bool) -> Result<Result<OscPlan, &'static str>, String> {
    let spec = match (&o.osc, o.osc_port) {
        (Some(_), Some(_)) => {
            return Err("give --osc or --osc-port, not both".to_string());
        }
        (Some(s), None) => Some(s.clone()),
        (None, Some(0)) => Some("off".to_string()),
        (None, Some(p)) => Some(p.to_string()),
        (None, None) => None,
    };
    let senders = match &o.osc_allow {
        Some(list) => Some(osc::Senders::parse(list)?),
        None => None,
    };
    let (addr, asked) = match spec.as_deref() {
        Some("off") => return Ok(Err("OSC is off")),
        None if secured => {
            return Ok(Err(
                "OSC is off: with --key it is on only when asked for (--osc HOST:PORT, and --osc-allow for senders on other machines), as OSC has no authentication",
            ));
        }
        None => (osc::DEFAULT_OSC.to_string(), false),
        // A bare port: every interface, or with keys this machine only.
        Some(p) if !p.contains(':') => {
            let port: u16 = p
                .parse()
                .map_err(|_| format!("--osc: \"{p}\" is not HOST:PORT, PORT or off"))?;
            let host = if secured { "127.0.0.1" } else { "0.0.0.0" };
            (format!("{host}:{port}"), true)
        }
        Some(a) => (a.to_string(), true),
    };
    let loopback = {
        use std::net::ToSocketAddrs;
        addr.to_socket_addrs()
            .map(|mut all| all.all(|a| a.ip().is_loopback()))
            .unwrap_or(false)
    };
    let senders = match senders {
        Some(s) => s,
        None if secured && !loopback => {
            return Err(format!(
                "--osc {addr} with --key: OSC has no authentication, so say who may send with --osc-allow ADDR[,ADDR...] (addresses or networks such as 192.168.1.0/24)"
            ));
        }
        None if secured => osc::Senders::loopback(),
        None => osc::Senders::Anyone,
    };
    Ok(Ok(OscPlan {
        addr,
        senders,
        asked,
    }))
}

fn run_hub(o: &Options, console: bool) -> Result<ExitCode, String> {
    if o.endpoint.is_some() || o.server_key.is_some() || !o.words.is_empty() {
        return Err(
            "--endpoint, --server-key and commands are for clients; a holder takes --state-bind, --control-bind, --init"
                .to_string(),
        );
    }
    if o.key.is_none() && (o.allow.is_some() || o.allow_subscribers.is_some()) {
        return Err(
            "--allow and --allow-subscribers need --key (the holder's secret certificate)"
                .to_string(),
        );
    }
    let curve = match (&o.key, &o.allow) {
        (Some(key), Some(allow)) => Some(HubCurve {
            keys: KeyPair::load(key)?,
            controllers: AllowList::load(allow)?,
            subscribers: match &o.allow_subscribers {
                Some(p) => Some(AllowList::load(p)?),
                None => None,
            },
        }),
        (Some(_), None) => {
            return Err(
                "--key needs --allow: the public keys that may change settings".to_string(),
            );
        }
        (None, _) => None,
    };
    let mut initial = SettingsUpdate::default();
    for c in &o.init {
        match decode_message(c.as_bytes()) {
            Ok(Command::Update(u)) => initial.merge(u),
            Ok(_) => {
                return Err(format!(
                    "--init \"{c}\": only settings commands can be applied at start"
                ));
            }
            Err(e) => return Err(format!("--init \"{c}\": {e}")),
        }
    }
    let config = HubConfig {
        state_bind: o
            .state_bind
            .clone()
            .unwrap_or_else(|| format!("tcp://*:{DEFAULT_STATE_PORT}")),
        control_bind: o
            .control_bind
            .clone()
            .unwrap_or_else(|| format!("tcp://*:{DEFAULT_CONTROL_PORT}")),
        heartbeat: Duration::from_millis(o.heartbeat_ms.unwrap_or(300)),
        curve,
        initial,
        num_inference_steps: o
            .steps
            .unwrap_or(i2i_core::settings::DEFAULT_NUM_INFERENCE_STEPS),
        min_publish_interval: o
            .min_publish_interval_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_MIN_PUBLISH_INTERVAL),
        max_peers: DEFAULT_MAX_PEERS,
    };
    let secured = config.curve.is_some();
    let osc_plan = osc_plan(o, secured)?;
    // Both sockets' peers must fit the descriptor limit.
    let (max_peers, lowered_by) = peer_budget(o.max_peers.unwrap_or(DEFAULT_MAX_PEERS), 2);
    let config = HubConfig {
        max_peers,
        ..config
    };
    let printer = Printer::start();
    let lines = printer.clone();
    let hub = Hub::bind(
        &config,
        Arc::new(move |e| {
            if let Some(line) = event_line(e) {
                lines.line(line);
            }
        }),
    )?;
    let limit = match lowered_by {
        Some(l) => format!("at most {max_peers} peers each: the descriptor limit is {l}"),
        None => format!("at most {max_peers} peers each"),
    };
    eprintln!(
        "i2i-prompt: publishing settings on {}, commands on {} ({}; {limit})",
        hub.state_endpoint(),
        hub.control_endpoint(),
        if secured {
            "CURVE: only allowed keys change settings"
        } else {
            "no authentication: anyone who reaches these ports can change settings"
        }
    );
    if !config.initial.is_empty() {
        eprintln!("i2i-prompt: starting with {}", config.initial.summary());
    }
    let osc_client = hub.local_client()?;
    let handle = hub.spawn()?;
    // OSC: a default port in use is a warning (another holder has it), a port asked for
    // that cannot be had is an error.
    match osc_plan {
        Ok(plan) => match osc::Listener::bind(&plan.addr) {
            Ok(listener) => {
                eprintln!(
                    "i2i-prompt: OSC on udp://{} {} (no authentication; i2i-prompt --help lists the addresses)",
                    listener.local(),
                    plan.senders.describe()
                );
                listener.spawn(
                    OscHolder(osc_client),
                    osc::OscConfig {
                        senders: plan.senders,
                        interval: config.min_publish_interval,
                        steps: config.num_inference_steps,
                    },
                    printer.clone(),
                    Arc::new(std::sync::atomic::AtomicBool::new(false)),
                );
            }
            Err(e) if !plan.asked => eprintln!("i2i-prompt: {e}; OSC is off"),
            Err(e) => return Err(e),
        },
        Err(why) => eprintln!("i2i-prompt: {why}"),
    }
    if !console {
        // Serve until killed; the holder thread does the work.
        loop {
            std::thread::park();
        }
    }
    if std::io::stdin().is_terminal() {
        eprintln!(
            "type a prompt or a /command (/help lists them, Tab completes, Up and Ctrl-R recall, /quit or Ctrl-D ends)"
        );
    }
    let mut console = console::Console::new(history_file(o));
    if let Some(p) = console.external_printer() {
        printer.attach(p);
    }
    while let Some(line) = console.next_line() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/quit" || line == "/exit" {
            break;
        }
        if let Ok(Command::Help) = decode_message(line.as_bytes()) {
            println!("{HELP}");
            continue;
        }
        match handle.send(line.as_bytes()) {
            Ok(answer) => println!("{answer}"),
            Err(e) => eprintln!("{e}"),
        }
        let _ = std::io::stdout().flush();
    }
    handle.stop()?;
    Ok(ExitCode::SUCCESS)
}

/// `--history FILE`, `--history off`, or the default file.
fn history_file(o: &Options) -> Option<PathBuf> {
    match o.history.as_deref() {
        Some("off") => None,
        Some(f) => Some(PathBuf::from(f)),
        None => console::default_history(),
    }
}

/// The OSC listener's way to the holder: a local client of its own.
struct OscHolder(ControlClient);

impl osc::Holder for OscHolder {
    fn send(&self, payload: &[u8], origin: &str) -> Result<String, String> {
        self.0.request_from(payload, origin, Duration::from_secs(5))
    }
}

fn client_curve(o: &Options) -> Result<Option<(KeyPair, String)>, String> {
    match (&o.key, &o.server_key) {
        (Some(k), Some(s)) => Ok(Some((KeyPair::load(k)?, curve::load_public_key(s)?))),
        (None, Some(s)) => Ok(Some((KeyPair::generate()?, curve::load_public_key(s)?))),
        (Some(_), None) => Err("--key needs --server-key: the holder's public key".to_string()),
        (None, None) => Ok(None),
    }
}

fn control_endpoint(o: &Options) -> String {
    o.endpoint
        .clone()
        .unwrap_or_else(|| format!("tcp://localhost:{DEFAULT_CONTROL_PORT}"))
}

fn one_shot(o: &Options) -> Result<ExitCode, String> {
    let text = o.words.join(" ");
    match decode_message(text.as_bytes()) {
        Ok(Command::Help) => {
            println!("{HELP}");
            return Ok(ExitCode::SUCCESS);
        }
        Ok(_) => {}
        Err(e) => {
            eprintln!("i2i-prompt: {e}");
            return Ok(ExitCode::from(1));
        }
    }
    let curve = client_curve(o)?;
    let endpoint = control_endpoint(o);
    let client = ControlClient::connect(&endpoint, curve.as_ref().map(|(k, s)| (k, s.as_str())))?;
    let report_wait = Duration::from_millis(o.report_ms.unwrap_or(500));
    // Subscribe before sending, so no report of this change is missed.
    let reports = match (
        report_wait.is_zero(),
        o.state_endpoint
            .clone()
            .or_else(|| default_state_endpoint(&endpoint)),
    ) {
        (false, Some(state)) => report_subscriber(&state, curve.as_ref()).ok(),
        _ => None,
    };
    let answer = client.request(
        text.as_bytes(),
        Duration::from_millis(o.timeout_ms.unwrap_or(3000)),
    )?;
    if answer.starts_with("error") {
        eprintln!("{answer}");
        return Ok(ExitCode::from(1));
    }
    println!("{answer}");
    let _ = std::io::stdout().flush();
    // `ok seq=N ...`: show what the transforms did with change N.
    let seq: Option<u64> = answer
        .strip_prefix("ok seq=")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    let mut refused = false;
    if let (Some(sub), Some(seq)) = (reports, seq) {
        let deadline = std::time::Instant::now() + report_wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || sub.poll(zmq::POLLIN, left.as_millis() as i64).unwrap_or(0) == 0 {
                break;
            }
            let Ok(frames) = sub.recv_multipart(0) else {
                break;
            };
            if let Some(r) = frames.get(1).and_then(|b| AppliedReport::decode(b).ok())
                && r.seq == Some(seq)
            {
                refused |= !r.refused.is_empty();
                eprintln!("{}", r.describe());
            }
        }
    }
    Ok(if refused {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A SUB socket on the holder's state endpoint that receives applied reports.
fn report_subscriber(
    state: &str,
    curve: Option<&(KeyPair, String)>,
) -> Result<zmq::Socket, String> {
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).map_err(|e| e.to_string())?;
    sub.set_linger(0).ok();
    if let Some((k, s)) = curve {
        curve::make_client(&sub, k, s)?;
    }
    sub.set_subscribe(APPLIED_TOPIC)
        .map_err(|e| e.to_string())?;
    sub.connect(state)
        .map_err(|e| format!("cannot listen for applied reports on {state}: {e}"))?;
    Ok(sub)
}

/// `tcp://host:5560` -> `tcp://host:5556`.
fn default_state_endpoint(control: &str) -> Option<String> {
    let (base, _) = control.rsplit_once(':')?;
    Some(format!("{base}:{DEFAULT_STATE_PORT}"))
}

fn remote_console(o: &Options) -> Result<ExitCode, String> {
    let curve = client_curve(o)?;
    let endpoint = control_endpoint(o);
    let client = ControlClient::connect(&endpoint, curve.as_ref().map(|(k, s)| (k, s.as_str())))?;
    let timeout = Duration::from_millis(o.timeout_ms.unwrap_or(3000));
    let printer = Printer::start();
    // Applied reports come on the holder's state socket.
    if let Some(state) = o
        .state_endpoint
        .clone()
        .or_else(|| default_state_endpoint(&endpoint))
    {
        let curve = curve.clone();
        let printer = printer.clone();
        std::thread::spawn(move || {
            let ctx = zmq::Context::new();
            let Ok(sub) = ctx.socket(zmq::SUB) else {
                return;
            };
            if let Some((k, s)) = &curve
                && curve::make_client(&sub, k, s).is_err()
            {
                return;
            }
            if sub.set_subscribe(APPLIED_TOPIC).is_err() || sub.connect(&state).is_err() {
                printer.line(format!("cannot listen for applied reports on {state}"));
                return;
            }
            while let Ok(frames) = sub.recv_multipart(0) {
                if let Some(r) = frames.get(1).and_then(|b| AppliedReport::decode(b).ok()) {
                    printer.line(applied_line(&r));
                }
            }
        });
    }
    if std::io::stdin().is_terminal() {
        eprintln!(
            "connected to {endpoint}: type a prompt or a /command (/help lists them, Tab completes, /quit or Ctrl-D ends)"
        );
    }
    let mut failures = 0;
    let mut console = console::Console::new(history_file(o));
    if let Some(p) = console.external_printer() {
        printer.attach(p);
    }
    while let Some(line) = console.next_line() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/quit" || line == "/exit" {
            break;
        }
        match decode_message(line.as_bytes()) {
            Ok(Command::Help) => {
                println!("{HELP}");
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        }
        match client.request(line.as_bytes(), timeout) {
            Ok(answer) => println!("{answer}"),
            Err(e) => {
                failures += 1;
                eprintln!("{e}");
            }
        }
        let _ = std::io::stdout().flush();
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
