//! Tests for `moshi_engine::text` against golden/lm_tiny/tokenizer.model and the SentencePiece
//! reference outputs in tokenizer_cases.json, plus hand-built models (byte pieces, options, bad
//! vocabularies) encoded here with prost.

use std::path::PathBuf;

use moshi_engine::text::{PieceKind, TextStream, Tokenizer, MOSHI_TEXT_EPAD_ID, MOSHI_TEXT_PAD_ID};
use moshi_engine::EngineError;
use prost::Message;
use serde_json::Value;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden/lm_tiny")
}

fn golden() -> (Tokenizer, Value) {
    let tok = Tokenizer::from_file(&golden_dir().join("tokenizer.model")).expect("load golden tokenizer");
    let text = std::fs::read_to_string(golden_dir().join("tokenizer_cases.json")).expect("read cases");
    (tok, serde_json::from_str(&text).expect("parse cases"))
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().expect("id list").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// Feeds `ids` one by one and returns the concatenated output; checks no output is `Some("")`.
fn stream_all(stream: &mut TextStream, ids: &[u32]) -> String {
    let mut outputs: Vec<String> = ids.iter().filter_map(|&id| stream.push(id)).collect();
    outputs.extend(stream.finish());
    assert!(outputs.iter().all(|s| !s.is_empty()), "Some(\"\") among {outputs:?}");
    outputs.concat()
}

/// Deterministic xorshift64 generator.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn golden_vocabulary() {
    let (tok, cases) = golden();
    let pieces = cases["id_to_piece"].as_array().expect("id_to_piece");
    assert_eq!(tok.vocab_size() as u64, cases["vocab_size"].as_u64().expect("vocab_size"));
    assert_eq!(tok.vocab_size(), pieces.len());
    let control = ids_of(&cases["is_control"]);
    let unknown = ids_of(&cases["is_unknown"]);
    for (id, piece) in pieces.iter().enumerate() {
        let id = id as u32;
        assert_eq!(tok.id_to_piece(id), piece.as_str(), "id_to_piece({id})");
        assert_eq!(tok.is_control(id), control.contains(&id), "is_control({id})");
        assert_eq!(tok.is_unknown(id), unknown.contains(&id), "is_unknown({id})");
        assert!(!tok.is_byte(id), "is_byte({id})");
    }
    assert_eq!(tok.piece_kind(5), Some(PieceKind::Normal));
    let n = tok.vocab_size() as u32;
    assert_eq!(tok.id_to_piece(n), None);
    assert_eq!(tok.piece_kind(u32::MAX), None);
    assert!(!tok.is_control(n) && !tok.is_unknown(n) && !tok.is_byte(n));
}

/// Every reference case as (ids, decoded text), encode cases included.
fn golden_cases(tok: &Tokenizer, cases: &Value) -> Vec<(Vec<u32>, String)> {
    let mut all = Vec::new();
    for key in ["decode_cases", "encode_cases"] {
        for case in cases[key].as_array().expect("case list") {
            let ids = ids_of(&case["ids"]);
            let pieces: Vec<&str> =
                case["pieces"].as_array().expect("pieces").iter().map(|p| p.as_str().expect("piece")).collect();
            let ours: Vec<&str> = ids.iter().map(|&id| tok.id_to_piece(id).expect("id in range")).collect();
            assert_eq!(ours, pieces, "{key}: {case}");
            all.push((ids, case["decoded"].as_str().expect("decoded").to_owned()));
        }
    }
    assert!(all.len() >= 11, "expected the golden file's 7 decode and 4 encode cases");
    all
}

#[test]
fn golden_decode_cases_whole_and_streamed() {
    let (tok, cases) = golden();
    assert_eq!(tok.decode(&[]), "");
    for (ids, expected) in golden_cases(&tok, &cases) {
        assert_eq!(tok.decode(&ids), expected, "decode({ids:?})");
        assert_eq!(tok.decode_checked(&ids).expect("in range"), expected);
        // Hide ids that never occur, so every token is kept.
        let mut stream = TextStream::new(&tok, u32::MAX - 1, u32::MAX);
        assert_eq!(stream_all(&mut stream, &ids), expected, "streamed {ids:?}");
    }
}

