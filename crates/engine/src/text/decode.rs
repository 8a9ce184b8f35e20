//! The decoding state machine shared by [`Tokenizer::decode`] and [`super::TextStream`], so that a
//! streamed transcript and a whole decode cannot disagree.
//!
//! It follows SentencePiece's `Decode`: before each non-byte piece, pending bytes are flushed;
//! then, if any text has been written or the previous piece consumed a leading `▁`, the
//! "start of output" state ends for good. While it lasts, a piece's leading `▁` is dropped.

use super::model::{Render, Tokenizer};

const REPLACEMENT: char = '\u{FFFD}';

/// Running state of a decode: where we are relative to the start, and unfinished UTF-8 bytes.
#[derive(Clone, Debug)]
pub(super) struct DecodeState {
    /// Bytes of `<0xNN>` pieces not yet turned into text (an unfinished UTF-8 character).
    pending: Vec<u8>,
    /// Whether any text has been written so far.
    wrote_text: bool,
    /// Whether the previous non-byte piece had its leading `▁` dropped.
    consumed_space: bool,
    /// Whether a leading `▁` may still be dropped (SentencePiece's `is_bos_ws`).
    at_start: bool,
}

impl DecodeState {
    pub(super) fn new() -> Self {
        Self { pending: Vec::new(), wrote_text: false, consumed_space: false, at_start: true }
    }

    /// Appends to `out` the text that piece `id` completes. Ids outside the vocabulary are ignored.
    pub(super) fn push(&mut self, tok: &Tokenizer, id: u32, out: &mut String) {
        let Some(render) = tok.render(id) else { return };
        let before = out.len();
        match render {
            Render::Byte(b) => {
                self.pending.push(*b);
                drain_utf8(&mut self.pending, out, false);
            }
            Render::Nothing | Render::Unknown | Render::Text { .. } => {
                drain_utf8(&mut self.pending, out, true);
                if self.consumed_space || self.wrote_text || out.len() > before {
                    self.at_start = false;
                }
                self.consumed_space = false;
                match render {
                    Render::Unknown => out.push_str(tok.unk_surface()),
                    Render::Text { text, leading_space } => {
                        if self.at_start && *leading_space && tok.strip_leading_space() {
                            // The space is the single byte that replaced `▁`.
                            out.push_str(&text[1..]);
                            self.consumed_space = !tok.strip_all_leading_space();
                        } else {
                            out.push_str(text);
                        }
                    }
                    Render::Nothing | Render::Byte(_) => {}
                }
            }
        }
        if out.len() > before {
            self.wrote_text = true;
        }
    }

    /// Ends the current run of byte pieces: every pending byte becomes text (U+FFFD where it
    /// cannot complete a character).
    pub(super) fn finish(&mut self, out: &mut String) {
        let before = out.len();
        drain_utf8(&mut self.pending, out, true);
        if out.len() > before {
            self.wrote_text = true;
        }
    }
}

/// The length of the UTF-8 sequence a lead byte announces, `None` for a byte that cannot lead.
fn sequence_len(lead: u8) -> Option<usize> {
    match lead {
        0x00..=0x7F => Some(1),
        0xC0..=0xDF => Some(2),
        0xE0..=0xEF => Some(3),
        0xF0..=0xF7 => Some(4),
        _ => None,
    }
}

/// Moves whole characters from `pending` to `out`, one character at a time like SentencePiece:
/// a well-formed sequence becomes its character, any other byte becomes U+FFFD on its own.
/// A sequence that is merely short is kept for later unless `end_of_run`, when it is invalid.
fn drain_utf8(pending: &mut Vec<u8>, out: &mut String, end_of_run: bool) {
    let mut i = 0;
    while i < pending.len() {
        match sequence_len(pending[i]) {
            Some(n) if i + n <= pending.len() => match std::str::from_utf8(&pending[i..i + n]) {
                Ok(s) => {
                    out.push_str(s);
                    i += n;
                }
                Err(_) => {
                    out.push(REPLACEMENT);
                    i += 1;
                }
            },
            Some(_) if !end_of_run => break,
            _ => {
                out.push(REPLACEMENT);
                i += 1;
            }
        }
    }
    pending.drain(..i);
}
