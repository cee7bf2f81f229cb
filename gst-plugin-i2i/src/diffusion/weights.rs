// SPDX-License-Identifier: MPL-2.0
//! Prompt weighting as A1111 writes it: `(text)` x 1.1, `[text]` / 1.1, `(text:1.3)` x 1.3,
//! nested brackets multiply, `\(` `\)` `\[` `\]` `\\` are the characters themselves, and a
//! bracket without its partner is plain text (A1111 instead applies an unclosed one to the
//! rest of the prompt).
//!
//! The encoding (docs/models.md, "Prompt weighting"; the numpy reference is
//! tests/python/reference_style.py, whose `parse_weights`, `weighted_tokens` and
//! `apply_weights` these functions follow step by step):
//!
//! 1. [`parse`]: the prompt as runs of text with their weights, neighbours of equal weight
//!    merged;
//! 2. [`weighted_ids`]: each run tokenized on its own, joined, framed as the tokenizer frames
//!    a prompt; start, end and pad tokens weigh 1. A prompt without weighting syntax is one
//!    run of weight 1: exactly the tokenizer's own ids;
//! 3. [`apply`]: the text encoder's output `z` (`[rows, E]`) times each row's weight, then
//!    scaled so that its mean is `z`'s again (A1111's "Original" emphasis: it prevents
//!    artifacts). All weights 1 leaves `z` untouched, bit for bit.

use std::sync::LazyLock;

use regex::Regex;

use super::tokenizer::ClipTokenizer;
use crate::runtime::error::EngineError;

/// What `(text)` multiplies by.
pub const ROUND: f64 = 1.1;
/// What `[text]` multiplies by.
pub const SQUARE: f64 = 1.0 / 1.1;

/// A1111's `re_attention`, alternatives in its order (the first that matches wins). `\d` is
/// any Unicode decimal digit, as in Python.
static ATTENTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?x)
        \\\( | \\\) | \\\[ | \\\] | \\\\ |
        \\ |
        \( |
        \[ |
        :([+-]?[.\d]+)\) |
        \) |
        \] |
        [^\\()\[\]:]+ |
        :",
    )
    .expect("the prompt weighting pattern compiles")
});

static DECIMAL_DIGIT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\d$").expect("the digit pattern compiles"));

/// The prompt as runs of text with their weights; never empty (`[("", 1)]` for an empty
/// prompt).
pub fn parse(text: &str) -> Vec<(String, f64)> {
    // [text, weight]; an open bracket is a literal entry until its partner comes.
    let mut res: Vec<(String, f64)> = Vec::new();
    let mut rounds: Vec<usize> = Vec::new();
    let mut squares: Vec<usize> = Vec::new();
    let close = |res: &mut Vec<(String, f64)>, start: usize, factor: f64| {
        res[start].0.clear();
        for entry in &mut res[start + 1..] {
            entry.1 *= factor;
        }
    };
    for m in ATTENTION.captures_iter(text) {
        let tok = m.get(0).map_or("", |t| t.as_str());
        let weight = m.get(1).and_then(|w| number(w.as_str()));
        if tok.len() == 2 && tok.starts_with('\\') {
            res.push((tok[1..].to_string(), 1.0));
        } else if tok == "(" {
            rounds.push(res.len());
            res.push((tok.to_string(), 1.0));
        } else if tok == "[" {
            squares.push(res.len());
            res.push((tok.to_string(), 1.0));
        } else if let (Some(w), Some(start)) = (weight, rounds.last().copied()) {
            rounds.pop();
            close(&mut res, start, w);
        } else if let (")", Some(start)) = (tok, rounds.last().copied()) {
            rounds.pop();
            close(&mut res, start, ROUND);
        } else if let ("]", Some(start)) = (tok, squares.last().copied()) {
            squares.pop();
            close(&mut res, start, SQUARE);
        } else {
            res.push((tok.to_string(), 1.0));
        }
    }
    let mut runs: Vec<(String, f64)> = Vec::new();
    for (t, w) in res {
        if t.is_empty() {
            continue;
        }
        match runs.last_mut() {
            Some(last) if last.1 == w => last.0.push_str(&t),
            _ => runs.push((t, w)),
        }
    }
    if runs.is_empty() {
        runs.push((String::new(), 1.0));
    }
    runs
}

