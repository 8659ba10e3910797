//! The NATS client protocol, sans-IO: a parser for what the server sends
//! and encoders for what the client sends.
//!
//! The protocol is text control lines ending in CRLF, some followed by a
//! payload of a stated length and another CRLF
//! (<https://docs.nats.io/reference/reference-protocols/nats-protocol>).
//! The server is part of the operator's own infrastructure, but its bytes
//! still arrive over a socket, so the parser is strict and bounded: a
//! control line longer than [`MAX_CONTROL_LINE`] or a payload larger than
//! [`MAX_PAYLOAD`] is an error, never an allocation, and no input panics
//! (fuzzed as `nats_parser`).

use bytes::{Buf, Bytes, BytesMut};

/// Longest control line accepted (without its CRLF), in bytes. The NATS
/// server's own default is 4096.
pub const MAX_CONTROL_LINE: usize = 4096;

/// Largest payload accepted, in bytes (the NATS server's default
/// `max_payload` is 1 MiB).
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// Longest subject this client sends or accepts.
pub const MAX_SUBJECT: usize = 256;

/// One operation the server sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerOp {
    /// `INFO {json}`: the server's description of itself.
    Info(String),
    /// `MSG subject sid [reply] len` and its payload.
    Msg {
        /// The subject it was published on.
        subject: String,
        /// The subscription it matched.
        sid: u64,
        /// Where replies go, if the publisher asked for them.
        reply: Option<String>,
        /// The bytes published.
        payload: Bytes,
    },
    /// `PING`: answer with `PONG`.
    Ping,
    /// `PONG`: the answer to one of our `PING`s.
    Pong,
    /// `+OK` (only in verbose mode).
    Ok,
    /// `-ERR 'message'`.
    Err(String),
}

/// Bytes that are not the NATS protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A control line is longer than [`MAX_CONTROL_LINE`].
    #[error("control line longer than {MAX_CONTROL_LINE} bytes")]
    LineTooLong,
    /// A message announces more than [`MAX_PAYLOAD`] bytes.
    #[error("message payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLarge(u64),
    /// A control line is not well formed.
    #[error("malformed {op} line: {why}")]
    Malformed {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// An operation this client does not know (or did not ask for, like
    /// `HMSG`: it never enables headers).
    #[error("unknown operation {0:?}")]
    UnknownOp(String),
    /// A payload is not followed by CRLF.
    #[error("message payload is not followed by CRLF")]
    BadPayloadEnd,
}

/// A message whose control line was read, waiting for its payload.
#[derive(Debug)]
struct PendingMsg {
    subject: String,
    sid: u64,
    reply: Option<String>,
    len: usize,
}

/// Turns the server's bytes into [`ServerOp`]s. Feed it what the socket
/// gives ([`Parser::buffer`]), then call [`Parser::next_op`] until it returns
/// `Ok(None)`. After an error the connection must be dropped.
#[derive(Debug, Default)]
pub struct Parser {
    buf: BytesMut,
    pending: Option<PendingMsg>,
}

impl Parser {
    /// A parser with an empty buffer.
    pub fn new() -> Self {
        Parser::default()
    }

    /// The buffer to read socket bytes into (append only).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends bytes received from the server.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held that do not yet make a whole operation.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Gives back spare buffer memory while the connection is quiet.
    pub fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 8192 {
            self.buf = BytesMut::new();
        }
    }

    /// The next complete operation, `Ok(None)` if more bytes are needed.
    pub fn next_op(&mut self) -> Result<Option<ServerOp>, ProtoError> {
        if let Some(p) = &self.pending {
            if self.buf.len() < p.len + 2 {
                return Ok(None);
            }
            if &self.buf[p.len..p.len + 2] != b"\r\n" {
                return Err(ProtoError::BadPayloadEnd);
            }
            let p = self.pending.take().expect("checked");
            let payload = self.buf.split_to(p.len).freeze();
            self.buf.advance(2);
            return Ok(Some(ServerOp::Msg {
                subject: p.subject,
                sid: p.sid,
                reply: p.reply,
                payload,
            }));
        }
        let scan = self.buf.len().min(MAX_CONTROL_LINE + 2);
        let Some(end) = self.buf[..scan].windows(2).position(|w| w == b"\r\n") else {
            if self.buf.len() > MAX_CONTROL_LINE + 1 {
                return Err(ProtoError::LineTooLong);
            }
            return Ok(None);
        };
        let line = self.buf.split_to(end + 2);
        let line = &line[..end];
        let (op, rest) = split_op(line);
        match op.to_ascii_uppercase().as_slice() {
            b"PING" => Ok(Some(ServerOp::Ping)),
            b"PONG" => Ok(Some(ServerOp::Pong)),
            b"+OK" => Ok(Some(ServerOp::Ok)),
            b"-ERR" => Ok(Some(ServerOp::Err(
                String::from_utf8_lossy(rest)
                    .trim()
                    .trim_matches('\'')
                    .to_owned(),
            ))),
            b"INFO" => {
                let json = std::str::from_utf8(rest).map_err(|_| ProtoError::Malformed {
                    op: "INFO",
                    why: "not UTF-8",
                })?;
                Ok(Some(ServerOp::Info(json.trim().to_owned())))
            }
            b"MSG" => {
                self.pending = Some(parse_msg(rest)?);
                self.next_op()
            }
            _ => Err(ProtoError::UnknownOp(
                String::from_utf8_lossy(&op[..op.len().min(16)]).into_owned(),
            )),
        }
    }
}

