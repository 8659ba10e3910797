//! The few bytes of an MLS message that the delivery service reads.
//!
//! The server is the MLS delivery service (RFC 9420 §13): it orders each
//! group's commits by epoch and fans messages out. For that it needs the
//! public header of an `MLSMessage` — wire format, group id, epoch and
//! content type — and nothing else. This module parses exactly that, from
//! untrusted bytes, without a dependency on an MLS implementation: the
//! server never holds MLS state and never sees content.
//!
//! The layouts (RFC 9420 §6):
//!
//! ```text
//! MLSMessage     = version(u16 = 1) wire_format(u16) body
//! PublicMessage  = group_id<V> epoch(u64) sender authenticated_data<V> content_type(u8) …
//! PrivateMessage = group_id<V> epoch(u64) content_type(u8) …
//! Sender         = sender_type(u8) [leaf_index(u32) | sender_index(u32) | nothing]
//! <V>            = a QUIC-style variable-length integer length, then that many bytes
//! ```

/// `mls10`, the only protocol version there is.
pub const MLS_VERSION_10: u16 = 1;

/// Longest group id the service accepts. Postern's clients use 16 random
/// bytes; RFC 9420 leaves the length open, so a bound is ours to choose.
pub const MAX_GROUP_ID_LEN: usize = 64;

/// The ciphersuites a Postern deployment may choose (RFC 9420 §17.1
/// numbers and names): those whose signatures are Ed25519, the scheme of
/// device identity keys. The first is the default.
pub const CIPHERSUITES: [(u16, &str); 2] = [
    (0x0001, "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"),
    (
        0x0003,
        "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519",
    ),
];

/// The number of a supported ciphersuite, by name.
pub fn ciphersuite_by_name(name: &str) -> Option<u16> {
    CIPHERSUITES
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(name.trim()))
        .map(|(id, _)| *id)
}

/// What kind of MLS message a byte string holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFormat {
    /// A signed, unencrypted handshake or application message.
    PublicMessage,
    /// An encrypted message; only its header is readable.
    PrivateMessage,
    /// A Welcome for new members.
    Welcome,
    /// A signed GroupInfo, for joins.
    GroupInfo,
    /// A KeyPackage, for being added to groups.
    KeyPackage,
}

/// The content type of a framed (public or private) message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    /// An application message.
    Application,
    /// A standalone proposal.
    Proposal,
    /// A commit.
    Commit,
}

/// Who sent a public message, as its header says. Private messages encrypt
/// their sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// The member at this leaf index.
    Member(u32),
    /// An external sender (by index into the group's external senders).
    External(u32),
    /// A non-member proposing to be added.
    NewMemberProposal,
    /// A non-member joining by external commit.
    NewMemberCommit,
}

/// The public header of a public or private message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramedHeader<'a> {
    /// Public or private.
    pub wire_format: WireFormat,
    /// The group the message belongs to.
    pub group_id: &'a [u8],
    /// The epoch it was made in.
    pub epoch: u64,
    /// Application, proposal or commit.
    pub content_type: ContentType,
    /// The sender, for public messages; `None` for private ones.
    pub sender: Option<Sender>,
}