/// The value of a weight as Python's `float()` reads `[+-]?[.\d]+`: Unicode decimal digits
/// count as their value; `None` when it is no number (no digit, or two points).
fn number(s: &str) -> Option<f64> {
    let ascii: String = s
        .chars()
        .map(|c| match c {
            '0'..='9' | '.' | '+' | '-' => c,
            _ => char::from(b'0' + decimal_value(c)),
        })
        .collect();
    ascii.parse().ok()
}

/// The value of a Unicode decimal digit. Unicode encodes them in runs of ten, 0 to 9,
/// and keeps adjacent runs whole, so the digits right before `c` count its value.
fn decimal_value(c: char) -> u8 {
    let is_digit = |c: char| DECIMAL_DIGIT.is_match(c.encode_utf8(&mut [0; 4]));
    let mut before = 0u32;
    let mut code = u32::from(c);
    while let Some(prev) = code.checked_sub(1).and_then(char::from_u32) {
        if !is_digit(prev) {
            break;
        }
        before += 1;
        code -= 1;
    }
    (before % 10) as u8
}

/// The largest weight a prompt may give (either sign): far beyond any useful emphasis, and
/// small enough that the weighted rows stay finite in float32.
pub const MAX_WEIGHT: f64 = 100.0;

/// Token ids of `text`, framed as [`ClipTokenizer::encode`] frames them, and one weight per
/// id (1 for start, end and pad). A weight beyond [`MAX_WEIGHT`] (a typo such as
/// `(word:13e9)`, or brackets nested hundreds deep) is refused, naming the words it weights,
/// rather than turning the conditioning into infinities.
pub fn weighted_ids(
    tokenizer: &mut ClipTokenizer,
    text: &str,
) -> Result<(Vec<u32>, Vec<f32>), EngineError> {
    let mut tokens = Vec::new();
    let mut token_weights = Vec::new();
    for (run, w) in parse(text) {
        if !w.is_finite() || w.abs() > MAX_WEIGHT {
            return Err(EngineError::InvalidArgument {
                what: format!("the weight of \"{}\" in prompt \"{text}\"", run.trim()),
                expected: format!("a weight between -{MAX_WEIGHT} and {MAX_WEIGHT}"),
                found: format!("{w}"),
            });
        }
        let t = tokenizer.tokenize(&run);
        token_weights.resize(token_weights.len() + t.len(), w as f32);
        tokens.extend(t);
    }
    let ids = tokenizer.frame(&tokens);
    let keep = tokenizer.kept(tokens.len());
    let mut weights = Vec::with_capacity(ids.len());
    weights.push(1.0);
    weights.extend_from_slice(&token_weights[..keep]);
    weights.resize(ids.len(), 1.0);
    Ok((ids, weights))
}