/// Splits a control line into its operation name and the rest.
fn split_op(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[]),
    }
}

fn parse_msg(rest: &[u8]) -> Result<PendingMsg, ProtoError> {
    let malformed = |why| ProtoError::Malformed { op: "MSG", why };
    let text = std::str::from_utf8(rest).map_err(|_| malformed("not UTF-8"))?;
    let args: Vec<&str> = text.split_ascii_whitespace().collect();
    let (subject, sid, reply, len) = match args.as_slice() {
        [subject, sid, len] => (*subject, *sid, None, *len),
        [subject, sid, reply, len] => (*subject, *sid, Some(*reply), *len),
        _ => return Err(malformed("expected subject, sid, optional reply, length")),
    };
    if !valid_subject(subject) {
        return Err(malformed("invalid subject"));
    }
    if let Some(r) = reply
        && !valid_subject(r)
    {
        return Err(malformed("invalid reply subject"));
    }
    let sid: u64 = sid.parse().map_err(|_| malformed("sid is not a number"))?;
    let len: u64 = len
        .parse()
        .map_err(|_| malformed("length is not a number"))?;
    if len > MAX_PAYLOAD as u64 {
        return Err(ProtoError::PayloadTooLarge(len));
    }
    Ok(PendingMsg {
        subject: subject.to_owned(),
        sid,
        reply: reply.map(str::to_owned),
        len: len as usize,
    })
}

/// Whether `s` can be sent as a subject: 1–[`MAX_SUBJECT`] printable ASCII
/// bytes without whitespace, no empty token.
pub fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SUBJECT
        && s.bytes().all(|b| b.is_ascii_graphic())
        && s.split('.').all(|t| !t.is_empty())
}

