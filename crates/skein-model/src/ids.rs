//! Trace and span identifiers.

use std::fmt;
use std::str::FromStr;

/// Why a string or byte slice is not a valid id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseIdError {
    /// The id had the wrong number of bytes (or hex digits).
    Length { expected: usize, found: usize },
    /// The id contained a character that is not a hex digit.
    NotHex,
    /// The id was all zeros, which OTLP and W3C Trace Context forbid.
    Zero,
}

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseIdError::Length { expected, found } => {
                write!(f, "expected {expected} bytes, found {found}")
            }
            ParseIdError::NotHex => f.write_str("not a hex string"),
            ParseIdError::Zero => f.write_str("all zero bytes"),
        }
    }
}

impl std::error::Error for ParseIdError {}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Number of bytes in this id.
            pub const LEN: usize = $len;

            /// Builds an id from its bytes; rejects the all-zero id.
            pub fn from_bytes(bytes: [u8; $len]) -> Result<Self, ParseIdError> {
                if bytes == [0; $len] {
                    return Err(ParseIdError::Zero);
                }
                Ok($name(bytes))
            }

            /// Builds an id from a slice of exactly `LEN` non-zero bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, ParseIdError> {
                let arr: [u8; $len] = bytes
                    .try_into()
                    .map_err(|_| ParseIdError::Length { expected: $len, found: bytes.len() })?;
                Self::from_bytes(arr)
            }

            /// Parses lowercase or uppercase hex. Shorter strings are left-padded with zeros
            /// (Jaeger prints 64-bit-high-zero ids without leading zeros).
            pub fn from_hex(s: &str) -> Result<Self, ParseIdError> {
                if s.is_empty() || s.len() > $len * 2 {
                    return Err(ParseIdError::Length { expected: $len, found: s.len().div_ceil(2) });
                }
                let mut bytes = [0u8; $len];
                let padded = format!("{:0>width$}", s, width = $len * 2);
                for (i, chunk) in padded.as_bytes().chunks(2).enumerate() {
                    let hi = hex_val(chunk[0]).ok_or(ParseIdError::NotHex)?;
                    let lo = hex_val(chunk[1]).ok_or(ParseIdError::NotHex)?;
                    bytes[i] = (hi << 4) | lo;
                }
                Self::from_bytes(bytes)
            }

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lowercase hex, always `2 * LEN` digits.
            pub fn to_hex(&self) -> String {
                self.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_hex(s)
            }
        }
    };
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

id_type!(
    /// A 16-byte W3C / OTLP trace id; never all zeros.
    TraceId,
    16
);
id_type!(
    /// An 8-byte W3C / OTLP span id; never all zeros.
    SpanId,
    8
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_padding() {
        let id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(id.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let short = TraceId::from_hex("a3ce929d0e0e4736").unwrap();
        assert_eq!(short.to_hex(), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(SpanId::from_hex("00F067AA0BA902B7").unwrap().to_hex(), "00f067aa0ba902b7");
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(TraceId::from_hex("zz"), Err(ParseIdError::NotHex));
        assert_eq!(SpanId::from_hex("0000000000000000"), Err(ParseIdError::Zero));
        assert_eq!(SpanId::from_slice(&[1, 2, 3]), Err(ParseIdError::Length { expected: 8, found: 3 }));
        assert!(TraceId::from_hex(&"a".repeat(33)).is_err());
        assert!(TraceId::from_hex("").is_err());
    }
}
