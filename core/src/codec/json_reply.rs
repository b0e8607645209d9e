//! The `json` reply, `{"type":"json","queryId":…,"data":"<rows as a JSON string>"}`, built
//! where the rows are encoded.
//!
//! A result's rows text can be megabytes. Escaping it into the reply is work proportional to
//! the result, so it belongs on the executor's thread, chunk by chunk while the rows are still
//! in cache, not on the thread that serves every connection. The core still owns the format:
//! the header comes from [`crate::RunQuery::json_header`], the escaping and the closing are
//! done here, and a [`JsonReply`] can only be made by [`JsonReplyWriter`].

use crate::QueryId;

/// The start of one query's `json` reply, up to the opening quote of `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonReplyHeader(String);

impl JsonReplyHeader {
    pub fn new(query_id: &QueryId) -> Self {
        JsonReplyHeader(format!(
            "{{\"type\":\"json\",\"queryId\":{},\"data\":\"",
            query_id.to_json()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What ends the reply after the escaped rows.
    pub fn closing(&self) -> &'static str {
        CLOSING
    }
}

/// What ends every reply: the closing quote of `data` and the object's brace.
const CLOSING: &str = "\"}";

/// A complete `json` reply frame text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonReply {
    text: String,
    header_len: usize,
}

impl JsonReply {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_text(self) -> String {
        self.text
    }

    /// The rows as the escaped content of `data` (between its quotes): what a cache keeps so
    /// that a later answer with another header needs no escaping
    /// ([`JsonReplyWriter::push_escaped_rows`]).
    pub fn escaped_rows(&self) -> &str {
        &self.text[self.header_len..self.text.len() - CLOSING.len()]
    }

    /// A reply written elsewhere in one go: `header`, the rows escaped as string content,
    /// then [`JsonReplyHeader::closing`] (what an executor that encodes into its own buffer
    /// wrote). `None` if `text` is not framed so.
    pub fn from_text(header: &JsonReplyHeader, text: String) -> Option<JsonReply> {
        let framed = text.starts_with(&header.0)
            && text.ends_with(CLOSING)
            && text.len() >= header.0.len() + CLOSING.len();
        let reply = JsonReply {
            text,
            header_len: header.0.len(),
        };
        debug_assert!(!framed || is_valid_string_content(reply.escaped_rows()));
        framed.then_some(reply)
    }

    /// The same rows answering another query (a waiter of the same flight).
    pub(crate) fn reheaded(&self, header: &JsonReplyHeader) -> JsonReply {
        let rows = &self.text[self.header_len..];
        let mut text = String::with_capacity(header.0.len() + rows.len());
        text.push_str(&header.0);
        text.push_str(rows);
        JsonReply {
            text,
            header_len: header.0.len(),
        }
    }
}

/// Builds a [`JsonReply`]: push the rows text in pieces of any size, then finish.
#[derive(Debug)]
pub struct JsonReplyWriter {
    text: Vec<u8>,
    header_len: usize,
}

impl JsonReplyWriter {
    /// `rows_hint`: the expected size of the rows text, to size the buffer once.
    pub fn new(header: &JsonReplyHeader, rows_hint: usize) -> Self {
        let mut text = Vec::with_capacity(header.0.len() + rows_hint + rows_hint / 4 + 2);
        text.extend_from_slice(header.0.as_bytes());
        JsonReplyWriter {
            text,
            header_len: header.0.len(),
        }
    }

    /// Appends `rows` escaped as the content of a JSON string.
    pub fn push_rows(&mut self, rows: &str) {
        escape_into(&mut self.text, rows);
    }

    /// Appends rows text the caller already escaped in one pass while writing it (with
    /// [`escape_string_content`] for the parts that need it): it must contain no `"`, `\` or
    /// control character that is not part of an escape. Checked in debug builds.
    pub fn push_escaped_rows(&mut self, escaped: &str) {
        debug_assert!(
            is_valid_string_content(escaped),
            "push_escaped_rows: text is not escaped JSON string content"
        );
        self.text.extend_from_slice(escaped.as_bytes());
    }