/// Appends `CONNECT {json}`. `name` and credentials must already be
/// JSON-safe; [`connect_json`] builds the object.
pub fn encode_connect(json: &str, out: &mut BytesMut) {
    out.extend_from_slice(b"CONNECT ");
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The CONNECT options this client sends: no verbose `+OK`s, no echo of
/// its own publishes, no headers.
pub fn connect_json(name: &str, user: Option<(&str, &str)>) -> String {
    let mut json = format!(
        "{{\"verbose\":false,\"pedantic\":false,\"echo\":false,\"headers\":false,\
         \"lang\":\"rust-postern\",\"version\":\"{}\",\"protocol\":1,\"name\":{}",
        env!("CARGO_PKG_VERSION"),
        json_string(name)
    );
    if let Some((u, p)) = user {
        json.push_str(&format!(
            ",\"user\":{},\"pass\":{}",
            json_string(u),
            json_string(p)
        ));
    }
    json.push('}');
    json
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Appends `PUB subject len` and the payload. The subject must satisfy
/// [`valid_subject`] and the payload be at most [`MAX_PAYLOAD`] bytes (the
/// caller checks; the server would otherwise close the connection).
pub fn encode_pub(subject: &str, payload: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Appends `SUB subject sid`.
pub fn encode_sub(subject: &str, sid: u64, out: &mut BytesMut) {
    out.extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
}

/// Appends `UNSUB sid`.
pub fn encode_unsub(sid: u64, out: &mut BytesMut) {
    out.extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes());
}

/// Appends `PING`.
pub fn encode_ping(out: &mut BytesMut) {
    out.extend_from_slice(b"PING\r\n");
}

/// Appends `PONG`.
pub fn encode_pong(out: &mut BytesMut) {
    out.extend_from_slice(b"PONG\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8]) -> Result<Vec<ServerOp>, ProtoError> {
        let mut p = Parser::new();
        p.feed(input);
        let mut ops = Vec::new();
        while let Some(op) = p.next_op()? {
            ops.push(op);
        }
        Ok(ops)
    }

    #[test]
    fn parses_every_operation() {
        let ops = parse_all(
            b"INFO {\"server_id\":\"x\"}\r\nPING\r\npong\r\n+OK\r\n-ERR 'Unknown Protocol Operation'\r\n\
              MSG a.b 7 5\r\nhello\r\nMSG a.b 8 reply.to 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            ops,
            vec![
                ServerOp::Info("{\"server_id\":\"x\"}".into()),
                ServerOp::Ping,
                ServerOp::Pong,
                ServerOp::Ok,
                ServerOp::Err("Unknown Protocol Operation".into()),
                ServerOp::Msg {
                    subject: "a.b".into(),
                    sid: 7,
                    reply: None,
                    payload: Bytes::from_static(b"hello"),
                },
                ServerOp::Msg {
                    subject: "a.b".into(),
                    sid: 8,
                    reply: Some("reply.to".into()),
                    payload: Bytes::new(),
                },
            ]
        );
    }

    #[test]
    fn waits_for_whole_operations() {
        let mut p = Parser::new();
        p.feed(b"MSG s 1 3\r\nab");
        assert_eq!(p.next_op(), Ok(None));
        p.feed(b"c\r");
        assert_eq!(p.next_op(), Ok(None));
        p.feed(b"\nPI");
        assert!(matches!(p.next_op(), Ok(Some(ServerOp::Msg { .. }))));
        assert_eq!(p.next_op(), Ok(None));
        p.feed(b"NG\r\n");
        assert_eq!(p.next_op(), Ok(Some(ServerOp::Ping)));
    }

    #[test]
    fn refuses_what_is_not_nats() {
        let long = vec![b'A'; MAX_CONTROL_LINE + 2];
        assert_eq!(parse_all(&long), Err(ProtoError::LineTooLong));
        assert_eq!(
            parse_all(b"MSG s 1 2000000\r\n"),
            Err(ProtoError::PayloadTooLarge(2_000_000))
        );
        assert_eq!(
            parse_all(b"MSG s 1 2\r\nabXY"),
            Err(ProtoError::BadPayloadEnd)
        );
        assert!(matches!(
            parse_all(b"MSG s x 2\r\nab\r\n"),
            Err(ProtoError::Malformed { .. })
        ));
        assert!(matches!(
            parse_all(b"MSG a..b 1 2\r\nab\r\n"),
            Err(ProtoError::Malformed { .. })
        ));
        assert!(matches!(
            parse_all(b"HMSG s 1 2 4\r\n"),
            Err(ProtoError::UnknownOp(_))
        ));
        assert!(matches!(
            parse_all(b"MSG\r\n"),
            Err(ProtoError::Malformed { .. })
        ));
    }

    #[test]
    fn subjects_are_checked() {
        assert!(valid_subject("postern.wake.ab.1"));
        for bad in ["", "a b", "a..b", ".a", "a.", "a\tb", "ü"] {
            assert!(!valid_subject(bad), "{bad:?}");
        }
        assert!(!valid_subject(&"a".repeat(MAX_SUBJECT + 1)));
    }

    #[test]
    fn connect_options_are_json_escaped() {
        let json = connect_json("node \"1\"\n", Some(("u", "p\\")));
        assert!(
            json.contains("\"name\":\"node \\\"1\\\"\\u000a\""),
            "{json}"
        );
        assert!(json.contains("\"pass\":\"p\\\\\""), "{json}");
        assert!(json.contains("\"echo\":false"));
    }

    proptest! {
        /// Whatever the bytes and however they are split, the parser never
        /// panics and gives the same answer as when fed at once.
        #[test]
        fn split_feeding_changes_nothing(data in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..600) {
            let whole = parse_all(&data);
            let mut p = Parser::new();
            let cut = cut.min(data.len());
            p.feed(&data[..cut]);
            let mut ops = Vec::new();
            let mut result = Ok(());
            loop {
                match p.next_op() {
                    Ok(Some(op)) => ops.push(op),
                    Ok(None) => break,
                    Err(e) => { result = Err(e); break; }
                }
            }
            if result.is_ok() {
                p.feed(&data[cut..]);
                loop {
                    match p.next_op() {
                        Ok(Some(op)) => ops.push(op),
                        Ok(None) => break,
                        Err(e) => { result = Err(e); break; }
                    }
                }
            }
            match (whole, result) {
                (Ok(w), Ok(())) => prop_assert_eq!(w, ops),
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (w, r) => prop_assert!(false, "whole {:?} split {:?}", w, r),
            }
        }

        /// What the encoder writes as a publish parses back as the message.
        #[test]
        fn published_bytes_round_trip(
            subject in "[a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,4}",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            sid in any::<u64>(),
        ) {
            let mut out = BytesMut::new();
            encode_pub(&subject, &payload, &mut out);
            // The server turns PUB into MSG with the subscriber's sid.
            let wire = String::from_utf8_lossy(&out[..out.iter().position(|b| *b == b'\r').unwrap()]).into_owned();
            let len: usize = wire.rsplit(' ').next().unwrap().parse().unwrap();
            prop_assert_eq!(len, payload.len());
            let mut msg = BytesMut::new();
            msg.extend_from_slice(format!("MSG {subject} {sid} {len}\r\n").as_bytes());
            msg.extend_from_slice(&payload);
            msg.extend_from_slice(b"\r\n");
            let ops = parse_all(&msg).unwrap();
            prop_assert_eq!(ops, vec![ServerOp::Msg { subject, sid, reply: None, payload: Bytes::from(payload) }]);
        }
    }
}
