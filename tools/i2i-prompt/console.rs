// SPDX-License-Identifier: MPL-2.0
//! The operator's console: line editing with rustyline when stdin is a terminal (cursor
//! keys, history kept in a file, Ctrl-R search, Tab completion of `/` commands), plain
//! lines when it is a pipe or a file (scripts, tests).

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use i2i_core::settings::command::COMMAND_NAMES;
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};

/// The `/` commands that start with what was typed, when the cursor is in the first word.
pub fn complete_command(line: &str, pos: usize) -> Vec<String> {
    let word = &line[..pos];
    if !word.starts_with('/') || word.contains(char::is_whitespace) {
        return Vec::new();
    }
    let word = word.to_ascii_lowercase();
    // The settings commands (aliases are accepted but not offered), and the console's own.
    COMMAND_NAMES
        .iter()
        .chain(&["/quit"])
        .filter(|c| c.starts_with(&word))
        .map(|c| format!("{c} "))
        .collect()
}

struct CommandHelper;

impl Completer for CommandHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok((0, complete_command(line, pos)))
    }
}

impl Hinter for CommandHelper {
    type Hint = String;
}
impl Highlighter for CommandHelper {}
impl Validator for CommandHelper {}
impl Helper for CommandHelper {}

/// Where the history is kept unless `--history` says otherwise:
/// `$XDG_STATE_HOME/i2i-prompt/history`, else `~/.local/state/i2i-prompt/history`.
pub fn default_history() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("i2i-prompt").join("history"))
}

pub struct Console {
    editor: Option<Editor<CommandHelper, FileHistory>>,
    history: Option<PathBuf>,
    lines: Option<std::io::Lines<std::io::StdinLock<'static>>>,
}

impl Console {
    /// Line editing when stdin is a terminal; `history` is the file (None: none kept).
    pub fn new(history: Option<PathBuf>) -> Console {
        if std::io::stdin().is_terminal() {
            match Editor::<CommandHelper, FileHistory>::new() {
                Ok(mut editor) => {
                    editor.set_helper(Some(CommandHelper));
                    if let Some(h) = &history {
                        if let Some(dir) = h.parent() {
                            let _ = std::fs::create_dir_all(dir);
                        }
                        // A first run has no history file yet.
                        let _ = editor.load_history(h);
                    }
                    return Console {
                        editor: Some(editor),
                        history,
                        lines: None,
                    };
                }
                Err(e) => eprintln!("i2i-prompt: no line editing ({e}); reading plain lines"),
            }
        }
        Console {
            editor: None,
            history: None,
            lines: Some(std::io::stdin().lock().lines()),
        }
    }

    /// A printer for lines from other threads that redraws the prompt and the line being
    /// edited below them; None when stdin is not a terminal.
    pub fn external_printer(&mut self) -> Option<Box<dyn rustyline::ExternalPrinter + Send>> {
        let printer = self.editor.as_mut()?.create_external_printer().ok()?;
        Some(Box::new(printer))
    }

    /// The next line typed; None at the end of input (Ctrl-D, end of file).
    pub fn next_line(&mut self) -> Option<String> {
        if let Some(lines) = &mut self.lines {
            return lines.next()?.ok();
        }
        let editor = self.editor.as_mut()?;
        loop {
            match editor.readline("> ") {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                        if let Some(h) = &self.history
                            && let Err(e) = editor.save_history(h)
                        {
                            eprintln!(
                                "i2i-prompt: cannot write the history to {}: {e}",
                                h.display()
                            );
                            self.history = None;
                        }
                    }
                    return Some(line);
                }
                // Ctrl-C clears the line, as in a shell; Ctrl-D ends.
                Err(ReadlineError::Interrupted) => {
                    eprintln!("(Ctrl-D or /quit ends)");
                    continue;
                }
                Err(ReadlineError::Eof) => return None,
                Err(e) => {
                    eprintln!("i2i-prompt: reading the console failed: {e}");
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_command_names_only_in_the_first_word() {
        assert_eq!(complete_command("/gu", 3), vec!["/guidance "]);
        assert_eq!(
            complete_command("/s", 2),
            vec![
                "/seed ",
                "/strength ",
                "/similarity ",
                "/seedblend ",
                "/style ",
                "/status "
            ]
        );
        assert!(complete_command("/seed 1", 7).is_empty());
        assert!(complete_command("a fox", 5).is_empty());
        assert_eq!(complete_command("/BLENDM", 7), vec!["/blendmode "]);
    }
}
