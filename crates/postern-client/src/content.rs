//! What a message says, as encoded into the opaque payload the server
//! stores. Only clients read it; the server never does.

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
