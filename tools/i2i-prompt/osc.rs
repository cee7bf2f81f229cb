// SPDX-License-Identifier: MPL-2.0
//! OSC input of the settings holder: TouchDesigner, Resolume, Max/MSP and TouchOSC speak
//! OSC over UDP, so `i2i-prompt` listens on UDP port 8000 (as the system it replaces did).
//! One address per setting (see [`ADDRESSES`]); packets are decoded by the rosc crate,
//! turned into a [`SettingsUpdate`] and sent to the holder like any other command, so the
//! same validation applies. Bad packets are counted and reported on stderr, a few per
//! second; the rest are summed up in the next report.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gsti2i::settings::SettingsUpdate;
use rosc::{OscMessage, OscPacket, OscType};

/// Default OSC address to listen on.
pub const DEFAULT_OSC: &str = "0.0.0.0:8000";

/// The address table, as docs/settings.md and `--help` show it.
pub const ADDRESSES: &str = "\
OSC addresses (UDP, default port 8000; i = int, f = float, s = string):
  /prompt s                 prompt
  /negative s               negative prompt
  /seed i                   seed (a whole float is accepted too)
  /strength f               0..1, mapped onto the t-index list (1 = strongest change)
  /guidance f               guidance scale
  /delta f                  residual-CFG delta
  /t i i ...                t-index list
  /transition i             transition frames
  /blend s f s f ...        prompt blend (no arguments ends it)
  /seedblend i f i f ...    seed blend (no arguments ends it)
  /cfg s, /similarity f, /blendmode s";

/// Reports of bad packets per second before the rest are only counted.
const REPORTS_PER_SECOND: u32 = 5;

/// What the OSC listener needs from the holder.
pub trait Holder: Send + 'static {
    /// Sends one settings message; the holder's answer (`ok ...` or `error: ...`).
    fn send(&self, payload: &[u8]) -> Result<String, String>;
}

/// The t-index list for a strength `s` (0..1) with `entries` steps of
/// `num_inference_steps`: the first index is `(1 - s) * (steps - 1)` (a lower first index
/// is a stronger change, as in img2img), the others spread evenly up to the last step.
pub fn strength_to_t_index_list(
    s: f64,
    entries: usize,
    num_inference_steps: u32,
) -> Result<String, String> {
    if !(0.0..=1.0).contains(&s) {
        return Err(format!("/strength: {s} is out of range (accepted: 0 to 1)"));
    }
    let last = f64::from(num_inference_steps.saturating_sub(1));
    let first = ((1.0 - s) * last).round();
    let n = entries.max(1);
    let mut list: Vec<u32> = Vec::new();
    for k in 0..n {
        let v = if n == 1 {
            first
        } else {
            (first + (last - first) * k as f64 / (n - 1) as f64).round()
        } as u32;
        if list.last().is_none_or(|&l| v > l) {
            list.push(v);
        }
    }
    Ok(list
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(","))
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

/// The update one OSC message asks for. `t_entries` and `steps` are the current t-index
/// list length and the transforms' num-inference-steps (for /strength).
pub fn message_to_update(
    m: &OscMessage,
    t_entries: usize,
    steps: u32,
) -> Result<SettingsUpdate, String> {
    let addr = m.addr.as_str();
    let mut u = SettingsUpdate::default();
    match addr.to_ascii_lowercase().as_str() {
        "/prompt" => u.prompt = Some(arg_text(addr, one(m)?)?),
        "/negative" | "/negative-prompt" => u.negative_prompt = Some(arg_text(addr, one(m)?)?),
        "/seed" => u.seed = Some(arg_whole(addr, one(m)?)?),
        "/strength" => {
            u.t_index_list = Some(strength_to_t_index_list(
                arg_number(addr, one(m)?)?,
                t_entries,
                steps,
            )?)
        }
        "/guidance" | "/guidance-scale" => u.guidance_scale = Some(arg_number(addr, one(m)?)?),
        "/delta" => u.delta = Some(arg_number(addr, one(m)?)?),
        "/similarity" => u.similarity_threshold = Some(arg_number(addr, one(m)?)?),
        "/cfg" => u.cfg_type = Some(arg_text(addr, one(m)?)?.to_ascii_lowercase()),
        "/blendmode" => u.blend_mode = Some(arg_text(addr, one(m)?)?.to_ascii_lowercase()),
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
                .map(|a| arg_whole(addr, a).map(|v| v.to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            u.t_index_list = Some(list.join(","));
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
        _ => {
            return Err(format!(
                "unknown OSC address {} (accepted: /prompt /negative /seed /strength /guidance /delta /t /transition /blend /seedblend /cfg /similarity /blendmode)",
                addr.chars().take(60).collect::<String>()
            ));
        }
    }
    Ok(u.with_explicit_blend_clears())
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
    window: Instant,
    in_window: u32,
    suppressed: u64,
    bad: u64,
}

impl Reporter {
    fn bad(&mut self, from: &str, what: &str) {
        self.bad += 1;
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.in_window = 0;
        }
        if self.in_window >= REPORTS_PER_SECOND {
            self.suppressed += 1;
            return;
        }
        self.in_window += 1;
        let more = std::mem::take(&mut self.suppressed);
        let more = if more > 0 {
            format!(" ({more} more since the last report)")
        } else {
            String::new()
        };
        eprintln!(
            "osc: refused a packet from {from}: {what} [{} bad so far]{more}",
            self.bad
        );
    }
}

/// A bound OSC socket, ready to run.
pub struct Listener {
    sock: UdpSocket,
    local: String,
}

impl Listener {
    /// Binds `addr` (`HOST:PORT`, or a bare port for every interface).
    pub fn bind(addr: &str) -> Result<Listener, String> {
        let addr = if addr.contains(':') {
            addr.to_string()
        } else {
            format!("0.0.0.0:{addr}")
        };
        let sock = UdpSocket::bind(&addr).map_err(|e| {
            format!("cannot listen for OSC on udp://{addr}: {e} (--osc PORT picks another port, --osc off turns OSC off)")
        })?;
        sock.set_read_timeout(Some(Duration::from_millis(200))).ok();
        let local = sock
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or(addr.clone());
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
        steps: u32,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || self.run(holder, steps, stop))
    }

    fn run(self, holder: impl Holder, steps: u32, stop: Arc<AtomicBool>) {
        let mut buf = vec![0u8; rosc::decoder::MTU];
        let mut report = Reporter {
            window: Instant::now(),
            in_window: 0,
            suppressed: 0,
            bad: 0,
        };
        while !stop.load(Ordering::Relaxed) {
            let (n, from) = match self.sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(_) => continue,
            };
            let from = from.to_string();
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
                let entries = if m.addr.eq_ignore_ascii_case("/strength") {
                    current_t_entries(&holder)
                } else {
                    2
                };
                let update = match message_to_update(&m, entries, steps) {
                    Ok(u) => u,
                    Err(e) => {
                        report.bad(&from, &e);
                        continue;
                    }
                };
                match holder.send(&update.to_json()) {
                    Ok(answer) if answer.starts_with("ok") => {
                        eprintln!("osc {} from {from}: {answer}", m.addr)
                    }
                    Ok(answer) => report.bad(&from, &format!("{}: {answer}", m.addr)),
                    Err(e) => report.bad(&from, &format!("{}: {e}", m.addr)),
                }
            }
        }
    }
}

