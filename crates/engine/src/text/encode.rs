//! Text → ids for SentencePiece unigram models, as `SentencePieceProcessor.encode` does with
//! default options (PersonaPlex's text prompt): the model's normalization rules (its precompiled
//! charsmap, e.g. NFKC, applied by `spm_precompiled`), its whitespace rules (extra spaces removed,
//! a `▁` prefix, spaces as `▁`), then the segmentation of highest total score (Viterbi over every
//! normal or user-defined piece; a character no piece covers is `<unk>`, scored as SentencePiece
//! scores it: the lowest piece score − 10), consecutive `<unk>`s merged, or with byte fallback
//! spelled as `<0xNN>` pieces. Control, unused and byte pieces never match text. Not covered:
//! BPE, word and char models (refused by name).

use std::collections::HashMap;

use spm_precompiled::Precompiled;

use crate::error::{EngineError, Result};

/// What the model's specs say about encoding.
pub(super) struct Options {
    pub unigram: bool,
    pub byte_fallback: bool,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
    pub charsmap: Option<Vec<u8>>,
}

#[derive(Clone)]
pub(super) struct Encoder {
    /// Pieces text can match, with their id and score.
    pieces: HashMap<String, (u32, f32)>,
    /// The longest matchable piece, in chars.
    max_chars: usize,
    unk: u32,
    unk_score: f32,
    /// `<0xNN>` → id, when the model has byte fallback.
    bytes: Option<Vec<u32>>,
    unigram: bool,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    charsmap: Option<Precompiled>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").field("pieces", &self.pieces.len()).field("unigram", &self.unigram).finish()
    }
}

const SPACE: char = '\u{2581}';

impl Encoder {
    /// `pieces`: (text, score, proto type) in id order.
    pub(super) fn new<'a>(pieces: impl Iterator<Item = (&'a str, f32, i32)>, opt: Options) -> std::result::Result<Self, String> {
        let mut map = HashMap::new();
        let (mut unk, mut min_score, mut max_chars) = (0u32, f32::INFINITY, 1usize);
        let mut bytes = vec![u32::MAX; 256];
        for (id, (text, score, kind)) in pieces.enumerate() {
            let id = id as u32;
            match kind {
                1 | 4 => {
                    max_chars = max_chars.max(text.chars().count());
                    map.insert(text.to_string(), (id, score));
                    if kind == 1 {
                        min_score = min_score.min(score);
                    }
                }
                2 => unk = id,
                6 => {
                    if let Some(b) = text.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        bytes[b as usize] = id;
                    }
                }
                _ => {}
            }
        }
        let charsmap = match &opt.charsmap {
            Some(c) => Some(Precompiled::from(c).map_err(|e| format!("invalid SentencePiece model: its normalization rules do not parse ({e:?})"))?),
            None => None,
        };
        let bytes = (opt.byte_fallback && bytes.iter().all(|&b| b != u32::MAX)).then_some(bytes);
        Ok(Self {
            pieces: map,
            max_chars,
            unk,
            unk_score: if min_score.is_finite() { min_score - 10.0 } else { -10.0 },
            bytes,
            unigram: opt.unigram,
            add_dummy_prefix: opt.add_dummy_prefix,
            remove_extra_whitespaces: opt.remove_extra_whitespaces,
            escape_whitespaces: opt.escape_whitespaces,
            charsmap,
        })
    }

    /// The normalized text the segmentation runs on.
    fn normalize(&self, text: &str) -> String {
        let text = match &self.charsmap {
            Some(c) => c.normalize_string(text),
            None => text.to_string(),
        };
        let text = if self.remove_extra_whitespaces {
            text.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
        } else {
            text
        };
        if text.is_empty() {
            return text;
        }
        let text = if self.add_dummy_prefix { format!(" {text}") } else { text };
        if self.escape_whitespaces {
            text.replace(' ', &SPACE.to_string())
        } else {
            text
        }
    }

    pub(super) fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if !self.unigram {
            return Err(EngineError::InvalidInput(
                "encoding text needs a unigram SentencePiece model (this one is BPE, word or char)".into(),
            ));
        }
        let chars: Vec<char> = self.normalize(text).chars().collect();
        let n = chars.len();
        // best[i]: the best score of a segmentation of chars[..i] and its last piece.
        let mut best: Vec<Option<(f32, usize, Option<u32>)>> = vec![None; n + 1];
        best[0] = Some((0.0, 0, None));
        let mut piece = String::new();
        for start in 0..n {
            let Some((base, _, _)) = best[start] else { continue };
            let mut single = false;
            piece.clear();
            for end in start + 1..=(start + self.max_chars).min(n) {
                piece.push(chars[end - 1]);
                if let Some(&(id, score)) = self.pieces.get(piece.as_str()) {
                    single |= end == start + 1;
                    let s = base + score;
                    if best[end].is_none_or(|(b, _, _)| s > b) {
                        best[end] = Some((s, start, Some(id)));
                    }
                }
            }
            if !single {
                let s = base + self.unk_score;
                if best[start + 1].is_none_or(|(b, _, _)| s > b) {
                    best[start + 1] = Some((s, start, None));
                }
            }
        }
        let mut path = Vec::new();
        let mut end = n;
        while end > 0 {
            let (_, start, id) = best[end].expect("every position is reachable through <unk>");
            path.push((start, end, id));
            end = start;
        }
        path.reverse();
        let mut ids = Vec::with_capacity(path.len());
        let mut prev_unk = false;
        for (start, end, id) in path {
            match (id, &self.bytes) {
                (Some(id), _) => {
                    ids.push(id);
                    prev_unk = false;
                }
                (None, Some(bytes)) => {
                    let s: String = chars[start..end].iter().collect();
                    ids.extend(s.bytes().map(|b| bytes[b as usize]));
                }
                (None, None) => {
                    if !prev_unk {
                        ids.push(self.unk);
                    }
                    prev_unk = true;
                }
            }
        }
        Ok(ids)
    }
}
