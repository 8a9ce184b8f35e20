//! Kyutai's Moshi WebSocket messages (docs/protocol.md): binary, the first byte the type, then the
//! payload. Decoding never panics: a malformed message is a [`ProtocolError`] naming what was
//! wrong, an unknown type is reported as such (the server ignores it), and a size cap is applied
//! before anything is copied.

/// Control sub-bytes of message type 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Start,
    EndTurn,
    Pause,
    Restart,
}

impl Control {
    fn byte(self) -> u8 {
        match self {
            Control::Start => 0,
            Control::EndTurn => 1,
            Control::Pause => 2,
            Control::Restart => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Control::Start,
            1 => Control::EndTurn,
            2 => Control::Pause,
            3 => Control::Restart,
            _ => return None,
        })
    }
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Type 0. Kyutai's Python server sends the bare type byte, their Rust server two u32 LE
    /// (protocol version, model version); both decode here, and we send the latter.
    Handshake { protocol_version: u32, model_version: u32 },
    /// Type 1: Ogg pages of Opus audio (any number, possibly partial: the audio path reassembles).
    Audio(Vec<u8>),
    /// Type 2: a transcript piece, UTF-8.
    Text(String),
    /// Type 3.
    Control(Control),
    /// Type 4: a JSON value.
    Metadata(serde_json::Value),
    /// Type 5: an error description, UTF-8.
    Error(String),
    /// Type 6, empty.
    Ping,
}

/// What a received message turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Message(Message),
    /// A type byte this protocol does not define: ignored by the server.
    Unknown(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("empty message (no type byte)")]
    Empty,
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("{kind} message is not valid UTF-8 (at byte {at})")]
    BadUtf8 { kind: &'static str, at: usize },
    #[error("control message needs exactly one sub-byte in 0..=3, got {0:?}")]
    BadControl(Vec<u8>),
    #[error("metadata message is not JSON: {0}")]
    BadMetadata(String),
    #[error("handshake payload of {0} bytes (expected 0 or 8)")]
    BadHandshake(usize),
}

fn utf8(kind: &'static str, payload: &[u8]) -> Result<String, ProtocolError> {
    String::from_utf8(payload.to_vec()).map_err(|e| ProtocolError::BadUtf8 { kind, at: e.utf8_error().valid_up_to() })
}

/// Decode one WebSocket binary message of at most `max_len` bytes.
pub fn decode(bytes: &[u8], max_len: usize) -> Result<Decoded, ProtocolError> {
    if bytes.len() > max_len {
        return Err(ProtocolError::TooLarge { len: bytes.len(), max: max_len });
    }
    let (&kind, payload) = bytes.split_first().ok_or(ProtocolError::Empty)?;
    let msg = match kind {
        0 => match payload.len() {
            0 => Message::Handshake { protocol_version: 0, model_version: 0 },
            8 => Message::Handshake {
                protocol_version: u32::from_le_bytes(payload[0..4].try_into().expect("4 bytes")),
                model_version: u32::from_le_bytes(payload[4..8].try_into().expect("4 bytes")),
            },
            n => return Err(ProtocolError::BadHandshake(n)),
        },
        1 => Message::Audio(payload.to_vec()),
        2 => Message::Text(utf8("text", payload)?),
        3 => match payload {
            [b] => Message::Control(Control::from_byte(*b).ok_or_else(|| ProtocolError::BadControl(payload.to_vec()))?),
            _ => return Err(ProtocolError::BadControl(payload.to_vec())),
        },
        4 => Message::Metadata(serde_json::from_slice(payload).map_err(|e| ProtocolError::BadMetadata(e.to_string()))?),
        5 => Message::Error(utf8("error", payload)?),
        6 => Message::Ping,
        other => return Ok(Decoded::Unknown(other)),
    };
    Ok(Decoded::Message(msg))
}