#[test]
fn pad_and_epad_are_hidden() {
    let (tok, _) = golden();
    assert_eq!((MOSHI_TEXT_PAD_ID, MOSHI_TEXT_EPAD_ID), (3, 0));
    assert_eq!(tok.decode(&[0]), " \u{2047} ", "id 0 is <unk>, visible unless hidden");
    let mut stream = TextStream::moshi(&tok);
    assert!(stream.is_hidden(3) && stream.is_hidden(0) && !stream.is_hidden(5));
    let outputs: Vec<Option<String>> = [3, 3, 0, 5, 3, 0, 31, 3, 7, 3].iter().map(|&id| stream.push(id)).collect();
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(outputs, [None, None, None, some("the"), None, None, some(" text"), None, some("."), None]);
    assert_eq!(stream.finish(), None);
    stream.reset();
    assert_eq!(stream.push(31), some("text"), "after reset the first word has no leading space");
    // Other ids can be chosen: here <s> and </s> are the hidden ones and id 0 is <unk> again.
    let mut custom = TextStream::new(&tok, 1, 2);
    assert_eq!(custom.push(0), some(" \u{2047} "));
    assert_eq!(custom.push(1), None);
}

/// An independent reading of SentencePiece decoding for a model without byte pieces and with
/// `remove_extra_whitespaces` (the golden model): drop `▁` at the start while nothing is written.
fn oracle(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut out = String::new();
    for &id in ids {
        let Some(piece) = tok.id_to_piece(id) else { continue };
        if tok.is_control(id) {
            continue;
        }
        if tok.is_unknown(id) {
            out.push_str(" \u{2047} ");
            continue;
        }
        let piece = if out.is_empty() { piece.strip_prefix('\u{2581}').unwrap_or(piece) } else { piece };
        out.push_str(&piece.replace('\u{2581}', " "));
    }
    out
}

#[test]
fn random_streams_with_padding() {
    let (tok, _) = golden();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..500 {
        let len = rng.below(40) as usize;
        let ids: Vec<u32> = (0..len)
            .map(|_| match rng.below(10) {
                0..=2 => MOSHI_TEXT_PAD_ID,
                3 => MOSHI_TEXT_EPAD_ID,
                4 if round % 5 == 0 => 48 + rng.below(5) as u32, // out of range: ignored
                _ => rng.below(48) as u32,
            })
            .collect();
        let kept: Vec<u32> = ids.iter().copied().filter(|&id| id != 3 && id != 0).collect();
        let expected = tok.decode(&kept);
        assert_eq!(expected, oracle(&tok, &kept), "decode vs oracle for {kept:?}");
        let mut stream = TextStream::moshi(&tok);
        assert_eq!(stream_all(&mut stream, &ids), expected, "stream of {ids:?}");
    }
}

