// SPDX-License-Identifier: MPL-2.0
//! One settings message as it arrives on a socket: chat text (UTF-8), a msgpack map or a
//! JSON object with the same keys as the i2itransform properties.
//!
//! Keys are matched without regard to case, `_` and `-` (`guidance_scale`,
//! `guidance-scale`), and short aliases are accepted (`guidance`, `negative`, `t`, `cfg`,
//! `similarity`, `transition`, `blend`, `seedblend`). Values: text for prompts,
//! whole numbers for seeds, numbers for scales, `"22,32"` or `[22, 32]` for the t-index
//! list, `[["a fox", 0.7], ...]` or `{"a fox": 0.7, ...}` for blends.

use rmpv::Value;

use super::blend::BlendMode;
use super::command::{Command, did_you_mean, parse_line, truncate};
use super::{CfgType, SettingsUpdate, check_t_index_list, parse_t_index_list};

/// Largest message accepted; larger ones are refused with a warning.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Decodes one message. The error names what was wrong (size, encoding, key, type, value).
pub fn decode_message(bytes: &[u8]) -> Result<Command, String> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(format!(
            "message of {} bytes is larger than the {MAX_MESSAGE_BYTES}-byte limit",
            bytes.len()
        ));
    }
    if bytes.is_empty() {
        return Err("empty message".to_string());
    }
    let first = bytes[0];
    // Map and string markers of msgpack are never the first byte of UTF-8 text
    // (0x80..=0xbf are continuation bytes; 0xde/0xdf/0xd9..=0xdb are followed by a length,
    // not a continuation byte, in any message this short).
    let msgpack_map = matches!(first, 0x80..=0x8f | 0xde | 0xdf);
    let msgpack_str = matches!(first, 0xa0..=0xbf | 0xd9..=0xdb);
    if msgpack_map || msgpack_str || std::str::from_utf8(bytes).is_err() {
        let value = match read_whole_msgpack(bytes) {
            Ok(v) => v,
            Err(e) if msgpack_map => return Err(format!("malformed msgpack map: {e}")),
            Err(_) => {
                let at = std::str::from_utf8(bytes)
                    .err()
                    .map(|e| e.valid_up_to())
                    .unwrap_or(0);
                return Err(format!(
                    "message is neither UTF-8 text (invalid byte 0x{:02x} at offset {at}) nor a msgpack map",
                    bytes[at]
                ));
            }
        };
        return match value {
            Value::Map(_) => update_from_value(&value).map(Command::Update),
            Value::String(s) => match s.into_str() {
                Some(text) => parse_line(&text),
                None => Err("msgpack string is not valid UTF-8".to_string()),
            },
            other => Err(format!(
                "a msgpack {} is not a settings message (send a map such as {{\"seed\": 5}} or chat text)",
                kind(&other)
            )),
        };
    }
    // Valid UTF-8 from here on.
    let text = std::str::from_utf8(bytes).unwrap_or_default();
    // Small msgpack values (a fixint such as 0x05, nil, booleans) are valid UTF-8 too:
    // name them as what they are rather than as a control character.
    if text
        .chars()
        .next()
        .is_some_and(|c| c.is_control() && !c.is_whitespace())
        && let Ok(value) = read_whole_msgpack(bytes)
    {
        return Err(format!(
            "a msgpack {} is not a settings message (send a map such as {{\"seed\": 5}} or chat text)",
            kind(&value)
        ));
    }
    if let Some((at, c)) = text
        .char_indices()
        .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(format!(
            "text contains the control character U+{:04X} at offset {at} (is it binary data?)",
            c as u32
        ));
    }
    if text.trim_start().starts_with('{') {
        let json: JsonValue = serde_json::from_str(text).map_err(|e| {
            format!("message starts with {{ but is not a valid JSON object: {e} (to send a prompt starting with {{ use /prompt)")
        })?;
        return update_from_value(&json.0).map(Command::Update);
    }
    parse_line(text)
}

fn read_whole_msgpack(bytes: &[u8]) -> Result<Value, String> {
    let mut cursor = bytes;
    let v = rmpv::decode::read_value_with_max_depth(&mut cursor, 16).map_err(|e| e.to_string())?;
    if !cursor.is_empty() {
        return Err(format!(
            "{} bytes left over after the first msgpack value",
            cursor.len()
        ));
    }
    Ok(v)
}

