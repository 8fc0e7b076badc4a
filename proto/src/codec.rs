//! Framing: every message travels as `length: u32 big-endian | version: u8 | body`, where
//! `length` counts the version byte and the body. Readers check `length` against the message's
//! own maximum BEFORE they allocate or read the body, and a body must be consumed exactly.
//!
//! This module knows bytes only; stream I/O belongs to the transport (`scored::p2p`).

use crate::compact::Malformed;

/// The wire format version of the messages of the first protocol ids (`/scored/<name>/1`).
/// A message of a later protocol id (`/scored/capacity/2`, …) carries that id's major number
/// in its frame instead ([`WireMessage::VERSION`]), so each message has exactly one layout per
/// version byte, and a daemon that speaks both versions of a protocol reads each by its own.
pub const WIRE_VERSION: u8 = 1;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// A message that can be framed.
pub trait WireMessage: Sized {
    /// What the message is, for errors ("token hand-off", "location response", …).
    const NAME: &'static str;
    /// The largest frame, length prefix included, that this message may take on the wire.
    const MAX_FRAME: usize;
    /// The version byte its frames carry: the major number of the protocol id it travels on.
    const VERSION: u8 = WIRE_VERSION;

    /// Appends the body (without version byte) to `out`.
    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError>;

    /// Parses a whole body; bytes left over are an error.
    fn decode_body(body: &[u8]) -> Result<Self, DecodeError>;
}

/// Why a message could not be encoded. Always a bug or a limit in the caller, never the peer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{message}: a {len}-byte frame exceeds the {max}-byte limit")]
    TooLarge {
        message: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{message}: {reason}")]
    Invalid {
        message: &'static str,
        reason: String,
    },
}

/// Why bytes from a peer were rejected. Decoders return these; they never panic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{message}: frame announces {len} bytes, limit is {max}")]
    TooLarge {
        message: &'static str,
        len: u64,
        max: usize,
    },
    #[error("{message}: frame truncated: {got} of {expected} bytes")]
    Truncated {
        message: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{message}: empty frame (no version byte)")]
    Empty { message: &'static str },
    #[error("{message}: wire version {got}, this build speaks version {supported}")]
    Version {
        message: &'static str,
        got: u8,
        supported: u8,
    },
    #[error("{message}: {reason}")]
    Malformed {
        message: &'static str,
        reason: String,
    },
    #[error("{message}: {extra} unexpected bytes after the body")]
    TrailingBytes { message: &'static str, extra: usize },
}

impl DecodeError {
    pub(crate) fn malformed(message: &'static str, reason: impl std::fmt::Display) -> Self {
        DecodeError::Malformed {
            message,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn from_compact(message: &'static str, m: Malformed) -> Self {
        DecodeError::Malformed {
            message,
            reason: m.0,
        }
    }
}

/// Encodes `m` as a complete frame.
pub fn encode<M: WireMessage>(m: &M) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0; LENGTH_PREFIX]);
    out.push(M::VERSION);
    m.encode_body(&mut out)?;
    if out.len() > M::MAX_FRAME {
        return Err(EncodeError::TooLarge {
            message: M::NAME,
            len: out.len(),
            max: M::MAX_FRAME,
        });
    }
    let len = (out.len() - LENGTH_PREFIX) as u32;
    out[..LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Reads a length prefix and returns how many bytes follow it, refusing anything over the
/// message's limit. Call this before allocating for the rest of the frame.
pub fn frame_len<M: WireMessage>(prefix: [u8; LENGTH_PREFIX]) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix);
    let max = M::MAX_FRAME - LENGTH_PREFIX;
    if len as u64 > max as u64 {
        return Err(DecodeError::TooLarge {
            message: M::NAME,
            len: len.into(),
            max,
        });
    }
    if len == 0 {
        return Err(DecodeError::Empty { message: M::NAME });
    }
    Ok(len as usize)
}

/// Decodes what follows the length prefix: the version byte and the body.
pub fn decode_payload<M: WireMessage>(payload: &[u8]) -> Result<M, DecodeError> {
    let Some((&version, body)) = payload.split_first() else {
        return Err(DecodeError::Empty { message: M::NAME });
    };
    if version != M::VERSION {
        return Err(DecodeError::Version {
            message: M::NAME,
            got: version,
            supported: M::VERSION,
        });
    }
    M::decode_body(body)
}

/// Decodes one complete frame; `frame` must hold exactly one frame.
pub fn decode<M: WireMessage>(frame: &[u8]) -> Result<M, DecodeError> {
    if frame.len() < LENGTH_PREFIX {
        return Err(DecodeError::Truncated {
            message: M::NAME,
            expected: LENGTH_PREFIX,
            got: frame.len(),
        });
    }
    let (prefix, payload) = frame.split_at(LENGTH_PREFIX);
    let len = frame_len::<M>(prefix.try_into().expect("split at LENGTH_PREFIX"))?;
    if payload.len() < len {
        return Err(DecodeError::Truncated {
            message: M::NAME,
            expected: len,
            got: payload.len(),
        });
    }
    if payload.len() > len {
        return Err(DecodeError::TrailingBytes {
            message: M::NAME,
            extra: payload.len() - len,
        });
    }
    decode_payload(payload)
}

/// postcard for the plain parts of a body: decodes one value, returning the rest.
pub(crate) fn take<'a, T: serde::Deserialize<'a>>(
    message: &'static str,
    bytes: &'a [u8],
) -> Result<(T, &'a [u8]), DecodeError> {
    postcard::take_from_bytes(bytes)
        .map_err(|e| DecodeError::malformed(message, postcard_reason(e)))
}

pub(crate) fn put<T: serde::Serialize + ?Sized>(
    message: &'static str,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let buf = std::mem::take(out);
    *out = postcard::to_extend(value, buf).map_err(|e| EncodeError::Invalid {
        message,
        reason: e.to_string(),
    })?;
    Ok(())
}

pub(crate) fn done(message: &'static str, rest: &[u8]) -> Result<(), DecodeError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes {
            message,
            extra: rest.len(),
        })
    }
}

fn postcard_reason(e: postcard::Error) -> String {
    use postcard::Error as E;
    match e {
        E::DeserializeUnexpectedEnd => "input ends in the middle of a field".into(),
        E::DeserializeBadVarint => "bad varint".into(),
        E::DeserializeBadBool => "bad bool (neither 0 nor 1)".into(),
        E::DeserializeBadChar => "bad char".into(),
        E::DeserializeBadUtf8 => "string is not UTF-8".into(),
        E::DeserializeBadOption => "bad option tag".into(),
        E::DeserializeBadEnum => "unknown enum variant".into(),
        E::DeserializeBadEncoding => "bad encoding".into(),
        other => other.to_string(),
    }
}
