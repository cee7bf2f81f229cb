// SPDX-License-Identifier: MPL-2.0
//! Chat-style commands, as operators type them: plain text sets the prompt, `/seed 5`
//! sets the seed, and so on (see [`HELP`]).

use super::blend::BlendMode;
use super::{CfgType, MAX_BLEND_ENTRIES, SettingsUpdate, parse_t_index_list};

/// What one chat line asks for.
// One command is parsed at a time and moved once: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Change these settings.
    Update(SettingsUpdate),
    /// Show the command table (answered locally, never sent to a transform).
    Help,
    /// Ask the state holder for the full current state.
    Status,
}

/// The command table, as `/help` prints it.
pub const HELP: &str = "\
Commands (plain text without a leading / sets the prompt):
  TEXT                          set the prompt
  /prompt TEXT                  set the prompt (also for a prompt starting with / or {)
  /negative TEXT                set the negative prompt
  /seed N                       set the seed (whole number)
  /t 22,32,45                   set the t-index list (denoising strength; 0..999)
  /strength S                   move the t-index list, spacing kept (0..1, 1 = strongest change)
  /guidance X                   set the guidance scale (0..50)
  /delta X                      set the residual-CFG delta (0..10)
  /cfg none|full|self|initialize   set the guidance mode
  /similarity X                 similarity filter threshold (0 = off .. 0.999)
  /blend \"a red fox\":0.7 \"oil painting\":0.3   weighted prompt blend (/blend off ends it)
  /seedblend 1:0.5 2:0.5        weighted seed (noise) blend (/seedblend off ends it)
  /blendmode linear|slerp       how blends and transitions combine
  /transition N                 fade later prompt and seed changes over N frames (0 = jump)
  /lora FILE [SCALE]            LoRA style (FILE:0.5,FILE2:0.7 for several; /lora off ends it)
  /style PATH                   IP-Adapter picture, a JPEG or PNG file (/style off: none)
  /ipscale S                    IP-Adapter scale 0..2 (one value, or one per layer: 0.5,1)
  /status                       show the current state
  /help                         this table";

/// Command names, as `/help` lists them (aliases are accepted but not offered): what Tab
/// completes and "did you mean" suggests.
pub const COMMAND_NAMES: [&str; 18] = [
    "/prompt",
    "/negative",
    "/seed",
    "/t",
    "/strength",
    "/guidance",
    "/delta",
    "/cfg",
    "/similarity",
    "/blend",
    "/seedblend",
    "/blendmode",
    "/transition",
    "/lora",
    "/style",
    "/ipscale",
    "/status",
    "/help",
];

/// The candidate closest to a misspelt `word` (case ignored), if it is close enough to be
/// what was meant: one edit (a letter missing, extra, wrong or swapped) for words of 3 or 4
/// characters, two for longer ones; none for shorter ones (anything is near `/t`).
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let allowed = match word.chars().count() {
        0..=2 => return None,
        3..=4 => 1,
        _ => 2,
    };
    candidates
        .iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&word, &c.to_ascii_lowercase()),
                *c,
            )
        })
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Parses one line of chat input. The error says what was wrong and what is accepted.
pub fn parse_line(line: &str) -> Result<Command, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Err("empty message: type a prompt or a /command (/help lists them)".to_string());
    }
    let Some(rest) = line.trim_start().strip_prefix('/') else {
        let u = SettingsUpdate {
            prompt: Some(line.trim().to_string()),
            ..Default::default()
        }
        .with_explicit_blend_clears();
        u.validate()?;
        return Ok(Command::Update(u));
    };
    let (name, arg) = match rest.find(char::is_whitespace) {
        Some(i) => (&rest[..i], rest[i..].trim()),
        None => (rest, ""),
    };
    let name = name.to_ascii_lowercase();
    let mut u = SettingsUpdate::default();
    match name.as_str() {
        "help" | "h" | "?" => return Ok(Command::Help),
        "status" | "state" => return Ok(Command::Status),
        "prompt" | "p" => u.prompt = Some(arg.to_string()),
        "negative" | "neg" | "negative-prompt" => u.negative_prompt = Some(arg.to_string()),
        "seed" => u.seed = Some(parse_seed("/seed", arg)?),
        "t" | "t-index-list" | "tindex" => {
            u.t_index_list = Some(parse_t_index_list(arg).map_err(|e| format!("/t: {e}"))?);
        }
        "strength" => u.strength = Some(parse_number("/strength", arg)?),
        "guidance" | "guidance-scale" => u.guidance_scale = Some(parse_number("/guidance", arg)?),
        "delta" => u.delta = Some(parse_number("/delta", arg)?),
        "cfg" | "cfg-type" => {
            let cfg = CfgType::parse(&arg.to_ascii_lowercase()).map_err(|_| {
                format!(
                    "/cfg: \"{arg}\" is not a guidance mode (accepted: {})",
                    CfgType::ALL.map(CfgType::nick).join(", ")
                )
            })?;
            u.cfg_type = Some(cfg);
        }
        "similarity" | "similarity-threshold" => {
            u.similarity_threshold = Some(parse_number("/similarity", arg)?)
        }
        "transition" | "transition-frames" => {
            u.transition_frames = Some(arg.parse().map_err(|_| {
                format!("/transition: \"{arg}\" is not a frame count (expected a whole number, 0 = jump)")
            })?)
        }
        "style" | "ip-adapter-image" => {
            let off = arg.is_empty() || arg.eq_ignore_ascii_case("off");
            u.ip_adapter_image = Some(if off { String::new() } else { arg.to_string() });
        }
        "ipscale" | "ip-adapter-scale" => {
            u.ip_adapter_scale =
                Some(super::parse_ip_adapter_scale(arg).map_err(|e| format!("/ipscale: {e}"))?)
        }
        "blendmode" | "blend-mode" => {
            let mode = BlendMode::parse(&arg.to_ascii_lowercase()).map_err(|_| {
                format!(
                    "/blendmode: \"{arg}\" is not a blend mode (accepted: {})",
                    BlendMode::ALL.map(BlendMode::nick).join(", ")
                )
            })?;
            u.blend_mode = Some(mode);
        }
        "blend" | "prompt-blend" => {
            let (mode, items) = split_mode(arg);
            u.blend_mode = mode;
            u.prompt_blend = Some(parse_prompt_blend(items)?);
        }
        "seedblend" | "seed-blend" | "seeds" => {
            let (mode, items) = split_mode(arg);
            u.blend_mode = mode;
            u.seed_blend = Some(parse_seed_blend(items)?);
        }
        "lora" => u.lora = Some(super::lora::lora_from_command(arg)?),
        "" => return Err("empty command name after / (/help lists the commands)".to_string()),
        other => {
            let hint = match did_you_mean(&format!("/{other}"), &COMMAND_NAMES) {
                Some(c) => format!("did you mean {c}? "),
                None => String::new(),
            };
            return Err(format!(
                "unknown command /{} ({hint}/help lists the commands)",
                truncate(other, 40)
            ));
        }
    }
    let u = u.with_explicit_blend_clears();
    u.validate()?;
    Ok(Command::Update(u))
}