/// A JSON document read straight into a msgpack value, keeping every map entry in order,
/// duplicates included: a key given twice is then refused by the same check as in a
/// msgpack map (serde_json's own `Value` would silently keep the last one).
struct JsonValue(Value);

impl<'de> serde::Deserialize<'de> for JsonValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor).map(JsonValue)
    }
}

struct JsonVisitor;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Boolean(b))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::F64(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(JsonValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some((k, JsonValue(v))) = map.next_entry::<String, JsonValue>()? {
            out.push((Value::from(k), v));
        }
        Ok(Value::Map(out))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Boolean(_) => "boolean",
        Value::Integer(_) => "integer",
        Value::F32(_) | Value::F64(_) => "float",
        Value::String(_) => "string",
        Value::Binary(_) => "binary",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        Value::Ext(..) => "extension",
    }
}

/// The canonical key (the property name) for a key as written by a program.
fn canonical_key(key: &str) -> Option<&'static str> {
    let k = key.trim().to_ascii_lowercase().replace('_', "-");
    Some(match k.as_str() {
        "prompt" => "prompt",
        "negative-prompt" | "negative" | "neg" => "negative-prompt",
        "seed" => "seed",
        "t-index-list" | "t" | "t-index" => "t-index-list",
        "guidance-scale" | "guidance" => "guidance-scale",
        "delta" => "delta",
        "cfg-type" | "cfg" => "cfg-type",
        "similarity-threshold" | "similarity" => "similarity-threshold",
        "transition-frames" | "transition" => "transition-frames",
        "prompt-blend" | "blend" => "prompt-blend",
        "seed-blend" | "seedblend" | "seeds" => "seed-blend",
        "blend-mode" | "blendmode" => "blend-mode",
        "strength" => "strength",
        "lora" => "lora",
        "ip-adapter-image" | "style" => "ip-adapter-image",
        "ip-adapter-scale" | "ipscale" => "ip-adapter-scale",
        _ => return None,
    })
}

/// The keys of a settings map (the property names; aliases are accepted too).
pub const KEYS: [&str; 16] = [
    "prompt",
    "negative-prompt",
    "seed",
    "t-index-list",
    "strength",
    "guidance-scale",
    "delta",
    "cfg-type",
    "similarity-threshold",
    "transition-frames",
    "prompt-blend",
    "seed-blend",
    "blend-mode",
    "lora",
    "ip-adapter-image",
    "ip-adapter-scale",
];