/// `z` (`weights.len()` rows of equal length) times each row's weight, then its mean
/// restored: `z * (mean(z) / mean(z * w))`, the means summed in float64, the ratio applied
/// in float32. All weights 1 leave `z` as it is; a zero `mean(z * w)` leaves `z * w`.
pub fn apply(z: &mut [f32], weights: &[f32]) {
    if weights.iter().all(|&w| w == 1.0) || weights.is_empty() {
        return;
    }
    let row = z.len() / weights.len();
    let mut before = 0.0f64;
    let mut after = 0.0f64;
    for (r, &w) in z.chunks_exact_mut(row).zip(weights) {
        for v in r {
            before += f64::from(*v);
            *v *= w;
            after += f64::from(*v);
        }
    }
    if after == 0.0 {
        return;
    }
    // The counts cancel: the ratio of the sums is the ratio of the means.
    let ratio = (before / after) as f32;
    for v in z {
        *v *= ratio;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(text: &str) -> Vec<(String, f64)> {
        parse(text)
    }

    fn want(list: &[(&str, f64)]) -> Vec<(String, f64)> {
        list.iter().map(|(t, w)| (t.to_string(), *w)).collect()
    }

    /// The table of tests/python/test_style.py and more; the weights as
    /// reference_style.parse_weights computes them (the same products in the same order,
    /// so equal bit for bit).
    #[test]
    fn parses_as_the_reference() {
        let r = ROUND;
        let s = SQUARE;
        let cases: Vec<(&str, Vec<(&str, f64)>)> = vec![
            ("normal text", vec![("normal text", 1.0)]),
            (
                "an (important) word",
                vec![("an ", 1.0), ("important", r), (" word", 1.0)],
            ),
            ("(unbalanced", vec![("(unbalanced", 1.0)]),
            ("unbalanced)", vec![("unbalanced)", 1.0)]),
            ("a [b", vec![("a [b", 1.0)]),
            ("a ]b[", vec![("a ]b[", 1.0)]),
            ("\\(literal\\]", vec![("(literal]", 1.0)]),
            ("(unnecessary)(parens)", vec![("unnecessaryparens", r)]),
            (
                "a (red:1.3) car",
                vec![("a ", 1.0), ("red", 1.3), (" car", 1.0)],
            ),
            ("a [[dog]]", vec![("a ", 1.0), ("dog", 1.0 * s * s)]),
            (
                "(a (b) c)",
                vec![("a ", 1.0 * r), ("b", 1.0 * r * r), (" c", 1.0 * r)],
            ),
            ("((a:2))", vec![("a", 2.0 * r)]),
            ("(a (b:0.5)", vec![("(a ", 1.0), ("b", 0.5)]),
            (
                "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
                vec![
                    ("a (", 1.0),
                    ("house", 1.3 * r),
                    (" ", 1.0),
                    ("on", s),
                    (" a ", 1.0),
                    ("hill", 0.5),
                    (", sun, ", 1.0),
                    ("sky", 1.0 * r * r * r),
                    (".", 1.0),
                ],
            ),
            ("a:b (c:1.2.3) d", vec![("a:b (c:1.2.3) d", 1.0)]),
            ("x:1.5) y", vec![("x:1.5) y", 1.0)]),
            ("back\\slash \\\\", vec![("back\\slash \\", 1.0)]),
            ("", vec![("", 1.0)]),
            ("()", vec![("", 1.0)]),
            ("[]()a", vec![("a", 1.0)]),
            // Numbers as Python's float() reads them.
            ("(a:+1.5)", vec![("a", 1.5)]),
            ("(a:.5)(b:2.)", vec![("a", 0.5), ("b", 2.0)]),
            ("(a:-1)", vec![("a", -1.0)]),
            ("(a:.)", vec![("(a:.)", 1.0)]),
            ("(a:1e2)", vec![("a:1e2", r)]),
            ("(a:\u{0661}.\u{0665})", vec![("a", 1.5)]),
            ("(a:\u{1d7d0})", vec![("a", 2.0)]),
            // A weight closes a round bracket only; brackets close in any order.
            ("[a:1.5]", vec![("a:1.5", s)]),
            ("[(a:0.5]", vec![("(a:0.5", s)]),
            ("([a)]", vec![("a", 1.0 * r * s)]),
            ("(a:0)", vec![("a", 0.0)]),
            ("\\a \\", vec![("\\a \\", 1.0)]),
            ("(a\\)", vec![("(a)", 1.0)]),
            ("(a:1) b", vec![("a b", 1.0)]),
            ("(a:1.0) b", vec![("a b", 1.0)]),
            ("狐 (🦊:1.2)", vec![("狐 ", 1.0), ("🦊", 1.2)]),
        ];
        for (text, w) in cases {
            assert_eq!(runs(text), want(&w), "{text:?}");
        }
    }

    #[test]
    fn plain_text_is_one_run() {
        for t in ["a red fox, in the snow: 4k", "::x:1.5", "a\tb  c"] {
            assert_eq!(runs(t), want(&[(t, 1.0)]));
        }
    }

    #[test]
    fn all_ones_leave_z_untouched_and_weights_keep_the_mean() {
        let mut z: Vec<f32> = (0..4 * 3).map(|i| (i as f32 * 0.37).sin() + 0.3).collect();
        let orig = z.clone();
        apply(&mut z, &[1.0; 4]);
        assert_eq!(z, orig);
        let w = [1.0f32, 1.5, 0.5, 1.0];
        apply(&mut z, &w);
        let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        assert!(
            (mean(&z) - mean(&orig)).abs() < 1e-6,
            "the mean is restored"
        );
        let ratio = z[0] / orig[0];
        for (r, &wr) in w.iter().enumerate() {
            for c in 0..3 {
                let got = z[r * 3 + c] / orig[r * 3 + c];
                assert!((got - ratio * wr).abs() < 1e-5, "row {r}: {got}");
            }
        }
        // A zero mean after weighting: z * w, no ratio.
        let mut z = vec![1.0f32, -1.0];
        apply(&mut z, &[2.0, 2.0]);
        assert_eq!(z, [2.0, -2.0]);
    }
}