#[test]
fn out_of_range_ids() {
    let (tok, _) = golden();
    assert_eq!(tok.decode(&[5, 48, 31, u32::MAX]), "the text");
    match tok.decode_checked(&[5, 48]) {
        Err(EngineError::InvalidInput(msg)) => assert!(msg.contains("48") && msg.contains("position 1"), "{msg}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    let mut stream = TextStream::moshi(&tok);
    assert_eq!(stream.push(1000), None);
}

// ---------------------------------------------------------------------------------------------
// Hand-built models (scores, which decoding ignores, are left out)

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<Piece>,
    #[prost(message, optional, tag = "2")]
    trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    normalizer_spec: Option<NormalizerSpec>,
}
#[derive(Clone, PartialEq, Message)]
struct Piece {
    #[prost(string, tag = "1")]
    piece: String,
    #[prost(int32, tag = "3")]
    kind: i32,
}
#[derive(Clone, PartialEq, Message)]
struct TrainerSpec {
    #[prost(string, optional, tag = "44")]
    unk_surface: Option<String>,
}
#[derive(Clone, PartialEq, Message)]
struct NormalizerSpec {
    #[prost(bool, optional, tag = "3")]
    add_dummy_prefix: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    remove_extra_whitespaces: Option<bool>,
}

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const BYTE: i32 = 6;

fn model(pieces: &[(&str, i32)]) -> ModelProto {
    let pieces = pieces.iter().map(|&(p, kind)| Piece { piece: p.into(), kind }).collect();
    ModelProto { pieces, trainer_spec: None, normalizer_spec: None }
}

fn byte_model() -> Tokenizer {
    let names = ["<unk>", "<s>", "</s>", "<0xE2>", "<0x81>", "<0x87>", "▁hi"];
    let kinds = [UNKNOWN, CONTROL, CONTROL, BYTE, BYTE, BYTE, NORMAL];
    let pieces: Vec<(&str, i32)> = names.into_iter().zip(kinds).collect();
    Tokenizer::from_bytes(&model(&pieces).encode_to_vec()).expect("byte model")
}

#[test]
fn byte_pieces_decode() {
    let tok = byte_model();
    assert!(tok.is_byte(3) && tok.is_byte(5) && !tok.is_byte(6));
    assert_eq!(tok.id_to_piece(4), Some("<0x81>"));
    let cases: [(&[u32], &str); 8] = [
        (&[3, 4, 5], "\u{2047}"),
        (&[6, 3, 4, 5, 6], "hi\u{2047} hi"),
        (&[3, 4, 5, 6], "\u{2047} hi"), // bytes wrote text, so the ▁ of "▁hi" stays
        (&[1, 3, 4, 5, 2], "\u{2047}"),
        (&[3, 4], "\u{FFFD}\u{FFFD}"), // each byte of an unfinished character: U+FFFD
        (&[3, 4, 6], "\u{FFFD}\u{FFFD} hi"),
        (&[4, 3, 4, 5], "\u{FFFD}\u{2047}"),
        (&[3, 6, 4, 5], "\u{FFFD} hi\u{FFFD}\u{FFFD}"),
    ];
    for (ids, expected) in cases {
        assert_eq!(tok.decode(ids), expected, "decode({ids:?})");
        let mut stream = TextStream::new(&tok, 1, 2);
        assert_eq!(stream_all(&mut stream, ids), expected, "streamed {ids:?}");
    }
}

#[test]
fn byte_pieces_stream_waits_for_whole_character() {
    let tok = byte_model();
    let mut stream = TextStream::new(&tok, 100, 101);
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(stream.push(6), some("hi"));
    assert_eq!(stream.push(3), None, "E2 starts a 3-byte character");
    assert_eq!(stream.push(4), None, "E2 81 is still unfinished");
    assert_eq!(stream.push(1), some("\u{FFFD}\u{FFFD}"), "a control piece ends the byte run");
    assert_eq!(stream.push(4), some("\u{FFFD}"), "a lone continuation byte is broken at once");
    assert_eq!(stream.push(3), None);
    assert_eq!(stream.finish(), some("\u{FFFD}"));
    assert_eq!(stream.finish(), None);
    assert_eq!(tok.decode(&[6, 3, 4, 1, 4, 3]), "hi\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}");
    // Bytes interleaved only with hidden padding still form one character.
    let mut stream = TextStream::new(&tok, 1, 2);
    let outs: Vec<_> = [3, 1, 4, 2, 5, 6].iter().map(|&id| stream.push(id)).collect();
    assert_eq!(outs, [None, None, None, None, Some("\u{2047}".into()), Some(" hi".into())]);
}

#[test]
fn model_options_change_decoding() {
    let pieces = [("<unk>", UNKNOWN), ("▁", NORMAL), ("▁hi", NORMAL)];
    let mut proto = model(&pieces);
    let default = Tokenizer::from_bytes(&proto.encode_to_vec()).expect("default model");
    assert_eq!(default.decode(&[1, 1, 2, 1, 2]), "hi  hi", "remove_extra_whitespaces drops every leading ▁");
    assert_eq!(default.decode(&[0]), " \u{2047} ");
    proto.normalizer_spec =
        Some(NormalizerSpec { add_dummy_prefix: Some(true), remove_extra_whitespaces: Some(false) });
    proto.trainer_spec = Some(TrainerSpec { unk_surface: Some("<?>".into()) });
    let tok = Tokenizer::from_bytes(&proto.encode_to_vec()).expect("model with options");
    assert_eq!(tok.decode(&[1, 1, 2]), "  hi", "only the first ▁ is dropped");
    assert_eq!(tok.decode(&[0, 2]), "<?> hi");
    proto.normalizer_spec =
        Some(NormalizerSpec { add_dummy_prefix: Some(false), remove_extra_whitespaces: Some(false) });
    let tok = Tokenizer::from_bytes(&proto.encode_to_vec()).expect("model without prefix");
    assert_eq!(tok.decode(&[2, 2]), " hi hi", "no dummy prefix: nothing dropped");
    let mut stream = TextStream::new(&tok, 100, 101);
    assert_eq!(stream.push(2), Some(" hi".into()));
}

// ---------------------------------------------------------------------------------------------
// Bad input

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("moshi-text-test-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).expect("write temp file");
    path
}

/// Loads `bytes` from a file and returns the error message, which must name the file.
fn load_error(name: &str, bytes: &[u8]) -> String {
    let path = temp_file(name, bytes);
    let result = Tokenizer::from_file(&path);
    let _ = std::fs::remove_file(&path);
    let err = result.expect_err(name);
    assert!(matches!(err, EngineError::ModelFiles { .. }), "{name}: {err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{name}: message does not name the file: {msg}");
    msg
}

#[test]
fn bad_files_are_errors() {
    assert!(load_error("empty.model", b"").contains("empty"));
    let json = std::fs::read(golden_dir().join("tokenizer_cases.json")).expect("read json");
    assert!(load_error("json.model", &json).contains("not a SentencePiece model"));
    assert!(load_error("text.model", b"this is plain text, not a model\n").contains("not a SentencePiece model"));
    let model = std::fs::read(golden_dir().join("tokenizer.model")).expect("read model");
    for cut in [1, 20, model.len() / 2, model.len() - 1] {
        let msg = load_error("truncated.model", &model[..cut]);
        assert!(msg.contains("truncated"), "cut at {cut}: {msg}");
    }
    // No cut point panics; a cut between two whole fields gives a prefix of the vocabulary.
    let (full, _) = golden();
    for cut in 0..model.len() {
        if let Ok(tok) = Tokenizer::from_bytes(&model[..cut]) {
            let ids = 0..tok.vocab_size() as u32;
            assert!(ids.clone().all(|id| tok.id_to_piece(id) == full.id_to_piece(id)), "cut at {cut}");
        }
    }
    let missing = golden_dir().join("no-such-tokenizer.model");
    let err = Tokenizer::from_file(&missing).expect_err("missing file");
    assert!(err.to_string().contains("no-such-tokenizer.model"), "{err}");
}

#[test]
fn inconsistent_vocabularies_are_errors() {
    let bad: [(&[(&str, i32)], &str); 6] = [
        (&[("a", NORMAL)], "no unknown piece"),
        (&[("<unk>", UNKNOWN), ("a", NORMAL), ("a", NORMAL)], "defined twice"),
        (&[("<unk>", UNKNOWN), ("<0xZZ>", BYTE)], "expected <0xNN>"),
        (&[("<unk>", UNKNOWN), ("", NORMAL)], "piece 1 is empty"),
        (&[("<unk>", UNKNOWN), ("a", 9)], "unknown type 9"),
        (&[("<unk>", UNKNOWN), ("<unk2>", UNKNOWN)], "two unknown pieces"),
    ];
    for (pieces, needle) in bad {
        let err = Tokenizer::from_bytes(&model(pieces).encode_to_vec()).expect_err(needle);
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}
