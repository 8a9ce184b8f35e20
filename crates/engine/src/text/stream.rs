//! A live transcript: text tokens go in one at a time, new text comes out.

use super::decode::DecodeState;
use super::model::Tokenizer;

/// Moshi's text padding token (`existing_text_padding_id`), emitted while no word is spoken.
pub const MOSHI_TEXT_PAD_ID: u32 = 3;
/// Moshi's end-of-padding token, emitted just before a word starts.
pub const MOSHI_TEXT_EPAD_ID: u32 = 0;

/// Incremental decoder for a live transcript.
///
/// Padding and end-of-padding ids are dropped; every other id is decoded exactly as
/// [`Tokenizer::decode`] would decode the whole sequence of kept ids, so concatenating the
/// outputs of [`Self::push`] and [`Self::finish`] gives `tokenizer.decode(&kept_ids)`: words
/// after the first start with a space, the first one does not. `<0xNN>` byte pieces are held
/// back until they complete a UTF-8 character. Ids outside the vocabulary are ignored.
#[derive(Clone, Debug)]
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    pad_id: u32,
    epad_id: u32,
    state: DecodeState,
}

impl<'a> TextStream<'a> {
    /// A stream that hides `pad_id` and `epad_id`.
    pub fn new(tokenizer: &'a Tokenizer, pad_id: u32, epad_id: u32) -> Self {
        Self { tokenizer, pad_id, epad_id, state: DecodeState::new() }
    }

    /// A stream with Moshi's ids: [`MOSHI_TEXT_PAD_ID`] and [`MOSHI_TEXT_EPAD_ID`].
    pub fn moshi(tokenizer: &'a Tokenizer) -> Self {
        Self::new(tokenizer, MOSHI_TEXT_PAD_ID, MOSHI_TEXT_EPAD_ID)
    }

    /// Whether `id` is one of the hidden padding ids.
    pub fn is_hidden(&self, id: u32) -> bool {
        id == self.pad_id || id == self.epad_id
    }

    /// Feeds one text token; returns the text to append to the transcript, or `None` when there
    /// is nothing new (padding, a control piece, or an unfinished UTF-8 character).
    pub fn push(&mut self, id: u32) -> Option<String> {
        if self.is_hidden(id) {
            return None;
        }
        let mut out = String::new();
        self.state.push(self.tokenizer, id, &mut out);
        non_empty(out)
    }

    /// Flushes buffered bytes of an unfinished UTF-8 character (as U+FFFD) at the end of the
    /// transcript. Pushing more tokens afterwards continues the same transcript.
    pub fn finish(&mut self) -> Option<String> {
        let mut out = String::new();
        self.state.finish(&mut out);
        non_empty(out)
    }

    /// Starts a new transcript: buffered bytes are dropped and the next word has no leading space.
    pub fn reset(&mut self) {
        self.state = DecodeState::new();
    }
}

fn non_empty(s: String) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}
