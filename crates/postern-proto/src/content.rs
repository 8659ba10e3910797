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
    /// A text message.
    pub fn text(message_id: [u8; 16], sent_at_ms: i64, text: impl Into<String>) -> Content {
        Content {
            version: CONTENT_VERSION,
            message_id: message_id.to_vec().into(),
            sent_at_ms,
            in_reply_to: Default::default(),
            body: Some(content::Body::Text(Text { text: text.into() })),
        }
    }
}
