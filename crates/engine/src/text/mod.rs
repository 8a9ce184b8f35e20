//! SentencePiece text (in progress).