/// Converts a msgpack (or JSON) map into an update, checking every key, type and value.
pub fn update_from_value(value: &Value) -> Result<SettingsUpdate, String> {
    let Value::Map(entries) = value else {
        return Err(format!("expected a map, found a {}", kind(value)));
    };
    if entries.is_empty() {
        return Err("settings map has no keys (e.g. {\"seed\": 5})".to_string());
    }
    let mut u = SettingsUpdate::default();
    let mut seen: Vec<&'static str> = Vec::new();
    for (k, v) in entries {
        let Some(key_text) = k.as_str() else {
            return Err(format!(
                "map key {} is a {}, keys must be text such as \"seed\"",
                truncate(&k.to_string(), 40),
                kind(k)
            ));
        };
        let key = canonical_key(key_text).ok_or_else(|| {
            let hint = did_you_mean(&key_text.replace('_', "-"), &KEYS)
                .map(|k| format!("did you mean {k}? "))
                .unwrap_or_default();
            format!(
                "unknown key \"{}\" ({hint}accepted: {})",
                truncate(key_text, 40),
                KEYS.join(", ")
            )
        })?;
        if seen.contains(&key) {
            return Err(format!("key {key} is given twice (\"{key_text}\")"));
        }
        seen.push(key);
        match key {
            "prompt" => u.prompt = Some(text(key, v)?),
            "negative-prompt" => u.negative_prompt = Some(text(key, v)?),
            "seed" => u.seed = Some(whole(key, v)?),
            "t-index-list" => {
                let list = match v {
                    Value::String(_) => {
                        parse_t_index_list(&text(key, v)?).map_err(|e| format!("{key}: {e}"))?
                    }
                    Value::Array(items) => {
                        let mut l = Vec::new();
                        for i in items {
                            let n = whole(key, i)?;
                            l.push(u32::try_from(n).unwrap_or(u32::MAX));
                        }
                        check_t_index_list(&l).map_err(|e| format!("{key}: {e}"))?;
                        l
                    }
                    other => {
                        return Err(format!(
                            "{key}: expected \"22,32,45\" or [22, 32, 45], found a {}",
                            kind(other)
                        ));
                    }
                };
                u.t_index_list = Some(list);
            }
            "guidance-scale" => u.guidance_scale = Some(number(key, v)?),
            "delta" => u.delta = Some(number(key, v)?),
            "cfg-type" => u.cfg_type = Some(CfgType::parse(&text(key, v)?.to_ascii_lowercase())?),
            "similarity-threshold" => u.similarity_threshold = Some(number(key, v)?),
            "strength" => u.strength = Some(number(key, v)?),
            "lora" => u.lora = Some(text(key, v)?),
            "ip-adapter-image" => u.ip_adapter_image = Some(text(key, v)?),
            "ip-adapter-scale" => {
                u.ip_adapter_scale = Some(match v {
                    Value::String(_) => crate::settings::parse_ip_adapter_scale(&text(key, v)?)?,
                    Value::Array(items) => items
                        .iter()
                        .map(|i| number(key, i))
                        .collect::<Result<_, String>>()?,
                    other => vec![number(key, other)?],
                })
            }
            "transition-frames" => {
                let n = whole(key, v)?;
                u.transition_frames = Some(u32::try_from(n).unwrap_or(u32::MAX));
            }
            "blend-mode" => {
                u.blend_mode = Some(BlendMode::parse(&text(key, v)?.to_ascii_lowercase())?)
            }
            "prompt-blend" => {
                u.prompt_blend = Some(
                    pairs(key, v)?
                        .into_iter()
                        .map(|(t, w)| Ok((text(key, t)?, w)))
                        .collect::<Result<_, String>>()?,
                )
            }
            "seed-blend" => {
                u.seed_blend = Some(
                    pairs(key, v)?
                        .into_iter()
                        .map(|(s, w)| {
                            // Map keys are text in JSON: accept "7" as seed 7.
                            let seed = match s {
                                Value::String(t) => {
                                    let t = t.as_str().unwrap_or("");
                                    t.trim().parse().map_err(|_| {
                                        format!("{key}: \"{}\" is not a seed", truncate(t, 40))
                                    })?
                                }
                                _ => whole(key, s)?,
                            };
                            Ok((seed, w))
                        })
                        .collect::<Result<_, String>>()?,
                )
            }
            _ => unreachable!("canonical_key returned {key}"),
        }
    }
    let u = u.with_explicit_blend_clears();
    u.validate()?;
    Ok(u)
}

fn text(key: &str, v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => s
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{key}: text is not valid UTF-8")),
        other => Err(format!("{key}: expected text, found a {}", kind(other))),
    }
}

fn whole(key: &str, v: &Value) -> Result<u64, String> {
    match v {
        Value::Integer(i) => i
            .as_u64()
            .ok_or_else(|| format!("{key}: expected a whole number >= 0, found {i}")),
        other => Err(format!(
            "{key}: expected a whole number >= 0, found a {} ({})",
            kind(other),
            truncate(&other.to_string(), 40)
        )),
    }
}

fn number(key: &str, v: &Value) -> Result<f64, String> {
    let x = match v {
        Value::Integer(i) => i.as_f64().unwrap_or(f64::NAN),
        Value::F32(f) => f64::from(*f),
        Value::F64(f) => *f,
        other => {
            return Err(format!(
                "{key}: expected a number, found a {} ({})",
                kind(other),
                truncate(&other.to_string(), 40)
            ));
        }
    };
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("{key}: {x} is not a finite number"))
    }
}

