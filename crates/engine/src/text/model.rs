//! Loading a SentencePiece `.model` file (a protobuf `ModelProto`) and looking up its pieces.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use prost::Message;

use super::decode::DecodeState;
use crate::error::{EngineError, Result};

/// What `<unk>` decodes to unless the model sets `trainer_spec.unk_surface`: U+2047 between spaces.
const DEFAULT_UNK_SURFACE: &str = " \u{2047} ";

/// The part of `sentencepiece_model.proto` that decoding needs. Fields not listed here (scores
/// aside, that is nearly all of `TrainerSpec`, `self_test_data`, ...) are skipped by prost.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(message, repeated, tag = "1")]
        pub pieces: Vec<SentencePiece>,
        #[prost(message, optional, tag = "2")]
        pub trainer_spec: Option<TrainerSpec>,
        #[prost(message, optional, tag = "3")]
        pub normalizer_spec: Option<NormalizerSpec>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SentencePiece {
        #[prost(string, optional, tag = "1")]
        pub piece: Option<String>,
        #[prost(float, optional, tag = "2")]
        pub score: Option<f32>,
        /// The `Type` enum, read as its integer value; absent means NORMAL (1).
        #[prost(int32, optional, tag = "3")]
        pub kind: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrainerSpec {
        /// `ModelType`: 1 unigram (the default), 2 BPE, 3 word, 4 char.
        #[prost(int32, optional, tag = "3")]
        pub model_type: Option<i32>,
        #[prost(bool, optional, tag = "35")]
        pub byte_fallback: Option<bool>,
        #[prost(string, optional, tag = "44")]
        pub unk_surface: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NormalizerSpec {
        /// The normalization rules (e.g. NFKC) compiled into a trie; empty for "identity".
        #[prost(bytes = "vec", optional, tag = "2")]
        pub precompiled_charsmap: Option<Vec<u8>>,
        /// Defaults to true when absent (proto2 default).
        #[prost(bool, optional, tag = "3")]
        pub add_dummy_prefix: Option<bool>,
        /// Defaults to true when absent (proto2 default).
        #[prost(bool, optional, tag = "4")]
        pub remove_extra_whitespaces: Option<bool>,
        /// Defaults to true when absent (proto2 default).
        #[prost(bool, optional, tag = "5")]
        pub escape_whitespaces: Option<bool>,
    }
}

/// The type of a vocabulary piece (SentencePiece's `ModelProto.SentencePiece.Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    /// Ordinary text; `▁` stands for a space.
    Normal,
    /// `<unk>`; decodes to the model's unknown surface (" ⁇ " by default).
    Unknown,
    /// `<s>`, `</s>`, `<pad>` and the like; decodes to nothing.
    Control,
    /// A user-defined symbol; decodes like a normal piece.
    UserDefined,
    /// A piece the model never emits; decodes like a normal piece.
    Unused,
    /// `<0xNN>`: one byte of UTF-8 text (byte fallback).
    Byte,
}

