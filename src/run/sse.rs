//! Just enough of a server-sent events parser for the agent's
//! `/v1/leader/watch`: `event:` and `data:` fields, comments (keep-alives)
//! and blank-line dispatch. Bytes in, whole events out.

/// Largest event (or partial line) kept before the stream counts as broken:
/// the agent's events are a few hundred bytes.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `message` when the event had no `event:` field.
    pub name: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// The event grew beyond [`MAX_EVENT_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// Incremental parser: [`Parser::push`] bytes, then take events with
/// [`Parser::next_event`] until it returns `Ok(None)`.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pos: usize,
    name: String,
    data: String,
    has_data: bool,
}

impl Parser {
    pub fn push(&mut self, chunk: &[u8]) {
        // Compact lazily so a chunk of many events costs one move.
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    pub fn next_event(&mut self) -> Result<Option<SseEvent>, TooLarge> {
        while let Some(end) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
            let raw = &self.buf[self.pos..self.pos + end];
            self.pos += end + 1;
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            if line.is_empty() {
                if self.has_data {
                    let name = std::mem::take(&mut self.name);
                    self.has_data = false;
                    return Ok(Some(SseEvent {
                        name: if name.is_empty() {
                            "message".to_owned()
                        } else {
                            name
                        },
                        data: std::mem::take(&mut self.data),
                    }));
                }
                self.name.clear();
                continue;
            }
            let line = String::from_utf8_lossy(line);
            let (field, value) = match line.split_once(':') {
                // A comment: the agent's keep-alive.
                Some(("", _)) => continue,
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => value.clone_into(&mut self.name),
                "data" => {
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
            if self.data.len() + self.name.len() > MAX_EVENT_BYTES {
                return Err(TooLarge);
            }
        }
        if self.buf.len() - self.pos > MAX_EVENT_BYTES {
            return Err(TooLarge);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&str]) -> Vec<SseEvent> {
        let mut parser = Parser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.push(chunk.as_bytes());
            while let Some(event) = parser.next_event().expect("size") {
                out.push(event);
            }
        }
        out
    }

    fn ev(name: &str, data: &str) -> SseEvent {
        SseEvent {
            name: name.into(),
            data: data.into(),
        }
    }

    #[test]
    fn table() {
        let cases: &[(&str, &[&str], Vec<SseEvent>)] = &[
            (
                "one event",
                &["event: leader\ndata: {\"a\":1}\n\n"],
                vec![ev("leader", "{\"a\":1}")],
            ),
            (
                "split across chunks anywhere",
                &["eve", "nt: leader\nda", "ta: x\n", "\n"],
                vec![ev("leader", "x")],
            ),
            (
                "keep-alive comments are skipped",
                &[":\n\n: ping\n\nevent: leader\ndata: y\n\n"],
                vec![ev("leader", "y")],
            ),
            (
                "CRLF line ends",
                &["event: leader\r\ndata: z\r\n\r\n"],
                vec![ev("leader", "z")],
            ),
            (
                "multi-line data and no event name",
                &["data: a\ndata: b\n\n"],
                vec![ev("message", "a\nb")],
            ),
            (
                "no dispatch before the blank line",
                &["event: leader\ndata: a\n"],
                vec![],
            ),
            (
                "an event without data is dropped, its name too",
                &["event: other\n\ndata: q\n\n"],
                vec![ev("message", "q")],
            ),
            (
                "two events in one chunk",
                &["event: leader\ndata: 1\n\nevent: leader\ndata: 2\n\n"],
                vec![ev("leader", "1"), ev("leader", "2")],
            ),
        ];
        for (name, chunks, expected) in cases {
            assert_eq!(&events(chunks), expected, "{name}");
        }
    }

    #[test]
    fn an_endless_line_is_an_error() {
        let mut parser = Parser::default();
        parser.push(&vec![b'x'; MAX_EVENT_BYTES + 1]);
        assert_eq!(parser.next_event(), Err(TooLarge));
    }
}