/// Why bytes are not the MLS message they should be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MlsHeaderError {
    /// The bytes end before the header does.
    #[error("the MLS message is truncated")]
    Truncated,
    /// The protocol version is not mls10.
    #[error("unsupported MLS protocol version {0}")]
    Version(u16),
    /// An unknown wire format.
    #[error("unknown MLS wire format {0}")]
    WireFormat(u16),
    /// An unknown content type.
    #[error("unknown MLS content type {0}")]
    ContentType(u8),
    /// An unknown sender type.
    #[error("unknown MLS sender type {0}")]
    SenderType(u8),
    /// A variable-length integer uses the reserved prefix or is not minimal.
    #[error("malformed MLS length field")]
    Length,
    /// The group id is longer than [`MAX_GROUP_ID_LEN`].
    #[error("group id longer than {MAX_GROUP_ID_LEN} bytes")]
    GroupIdTooLong,
    /// A well-formed message of another wire format than required.
    #[error("expected {expected:?}, found {found:?}")]
    Unexpected {
        /// What the caller needed.
        expected: WireFormat,
        /// What the bytes hold.
        found: WireFormat,
    },
    /// The message is public or private but not of the required content type.
    #[error("expected a {expected:?} message, found {found:?}")]
    UnexpectedContent {
        /// What the caller needed.
        expected: ContentType,
        /// What the message carries.
        found: ContentType,
    },
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MlsHeaderError> {
        if self.bytes.len() < n {
            return Err(MlsHeaderError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, MlsHeaderError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, MlsHeaderError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, MlsHeaderError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, MlsHeaderError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// RFC 9420 §2.1.2: a 1-, 2- or 4-byte length, minimally encoded.
    fn varint(&mut self) -> Result<usize, MlsHeaderError> {
        let first = self.u8()?;
        let (len, min) = match first >> 6 {
            0 => return Ok(usize::from(first & 0x3f)),
            1 => (2, 64),
            2 => (4, 16384),
            _ => return Err(MlsHeaderError::Length),
        };
        let mut value = u32::from(first & 0x3f);
        for &b in self.take(len - 1)? {
            value = (value << 8) | u32::from(b);
        }
        if value < min {
            return Err(MlsHeaderError::Length);
        }
        usize::try_from(value).map_err(|_| MlsHeaderError::Length)
    }

    fn vector(&mut self) -> Result<&'a [u8], MlsHeaderError> {
        let len = self.varint()?;
        self.take(len)
    }
}

fn content_type(b: u8) -> Result<ContentType, MlsHeaderError> {
    match b {
        1 => Ok(ContentType::Application),
        2 => Ok(ContentType::Proposal),
        3 => Ok(ContentType::Commit),
        other => Err(MlsHeaderError::ContentType(other)),
    }
}

fn start(bytes: &[u8]) -> Result<(WireFormat, Reader<'_>), MlsHeaderError> {
    let mut r = Reader { bytes };
    let version = r.u16()?;
    if version != MLS_VERSION_10 {
        return Err(MlsHeaderError::Version(version));
    }
    let wire_format = match r.u16()? {
        1 => WireFormat::PublicMessage,
        2 => WireFormat::PrivateMessage,
        3 => WireFormat::Welcome,
        4 => WireFormat::GroupInfo,
        5 => WireFormat::KeyPackage,
        other => return Err(MlsHeaderError::WireFormat(other)),
    };
    Ok((wire_format, r))
}

/// The wire format of an `MLSMessage`.
pub fn wire_format(bytes: &[u8]) -> Result<WireFormat, MlsHeaderError> {
    start(bytes).map(|(w, _)| w)
}

/// Checks that `bytes` start like an `MLSMessage` of the `expected` wire
/// format (the body itself is left to the clients, which verify it).
pub fn expect_wire_format(bytes: &[u8], expected: WireFormat) -> Result<(), MlsHeaderError> {
    let found = wire_format(bytes)?;
    if found != expected {
        return Err(MlsHeaderError::Unexpected { expected, found });
    }
    Ok(())
}

/// The public header of a framed (public or private) message.
pub fn framed_header(bytes: &[u8]) -> Result<FramedHeader<'_>, MlsHeaderError> {
    let (wire_format, mut r) = start(bytes)?;
    if !matches!(
        wire_format,
        WireFormat::PublicMessage | WireFormat::PrivateMessage
    ) {
        return Err(MlsHeaderError::Unexpected {
            expected: WireFormat::PrivateMessage,
            found: wire_format,
        });
    }
    let group_id = r.vector()?;
    if group_id.len() > MAX_GROUP_ID_LEN {
        return Err(MlsHeaderError::GroupIdTooLong);
    }
    let epoch = r.u64()?;
    let (sender, content_type) = if wire_format == WireFormat::PublicMessage {
        let sender = match r.u8()? {
            1 => Sender::Member(r.u32()?),
            2 => Sender::External(r.u32()?),
            3 => Sender::NewMemberProposal,
            4 => Sender::NewMemberCommit,
            other => return Err(MlsHeaderError::SenderType(other)),
        };
        r.vector()?; // authenticated_data
        (Some(sender), content_type(r.u8()?)?)
    } else {
        (None, content_type(r.u8()?)?)
    };
    Ok(FramedHeader {
        wire_format,
        group_id,
        epoch,
        content_type,
        sender,
    })
}

/// The header of a framed message that must carry `expected` content.
pub fn expect_framed(
    bytes: &[u8],
    expected: ContentType,
) -> Result<FramedHeader<'_>, MlsHeaderError> {
    let header = framed_header(bytes)?;
    if header.content_type != expected {
        return Err(MlsHeaderError::UnexpectedContent {
            expected,
            found: header.content_type,
        });
    }
    Ok(header)
}