impl PieceKind {
    fn from_proto(value: i32) -> Option<Self> {
        Some(match value {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// How a piece renders, worked out once at load time.
#[derive(Clone, Debug)]
pub(super) enum Render {
    /// Control pieces: no text.
    Nothing,
    /// The unknown piece: the model's unknown surface.
    Unknown,
    /// A `<0xNN>` piece.
    Byte(u8),
    /// Text with every `▁` already turned into a space; `leading_space` when it began with `▁`.
    Text { text: String, leading_space: bool },
}

#[derive(Clone, Debug)]
struct Piece {
    piece: String,
    kind: PieceKind,
    render: Render,
}

/// A SentencePiece vocabulary, loaded from a `.model` file, that decodes ids to text.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    pieces: Vec<Piece>,
    unk_surface: String,
    /// `add_dummy_prefix || remove_extra_whitespaces`: the first `▁` of the output is dropped.
    strip_leading_space: bool,
    /// `remove_extra_whitespaces`: keep dropping leading `▁` while nothing has been output.
    strip_all_leading_space: bool,
    /// Text → ids (`super::encode`).
    encoder: super::encode::Encoder,
}

impl Tokenizer {
    /// Loads a SentencePiece `.model` file. Errors name the file and what was wrong with it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })?;
        Self::parse(&bytes, path)
    }

    /// A stand-in vocabulary of `size` pieces (`<unk>`, `<s>`, `</s>`, `<pad>`, then `▁w4`,
    /// `▁w5`, …) for random-weight models that come without a tokenizer (benchmarks, `verify`).
    pub fn synthetic(size: usize) -> Result<Self> {
        Self::from_bytes(&Self::synthetic_model_bytes(size))
    }

    /// The `.model` file (SentencePiece's protobuf) of [`Tokenizer::synthetic`]'s vocabulary.
    pub fn synthetic_model_bytes(size: usize) -> Vec<u8> {
        let pieces = (0..size.max(4))
            .map(|i| proto::SentencePiece {
                piece: Some(match i {
                    0 => "<unk>".into(),
                    1 => "<s>".into(),
                    2 => "</s>".into(),
                    3 => "<pad>".into(),
                    _ => format!("\u{2581}w{i}"),
                }),
                score: Some(0.0),
                kind: Some(match i {
                    0 => 2,
                    1..=3 => 3,
                    _ => 1,
                }),
            })
            .collect();
        let model = proto::ModelProto { pieces, trainer_spec: None, normalizer_spec: None };
        model.encode_to_vec()
    }

    /// Loads a SentencePiece model from the bytes of a `.model` file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse(bytes, Path::new("<in-memory SentencePiece model>"))
    }

    fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let err = |msg: String| EngineError::ModelFiles { path: PathBuf::from(path), msg };
        if bytes.is_empty() {
            return Err(err("tokenizer file is empty, expected a SentencePiece .model (protobuf ModelProto)".into()));
        }
        let proto = proto::ModelProto::decode(bytes).map_err(|e| {
            err(format!(
                "not a SentencePiece model: protobuf decoding failed ({e}); the file is truncated or not a .model file"
            ))
        })?;
        if proto.pieces.is_empty() {
            return Err(err("not a SentencePiece model: it holds no vocabulary pieces".into()));
        }
        if u32::try_from(proto.pieces.len()).is_err() {
            return Err(err(format!("vocabulary of {} pieces is too large", proto.pieces.len())));
        }

        let mut seen = HashSet::new();
        let mut unk_id = None;
        let mut pieces = Vec::with_capacity(proto.pieces.len());
        for (id, p) in proto.pieces.iter().enumerate() {
            let text = p.piece.as_deref().unwrap_or_default();
            if text.is_empty() {
                return Err(err(format!("invalid SentencePiece model: piece {id} is empty")));
            }
            let raw_kind = p.kind.unwrap_or(1);
            let kind = PieceKind::from_proto(raw_kind).ok_or_else(|| {
                err(format!("invalid SentencePiece model: piece {id} ({text:?}) has unknown type {raw_kind}"))
            })?;
            if !seen.insert(text) {
                return Err(err(format!("invalid SentencePiece model: piece {text:?} (id {id}) is defined twice")));
            }
            let render = match kind {
                PieceKind::Control => Render::Nothing,
                PieceKind::Unknown => {
                    if let Some(first) = unk_id {
                        return Err(err(format!(
                            "invalid SentencePiece model: two unknown pieces (ids {first} and {id})"
                        )));
                    }
                    unk_id = Some(id);
                    Render::Unknown
                }
                PieceKind::Byte => Render::Byte(parse_byte_piece(text).ok_or_else(|| {
                    err(format!("invalid SentencePiece model: byte piece {id} is {text:?}, expected <0xNN>"))
                })?),
                PieceKind::Normal | PieceKind::UserDefined | PieceKind::Unused => {
                    Render::Text { text: text.replace('\u{2581}', " "), leading_space: text.starts_with('\u{2581}') }
                }
            };
            pieces.push(Piece { piece: text.to_owned(), kind, render });
        }
        if unk_id.is_none() {
            return Err(err("invalid SentencePiece model: no unknown piece (<unk>) is defined".into()));
        }

        let trainer = proto.trainer_spec.clone().unwrap_or_default();
        let unk_surface = trainer.unk_surface.clone().unwrap_or_else(|| DEFAULT_UNK_SURFACE.to_owned());
        let spec = proto.normalizer_spec.clone().unwrap_or_default();
        let add_dummy_prefix = spec.add_dummy_prefix.unwrap_or(true);
        let remove_extra_whitespaces = spec.remove_extra_whitespaces.unwrap_or(true);
        let encoder = super::encode::Encoder::new(
            proto.pieces.iter().map(|p| (p.piece.as_deref().unwrap_or_default(), p.score.unwrap_or(0.0), p.kind.unwrap_or(1))),
            super::encode::Options {
                unigram: trainer.model_type.unwrap_or(1) == 1,
                byte_fallback: trainer.byte_fallback.unwrap_or(false),
                add_dummy_prefix,
                remove_extra_whitespaces,
                escape_whitespaces: spec.escape_whitespaces.unwrap_or(true),
                charsmap: spec.precompiled_charsmap.clone().filter(|c| !c.is_empty()),
            },
        )
        .map_err(err)?;
        Ok(Self {
            encoder,
            pieces,
            unk_surface,
            strip_leading_space: add_dummy_prefix || remove_extra_whitespaces,
            strip_all_leading_space: remove_extra_whitespaces,
        })
    }