impl Message {
    /// The bytes of one WebSocket binary message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Message::Handshake { protocol_version, model_version } => {
                out.push(0);
                out.extend_from_slice(&protocol_version.to_le_bytes());
                out.extend_from_slice(&model_version.to_le_bytes());
            }
            Message::Audio(b) => {
                out.push(1);
                out.extend_from_slice(b);
            }
            Message::Text(s) => {
                out.push(2);
                out.extend_from_slice(s.as_bytes());
            }
            Message::Control(c) => out.extend_from_slice(&[3, c.byte()]),
            Message::Metadata(v) => {
                out.push(4);
                out.extend_from_slice(v.to_string().as_bytes());
            }
            Message::Error(s) => {
                out.push(5);
                out.extend_from_slice(s.as_bytes());
            }
            Message::Ping => out.push(6),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 16;

    fn roundtrip(m: Message) {
        assert_eq!(decode(&m.encode(), MAX), Ok(Decoded::Message(m.clone())), "{m:?}");
    }

    #[test]
    fn every_message_round_trips() {
        roundtrip(Message::Handshake { protocol_version: 0, model_version: 7 });
        roundtrip(Message::Audio(b"OggS\x00\x02rest".to_vec()));
        roundtrip(Message::Audio(vec![]));
        roundtrip(Message::Text(" héllo ⁇".into()));
        for c in [Control::Start, Control::EndTurn, Control::Pause, Control::Restart] {
            roundtrip(Message::Control(c));
        }
        roundtrip(Message::Metadata(serde_json::json!({"text_temperature": 0.7, "text_topk": 25})));
        roundtrip(Message::Error("too many conversations".into()));
        roundtrip(Message::Ping);
    }

    #[test]
    fn wire_bytes_match_kyutai() {
        assert_eq!(Message::Handshake { protocol_version: 0, model_version: 0 }.encode(), vec![0; 9]);
        assert_eq!(Message::Text(" the".into()).encode(), b"\x02 the".to_vec());
        assert_eq!(Message::Control(Control::EndTurn).encode(), vec![3, 1]);
        assert_eq!(Message::Ping.encode(), vec![6]);
        // The Python server's bare handshake byte.
        assert_eq!(decode(&[0], MAX), Ok(Decoded::Message(Message::Handshake { protocol_version: 0, model_version: 0 })));
    }

    #[test]
    fn malformed_messages_are_named_errors() {
        assert_eq!(decode(&[], MAX), Err(ProtocolError::Empty));
        assert_eq!(decode(&[1; 20], 10), Err(ProtocolError::TooLarge { len: 20, max: 10 }));
        assert_eq!(decode(&[2, b'a', 0xff, b'b'], MAX), Err(ProtocolError::BadUtf8 { kind: "text", at: 1 }));
        assert_eq!(decode(&[5, 0xc3], MAX), Err(ProtocolError::BadUtf8 { kind: "error", at: 0 }));
        assert_eq!(decode(&[3], MAX), Err(ProtocolError::BadControl(vec![])));
        assert_eq!(decode(&[3, 9], MAX), Err(ProtocolError::BadControl(vec![9])));
        assert_eq!(decode(&[3, 1, 1], MAX), Err(ProtocolError::BadControl(vec![1, 1])));
        assert!(matches!(decode(b"\x04{not json", MAX), Err(ProtocolError::BadMetadata(_))));
        assert_eq!(decode(&[0, 1, 2, 3], MAX), Err(ProtocolError::BadHandshake(3)));
    }

    #[test]
    fn unknown_types_are_reported_not_errors() {
        for t in [7u8, 42, 255] {
            assert_eq!(decode(&[t, 1, 2, 3], MAX), Ok(Decoded::Unknown(t)));
        }
    }

    /// Every byte string of up to 3 bytes decodes to something or to an error; none panics, and
    /// whatever decodes re-encodes to a message that decodes the same.
    #[test]
    fn exhaustive_short_inputs_never_panic() {
        let mut inputs: Vec<Vec<u8>> = vec![vec![]];
        for a in 0..=255u8 {
            inputs.push(vec![a]);
            for b in [0u8, 1, 3, 9, 0x7b, 0xc3, 0xff] {
                inputs.push(vec![a, b]);
                inputs.push(vec![a, b, b]);
            }
        }
        for i in inputs {
            if let Ok(Decoded::Message(m)) = decode(&i, MAX) {
                assert_eq!(decode(&m.encode(), MAX), Ok(Decoded::Message(m)));
            }
        }
    }
}
