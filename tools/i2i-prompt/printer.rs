// SPDX-License-Identifier: MPL-2.0
//! Lines for the operator that do not answer what they typed: changes made elsewhere,
//! transforms' reports, refused packets. They are printed by one thread, through
//! rustyline's external printer while a console edits a line (the `> ` prompt and the
//! half-typed line are redrawn below them), else on stderr. The queue is bounded: a flood
//! never blocks the holder; lines that do not fit are counted and the count is printed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// Lines waiting to be printed at most.
const QUEUE: usize = 256;

type External = Box<dyn rustyline::ExternalPrinter + Send>;

#[derive(Clone)]
pub struct Printer {
    tx: SyncSender<String>,
    not_shown: Arc<AtomicU64>,
    external: Arc<Mutex<Option<External>>>,
}

impl Printer {
    /// Starts the printing thread (it ends with the process).
    pub fn start() -> Printer {
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
        let not_shown = Arc::new(AtomicU64::new(0));
        let external: Arc<Mutex<Option<External>>> = Arc::new(Mutex::new(None));
        let (count, out) = (not_shown.clone(), external.clone());
        std::thread::Builder::new()
            .name("i2i-prompt-print".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    let skipped = count.swap(0, Ordering::Relaxed);
                    let text = if skipped > 0 {
                        format!("({skipped} lines not shown: they came faster than a terminal shows them)\n{line}")
                    } else {
                        line
                    };
                    let mut guard = out.lock().unwrap_or_else(|e| e.into_inner());
                    let printed = match guard.as_mut() {
                        Some(p) => p.print(format!("{text}\n")).is_ok(),
                        None => false,
                    };
                    if !printed {
                        eprintln!("{text}");
                    }
                }
            })
            .expect("start the printing thread");
        Printer {
            tx,
            not_shown,
            external,
        }
    }

    /// From now on, print through the console's line editor.
    pub fn attach(&self, printer: External) {
        *self.external.lock().unwrap_or_else(|e| e.into_inner()) = Some(printer);
    }

    /// Queues one line (or several, separated by line breaks); never blocks.
    pub fn line(&self, text: String) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(text) {
            self.not_shown.fetch_add(1, Ordering::Relaxed);
        }
    }
}