/// `[[a, w], ...]` or `{a: w, ...}`.
fn pairs<'a>(key: &str, v: &'a Value) -> Result<Vec<(&'a Value, f64)>, String> {
    let mut out = Vec::new();
    match v {
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Array(pair) if pair.len() == 2 => {
                        out.push((&pair[0], number(key, &pair[1])?))
                    }
                    other => {
                        return Err(format!(
                            "{key}: each entry must be [value, weight], found {}",
                            truncate(&other.to_string(), 40)
                        ));
                    }
                }
            }
        }
        Value::Map(entries) => {
            for (k, w) in entries {
                out.push((k, number(key, w)?));
            }
        }
        other => {
            return Err(format!(
                "{key}: expected [[value, weight], ...] or {{value: weight}}, found a {}",
                kind(other)
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp(v: Value) -> Vec<u8> {
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &v).unwrap();
        b
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::from(k), v))
                .collect(),
        )
    }

    fn upd(bytes: &[u8]) -> SettingsUpdate {
        match decode_message(bytes) {
            Ok(Command::Update(u)) => u,
            other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    fn err(bytes: &[u8]) -> String {
        decode_message(bytes).expect_err("should be refused")
    }

    #[test]
    fn chat_text_msgpack_and_json_agree() {
        let chat = upd(b"/seed 5");
        let packed = upd(&mp(map(vec![("seed", Value::from(5))])));
        let json = upd(br#"{"seed": 5}"#);
        assert_eq!(chat, packed);
        assert_eq!(chat, json);
        assert_eq!(upd(b"a fox").prompt.as_deref(), Some("a fox"));
        // A msgpack string is chat text.
        assert_eq!(upd(&mp(Value::from("/seed 9"))).seed, Some(9));
    }

    #[test]
    fn all_keys_and_aliases() {
        let u = upd(&mp(map(vec![
            ("prompt", Value::from("a red fox")),
            ("negative_prompt", Value::from("blur")),
            ("seed", Value::from(123u64)),
            ("t", Value::Array(vec![Value::from(22), Value::from(32)])),
            ("guidance", Value::F64(1.5)),
            ("Delta", Value::from(1)),
            ("cfg", Value::from("Full")),
            ("similarity", Value::F32(0.5)),
            ("transition", Value::from(12)),
            ("blendmode", Value::from("slerp")),
            ("Strength", Value::F64(0.25)),
        ])));
        assert_eq!(u.prompt.as_deref(), Some("a red fox"));
        assert_eq!(u.negative_prompt.as_deref(), Some("blur"));
        assert_eq!(u.seed, Some(123));
        assert_eq!(u.t_index_list.as_deref(), Some(&[22, 32][..]));
        assert_eq!(u.guidance_scale, Some(1.5));
        assert_eq!(u.delta, Some(1.0));
        assert_eq!(u.cfg_type, Some(CfgType::Full));
        assert_eq!(u.similarity_threshold, Some(0.5));
        assert_eq!(u.transition_frames, Some(12));
        assert_eq!(u.blend_mode, Some(BlendMode::Slerp));
        assert_eq!(u.strength, Some(0.25));
        assert_eq!(upd(br#"{"strength": 1}"#).strength, Some(1.0));
        assert!(err(br#"{"strength": 1.2}"#).contains("strength: 1.2 is out of range"));
        assert!(err(br#"{"strenght": 1}"#).contains("did you mean strength?"));

        let j = upd(
            br#"{"guidance-scale": 2, "t-index-list": "10, 20", "prompt-blend": {"a": 0.25, "b": 0.75},
                 "seed-blend": [[1, 0.5], [2, 0.5]]}"#,
        );
        assert_eq!(j.guidance_scale, Some(2.0));
        assert_eq!(j.t_index_list.as_deref(), Some(&[10, 20][..]));
        assert_eq!(
            j.prompt_blend,
            Some(vec![("a".into(), 0.25), ("b".into(), 0.75)])
        );
        assert_eq!(j.seed_blend, Some(vec![(1, 0.5), (2, 0.5)]));
        let j = upd(br#"{"seedblend": {"7": 1.0}, "blend": [["x", 1]]}"#);
        assert_eq!(j.seed_blend, Some(vec![(7, 1.0)]));
        assert_eq!(j.prompt_blend, Some(vec![("x".into(), 1.0)]));
        // The same JSON the settings pad carries is accepted as is.
        let pad = SettingsUpdate {
            prompt: Some("p".into()),
            seed: Some(3),
            ..Default::default()
        };
        assert_eq!(upd(&pad.to_json()).seed, Some(3));
    }

    #[test]
    fn malformed_messages_are_named() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "empty message"),
            (
                vec![b'a'; MAX_MESSAGE_BYTES + 1],
                "larger than the 65536-byte limit",
            ),
            (
                vec![0xff, 0xfe, b'a'],
                "neither UTF-8 text (invalid byte 0xff at offset 0)",
            ),
            (b"caf\xc3".to_vec(), "invalid byte 0xc3 at offset 3"),
            (vec![0x82, 0xa4], "malformed msgpack map"),
            (
                mp(Value::Array(vec![Value::from(1)])),
                "a msgpack array is not a settings message",
            ),
            (
                mp(Value::from(5)),
                "a msgpack integer is not a settings message",
            ),
            (
                mp(Value::from(-5)),
                "a msgpack integer is not a settings message",
            ),
            (mp(map(vec![])), "has no keys"),
            (
                mp(map(vec![("sed", Value::from(1))])),
                "unknown key \"sed\"",
            ),
            (
                mp(map(vec![("seed", Value::from(-1))])),
                "seed: expected a whole number >= 0, found -1",
            ),
            (
                mp(map(vec![("seed", Value::from("five"))])),
                "seed: expected a whole number >= 0, found a string",
            ),
            (mp(map(vec![("seed", Value::F64(1.5))])), "found a float"),
            (
                mp(map(vec![("prompt", Value::from(3))])),
                "prompt: expected text, found a integer",
            ),
            (
                mp(map(vec![("prompt", Value::Nil)])),
                "prompt: expected text, found a nil",
            ),
            (
                mp(map(vec![("guidance", Value::from("high"))])),
                "guidance-scale: expected a number",
            ),
            (
                mp(map(vec![("guidance", Value::F64(f64::NAN))])),
                "not a finite number",
            ),
            (
                mp(map(vec![("guidance", Value::from(99))])),
                "guidance-scale: 99 is out of range",
            ),
            (
                mp(map(vec![("cfg", Value::from("most"))])),
                "\"most\" is not a guidance mode",
            ),
            (
                mp(map(vec![("t", Value::from("1,x"))])),
                "t-index-list: \"x\" is not a t-index",
            ),
            (
                mp(map(vec![("t", Value::Array(vec![Value::from(5000)]))])),
                "t-index 5000 is out of range",
            ),
            (
                mp(map(vec![("t", Value::Boolean(true))])),
                "t-index-list: expected",
            ),
            (
                mp(map(vec![
                    ("seed", Value::from(1)),
                    ("SEED", Value::from(2)),
                ])),
                "given twice",
            ),
            (
                mp(Value::Map(vec![(Value::from(1), Value::from(1))])),
                "keys must be text",
            ),
            (
                mp(map(vec![("blend", Value::from("x"))])),
                "prompt-blend: expected [[value, weight]",
            ),
            (
                mp(map(vec![("blend", Value::Array(vec![Value::from("x")]))])),
                "each entry must be [value, weight]",
            ),
            (
                mp(map(vec![(
                    "seeds",
                    Value::Array(vec![Value::Array(vec![Value::from("a"), Value::from(1)])]),
                )])),
                "seed-blend: \"a\" is not a seed",
            ),
            (
                mp(map(vec![("transition", Value::from(1_000_000))])),
                "too long",
            ),
            (br#"{"seed": 5"#.to_vec(), "not a valid JSON object"),
            (
                br#"{"seed": 5} trailing"#.to_vec(),
                "not a valid JSON object",
            ),
            (
                br#"{"seed": 18446744073709551616}"#.to_vec(),
                "seed: expected a whole number",
            ),
            (b"/nope".to_vec(), "unknown command /nope"),
            // One rule for the three encodings: control characters, duplicate keys.
            (
                br#"{"prompt": "a\u0000b"}"#.to_vec(),
                "prompt: text contains the control character U+0000",
            ),
            (
                mp(map(vec![("prompt", Value::from("a\u{0}b"))])),
                "prompt: text contains the control character U+0000",
            ),
            (
                mp(Value::from("a\u{0}b")),
                "prompt: text contains the control character U+0000",
            ),
            (b"a\x00b".to_vec(), "control character U+0000"),
            (br#"{"seed": 1, "seed": 2}"#.to_vec(), "given twice"),
            (br#"{"seed": 1, "Seed": 2}"#.to_vec(), "given twice"),
            (mp(Value::Nil), "a msgpack nil is not a settings message"),
            (mp(Value::Boolean(true)), "a msgpack boolean is not"),
            (
                br#"{"seedblend": {"1": 1e-320, "2": 1e-320}}"#.to_vec(),
                "seed-blend: weight",
            ),
            (
                b"/seedblend 1:1e-320 2:1e-320".to_vec(),
                "seed-blend: weight",
            ),
        ];
        for (bytes, want) in cases {
            let e = err(&bytes);
            assert!(
                e.contains(want),
                "{:?}: error {e:?} should contain {want:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
            );
        }
        // Trailing bytes after a msgpack map are refused too.
        let mut b = mp(map(vec![("seed", Value::from(1))]));
        b.push(0xc0);
        assert!(err(&b).contains("left over"));
    }
}
