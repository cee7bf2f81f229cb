// SPDX-License-Identifier: MPL-2.0
//! CLIP byte-level BPE tokenizer, as transformers' `CLIPTokenizer` runs it:
//!
//! 1. added tokens (tokenizer.json `added_tokens`, tokenizer_config.json
//!    `added_tokens_decoder`, the special tokens) are split off first: those marked
//!    `normalized: false` on the raw text (e.g. sd-turbo's pad "!"), the others after
//!    normalisation; the rest is normalised: NFC, every run of whitespace to one space,
//!    lower case (per character);
//! 2. pre-tokenization by the CLIP pattern
//!    `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
//!    (whatever it does not match, i.e. whitespace, is dropped);
//! 3. each piece's UTF-8 bytes mapped to the GPT-2 byte alphabet, `</w>` appended to the
//!    last symbol, BPE merges applied lowest rank first;
//! 4. `bos + ids + eos`, truncated to `max_length` keeping `eos`, padded with the pad token
//!    from special_tokens_map.json.
//!
//! Files: `tokenizer.json` (HF tokenizers format) or `vocab.json` + `merges.txt`, with
//! `special_tokens_map.json` / `tokenizer_config.json` for the special tokens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use super::EngineError;

/// CLIP's context length.
pub const MAX_LENGTH: usize = 77;

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
const PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

#[derive(Clone)]
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), u32>,
    byte_chars: [char; 256],
    pattern: Regex,
    whitespace: Regex,
    /// Added tokens matched on the raw text (`normalized: false`), then on the normalised
    /// text (`normalized: true`), before pre-tokenization; leftmost-longest.
    added_raw: Vec<(String, u32)>,
    added_normalized: Vec<(String, u32)>,
    bos: u32,
    eos: u32,
    pad: u32,
    max_length: usize,
    cache: HashMap<String, Vec<u32>>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab", &self.vocab.len())
            .field("merges", &self.ranks.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("max_length", &self.max_length)
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Value, EngineError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::invalid(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| EngineError::invalid(path, format!("invalid JSON: {e}")))
}

/// A special token entry: a string, or an object with "content".
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// GPT-2's reversible byte to printable character map.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut printable = vec![false; 256];
    for b in (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF) {
        printable[b as usize] = true;
        map[b as usize] = char::from(b);
    }
    let mut n = 0u32;
    for b in 0..256usize {
        if !printable[b] {
            map[b] = char::from_u32(256 + n).unwrap_or('\u{FFFD}');
            n += 1;
        }
    }
    map
}

