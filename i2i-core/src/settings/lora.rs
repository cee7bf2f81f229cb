// SPDX-License-Identifier: MPL-2.0
//! The LoRA list as people write it, one reading for the `lora` property, `/lora`, the
//! `lora` key of settings messages and OSC `/lora`: `FILE[:SCALE][,FILE[:SCALE]...]`
//! (scale 1 when absent; a `:` followed by something that is not a number belongs to the
//! path), and empty or `off` for no LoRA. The files themselves are read and checked by the
//! transform that binds them (against its UNet's LoRA inputs).

use std::path::PathBuf;

/// Accepted scales (diffusers takes any float; beyond this a LoRA swamps the weights).
pub const LORA_SCALE_RANGE: (f64, f64) = (-10.0, 10.0);

/// `FILE[:SCALE][,FILE[:SCALE]...]` -> `[(file, scale)]`; empty, `off` or `none` -> `[]`.
pub fn parse_lora_list(text: &str) -> Result<Vec<(PathBuf, f32)>, String> {
    let t = text.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in t.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.rsplit_once(':') {
            Some((path, tail)) if !path.is_empty() && tail.trim().parse::<f64>().is_ok() => {
                let s: f64 = tail.trim().parse().unwrap_or(1.0);
                let (lo, hi) = LORA_SCALE_RANGE;
                if !(lo..=hi).contains(&s) {
                    return Err(format!(
                        "lora \"{text}\": scale {tail} of {path} is out of range (accepted: {lo} to {hi})"
                    ));
                }
                out.push((PathBuf::from(path.trim()), s as f32));
            }
            _ => out.push((PathBuf::from(item), 1.0)),
        }
    }
    Ok(out)
}

/// The text of a list, as [`parse_lora_list`] reads it (empty for none).
pub fn format_lora_list(list: &[(PathBuf, f32)]) -> String {
    list.iter()
        .map(|(p, s)| format!("{}:{s}", p.display()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The argument of `/lora` as a list text: `off` -> empty, `FILE 0.8` -> `FILE:0.8`,
/// `FILE1:0.5,FILE2:0.7` as it is; checked with [`parse_lora_list`].
pub fn lora_from_command(arg: &str) -> Result<String, String> {
    let arg = arg.trim();
    if arg.is_empty() {
        return Err(
            "/lora: give FILE [SCALE], FILE:SCALE,FILE:SCALE... or off (no LoRA)".to_string(),
        );
    }
    let text = match arg.rsplit_once(char::is_whitespace) {
        Some((file, scale)) if !arg.contains(',') && scale.parse::<f64>().is_ok() => {
            format!("{}:{scale}", file.trim())
        }
        _ => arg.to_string(),
    };
    let list = parse_lora_list(&text).map_err(|e| format!("/{e}"))?;
    Ok(format_lora_list(&list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_like_the_reference() {
        let l =
            parse_lora_list("a.onnx_adapter:0.8, dir/b.onnx_adapter ,c:d.onnx_adapter:-1").unwrap();
        assert_eq!(
            l,
            vec![
                (PathBuf::from("a.onnx_adapter"), 0.8),
                (PathBuf::from("dir/b.onnx_adapter"), 1.0),
                (PathBuf::from("c:d.onnx_adapter"), -1.0),
            ]
        );
        assert!(parse_lora_list("").unwrap().is_empty());
        assert!(parse_lora_list(" off ").unwrap().is_empty());
        assert!(
            parse_lora_list("x:inf")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(parse_lora_list("x:11").is_err());
        assert_eq!(parse_lora_list(&format_lora_list(&l)).unwrap(), l);
    }

    #[test]
    fn commands_read_file_and_scale() {
        assert_eq!(
            lora_from_command("a.onnx_adapter 0.8").unwrap(),
            "a.onnx_adapter:0.8"
        );
        assert_eq!(lora_from_command("off").unwrap(), "");
        assert_eq!(lora_from_command("a:0.5, b:0.7").unwrap(), "a:0.5,b:0.7");
        assert_eq!(
            lora_from_command("my style.onnx_adapter").unwrap(),
            "my style.onnx_adapter:1"
        );
        assert!(lora_from_command("").is_err());
        assert!(
            lora_from_command("a 99")
                .unwrap_err()
                .contains("out of range")
        );
    }

    #[test]
    fn every_way_in_gives_the_same_key() {
        use crate::settings::command::{Command, parse_line};
        use crate::settings::message::decode_message;
        let update = |bytes: &[u8]| match decode_message(bytes) {
            Ok(Command::Update(u)) => u.lora,
            other => panic!("{other:?}"),
        };
        let want = Some("a.onnx_adapter:0.8".to_string());
        assert_eq!(update(b"/lora a.onnx_adapter 0.8"), want);
        assert_eq!(update(br#"{"lora": "a.onnx_adapter:0.8"}"#), want);
        let mut map = Vec::new();
        rmpv::encode::write_value(
            &mut map,
            &rmpv::Value::Map(vec![("lora".into(), "a.onnx_adapter:0.8".into())]),
        )
        .unwrap();
        assert_eq!(update(&map), want);
        assert_eq!(update(b"/lora off"), Some(String::new()));
        assert!(
            decode_message(br#"{"lora": "a:20"}"#)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(matches!(parse_line("/LORA x"), Ok(Command::Update(_))));
        // Absent and empty are the same state: no change to report.
        let none = crate::settings::SettingsUpdate::default();
        let off = crate::settings::SettingsUpdate {
            lora: Some(String::new()),
            ..Default::default()
        };
        assert!(off.changes_since(&none).is_empty());
        assert_eq!(off.summary(), "lora=off");
    }
}