/// An optional leading `linear` or `slerp` word of /blend and /seedblend.
fn split_mode(arg: &str) -> (Option<BlendMode>, &str) {
    for m in BlendMode::ALL {
        if let Some(rest) = arg.strip_prefix(m.nick())
            && (rest.is_empty() || rest.starts_with(char::is_whitespace))
        {
            return (Some(m), rest.trim_start());
        }
    }
    (None, arg)
}

fn parse_seed(cmd: &str, arg: &str) -> Result<u64, String> {
    arg.parse().map_err(|_| {
        format!(
            "{cmd}: \"{}\" is not a seed (expected a whole number 0 to {})",
            truncate(arg, 40),
            u64::MAX
        )
    })
}

fn parse_number(cmd: &str, arg: &str) -> Result<f64, String> {
    match arg.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!(
            "{cmd}: \"{}\" is not a number (expected e.g. 1.2)",
            truncate(arg, 40)
        )),
    }
}

fn is_off(items: &str) -> bool {
    items.is_empty() || items.eq_ignore_ascii_case("off") || items.eq_ignore_ascii_case("none")
}

/// `"a red fox":0.7 "oil painting":0.3` (unquoted single words also work: `fox:0.5`).
fn parse_prompt_blend(items: &str) -> Result<Vec<(String, f64)>, String> {
    if is_off(items) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut rest = items.trim_start();
    while !rest.is_empty() {
        let (text, after) = if let Some(quoted) = rest.strip_prefix('"') {
            read_quoted(quoted)?
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let word = &rest[..end];
            let colon = word.rfind(':').ok_or_else(|| {
                format!(
                    "/blend: \"{}\" has no weight (write \"text\":weight, e.g. \"a red fox\":0.7)",
                    truncate(word, 40)
                )
            })?;
            (word[..colon].to_string(), &rest[colon..])
        };
        let after = after.strip_prefix(':').ok_or_else(|| {
            format!(
                "/blend: \"{}\" has no weight (write \"text\":weight, e.g. \"a red fox\":0.7)",
                truncate(&text, 40)
            )
        })?;
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let w = parse_weight("/blend", &after[..end])?;
        out.push((text, w));
        if out.len() > MAX_BLEND_ENTRIES {
            return Err(format!(
                "/blend: more than {MAX_BLEND_ENTRIES} prompts (each costs a text-encoder run)"
            ));
        }
        rest = after[end..].trim_start();
    }
    Ok(out)
}