impl ClipTokenizer {
    /// Loads the tokenizer of a model directory (`<model>/tokenizer`).
    pub fn from_dir(dir: &Path) -> Result<Self, EngineError> {
        if !dir.is_dir() {
            return Err(EngineError::missing(dir, "tokenizer directory"));
        }
        let tokenizer_json = dir.join("tokenizer.json");
        let vocab_json = dir.join("vocab.json");
        let merges_txt = dir.join("merges.txt");
        let (vocab, merges, added) = if tokenizer_json.is_file() {
            parse_tokenizer_json(&read_json(&tokenizer_json)?, &tokenizer_json)?
        } else if vocab_json.is_file() && merges_txt.is_file() {
            let vocab = parse_vocab(&read_json(&vocab_json)?, &vocab_json)?;
            let text = std::fs::read_to_string(&merges_txt)
                .map_err(|e| EngineError::invalid(&merges_txt, format!("cannot read: {e}")))?;
            let merges = parse_merges_txt(&text, &merges_txt)?;
            (vocab, merges, Vec::new())
        } else {
            return Err(EngineError::missing(
                dir,
                "tokenizer files (tokenizer.json, or vocab.json and merges.txt)",
            ));
        };
        let mut vocab = vocab;
        // Added tokens: tokenizer.json, then tokenizer_config.json's added_tokens_decoder,
        // then the special tokens (the first source naming a token wins).
        let mut added: Vec<AddedToken> = added;
        let config_path = dir.join("tokenizer_config.json");
        if config_path.is_file()
            && let Some(dec) = read_json(&config_path)?
                .get("added_tokens_decoder")
                .and_then(Value::as_object)
        {
            for (id, t) in dec {
                if let (Ok(id), Some(content)) = (id.parse::<u32>(), token_content(t)) {
                    added.push(AddedToken {
                        content,
                        id: Some(id),
                        normalized: t.get("normalized").and_then(Value::as_bool).unwrap_or(true),
                    });
                }
            }
        }
        for t in &added {
            if let Some(id) = t.id {
                vocab.entry(t.content.clone()).or_insert(id);
            }
        }

        // Special tokens: special_tokens_map.json, then tokenizer_config.json, then CLIP's.
        let mut bos = BOS.to_string();
        let mut eos = EOS.to_string();
        let mut pad: Option<String> = None;
        let mut max_length = MAX_LENGTH;
        let mut pad_source = PathBuf::new();
        for file in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = dir.join(file);
            if !path.is_file() {
                continue;
            }
            let v = read_json(&path)?;
            if let Some(t) = v.get("bos_token").and_then(token_content) {
                bos = t;
            }
            if let Some(t) = v.get("eos_token").and_then(token_content) {
                eos = t;
            }
            if let Some(t) = v.get("pad_token").and_then(token_content) {
                pad = Some(t);
                pad_source = path.clone();
            }
            if let Some(m) = v.get("model_max_length").and_then(Value::as_u64)
                && (2..=4096).contains(&m)
            {
                max_length = m as usize;
            }
        }
        let id_of = |tok: &str, key: &str, source: &Path| -> Result<u32, EngineError> {
            vocab.get(tok).copied().ok_or_else(|| {
                EngineError::config(
                    source,
                    key,
                    "a token of the vocabulary",
                    format!("\"{tok}\", which is not in it"),
                )
            })
        };
        let specials = dir.join("special_tokens_map.json");
        let bos_id = id_of(&bos, "bos_token", &specials)?;
        let eos_id = id_of(&eos, "eos_token", &specials)?;
        let pad_id = match &pad {
            Some(p) => id_of(p, "pad_token", &pad_source)?,
            None => eos_id,
        };
        for special in [Some(&bos), Some(&eos), pad.as_ref()].into_iter().flatten() {
            added.push(AddedToken {
                content: special.clone(),
                id: None,
                normalized: true,
            });
        }
        let mut added_raw: Vec<(String, u32)> = Vec::new();
        let mut added_normalized: Vec<(String, u32)> = Vec::new();
        for t in added {
            if t.content.is_empty()
                || added_raw
                    .iter()
                    .chain(&added_normalized)
                    .any(|(c, _)| *c == t.content)
            {
                continue;
            }
            let Some(&id) = vocab.get(&t.content) else {
                continue;
            };
            if t.normalized {
                added_normalized.push((t.content, id));
            } else {
                added_raw.push((t.content, id));
            }
        }
        Ok(ClipTokenizer {
            vocab,
            ranks: merges
                .into_iter()
                .enumerate()
                .map(|(i, m)| (m, i as u32))
                .collect(),
            byte_chars: bytes_to_unicode(),
            pattern: Regex::new(PATTERN).map_err(|e| EngineError::invalid(dir, e.to_string()))?,
            whitespace: Regex::new(r"\s+").map_err(|e| EngineError::invalid(dir, e.to_string()))?,
            added_raw,
            added_normalized,
            bos: bos_id,
            eos: eos_id,
            pad: pad_id,
            max_length,
            cache: HashMap::new(),
        })
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Tokens of `text` without bos / eos / padding.
    pub fn tokenize(&mut self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let raw = split_added(text, &self.added_raw);
        for (seg, id) in raw {
            if let Some(id) = id {
                ids.push(id);
                continue;
            }
            let normalized = self.normalize(seg);
            let parts = split_added(&normalized, &self.added_normalized);
            for (part, id) in parts {
                match id {
                    Some(id) => ids.push(id),
                    None => self.pre_tokenize_and_bpe(part, &mut ids),
                }
            }
        }
        ids
    }

    /// NFC, every run of whitespace to one space, lower case (per character).
    fn normalize(&self, text: &str) -> String {
        let nfc: String = text.nfc().collect();
        let spaced = self.whitespace.replace_all(&nfc, " ");
        spaced.chars().flat_map(char::to_lowercase).collect()
    }

    fn pre_tokenize_and_bpe(&mut self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let pieces: Vec<&str> = self.pattern.find_iter(text).map(|m| m.as_str()).collect();
        for piece in pieces {
            if let Some(cached) = self.cache.get(piece) {
                ids.extend_from_slice(cached);
                continue;
            }
            let encoded = self.bpe(piece);
            ids.extend_from_slice(&encoded);
            if self.cache.len() < 10_000 {
                self.cache.insert(piece.to_string(), encoded);
            }
        }
    }