    pub fn finish(mut self) -> JsonReply {
        self.text.extend_from_slice(CLOSING.as_bytes());
        JsonReply {
            // Only whole `str`s and ASCII escapes were appended to a `String`'s bytes.
            text: String::from_utf8(self.text).expect("escaped UTF-8 stays UTF-8"),
            header_len: self.header_len,
        }
    }
}

/// Whether `text` can stand between the quotes of a JSON string as it is.
fn is_valid_string_content(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return false,
            byte if byte < 0x20 => return false,
            b'\\' => {
                match bytes.get(i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                    Some(b'u') if bytes.len() >= i + 6 => i += 6,
                    _ => return false,
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    true
}

/// Appends `text` escaped as the content of a JSON string (without the quotes), as
/// [`JsonReplyWriter::push_rows`] does: for callers that write rows already escaped.
pub fn escape_string_content(out: &mut Vec<u8>, text: &str) {
    escape_into(out, text);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// For each byte: 0 if it stands for itself in a JSON string, else the letter after the
/// backslash (`u` for `\u00XX`).
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Input bytes escaped per round through the stack buffer.
const BLOCK: usize = 4096;
/// Texts shorter than this are escaped straight into the output.
const SHORT_TEXT: usize = 256;

/// `\u00XX` for a control character.
fn unicode_escape(byte: u8) -> [u8; 6] {
    [
        b'\\',
        b'u',
        b'0',
        b'0',
        HEX[(byte >> 4) as usize],
        HEX[(byte & 0xf) as usize],
    ]
}

/// JSON string escaping (RFC 8259 §7). A rows text has a quote every few bytes at no regular
/// spacing, so both copying the runs between escapes (as general-purpose escapers do: many
/// tiny copies) and branching on each byte (a mispredicted branch per quote) are slow. Each
/// block is escaped into a stack buffer without a branch on the common bytes, then appended
/// in one copy.
pub(crate) fn escape_into(out: &mut Vec<u8>, text: &str) {
    out.reserve(text.len() + text.len() / 4);
    if text.len() < SHORT_TEXT {
        // Not worth setting up the stack buffer for (a small result, the closing `]`).
        for &byte in text.as_bytes() {
            match ESCAPE[byte as usize] {
                0 => out.push(byte),
                b'u' => out.extend_from_slice(&unicode_escape(byte)),
                letter => out.extend_from_slice(&[b'\\', letter]),
            }
        }
        return;
    }
    // Room for every byte of a block becoming `\u00XX`, plus the one spare byte written ahead.
    let mut escaped = [0u8; BLOCK * 6 + 1];
    for block in text.as_bytes().chunks(BLOCK) {
        let mut len = 0;
        for &byte in block {
            let letter = ESCAPE[byte as usize];
            if letter == b'u' {
                // Raw control characters: rare, so this branch is predicted.
                escaped[len..len + 6].copy_from_slice(&unicode_escape(byte));
                len += 6;
                continue;
            }
            let escapes = usize::from(letter != 0);
            // Either the byte itself, or a backslash followed by the letter; the letter slot is
            // overwritten by the next byte when unused.
            escaped[len] = if letter != 0 { b'\\' } else { byte };
            escaped[len + 1] = letter;
            len += 1 + escapes;
        }
        out.extend_from_slice(&escaped[..len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(id: QueryId, pieces: &[&str]) -> JsonReply {
        let mut writer = JsonReplyWriter::new(&JsonReplyHeader::new(&id), 0);
        for piece in pieces {
            writer.push_rows(piece);
        }
        writer.finish()
    }

    #[test]
    fn a_reply_is_the_rows_as_a_json_string_whatever_the_pieces() {
        let rows = "[{\"s\":\"a\\\"b\\\\c\\n\",\"t\":\"\u{1}\u{7f}é😀\u{8}\u{c}\"}]\r\t";
        let whole = reply(QueryId::Num("7".into()), &[rows]);
        let value: serde_json::Value = serde_json::from_str(whole.as_str()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type":"json","queryId":7,"data":rows})
        );
        let (a, b) = rows.split_at(9);
        assert_eq!(reply(QueryId::Num("7".into()), &[a, "", b]), whole);
        // Across the escaper's internal blocks too.
        let long = rows.repeat(1000);
        let value: serde_json::Value =
            serde_json::from_str(reply(QueryId::Num("7".into()), &[&long]).as_str()).unwrap();
        assert_eq!(value["data"], long.as_str());
    }

    #[test]
    fn rows_escaped_by_the_caller_make_the_same_reply() {
        let rows = "[{\"s\":\"a\\\"b\",\"n\":1}]";
        let mut escaped = Vec::new();
        escape_string_content(&mut escaped, rows);
        let escaped = String::from_utf8(escaped).unwrap();
        assert!(is_valid_string_content(&escaped));
        assert!(!is_valid_string_content(rows));
        let mut writer = JsonReplyWriter::new(&JsonReplyHeader::new(&QueryId::Num("7".into())), 0);
        writer.push_escaped_rows(&escaped);
        assert_eq!(writer.finish(), reply(QueryId::Num("7".into()), &[rows]));
    }
}