    /// Number of pieces; valid ids are `0..vocab_size()`.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The piece string of `id` (e.g. `"▁the"`, `"<unk>"`, `"<0xE2>"`), or `None` when out of range.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.piece(id).map(|p| p.piece.as_str())
    }

    /// The type of piece `id`, or `None` when out of range.
    pub fn piece_kind(&self, id: u32) -> Option<PieceKind> {
        self.piece(id).map(|p| p.kind)
    }

    /// Whether `id` is a control piece (`<s>`, `</s>`, `<pad>`...). False when out of range.
    pub fn is_control(&self, id: u32) -> bool {
        self.piece_kind(id) == Some(PieceKind::Control)
    }

    /// Whether `id` is the unknown piece. False when out of range.
    pub fn is_unknown(&self, id: u32) -> bool {
        self.piece_kind(id) == Some(PieceKind::Unknown)
    }

    /// Whether `id` is a byte piece `<0xNN>`. False when out of range.
    pub fn is_byte(&self, id: u32) -> bool {
        self.piece_kind(id) == Some(PieceKind::Byte)
    }

    /// What the unknown piece decodes to (`trainer_spec.unk_surface`, " ⁇ " by default).
    pub fn unk_surface(&self) -> &str {
        &self.unk_surface
    }

    /// Decodes ids to text like SentencePiece's `DecodeIds`: control pieces vanish, the unknown
    /// piece becomes [`Self::unk_surface`], `▁` becomes a space, runs of `<0xNN>` pieces are
    /// assembled into UTF-8 (each byte that does not start a valid character becomes U+FFFD), and
    /// the `▁` that starts the output is dropped (with `remove_extra_whitespaces`, the default,
    /// every leading `▁` up to the first visible text is dropped).
    ///
    /// Ids outside the vocabulary are skipped, as if absent (SentencePiece would reject the whole
    /// call); use [`Self::decode_checked`] to get an error instead.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut state = DecodeState::new();
        let mut out = String::new();
        for &id in ids {
            state.push(self, id, &mut out);
        }
        state.finish(&mut out);
        out
    }

    /// Text → ids as SentencePiece's `EncodeAsIds` with default options (no BOS/EOS): the
    /// model's normalization, then the most likely segmentation (unigram models). See
    /// `text::encode` for what is covered.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encoder.encode(text)
    }

    /// Like [`Self::decode`], but an id outside the vocabulary is an error naming it.
    pub fn decode_checked(&self, ids: &[u32]) -> Result<String> {
        if let Some((pos, id)) = ids.iter().enumerate().find(|(_, &id)| self.piece(id).is_none()) {
            return Err(EngineError::InvalidInput(format!(
                "text token id {id} at position {pos} is outside the vocabulary of {} pieces",
                self.vocab_size()
            )));
        }
        Ok(self.decode(ids))
    }

    pub(super) fn render(&self, id: u32) -> Option<&Render> {
        self.piece(id).map(|p| &p.render)
    }

    pub(super) fn strip_leading_space(&self) -> bool {
        self.strip_leading_space
    }

    pub(super) fn strip_all_leading_space(&self) -> bool {
        self.strip_all_leading_space
    }

    fn piece(&self, id: u32) -> Option<&Piece> {
        self.pieces.get(usize::try_from(id).ok()?)
    }
}

/// `"<0xE2>"` → `Some(0xE2)`: `<0x`, two hex digits, `>`.
fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