/// Reads a string after its opening quote up to the closing one; `\"` and `\\` escape.
fn read_quoted(s: &str) -> Result<(String, &str), String> {
    let mut text = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((text, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, e)) => text.push(e),
                None => break,
            },
            c => text.push(c),
        }
    }
    Err(format!(
        "/blend: a quoted prompt is not closed: \"{}",
        truncate(s, 40)
    ))
}

/// `1:0.5 2:0.5`.
fn parse_seed_blend(items: &str) -> Result<Vec<(u64, f64)>, String> {
    if is_off(items) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in items.split_whitespace() {
        let (s, w) = item.split_once(':').ok_or_else(|| {
            format!(
                "/seedblend: \"{}\" is not seed:weight (e.g. 1:0.5 2:0.5)",
                truncate(item, 40)
            )
        })?;
        out.push((parse_seed("/seedblend", s)?, parse_weight("/seedblend", w)?));
        if out.len() > MAX_BLEND_ENTRIES {
            return Err(format!("/seedblend: more than {MAX_BLEND_ENTRIES} seeds"));
        }
    }
    Ok(out)
}

fn parse_weight(cmd: &str, w: &str) -> Result<f64, String> {
    match w.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "{cmd}: weight \"{}\" is not a number >= 0",
            truncate(w, 40)
        )),
    }
}