    fn bpe(&self, piece: &str) -> Vec<u32> {
        let mut word: Vec<String> = piece
            .bytes()
            .map(|b| self.byte_chars[b as usize].to_string())
            .collect();
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        loop {
            let best = word
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|&r| (r, i))
                })
                .min();
            let Some((rank, _)) = best else { break };
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len()
                    && self.ranks.get(&(word[i].clone(), word[i + 1].clone())) == Some(&rank)
                {
                    merged.push(format!("{}{}", word[i], word[i + 1]));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut word[i]));
                    i += 1;
                }
            }
            word = merged;
            if word.len() == 1 {
                break;
            }
        }
        word.iter()
            .map(|s| self.vocab.get(s).copied().unwrap_or(self.eos))
            .collect()
    }

    /// `bos + tokens + eos`, truncated to `max_length` keeping eos, padded with pad.
    pub fn encode(&mut self, text: &str) -> Vec<u32> {
        let tokens = self.tokenize(text);
        self.frame(&tokens)
    }

    /// How many of `n` tokens fit between bos and eos.
    pub fn kept(&self, n: usize) -> usize {
        n.min(self.max_length.saturating_sub(2))
    }

    /// `bos + tokens + eos` of tokens made by [`ClipTokenizer::tokenize`], truncated to
    /// `max_length` keeping eos, padded with pad.
    pub fn frame(&self, tokens: &[u32]) -> Vec<u32> {
        let keep = self.kept(tokens.len());
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend_from_slice(&tokens[..keep]);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        ids
    }
}

#[derive(Clone, Debug)]
struct AddedToken {
    content: String,
    id: Option<u32>,
    normalized: bool,
}

/// Splits `text` at the added tokens (leftmost, then longest match): segments with the
/// token's id, or plain text with `None`.
fn split_added<'a>(text: &'a str, tokens: &[(String, u32)]) -> Vec<(&'a str, Option<u32>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let next = tokens
            .iter()
            .filter_map(|(c, id)| rest.find(c.as_str()).map(|p| (p, c.len(), *id)))
            .min_by_key(|&(p, len, _)| (p, std::cmp::Reverse(len)));
        match next {
            Some((p, len, id)) => {
                if p > 0 {
                    out.push((&rest[..p], None));
                }
                out.push((&rest[p..p + len], Some(id)));
                rest = &rest[p + len..];
            }
            None => {
                out.push((rest, None));
                break;
            }
        }
    }
    out
}

fn parse_vocab(v: &Value, path: &Path) -> Result<HashMap<String, u32>, EngineError> {
    let obj = v.as_object().ok_or_else(|| {
        EngineError::invalid(path, "vocabulary: expected a JSON object token -> id")
    })?;
    let mut vocab = HashMap::with_capacity(obj.len());
    for (k, id) in obj {
        let id = id
            .as_u64()
            .filter(|&i| i <= u32::MAX as u64)
            .ok_or_else(|| {
                EngineError::invalid(path, format!("vocabulary: token {k:?} has no integer id"))
            })?;
        vocab.insert(k.clone(), id as u32);
    }
    if vocab.is_empty() {
        return Err(EngineError::invalid(path, "vocabulary is empty"));
    }
    Ok(vocab)
}

fn parse_merges_txt(text: &str, path: &Path) -> Result<Vec<(String, String)>, EngineError> {
    let mut merges = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if (n == 0 && line.starts_with("#version")) || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                merges.push((a.to_string(), b.to_string()))
            }
            _ => {
                return Err(EngineError::invalid(
                    path,
                    format!(
                        "line {}: expected two symbols separated by a space, found {line:?}",
                        n + 1
                    ),
                ));
            }
        }
    }
    Ok(merges)
}

type Parsed = (HashMap<String, u32>, Vec<(String, String)>, Vec<AddedToken>);

