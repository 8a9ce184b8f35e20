//! SentencePiece text for Moshi: load a `.model` file ([`Tokenizer`]), turn text-token ids back
//! into text the way SentencePiece's `DecodeIds` does ([`Tokenizer::decode`]), and build a live
//! transcript one token at a time ([`TextStream`]).
//!
//! Only decoding is implemented; Moshi generates text tokens, it never needs to encode text at
//! inference time.

mod decode;
mod encode;
mod model;
mod stream;

pub use model::{PieceKind, Tokenizer};
pub use stream::{TextStream, MOSHI_TEXT_EPAD_ID, MOSHI_TEXT_PAD_ID};
