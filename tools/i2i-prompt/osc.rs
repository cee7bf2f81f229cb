// SPDX-License-Identifier: MPL-2.0
//! OSC input of the settings holder: TouchDesigner, Resolume, Max/MSP and TouchOSC speak
//! OSC over UDP, so `i2i-prompt` listens on UDP port 8000 (as the system it replaces did).
//! One address per setting (see [`ADDRESSES`]); packets are decoded by the rosc crate and
//! each message is turned into a [`SettingsUpdate`] and validated like any command.
//!
//! OSC has no authentication: packets from senders outside the allow-list
//! (`--osc-allow`) are dropped and counted. A fader sends far more messages than a
//! transform has frames, so accepted messages are merged (later values win) and sent to
//! the holder at most once per interval, labelled with where they came from. Bad packets
//! are counted and reported on stderr, a few per second; the rest are summed up in the
//! next report.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use i2i_core::rate_limit::RateLimit;
use i2i_core::settings::blend::BlendMode;
use i2i_core::settings::command::did_you_mean;
use i2i_core::settings::limits::Pacer;
use i2i_core::settings::{CfgType, SettingsUpdate};
use ipnet::IpNet;
use rosc::{OscMessage, OscPacket, OscType};

use crate::printer::Printer;

/// The address OSC binds by default (without CURVE keys).
pub const DEFAULT_OSC: &str = "0.0.0.0:8000";

/// The address table, as docs/settings.md and `--help` show it.
pub const ADDRESSES: &str = "\
OSC addresses (UDP, default port 8000; i = int, f = float, s = string):
  /prompt s                 prompt
  /negative s               negative prompt
  /seed i                   seed (a whole float is accepted too)
  /strength f               0..1, 1 = strongest change: moves the t-index list, spacing kept
  /guidance f               guidance scale
  /delta f                  residual-CFG delta
  /t i i ...                t-index list
  /transition i             transition frames
  /blend s f s f ...        prompt blend (no arguments ends it)
  /seedblend i f i f ...    seed blend (no arguments ends it)
  /lora s f s f ...         LoRA styles: file, scale pairs, or one string FILE:SCALE,...; no arguments or off ends it
  /cfg s, /similarity f, /blendmode s
  /style s                  IP-Adapter picture (a JPEG/PNG path; \"\" or off: none)
  /ipscale f ...            IP-Adapter scale 0..2 (one, or one per layer)";

/// The OSC addresses, for "did you mean".
const ADDRESS_NAMES: [&str; 18] = [
    "/lora",
    "/prompt",
    "/negative",
    "/negative-prompt",
    "/seed",
    "/strength",
    "/guidance",
    "/guidance-scale",
    "/delta",
    "/similarity",
    "/cfg",
    "/blendmode",
    "/transition",
    "/t",
    "/blend",
    "/seedblend",
    "/style",
    "/ipscale",
];

/// Receive buffer asked for the OSC socket.
const RECEIVE_BUFFER_BYTES: libc::c_int = 1 << 20;

/// Reports of bad packets per second before the rest are only counted.
const REPORTS_PER_SECOND: u32 = 5;

/// What the OSC listener needs from the holder.
pub trait Holder: Send + 'static {
    /// Sends one settings message from `origin`; the holder's answer (`ok ...` or
    /// `error: ...`).
    fn send(&self, payload: &[u8], origin: &str) -> Result<String, String>;
}

/// Who may send OSC: anyone, or the listed addresses and networks.
#[derive(Clone, Debug, PartialEq)]
pub enum Senders {
    Anyone,
    Only(Vec<IpNet>),
}

