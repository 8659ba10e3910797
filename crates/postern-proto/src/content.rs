//! What a message says, as one client encodes it for another: the plaintext
//! of an MLS application message (schema in `proto/content.proto`). Only
//! clients use this module; the server must never decode content — it only
//! ever holds it encrypted.

pub use crate::pb_content::*;

/// The content format version this crate writes.
pub const CONTENT_VERSION: u32 = 1;

/// The MLS GroupContext extension type that carries [`GroupMeta`], from the
/// private-use range of RFC 9420 §17.3.
pub const GROUP_META_EXTENSION: u16 = 0xF0A0;

impl Content {
    /// A content of the current version with this id, time and body.
    pub fn new(message_id: [u8; 16], sent_at_ms: i64, body: content::Body) -> Content {
        Content {
            version: CONTENT_VERSION,
            message_id: message_id.to_vec().into(),
            sent_at_ms,
            in_reply_to: Default::default(),
            body: Some(body),
        }
    }

    /// A text message.
    pub fn text(message_id: [u8; 16], sent_at_ms: i64, text: impl Into<String>) -> Content {
        Content::new(
            message_id,
            sent_at_ms,
            content::Body::Text(Text { text: text.into() }),
        )
    }

    /// This content as an answer to message `target`.
    pub fn replying_to(mut self, target: [u8; 16]) -> Content {
        self.in_reply_to = target.to_vec().into();
        self
    }
}

impl content::Body {
    /// Replaces the text of the sender's own message `target`.
    pub fn edit(target: [u8; 16], text: impl Into<String>) -> Self {
        content::Body::Edit(Edit {
            target: target.to_vec().into(),
            text: text.into(),
        })
    }

    /// Retracts the sender's own message `target`.
    pub fn delete(target: [u8; 16]) -> Self {
        content::Body::Delete(Delete {
            target: target.to_vec().into(),
        })
    }

    /// Reacts to `target` (or, with `remove`, takes the reaction back).
    pub fn reaction(target: [u8; 16], emoji: impl Into<String>, remove: bool) -> Self {
        content::Body::Reaction(Reaction {
            target: target.to_vec().into(),
            emoji: emoji.into(),
            remove,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn every_kind_round_trips_and_unknown_kinds_decode_as_none() {
        let id = [1; 16];
        let bodies = [
            content::Body::Text(Text { text: "hi".into() }),
            content::Body::edit(id, "hi!"),
            content::Body::delete(id),
            content::Body::reaction(id, "👍", false),
            content::Body::Attachment(Attachment {
                blob_id: vec![7; 16].into(),
                key: vec![8; 32].into(),
                sha256: vec![9; 32].into(),
                size: 1234,
                media_type: "image/jpeg".into(),
                filename: "cat.jpg".into(),
                caption: "a cat".into(),
            }),
            content::Body::Leave(Leave {}),
            content::Body::GroupName(GroupName {
                name: "club".into(),
            }),
        ];
        for body in bodies {
            let c = Content::new([2; 16], 5, body).replying_to(id);
            assert_eq!(Content::decode(&c.encode_to_vec()[..]).unwrap(), c);
        }
        // A body kind from a newer version (field 99) is skipped, not an error.
        let c = Content {
            body: None,
            ..Content::text([3; 16], 6, "x")
        };
        let mut bytes = c.encode_to_vec();
        bytes.extend_from_slice(&[0x9a, 0x06, 0x02, 0x08, 0x01]); // field 99, a message
        let decoded = Content::decode(&bytes[..]).unwrap();
        assert_eq!(decoded.body, None);
        assert_eq!(decoded.message_id, c.message_id);
    }
}