fn parse_tokenizer_json(v: &Value, path: &Path) -> Result<Parsed, EngineError> {
    let model = v
        .get("model")
        .ok_or_else(|| EngineError::invalid(path, "no \"model\" section"))?;
    if let Some(t) = model.get("type").and_then(Value::as_str)
        && t != "BPE"
    {
        return Err(EngineError::config(
            path,
            "model.type",
            "\"BPE\"",
            format!("\"{t}\""),
        ));
    }
    let vocab = parse_vocab(
        model
            .get("vocab")
            .ok_or_else(|| EngineError::invalid(path, "no \"model.vocab\""))?,
        path,
    )?;
    let list = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| EngineError::invalid(path, "no \"model.merges\" list"))?;
    let mut merges = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let pair = match m {
            Value::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                (Some(x), Some(y)) => Some((x.to_string(), y.to_string())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| {
            EngineError::invalid(
                path,
                format!("model.merges[{i}]: expected \"a b\" or [a, b]"),
            )
        })?);
    }
    let mut added = Vec::new();
    if let Some(list) = v.get("added_tokens").and_then(Value::as_array) {
        for t in list {
            if let (Some(c), Some(id)) = (
                t.get("content").and_then(Value::as_str),
                t.get("id").and_then(Value::as_u64),
            ) {
                added.push(AddedToken {
                    content: c.to_string(),
                    id: Some(id as u32),
                    normalized: t.get("normalized").and_then(Value::as_bool).unwrap_or(true),
                });
            }
        }
    }
    Ok((vocab, merges, added))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: the 256 byte symbols (plain and with `</w>`), a few merges.
    fn toy(dir: &Path, pad: &str) {
        let chars = bytes_to_unicode();
        let mut vocab = serde_json::Map::new();
        let mut next = 0u32;
        let mut add = |s: String, vocab: &mut serde_json::Map<String, Value>| {
            vocab.insert(s, Value::from(next));
            next += 1;
        };
        for c in chars {
            add(c.to_string(), &mut vocab);
        }
        for c in chars {
            add(format!("{c}</w>"), &mut vocab);
        }
        let merges = [
            ("h", "i</w>"),
            ("c", "a"),
            ("ca", "t</w>"),
            ("t", "h"),
            ("th", "e</w>"),
        ];
        for (a, b) in merges {
            add(format!("{a}{b}"), &mut vocab);
        }
        add(BOS.into(), &mut vocab);
        add(EOS.into(), &mut vocab);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("vocab.json"), Value::Object(vocab).to_string()).unwrap();
        let mut m = String::from("#version: 0.2\n");
        for (a, b) in merges {
            m.push_str(&format!("{a} {b}\n"));
        }
        std::fs::write(dir.join("merges.txt"), m).unwrap();
        std::fs::write(
            dir.join("special_tokens_map.json"),
            format!(r#"{{"pad_token": {{"content": "{pad}"}}}}"#),
        )
        .unwrap();
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("i2i-tok-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn bpe_merges_and_pads() {
        let d = tmpdir("a");
        toy(&d, "!");
        let mut t = ClipTokenizer::from_dir(&d).unwrap();
        let id = |s: &str| t.vocab[s];
        let (cat, the, hi, bang, comma) = (
            id("cat</w>"),
            id("the</w>"),
            id("hi</w>"),
            id("!"),
            id(",</w>"),
        );
        let ids = t.encode("  The\tCAT,hi ");
        assert_eq!(ids.len(), 77);
        assert_eq!(&ids[..6], &[t.bos, the, cat, comma, hi, t.eos]);
        assert!(ids[6..].iter().all(|&x| x == bang));
        assert_eq!(t.pad_id(), bang);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn truncation_keeps_eos_and_specials_pass_through() {
        let d = tmpdir("b");
        toy(&d, EOS);
        let mut t = ClipTokenizer::from_dir(&d).unwrap();
        let long = "cat ".repeat(200);
        let ids = t.encode(&long);
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[0], t.bos);
        assert_eq!(ids[76], t.eos);
        let ids = t.tokenize("a<|endoftext|>b");
        assert_eq!(ids[1], t.eos);
        // Digits are single pieces; apostrophe suffixes split.
        let ids = t.tokenize("12 it's");
        assert_eq!(ids.len(), 6, "{ids:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn missing_files_are_named() {
        let d = tmpdir("c");
        std::fs::create_dir_all(&d).unwrap();
        let e = ClipTokenizer::from_dir(&d).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
        toy(&d, "<nope>");
        let e = ClipTokenizer::from_dir(&d).unwrap_err().to_string();
        assert!(e.contains("pad_token") && e.contains("<nope>"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