/// Encodes a length the way MLS does (for tests and tools that build
/// headers).
pub fn encode_varint(len: usize, out: &mut Vec<u8>) {
    match len {
        0..=63 => out.push(len as u8),
        64..=16383 => out.extend_from_slice(&(0x4000 | len as u16).to_be_bytes()),
        _ => {
            let len = u32::try_from(len).unwrap_or(0x3fff_ffff).min(0x3fff_ffff);
            out.extend_from_slice(&(0x8000_0000 | len).to_be_bytes())
        }
    }
}

/// The header of a private message (then any body): what a client that
/// is not a real MLS implementation — a load generator, a test — needs to
/// pass the delivery service's checks.
pub fn private_message_header(group_id: &[u8], epoch: u64, content: ContentType) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + group_id.len());
    out.extend_from_slice(&MLS_VERSION_10.to_be_bytes());
    out.extend_from_slice(&2u16.to_be_bytes());
    encode_varint(group_id.len(), &mut out);
    out.extend_from_slice(group_id);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.push(match content {
        ContentType::Application => 1,
        ContentType::Proposal => 2,
        ContentType::Commit => 3,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_a_private_message_header() {
        let mut msg = private_message_header(&[7; 16], 42, ContentType::Commit);
        msg.extend_from_slice(&[0, 0, 0]);
        let h = framed_header(&msg).unwrap();
        assert_eq!(h.wire_format, WireFormat::PrivateMessage);
        assert_eq!(h.group_id, &[7; 16]);
        assert_eq!(h.epoch, 42);
        assert_eq!(h.content_type, ContentType::Commit);
        assert_eq!(h.sender, None);
        assert!(expect_framed(&msg, ContentType::Application).is_err());
    }

    #[test]
    fn reads_a_public_external_commit_header() {
        let mut msg = vec![0, 1, 0, 1, 2, 0xaa, 0xbb];
        msg.extend_from_slice(&9u64.to_be_bytes());
        msg.push(4); // new_member_commit
        msg.extend_from_slice(&[0x40, 0x40]); // 64 bytes of aad, a two-byte length
        msg.extend_from_slice(&[0xff; 64]);
        msg.push(3);
        let h = framed_header(&msg).unwrap();
        assert_eq!(h.group_id, &[0xaa, 0xbb]);
        assert_eq!(h.epoch, 9);
        assert_eq!(h.sender, Some(Sender::NewMemberCommit));
        assert_eq!(h.content_type, ContentType::Commit);
    }

    #[test]
    fn refuses_what_is_not_a_framed_message() {
        assert_eq!(
            framed_header(&[0, 2, 0, 2]),
            Err(MlsHeaderError::Version(2))
        );
        assert_eq!(
            framed_header(&[0, 1, 0, 9]),
            Err(MlsHeaderError::WireFormat(9))
        );
        assert!(matches!(
            framed_header(&[0, 1, 0, 3, 1, 2, 3]),
            Err(MlsHeaderError::Unexpected { .. })
        ));
        assert_eq!(framed_header(&[0, 1, 0]), Err(MlsHeaderError::Truncated));
        // A two-byte length holding a value that fits in one byte.
        assert_eq!(
            framed_header(&[0, 1, 0, 2, 0x40, 0x01, 0]),
            Err(MlsHeaderError::Length)
        );
        // The reserved 0b11 prefix.
        assert_eq!(
            framed_header(&[0, 1, 0, 2, 0xc0]),
            Err(MlsHeaderError::Length)
        );
        let long = private_message_header(&[1; 65], 0, ContentType::Application);
        assert_eq!(framed_header(&long), Err(MlsHeaderError::GroupIdTooLong));
    }

    proptest! {
        #[test]
        fn header_round_trips(group in proptest::collection::vec(any::<u8>(), 0..=64),
                              epoch: u64, kind in 0..3usize,
                              body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let content = [ContentType::Application, ContentType::Proposal, ContentType::Commit][kind];
            let mut msg = private_message_header(&group, epoch, content);
            msg.extend_from_slice(&body);
            let h = framed_header(&msg).unwrap();
            prop_assert_eq!(h.group_id, &group[..]);
            prop_assert_eq!(h.epoch, epoch);
            prop_assert_eq!(h.content_type, content);
        }

        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = framed_header(&bytes);
            let _ = wire_format(&bytes);
        }

        #[test]
        fn varints_round_trip(len in 0usize..0x3fff_ffff) {
            let mut out = Vec::new();
            encode_varint(len, &mut out);
            let mut r = Reader { bytes: &out };
            prop_assert_eq!(r.varint().unwrap(), len);
            prop_assert!(r.bytes.is_empty());
        }
    }
}
