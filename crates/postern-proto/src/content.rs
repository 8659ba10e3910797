//! What a message says, as one client encodes it for another inside the
//! opaque payload. Only clients read it: the server must never decode it.
//! (With MLS, this becomes the plaintext of an MLS application message.)

/// One message's content.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Content {
    /// The text.
    #[prost(string, tag = "1")]
    pub text: String,
    /// Sender's clock, ms since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub sent_at_ms: i64,
}