impl Senders {
    /// `ADDR[,ADDR...]`: addresses (`10.0.0.7`, `::1`) or networks (`192.168.1.0/24`).
    pub fn parse(list: &str) -> Result<Senders, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => item.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    format!(
                        "--osc-allow: \"{item}\" is not an address or a network (e.g. 10.0.0.7 or 192.168.1.0/24)"
                    )
                })?,
            };
            nets.push(net);
        }
        if nets.is_empty() {
            return Err("--osc-allow: no address given (e.g. 10.0.0.7,192.168.1.0/24)".to_string());
        }
        Ok(Senders::Only(nets))
    }

    /// This machine only.
    pub fn loopback() -> Senders {
        Senders::Only(vec![
            "127.0.0.0/8".parse().expect("a network"),
            "::1/128".parse().expect("a network"),
        ])
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        match self {
            Senders::Anyone => true,
            Senders::Only(nets) => {
                let ip = ip.to_canonical();
                nets.iter().any(|n| n.contains(&ip))
            }
        }
    }

    /// For the start-up line: `from anyone` or `from 10.0.0.7, 192.168.1.0/24`.
    pub fn describe(&self) -> String {
        match self {
            Senders::Anyone => "from anyone".to_string(),
            Senders::Only(nets) => format!(
                "from {}",
                nets.iter()
                    .map(|n| match n.prefix_len() == n.max_prefix_len() {
                        true => n.addr().to_string(),
                        false => n.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// How the listener runs.
#[derive(Clone, Debug)]
pub struct OscConfig {
    pub senders: Senders,
    /// At most one update to the holder per this; messages in between are merged.
    pub interval: Duration,
    /// The transforms' num-inference-steps: t-index lists they would refuse are refused
    /// message by message, before merging.
    pub steps: u32,
}

fn arg_text(addr: &str, a: &OscType) -> Result<String, String> {
    match a {
        OscType::String(s) => Ok(s.clone()),
        other => Err(format!(
            "{addr}: expected a string, found {}",
            type_name(other)
        )),
    }
}

fn arg_number(addr: &str, a: &OscType) -> Result<f64, String> {
    match a {
        OscType::Float(f) => Ok(f64::from(*f)),
        OscType::Double(f) => Ok(*f),
        OscType::Int(i) => Ok(f64::from(*i)),
        OscType::Long(i) => Ok(*i as f64),
        other => Err(format!(
            "{addr}: expected a number, found {}",
            type_name(other)
        )),
    }
}

fn arg_whole(addr: &str, a: &OscType) -> Result<u64, String> {
    match a {
        OscType::Int(i) if *i >= 0 => Ok(*i as u64),
        OscType::Long(i) if *i >= 0 => Ok(*i as u64),
        // Controllers often send floats only: a whole float is fine.
        OscType::Float(_) | OscType::Double(_) => {
            let f = arg_number(addr, a)?;
            if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 2f64.powi(53) {
                Ok(f as u64)
            } else {
                Err(format!("{addr}: {f} is not a whole number >= 0"))
            }
        }
        other => Err(format!(
            "{addr}: expected a whole number >= 0, found {}",
            type_name(other)
        )),
    }
}

fn type_name(a: &OscType) -> String {
    match a {
        OscType::Int(i) => format!("int {i}"),
        OscType::Float(f) => format!("float {f}"),
        OscType::String(s) => format!("string {s:?}"),
        OscType::Blob(b) => format!("a blob of {} bytes", b.len()),
        OscType::Long(i) => format!("long {i}"),
        OscType::Double(f) => format!("double {f}"),
        OscType::Bool(b) => format!("bool {b}"),
        OscType::Nil => "nil".to_string(),
        OscType::Inf => "infinitum".to_string(),
        other => format!("{other:?}"),
    }
}

fn one(m: &OscMessage) -> Result<&OscType, String> {
    match m.args.as_slice() {
        [a] => Ok(a),
        args => Err(format!(
            "{}: expected 1 argument, found {}",
            m.addr,
            args.len()
        )),
    }
}

/// Pairs of (value, weight) arguments of /blend and /seedblend.
fn pairs(m: &OscMessage) -> Result<Vec<(&OscType, f64)>, String> {
    if !m.args.len().is_multiple_of(2) {
        return Err(format!(
            "{}: expected value weight pairs, found {} arguments",
            m.addr,
            m.args.len()
        ));
    }
    m.args
        .chunks(2)
        .map(|p| Ok((&p[0], arg_number(&m.addr, &p[1])?)))
        .collect()
}

/// The update one OSC message asks for (checked with [`SettingsUpdate::validate`]).
pub fn message_to_update(m: &OscMessage) -> Result<SettingsUpdate, String> {
    let addr = m.addr.as_str();
    let mut u = SettingsUpdate::default();
    match addr.to_ascii_lowercase().as_str() {
        "/prompt" => u.prompt = Some(arg_text(addr, one(m)?)?),
        "/negative" | "/negative-prompt" => u.negative_prompt = Some(arg_text(addr, one(m)?)?),
        "/seed" => u.seed = Some(arg_whole(addr, one(m)?)?),
        "/strength" => u.strength = Some(arg_number(addr, one(m)?)?),
        "/guidance" | "/guidance-scale" => u.guidance_scale = Some(arg_number(addr, one(m)?)?),
        "/delta" => u.delta = Some(arg_number(addr, one(m)?)?),
        "/similarity" => u.similarity_threshold = Some(arg_number(addr, one(m)?)?),
        "/cfg" => {
            u.cfg_type = Some(CfgType::parse(
                &arg_text(addr, one(m)?)?.to_ascii_lowercase(),
            )?)
        }
        "/blendmode" => {
            u.blend_mode = Some(BlendMode::parse(
                &arg_text(addr, one(m)?)?.to_ascii_lowercase(),
            )?)
        }
        "/transition" => {
            let n = arg_whole(addr, one(m)?)?;
            u.transition_frames = Some(u32::try_from(n).unwrap_or(u32::MAX));
        }
        "/t" => {
            if m.args.is_empty() {
                return Err(
                    "/t: expected the t-indices as int arguments (e.g. /t 22 32 45)".into(),
                );
            }
            let list = m
                .args
                .iter()
                .map(|a| arg_whole(addr, a).map(|v| u32::try_from(v).unwrap_or(u32::MAX)))
                .collect::<Result<Vec<_>, _>>()?;
            u.t_index_list = Some(list);
        }
        "/blend" => {
            u.prompt_blend = Some(
                pairs(m)?
                    .into_iter()
                    .map(|(t, w)| Ok((arg_text(addr, t)?, w)))
                    .collect::<Result<_, String>>()?,
            )
        }
        "/seedblend" => {
            u.seed_blend = Some(
                pairs(m)?
                    .into_iter()
                    .map(|(s, w)| Ok((arg_whole(addr, s)?, w)))
                    .collect::<Result<_, String>>()?,
            )
        }
        "/lora" => {
            let text = match m.args.len() {
                0 => String::new(),
                1 => arg_text(addr, &m.args[0])?,
                _ => pairs(m)?
                    .into_iter()
                    .map(|(f, s)| Ok(format!("{}:{s}", arg_text(addr, f)?)))
                    .collect::<Result<Vec<_>, String>>()?
                    .join(","),
            };
            u.lora = Some(if text.trim().is_empty() {
                String::new()
            } else {
                i2i_core::settings::lora::lora_from_command(&text)?
            });
        }
        "/style" => {
            let path = arg_text(addr, one(m)?)?;
            let off = path.eq_ignore_ascii_case("off");
            u.ip_adapter_image = Some(if off { String::new() } else { path });
        }
        "/ipscale" => {
            if m.args.is_empty() {
                return Err("/ipscale: expected one float, or one per IP-Adapter layer".into());
            }
            u.ip_adapter_scale = Some(
                m.args
                    .iter()
                    .map(|a| arg_number(addr, a))
                    .collect::<Result<_, _>>()?,
            );
        }
        _ => {
            let shown: String = addr.chars().take(60).collect();
            let hint = did_you_mean(&shown, &ADDRESS_NAMES)
                .map(|a| format!("did you mean {a}? "))
                .unwrap_or_default();
            return Err(format!(
                "unknown OSC address {shown} ({hint}accepted: /prompt /negative /seed /strength /guidance /delta /t /transition /blend /seedblend /cfg /similarity /blendmode /lora /style /ipscale)"
            ));
        }
    }
    let u = u.with_explicit_blend_clears();
    u.validate()?;
    Ok(u)
}

/// Every message of a packet (bundles are unpacked, in order).
fn messages(p: OscPacket, out: &mut Vec<OscMessage>) {
    match p {
        OscPacket::Message(m) => out.push(m),
        OscPacket::Bundle(b) => {
            for p in b.content {
                messages(p, out);
            }
        }
    }
}

/// Reports bad packets on stderr, at most [`REPORTS_PER_SECOND`] a second; the rest are
/// counted and summed up in the next report.
struct Reporter {
    printer: Printer,
    limit: RateLimit,
    bad: u64,
    refused: u64,
}

impl Reporter {
    fn bad(&mut self, from: &SocketAddr, what: &str) {
        self.bad += 1;
        let count = format!("{} bad so far", self.bad);
        self.say(from, what, count);
    }

    fn refused(&mut self, from: &SocketAddr, senders: &Senders) {
        self.refused += 1;
        let what = format!(
            "not an allowed sender (--osc-allow: {})",
            senders.describe().trim_start_matches("from ")
        );
        let count = format!("{} refused so far", self.refused);
        self.say(from, &what, count);
    }

    fn say(&mut self, from: &SocketAddr, what: &str, count: String) {
        if let Some(line) = self.limit.message(format!(
            "osc: refused a packet from {from}: {what} [{count}]"
        )) {
            self.printer.line(line);
        }
    }
}

/// Accepted messages waiting to go to the holder as one update.
#[derive(Default)]
struct Batch {
    update: SettingsUpdate,
    messages: u64,
    senders: Vec<SocketAddr>,
}

impl Batch {
    fn add(&mut self, u: SettingsUpdate, from: SocketAddr) {
        self.update.merge(u);
        self.messages += 1;
        if !self.senders.contains(&from) {
            self.senders.push(from);
        }
    }

    /// Where it came from, for the holder's log: `osc 10.0.0.7:9000, 40 messages merged`.
    fn origin(&self) -> String {
        let mut o = format!(
            "osc {}",
            self.senders
                .first()
                .map(SocketAddr::to_string)
                .unwrap_or_default()
        );
        if self.senders.len() > 1 {
            o.push_str(&format!(" and {} other senders", self.senders.len() - 1));
        }
        if self.messages > 1 {
            o.push_str(&format!(", {} messages merged", self.messages));
        }
        o
    }
}

/// A bound OSC socket, ready to run.
pub struct Listener {
    sock: UdpSocket,
    local: String,
}

impl Listener {
    /// Binds `addr` (`HOST:PORT`).
    pub fn bind(addr: &str) -> Result<Listener, String> {
        let sock = UdpSocket::bind(addr).map_err(|e| {
            format!("cannot listen for OSC on udp://{addr}: {e} (--osc HOST:PORT or --osc-port N picks another port, --osc off turns OSC off)")
        })?;
        // Room for a burst (a fader sends hundreds of packets a second) while the
        // listener is busy; the kernel caps it at net.core.rmem_max.
        let size: libc::c_int = RECEIVE_BUFFER_BYTES;
        // SAFETY: setsockopt on the socket's own descriptor with a c_int value.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let local = sock
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or(addr.to_string());
        Ok(Listener { sock, local })
    }

    /// The address as bound (with the port chosen for port 0).
    pub fn local(&self) -> &str {
        &self.local
    }

    /// Receives until `stop` is set, on its own thread.
    pub fn spawn(
        self,
        holder: impl Holder,
        config: OscConfig,
        printer: Printer,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || self.run(holder, config, printer, stop))
    }

    fn run(self, holder: impl Holder, config: OscConfig, printer: Printer, stop: Arc<AtomicBool>) {
        let mut buf = vec![0u8; rosc::decoder::MTU];
        let mut report = Reporter {
            printer,
            limit: RateLimit::per_second(REPORTS_PER_SECOND),
            bad: 0,
            refused: 0,
        };
        let mut batch = Batch::default();
        let mut pacer = Pacer::new(config.interval);
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if batch.messages > 0 && pacer.take(now) {
                let b = std::mem::take(&mut batch);
                let from = b.senders[0];
                match holder.send(&b.update.to_json(), &b.origin()) {
                    // The holder logs the change with its origin.
                    Ok(answer) if answer.starts_with("ok") => {}
                    Ok(answer) => report.bad(&from, &answer),
                    Err(e) => report.bad(&from, &e),
                }
            }
            // Wake up when the batch may go, or now and then to see `stop`.
            let wait = if batch.messages > 0 {
                pacer.wait(Instant::now())
            } else {
                Duration::from_millis(200)
            };
            self.sock
                .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
                .ok();
            let (n, from) = match self.sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(_) => continue,
            };
            if !config.senders.allows(from.ip()) {
                report.refused(&from, &config.senders);
                continue;
            }
            let packet = match rosc::decoder::decode_udp(&buf[..n]) {
                Ok((_, p)) => p,
                Err(e) => {
                    report.bad(&from, &format!("not an OSC packet ({n} bytes): {e}"));
                    continue;
                }
            };
            let mut list = Vec::new();
            messages(packet, &mut list);
            for m in list {
                // Each message on its own, so that a bad one never takes the others with it.
                match message_to_update(&m).and_then(|u| {
                    u.validate_for_steps(config.steps)?;
                    Ok(u)
                }) {
                    Ok(u) => batch.add(u, from),
                    Err(e) => report.bad(&from, &e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(addr: &str, args: Vec<OscType>) -> OscMessage {
        OscMessage {
            addr: addr.to_string(),
            args,
        }
    }

    #[test]
    fn every_address() {
        let u = |addr: &str, args: Vec<OscType>| message_to_update(&msg(addr, args));
        assert_eq!(
            u("/prompt", vec![OscType::String("fox".into())])
                .unwrap()
                .prompt
                .as_deref(),
            Some("fox")
        );
        assert_eq!(u("/seed", vec![OscType::Int(5)]).unwrap().seed, Some(5));
        assert_eq!(u("/seed", vec![OscType::Float(7.0)]).unwrap().seed, Some(7));
        assert_eq!(
            u("/guidance", vec![OscType::Float(1.5)])
                .unwrap()
                .guidance_scale,
            Some(1.5)
        );
        assert_eq!(
            u("/t", vec![OscType::Int(20), OscType::Int(35)])
                .unwrap()
                .t_index_list
                .as_deref(),
            Some(&[20, 35][..])
        );
        let l = |args| u("/lora", args).unwrap().lora.unwrap();
        assert_eq!(
            l(vec![
                OscType::String("a.onnx_adapter".into()),
                OscType::Float(0.5),
                OscType::String("b.onnx_adapter".into()),
                OscType::Float(0.7),
            ]),
            "a.onnx_adapter:0.5,b.onnx_adapter:0.7"
        );
        assert_eq!(l(vec![OscType::String("a:0.5".into())]), "a:0.5");
        assert_eq!(l(vec![OscType::String("off".into())]), "");
        assert_eq!(l(vec![]), "");
        assert!(
            u(
                "/lora",
                vec![OscType::String("a".into()), OscType::Float(99.0)]
            )
            .is_err()
        );
        assert_eq!(
            u("/transition", vec![OscType::Int(30)])
                .unwrap()
                .transition_frames,
            Some(30)
        );
        let b = u(
            "/blend",
            vec![
                OscType::String("a".into()),
                OscType::Float(0.5),
                OscType::String("b".into()),
                OscType::Float(0.5),
            ],
        )
        .unwrap();
        assert_eq!(
            b.prompt_blend,
            Some(vec![("a".into(), 0.5), ("b".into(), 0.5)])
        );
        let s = u(
            "/seedblend",
            vec![
                OscType::Int(1),
                OscType::Float(1.0),
                OscType::Int(2),
                OscType::Float(1.0),
            ],
        )
        .unwrap();
        assert_eq!(s.seed_blend, Some(vec![(1, 1.0), (2, 1.0)]));
        // Strength is resolved by the holder, against the list it holds.
        assert_eq!(
            u("/strength", vec![OscType::Float(0.5)]).unwrap().strength,
            Some(0.5)
        );
        assert!(
            u("/strength", vec![OscType::Float(1.5)])
                .unwrap_err()
                .contains("strength: 1.5 is out of range")
        );
        assert_eq!(
            u("/style", vec![OscType::String("a.png".into())])
                .unwrap()
                .ip_adapter_image
                .as_deref(),
            Some("a.png")
        );
        assert_eq!(
            u("/ipscale", vec![OscType::Float(0.5), OscType::Int(1)])
                .unwrap()
                .ip_adapter_scale,
            Some(vec![0.5, 1.0])
        );
        assert!(
            u("/ipscale", vec![OscType::Float(3.0)])
                .unwrap_err()
                .contains("ip-adapter-scale")
        );
    }

    #[test]
    fn senders_allow_list() {
        let s = Senders::parse("127.0.0.2, 10.1.0.0/16,::1").unwrap();
        assert!(s.allows("127.0.0.2".parse().unwrap()));
        assert!(!s.allows("127.0.0.1".parse().unwrap()));
        assert!(s.allows("10.1.200.3".parse().unwrap()));
        assert!(!s.allows("10.2.0.1".parse().unwrap()));
        assert!(s.allows("::1".parse().unwrap()));
        // An IPv4 sender on an IPv6 socket.
        assert!(s.allows("::ffff:127.0.0.2".parse().unwrap()));
        assert_eq!(s.describe(), "from 127.0.0.2, 10.1.0.0/16, ::1");
        assert!(Senders::loopback().allows("127.9.9.9".parse().unwrap()));
        assert!(!Senders::loopback().allows("192.168.1.2".parse().unwrap()));
        assert!(Senders::Anyone.allows("192.168.1.2".parse().unwrap()));
        assert!(
            Senders::parse("10.0.0.300")
                .unwrap_err()
                .contains("\"10.0.0.300\" is not an address")
        );
        assert!(Senders::parse(" , ").is_err());
    }

    #[test]
    fn a_batch_keeps_the_latest_values_and_names_its_senders() {
        let mut b = Batch::default();
        let a: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let c: SocketAddr = "127.0.0.2:9001".parse().unwrap();
        for seed in 0..100 {
            b.add(
                SettingsUpdate {
                    seed: Some(seed),
                    ..Default::default()
                },
                if seed == 50 { c } else { a },
            );
        }
        assert_eq!(b.update.seed, Some(99));
        assert_eq!(
            b.origin(),
            "osc 127.0.0.1:9000 and 1 other senders, 100 messages merged"
        );
    }

    #[test]
    fn bad_messages_name_what_was_wrong() {
        let e = |addr: &str, args: Vec<OscType>| message_to_update(&msg(addr, args)).unwrap_err();
        assert!(e("/sed", vec![]).contains("unknown OSC address /sed (did you mean /seed?"));
        assert!(e("/strenght", vec![]).contains("did you mean /strength?"));
        assert!(e("/seed", vec![OscType::String("x".into())]).contains("expected a whole number"));
        assert!(e("/seed", vec![OscType::Float(1.5)]).contains("not a whole number"));
        assert!(e("/seed", vec![]).contains("expected 1 argument, found 0"));
        assert!(e("/prompt", vec![OscType::Int(3)]).contains("expected a string, found int 3"));
        assert!(e("/blend", vec![OscType::String("a".into())]).contains("pairs"));
        assert!(e("/t", vec![]).contains("/t: expected"));
    }
}
