//! Output that reaches a person's terminal: one writer that escapes what could drive or
//! deceive it.
//!
//! Model and run names, admin references and reasons come from agents and admin clients.
//! Printed raw, an ESC or BEL drives the terminal, U+202E reverses the line, U+200B hides,
//! [`TerminalSafe`] writes every such character as `\uXXXX`
//! (`flopmeter_core::text::escape_for_terminal`), keeping line breaks and tabs; the form is
//! a JSON escape too, so `--json` output stays valid JSON. `alerts`, `ack`, `dismiss`,
//! `model`, `models`, `runs` and `report` print through it, to a terminal or not (a pager
//! such as `less -R` interprets escapes as a terminal does).

use std::io::{self, Write};

use flopmeter_core::text::escape_for_terminal_keeping;

/// A writer that escapes control, bidirectional and invisible characters.
#[derive(Debug)]
pub struct TerminalSafe<W: Write> {
    inner: W,
    /// Bytes of a UTF-8 sequence split across writes.
    pending: Vec<u8>,
}

impl<W: Write> TerminalSafe<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> TerminalSafe<W> {
        TerminalSafe {
            inner,
            pending: Vec::new(),
        }
    }

    fn emit(&mut self, text: &str) -> io::Result<()> {
        self.inner
            .write_all(escape_for_terminal_keeping(text, &['\n', '\t']).as_bytes())
    }
}

impl<W: Write> Write for TerminalSafe<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let bytes = std::mem::take(&mut self.pending);
        let mut rest = &bytes[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    self.emit(text)?;
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    self.emit(std::str::from_utf8(good).unwrap_or_default())?;
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for the next write.
                        None => {
                            self.pending = bad.to_vec();
                            break;
                        }
                        // Not UTF-8 at all: say so rather than pass the bytes through.
                        Some(n) => {
                            self.emit("\u{FFFD}")?;
                            rest = &bad[n..];
                        }
                    }
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.emit("\u{FFFD}")?;
            self.pending.clear();
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for TerminalSafe<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_across_split_writes_and_keeps_layout() {
        let mut out = Vec::new();
        {
            let mut w = TerminalSafe::new(&mut out);
            let text = "model evil\u{1b}[2J\u{202e}x\n\tllama\u{2011}70b 模型\n";
            let bytes = text.as_bytes();
            // Byte by byte: every multi-byte character is split.
            for b in bytes {
                w.write_all(std::slice::from_ref(b)).unwrap();
            }
            w.flush().unwrap();
        }
        let s = String::from_utf8(out).unwrap();
        // Look-alikes drive nothing: left as they are (names that hold them are refused at
        // the door).
        assert_eq!(s, "model evil\\u001B[2J\\u202Ex\n\tllama\u{2011}70b 模型\n");
    }
}
