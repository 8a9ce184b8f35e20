//! `moshi_server::protocol::decode` on arbitrary bytes, and `Message::encode` of what it decodes.
//!
//! Properties (any failure is a crash):
//! - `decode` never panics, with any `max_len`;
//! - `len > max_len` is `TooLarge { len, max }`, and nothing else depends on `max_len`;
//! - any `Ok(Decoded::Message(m))` re-encodes to bytes that decode to the same message, and those
//!   bytes are the input itself except where the wire format has two spellings of one message:
//!   the bare handshake byte (`[0]`, Kyutai's Python server) is re-encoded with its 8-byte payload
//!   (`[0; 9]`), metadata JSON is re-serialised (whitespace, key order, number spelling; floats
//!   may move by 1 ULP, see below), and a Ping's payload, if any, is ignored;
//! - an unknown type byte is `Unknown(type)`; an error names a malformed message, it is not a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moshi_server::protocol::{decode, Decoded, Message, ProtocolError};
use serde_json::Value;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let full = decode(data, MAX);

    // The size cap: checked first, exactly at the boundary.
    assert_eq!(decode(data, data.len()), full, "a message of exactly max_len bytes is accepted");
    if !data.is_empty() {
        let max = data.len() - 1;
        assert_eq!(decode(data, max), Err(ProtocolError::TooLarge { len: data.len(), max }));
        let max = (data[0] as usize) % data.len();
        assert_eq!(decode(data, max), Err(ProtocolError::TooLarge { len: data.len(), max }));
    }

    match full {
        Err(ProtocolError::Empty) => assert!(data.is_empty()),
        Err(ProtocolError::TooLarge { .. }) => panic!("TooLarge under the limit"),
        Err(e) => {
            assert!(!data.is_empty());
            assert!(data[0] <= 6, "error {e:?} for an unknown type byte {}", data[0]);
            let _ = e.to_string();
        }
        Ok(Decoded::Unknown(t)) => assert!(t > 6 && t == data[0], "Unknown({t}) for {:?}", data.first()),
        Ok(Decoded::Message(m)) => {
            let bytes = m.encode();
            assert_eq!(bytes[0], data[0], "type byte changed by re-encoding {m:?}");
            let again = decode(&bytes, MAX);
            match (&m, &again) {
                // serde_json without its `float_roundtrip` feature parses some decimal floats
                // 1 ULP off, so a re-serialised float may come back 1 ULP away
                // (regressions/protocol-metadata-float-roundtrip): compare floats within 4 ULP.
                (Message::Metadata(a), Ok(Decoded::Message(Message::Metadata(b)))) => {
                    assert!(json_close(a, b), "re-encoding of {m:?} decodes to {again:?}")
                }
                _ => assert_eq!(again, Ok(Decoded::Message(m.clone())), "re-encoding of {m:?} decodes differently"),
            }
            match &m {
                Message::Handshake { .. } if data == [0] => assert_eq!(bytes, [0u8; 9]),
                Message::Metadata(_) => {}
                // The decoder ignores whatever follows a Ping's type byte (lenient, while
                // docs/protocol.md says type 6 is empty): it re-encodes as the bare byte.
                Message::Ping => assert_eq!(bytes, [6u8]),
                _ => assert_eq!(bytes, data, "re-encoding of {m:?} differs from the input"),
            }
        }
    }
});

/// Equal JSON values, floats within 4 ULP.
fn json_close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => {
                let d = (x - y).abs();
                x == y || d <= 4.0 * f64::EPSILON * x.abs().max(y.abs()) || d <= 4.0 * f64::from_bits(1)
            }
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w)))
        }
        _ => a == b,
    }
}