/// Cuts text for error messages at a character boundary.
pub(crate) fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max_chars).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(line: &str) -> SettingsUpdate {
        match parse_line(line) {
            Ok(Command::Update(u)) => u,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    fn error(line: &str) -> String {
        match parse_line(line) {
            Err(e) => e,
            Ok(c) => panic!("{line:?} should fail, gave {c:?}"),
        }
    }

    #[test]
    fn plain_text_sets_the_prompt_and_ends_a_blend() {
        let u = update("a red fox in the snow\n");
        assert_eq!(u.prompt.as_deref(), Some("a red fox in the snow"));
        assert_eq!(u.prompt_blend, Some(vec![]));
        assert_eq!(u.seed, None);
        // Unicode passes through unchanged.
        assert_eq!(update("狐 🦊 café").prompt.as_deref(), Some("狐 🦊 café"));
    }

    #[test]
    fn every_command() {
        assert_eq!(
            update("/prompt /not a command").prompt.as_deref(),
            Some("/not a command")
        );
        assert_eq!(update("/prompt").prompt.as_deref(), Some(""));
        assert_eq!(
            update("/negative blurry, dark").negative_prompt.as_deref(),
            Some("blurry, dark")
        );
        let s = update("/seed 123");
        assert_eq!((s.seed, s.seed_blend), (Some(123), Some(vec![])));
        assert_eq!(update("/seed 18446744073709551615").seed, Some(u64::MAX));
        assert_eq!(
            update("/t 22,32,45").t_index_list.as_deref(),
            Some(&[22, 32, 45][..])
        );
        assert_eq!(
            update("/t 22, 32 45").t_index_list.as_deref(),
            Some(&[22, 32, 45][..])
        );
        assert_eq!(update("/guidance 1.5").guidance_scale, Some(1.5));
        assert_eq!(update("/guidance-scale 2").guidance_scale, Some(2.0));
        assert_eq!(update("/delta 0.8").delta, Some(0.8));
        for c in CfgType::ALL {
            assert_eq!(update(&format!("/cfg {c}")).cfg_type, Some(c));
        }
        assert_eq!(update("/cfg FULL").cfg_type, Some(CfgType::Full));
        assert_eq!(update("/similarity 0.98").similarity_threshold, Some(0.98));
        assert_eq!(update("/strength 0.75").strength, Some(0.75));
        assert_eq!(update("/STRENGTH 1").strength, Some(1.0));
        assert_eq!(update("/transition 30").transition_frames, Some(30));
        assert_eq!(update("/transition 0").transition_frames, Some(0));
        assert_eq!(
            update("/style pics/van gogh.png").ip_adapter_image,
            Some("pics/van gogh.png".into())
        );
        assert_eq!(update("/style off").ip_adapter_image, Some(String::new()));
        assert_eq!(update("/ipscale 0.7").ip_adapter_scale, Some(vec![0.7]));
        assert_eq!(
            update("/ipscale 0.5,1.5").ip_adapter_scale,
            Some(vec![0.5, 1.5])
        );
        assert_eq!(
            update("/blendmode slerp").blend_mode,
            Some(BlendMode::Slerp)
        );
        assert_eq!(parse_line("/help"), Ok(Command::Help));
        assert_eq!(parse_line("/HELP"), Ok(Command::Help));
        assert_eq!(parse_line("/status"), Ok(Command::Status));
    }

    #[test]
    fn blends() {
        let u = update(r#"/blend "a red fox":0.7 "oil painting":0.3"#);
        assert_eq!(
            u.prompt_blend,
            Some(vec![
                ("a red fox".into(), 0.7),
                ("oil painting".into(), 0.3)
            ])
        );
        assert_eq!(u.prompt, None);
        let u = update(r#"/blend slerp fox:1 "say \"hi\"":2"#);
        assert_eq!(u.blend_mode, Some(BlendMode::Slerp));
        assert_eq!(
            u.prompt_blend,
            Some(vec![("fox".into(), 1.0), ("say \"hi\"".into(), 2.0)])
        );
        assert_eq!(update("/blend off").prompt_blend, Some(vec![]));
        assert_eq!(update("/blend").prompt_blend, Some(vec![]));
        let u = update("/seedblend 1:0.5 2:0.5");
        assert_eq!(u.seed_blend, Some(vec![(1, 0.5), (2, 0.5)]));
        assert_eq!(u.seed, None);
        assert_eq!(
            update("/seedblend linear 7:1").blend_mode,
            Some(BlendMode::Linear)
        );
        assert_eq!(update("/seedblend off").seed_blend, Some(vec![]));
    }

    #[test]
    fn bad_input_names_what_was_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "empty message"),
            ("   \n", "empty message"),
            ("/", "empty command name"),
            ("/sed 5", "unknown command /sed (did you mean /seed? /help"),
            ("/guidence 1", "did you mean /guidance?"),
            ("/promt fox", "did you mean /prompt?"),
            (
                "/warp 9",
                "unknown command /warp (/help lists the commands)",
            ),
            (
                "/strength 2",
                "strength: 2 is out of range (accepted: 0 to 1)",
            ),
            ("/strength lots", "/strength: \"lots\" is not a number"),
            ("/seed abc", "\"abc\" is not a seed"),
            ("/seed -1", "\"-1\" is not a seed"),
            ("/seed 1.5", "\"1.5\" is not a seed"),
            ("/seed 18446744073709551616", "is not a seed"),
            ("/seed", "\"\" is not a seed"),
            ("/t", "empty t-index list"),
            ("/t 22,x", "\"x\" is not a t-index"),
            ("/t 1000", "t-index 1000 is out of range"),
            ("/t -3", "\"-3\" is not a t-index"),
            ("/guidance lots", "\"lots\" is not a number"),
            ("/guidance NaN", "\"NaN\" is not a number"),
            ("/guidance inf", "\"inf\" is not a number"),
            ("/guidance 51", "guidance-scale: 51 is out of range"),
            ("/guidance -1", "guidance-scale: -1 is out of range"),
            ("/delta 11", "delta: 11 is out of range"),
            (
                "/similarity 1.5",
                "similarity-threshold: 1.5 is out of range",
            ),
            ("/similarity 1", "similarity-threshold: 1 is out of range"),
            ("/t 32,22", "increase strictly"),
            ("/cfg half", "\"half\" is not a guidance mode"),
            ("/cfg", "\"\" is not a guidance mode"),
            ("/transition -2", "\"-2\" is not a frame count"),
            ("/transition 99999", "transition-frames: 99999 is too long"),
            ("/ipscale 3", "ip-adapter-scale"),
            ("/ipscale x", "\"x\" is not a number"),
            ("/blendmode cubic", "\"cubic\" is not a blend mode"),
            ("/blend fox", "\"fox\" has no weight"),
            ("/blend \"a fox\"", "\"a fox\" has no weight"),
            ("/blend \"a fox:0.5", "not closed"),
            ("/blend fox:heavy", "weight \"heavy\" is not a number"),
            ("/blend fox:-1", "weight \"-1\" is not a number >= 0"),
            ("/blend fox:0 cat:0", "add up to 0"),
            ("/seedblend 1", "\"1\" is not seed:weight"),
            ("/seedblend x:1", "\"x\" is not a seed"),
            ("/seedblend 1:y", "weight \"y\""),
            (
                "/seedblend 1:1 2:1 3:1 4:1 5:1 6:1 7:1 8:1 9:1",
                "more than 8 seeds",
            ),
        ];
        for (line, want) in cases {
            let e = error(line);
            assert!(
                e.contains(want),
                "{line:?}: error {e:?} should contain {want:?}"
            );
        }
        // Long values are shortened in messages.
        let e = error(&format!("/seed {}", "9".repeat(500)));
        assert!(e.len() < 200, "{e}");
    }
}
