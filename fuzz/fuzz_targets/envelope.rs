//! Every protobuf message a peer sends, decoded from arbitrary bytes: the
//! server decodes `ClientHello` and `Envelope` (which holds every request),
//! the client decodes `ServerHello` and `Envelope` (responses and pushes),
//! and `Content` and `GroupMeta` from other members (decrypted MLS payloads).
//! Whatever decodes must survive re-encoding unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::pb;
use prost::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(msg) = M::decode(data) {
        let again = M::decode(msg.encode_to_vec().as_slice()).expect("re-encoded message decodes");
        assert_eq!(msg, again);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<pb::Envelope>(data);
    round_trip::<pb::ClientHello>(data);
    round_trip::<pb::ServerHello>(data);
    round_trip::<postern_proto::content::Content>(data);
    round_trip::<postern_proto::content::GroupMeta>(data);
});