/// The length of the holder's current t-index list (for /strength), 2 when it has none.
fn current_t_entries(holder: &impl Holder) -> usize {
    holder
        .send(b"/status")
        .ok()
        .and_then(|a| {
            let json = &a[a.find('{')?..];
            let state = SettingsUpdate::from_json(json.as_bytes()).ok()?;
            Some(state.t_index_list?.split(',').count())
        })
        .unwrap_or(2)
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
        let u = |addr: &str, args: Vec<OscType>| message_to_update(&msg(addr, args), 2, 50);
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
            Some("20,35")
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
        assert_eq!(
            u("/strength", vec![OscType::Float(0.5)])
                .unwrap()
                .t_index_list
                .as_deref(),
            Some("25,49")
        );
    }

    #[test]
    fn strength_maps_onto_the_t_index_list() {
        assert_eq!(strength_to_t_index_list(1.0, 2, 50).unwrap(), "0,49");
        assert_eq!(strength_to_t_index_list(0.0, 2, 50).unwrap(), "49");
        assert_eq!(strength_to_t_index_list(0.36, 1, 50).unwrap(), "31");
        assert_eq!(strength_to_t_index_list(0.8, 3, 50).unwrap(), "10,30,49");
        assert!(
            strength_to_t_index_list(1.5, 2, 50)
                .unwrap_err()
                .contains("out of range")
        );
    }

    #[test]
    fn bad_messages_name_what_was_wrong() {
        let e = |addr: &str, args: Vec<OscType>| {
            message_to_update(&msg(addr, args), 2, 50).unwrap_err()
        };
        assert!(e("/sed", vec![]).contains("unknown OSC address /sed"));
        assert!(e("/seed", vec![OscType::String("x".into())]).contains("expected a whole number"));
        assert!(e("/seed", vec![OscType::Float(1.5)]).contains("not a whole number"));
        assert!(e("/seed", vec![]).contains("expected 1 argument, found 0"));
        assert!(e("/prompt", vec![OscType::Int(3)]).contains("expected a string, found int 3"));
        assert!(e("/blend", vec![OscType::String("a".into())]).contains("pairs"));
        assert!(e("/t", vec![]).contains("/t: expected"));
    }
}
