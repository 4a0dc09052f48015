//! JSON lines: one UTF-8 JSON object per line, `\n`-terminated, with a maximum
//! line length so a peer cannot make us buffer without bound.
//!
//! The decoder yields raw line bytes, not strings: invalid UTF-8 or invalid JSON is
//! the caller's to answer ("Invalid JSON") while the connection stays open. Only an
//! over-long line is a codec error, after which the caller closes the connection.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

/// The line-length limit of PROTOCOL.md: 64 KiB.
pub const MAX_LINE_LEN: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("line longer than {max} bytes")]
    LineTooLong { max: usize },
    #[error("encode JSON: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// A `tokio_util` codec for JSON lines. Encodes anything `Serialize`.
#[derive(Debug, Clone)]
pub struct JsonLines {
    max_len: usize,
    /// How far into the buffer we already looked for `\n`.
    scanned: usize,
}

impl JsonLines {
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            scanned: 0,
        }
    }

    /// Serialises one value as a line, newline included.
    pub fn to_line<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
        let mut v = serde_json::to_vec(value)?;
        v.push(b'\n');
        Ok(v)
    }
}

impl Default for JsonLines {
    fn default() -> Self {
        Self::new(MAX_LINE_LEN)
    }
}

impl Decoder for JsonLines {
    type Item = Bytes;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        loop {
            let Some(pos) = buf[self.scanned..].iter().position(|b| *b == b'\n') else {
                self.scanned = buf.len();
                if buf.len() > self.max_len {
                    return Err(CodecError::LineTooLong { max: self.max_len });
                }
                return Ok(None);
            };
            let end = self.scanned + pos;
            self.scanned = 0;
            if end > self.max_len {
                return Err(CodecError::LineTooLong { max: self.max_len });
            }
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            // Blank lines carry nothing; skip them rather than answer them.
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            return Ok(Some(line.freeze()));
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        match self.decode(buf)? {
            Some(line) => Ok(Some(line)),
            None if buf.is_empty() || buf.iter().all(|b| b.is_ascii_whitespace()) => {
                buf.clear();
                Ok(None)
            }
            // A last line without its newline still counts.
            None => {
                self.scanned = 0;
                let line = buf.split_to(buf.len());
                Ok(Some(line.freeze()))
            }
        }
    }
}

impl<T: Serialize> Encoder<T> for JsonLines {
    type Error = CodecError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), CodecError> {
        let mut w = dst.writer();
        serde_json::to_writer(&mut w, &item)?;
        let dst = w.into_inner();
        dst.put_u8(b'\n');
        Ok(())
    }
}

/// Pre-encoded lines pass through unchanged (the server encodes an event once and
/// sends the same bytes to every client).
#[derive(Debug, Clone)]
pub struct RawLine(pub Bytes);

impl Encoder<RawLine> for JsonLines {
    type Error = CodecError;

    fn encode(&mut self, item: RawLine, dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.extend_from_slice(&item.0);
        if !item.0.ends_with(b"\n") {
            dst.put_u8(b'\n');
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut JsonLines, input: &[u8]) -> Vec<Result<Bytes, String>> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(l)) => out.push(Ok(l)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn splits_lines_and_skips_blank_ones() {
        let mut c = JsonLines::default();
        let out = decode_all(&mut c, b"{\"a\":1}\n\n  \r\n{\"b\":2}\r\n{\"c\"");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].as_ref().unwrap().as_ref(), b"{\"a\":1}");
        assert_eq!(out[1].as_ref().unwrap().as_ref(), b"{\"b\":2}");
    }

    #[test]
    fn partial_line_completes_later() {
        let mut c = JsonLines::default();
        let mut buf = BytesMut::from(&b"{\"a\""[..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b":1}\n");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap().as_ref(), b"{\"a\":1}");
    }

    #[test]
    fn invalid_utf8_is_passed_through_for_the_caller_to_answer() {
        let mut c = JsonLines::default();
        let out = decode_all(&mut c, b"\xff\xfe\n{}\n");
        assert_eq!(out[0].as_ref().unwrap().as_ref(), b"\xff\xfe");
        assert_eq!(out[1].as_ref().unwrap().as_ref(), b"{}");
    }

    #[test]
    fn over_long_line_is_an_error_with_or_without_newline() {
        let mut c = JsonLines::new(16);
        let out = decode_all(&mut c, &[b'x'; 17]);
        assert!(out[0].as_ref().unwrap_err().contains("longer than 16"));
        let mut c = JsonLines::new(16);
        let mut long = vec![b'x'; 20];
        long.push(b'\n');
        let out = decode_all(&mut c, &long);
        assert!(out[0].is_err());
        // Exactly at the limit is fine.
        let mut c = JsonLines::new(16);
        let mut ok = vec![b'x'; 16];
        ok.push(b'\n');
        assert!(decode_all(&mut c, &ok)[0].is_ok());
    }

    #[test]
    fn eof_yields_last_unterminated_line() {
        let mut c = JsonLines::default();
        let mut buf = BytesMut::from(&b"{\"a\":1}"[..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert_eq!(
            c.decode_eof(&mut buf).unwrap().unwrap().as_ref(),
            b"{\"a\":1}"
        );
        assert!(c.decode_eof(&mut buf).unwrap().is_none());
    }

    #[test]
    fn encodes_one_line() {
        let mut c = JsonLines::default();
        let mut dst = BytesMut::new();
        c.encode(serde_json::json!({"x": "a\nb"}), &mut dst)
            .unwrap();
        assert_eq!(&dst[..], b"{\"x\":\"a\\nb\"}\n");
        c.encode(RawLine(Bytes::from_static(b"{}")), &mut dst)
            .unwrap();
        assert!(dst.ends_with(b"{}\n"));
    }
}
