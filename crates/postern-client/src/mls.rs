//! The MLS (RFC 9420) engine: openmls with the RustCrypto provider, its
//! state kept by openmls_sqlite_storage in the same SQLite file as the rest
//! of the home, so one transaction covers an MLS state change and what the
//! home records about it.
//!
//! This module is synchronous and knows nothing of the network: it turns
//! intentions (create a group, add these key packages, encrypt this) into
//! the bytes to send, and received bytes into events. The connection code
//! carries the bytes.
//!
//! Identity: a device's MLS signature key *is* its Ed25519 identity key
//! (the one it registered with the server), and its credential is a basic
//! credential naming its account and device number. A credential is
//! trusted only when the server's account directory lists that identity key
//! for that device ([`check_member`]): the binding the issue's "clients check
//! against the directory" asks for.

use std::collections::HashMap;

use ed25519_dalek::{Signer as _, SigningKey};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::signatures::{Signer, SignerError};
use postern_proto::content::{GROUP_META_EXTENSION, GroupMeta};
use postern_proto::ids::{AccountId, DeviceAddr};
use prost::Message as _;
use rusqlite::Connection;

/// The ciphersuite used unless the server names another.
pub const DEFAULT_CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// The ciphersuite a server names (by its RFC 9420 number), if it is one a
/// Postern deployment may choose ([`postern_proto::mls::CIPHERSUITES`]).
pub fn ciphersuite(number: u16) -> Option<Ciphersuite> {
    postern_proto::mls::CIPHERSUITES
        .iter()
        .any(|(n, _)| *n == number)
        .then(|| Ciphersuite::try_from(number).ok())
        .flatten()
}

/// How many past epochs' secrets a member keeps, so that a message made
/// just before a commit still decrypts after it.
const MAX_PAST_EPOCHS: usize = 5;

/// Errors of the MLS layer, as text: openmls has one error type per call,
/// and all a caller can do is report them.
#[derive(Debug, thiserror::Error)]
pub enum MlsError {
    /// openmls refused or failed.
    #[error("MLS: {0}")]
    Mls(String),
    /// Bytes that are not the MLS message they should be.
    #[error("malformed MLS message: {0}")]
    Malformed(String),
    /// A member credential the directory does not confirm.
    #[error("untrusted member credential: {0}")]
    Credential(String),
}

pub(crate) fn mls_err(e: impl std::fmt::Debug) -> MlsError {
    MlsError::Mls(format!("{e:?}"))
}

/// The encoding openmls_sqlite_storage stores MLS state in: CBOR, which is
/// self-describing like JSON (openmls's serde types need that) but keeps
/// byte strings compact. A large group's state is rewritten at every commit;
/// with JSON (every byte as a decimal number) serializing it was a fifth of
/// a 1,000-member commit's time (see BENCHMARKS.md, "MLS").
#[derive(Default)]
pub struct CborCodec;

/// Why MLS state could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("MLS state encoding: {0}")]
pub struct CodecError(String);

impl Codec for CborCodec {
    type Error = CodecError;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).map_err(|e| CodecError(e.to_string()))?;
        Ok(out)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        ciborium::from_reader(slice).map_err(|e| CodecError(e.to_string()))
    }
}

/// Crypto plus storage on the home's connection.
pub struct Provider<'a> {
    crypto: RustCrypto,
    storage: SqliteStorageProvider<CborCodec, &'a Connection>,
}

impl<'a> Provider<'a> {
    /// A provider whose storage is `db`.
    pub fn new(db: &'a Connection) -> Self {
        Provider {
            crypto: RustCrypto::default(),
            storage: SqliteStorageProvider::new(db),
        }
    }
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = SqliteStorageProvider<CborCodec, &'a Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

/// Creates openmls's tables in the home (idempotent).
pub fn migrate(db: &mut Connection) -> Result<(), MlsError> {
    SqliteStorageProvider::<CborCodec, &mut Connection>::new(db)
        .run_migrations()
        .map_err(mls_err)
}

/// A device's Ed25519 identity key as an MLS signer.
pub struct DeviceSigner(pub SigningKey);

impl Signer for DeviceSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.0.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// The basic credential of a device: its account id and device number.
pub fn credential(device: DeviceAddr) -> Credential {
    let mut identity = device.account.0.to_vec();
    identity.extend_from_slice(&device.device.to_be_bytes());
    BasicCredential::new(identity).into()
}

/// The device a credential names.
pub fn credential_device(credential: &Credential) -> Result<DeviceAddr, MlsError> {
    let basic = BasicCredential::try_from(credential.clone())
        .map_err(|_| MlsError::Credential("not a basic credential".into()))?;
    let id = basic.identity();
    if id.len() != 20 {
        return Err(MlsError::Credential(
            "identity is not account + device".into(),
        ));
    }
    let account = AccountId::from_slice(&id[..16])
        .ok_or_else(|| MlsError::Credential("bad account id".into()))?;
    let device = u32::from_be_bytes([id[16], id[17], id[18], id[19]]);
    Ok(DeviceAddr { account, device })
}

/// The server's account directory: identity keys of each account's devices.
pub type Directory = HashMap<AccountId, HashMap<u32, [u8; 32]>>;

/// Checks a member's credential and signature key against the directory;
/// returns the device it names.
pub fn check_member(
    directory: &Directory,
    credential: &Credential,
    signature_key: &[u8],
) -> Result<DeviceAddr, MlsError> {
    let device = credential_device(credential)?;
    let listed = directory
        .get(&device.account)
        .and_then(|devices| devices.get(&device.device))
        .ok_or_else(|| {
            MlsError::Credential(format!("{device} is not in the server's directory"))
        })?;
    if listed[..] != *signature_key {
        return Err(MlsError::Credential(format!(
            "{device} presents a key the directory does not list for it"
        )));
    }
    Ok(device)
}

/// What a commit made here sends.
pub struct OutgoingCommit {
    /// The commit (MLSMessage).
    pub commit: Vec<u8>,
    /// The Welcome for added members (MLSMessage), if any.
    pub welcome: Option<Vec<u8>>,
    /// The new epoch's GroupInfo (MLSMessage).
    pub group_info: Vec<u8>,
    /// The new epoch's ratchet tree.
    pub ratchet_tree: Vec<u8>,
}

/// The capabilities every Postern leaf announces: the group-meta extension.
fn capabilities() -> Capabilities {
    Capabilities::builder()
        .extensions(vec![ExtensionType::Unknown(GROUP_META_EXTENSION)])
        .build()
}

fn meta_extension(meta: &GroupMeta) -> Extension {
    Extension::Unknown(GROUP_META_EXTENSION, UnknownExtension(meta.encode_to_vec()))
}

/// The group's name and kind from its context.
pub fn group_meta(group: &MlsGroup) -> GroupMeta {
    group
        .extensions()
        .unknown(GROUP_META_EXTENSION)
        .and_then(|e| GroupMeta::decode(&e.0[..]).ok())
        .unwrap_or_default()
}

fn serialize(msg: &MlsMessageOut) -> Result<Vec<u8>, MlsError> {
    msg.tls_serialize_detached().map_err(mls_err)
}

/// Parses an MLSMessage.
pub fn parse(bytes: &[u8]) -> Result<MlsMessageIn, MlsError> {
    MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| MlsError::Malformed(e.to_string()))
}

/// Parses a ratchet tree.
pub fn parse_tree(bytes: &[u8]) -> Result<RatchetTreeIn, MlsError> {
    RatchetTreeIn::tls_deserialize_exact(bytes).map_err(|e| MlsError::Malformed(e.to_string()))
}

/// One device's MLS operations.
pub struct Engine<'a> {
    /// Crypto and storage.
    pub provider: Provider<'a>,
    /// The device's identity key.
    pub signer: &'a DeviceSigner,
    /// The device.
    pub me: DeviceAddr,
    /// The deployment's ciphersuite.
    pub suite: Ciphersuite,
}

impl<'a> Engine<'a> {
    fn credential_with_key(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: credential(self.me),
            signature_key: self.signer.0.verifying_key().to_bytes().to_vec().into(),
        }
    }

    fn join_config() -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .use_ratchet_tree_extension(false)
            .build()
    }

    /// `n` one-time key packages (and a last-resort one if asked), each
    /// serialized as an MLSMessage. Their private keys stay in the home.
    pub fn key_packages(&self, n: usize, last_resort: bool) -> Result<Vec<Vec<u8>>, MlsError> {
        let mut out = Vec::with_capacity(n + usize::from(last_resort));
        for i in 0..n + usize::from(last_resort) {
            let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities());
            if i == n {
                builder = builder.mark_as_last_resort();
            }
            let bundle = builder
                .build(
                    self.suite,
                    &self.provider,
                    self.signer,
                    self.credential_with_key(),
                )
                .map_err(mls_err)?;
            out.push(serialize(&MlsMessageOut::from(
                bundle.key_package().clone(),
            ))?);
        }
        Ok(out)
    }

    /// A new group with this device as its only member.
    pub fn create_group(&self, group_id: &[u8], meta: &GroupMeta) -> Result<MlsGroup, MlsError> {
        let extensions = Extensions::single(meta_extension(meta)).map_err(mls_err)?;
        MlsGroup::builder()
            .with_group_id(GroupId::from_slice(group_id))
            .ciphersuite(self.suite)
            .with_wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .use_ratchet_tree_extension(false)
            .with_capabilities(capabilities())
            .with_group_context_extensions(extensions)
            .build(&self.provider, self.signer, self.credential_with_key())
            .map_err(mls_err)
    }

    /// The group with this id, if this device is in it.
    pub fn load(&self, group_id: &[u8]) -> Result<Option<MlsGroup>, MlsError> {
        MlsGroup::load(self.provider.storage(), &GroupId::from_slice(group_id)).map_err(mls_err)
    }

    /// Validates key packages claimed from the server: well formed, signed,
    /// of our ciphersuite, and naming the device the server said, with the
    /// key the directory lists for it.
    pub fn validate_key_package(
        &self,
        bytes: &[u8],
        expected: DeviceAddr,
        directory: &Directory,
    ) -> Result<KeyPackage, MlsError> {
        let MlsMessageBodyIn::KeyPackage(kp) = parse(bytes)?.extract() else {
            return Err(MlsError::Malformed("not a key package".into()));
        };
        let kp = kp
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(mls_err)?;
        if kp.ciphersuite() != self.suite {
            return Err(MlsError::Mls(format!(
                "key package of ciphersuite {:?}",
                kp.ciphersuite()
            )));
        }
        let leaf = kp.leaf_node();
        let device = check_member(
            directory,
            leaf.credential(),
            leaf.signature_key().as_slice(),
        )?;
        if device != expected {
            return Err(MlsError::Credential(format!(
                "the package for {expected} names {device}"
            )));
        }
        Ok(kp)
    }

    /// Stages a commit that adds `adds` and removes the members at
    /// `removes`; the commit stays pending until [`Engine::confirm`] (the
    /// server accepted it) or [`Engine::abandon`] (it lost the race).
    pub fn commit(
        &self,
        group: &mut MlsGroup,
        adds: Vec<KeyPackage>,
        removes: Vec<LeafNodeIndex>,
    ) -> Result<OutgoingCommit, MlsError> {
        // An add-only commit needs no update path (RFC 9420 §12.4): without
        // it, adding members does not encrypt path secrets to every
        // unmerged leaf, which in a large group is most of the cost.
        // Commits that remove members carry a path, as they must.
        let self_update = !removes.is_empty() || adds.is_empty();
        let bundle = group
            .commit_builder()
            .propose_adds(adds)
            .propose_removals(removes)
            .force_self_update(self_update)
            .load_psks(self.provider.storage())
            .map_err(mls_err)?
            .create_group_info(true)
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                self.signer,
                |_| true,
            )
            .map_err(mls_err)?
            .stage_commit(&self.provider)
            .map_err(mls_err)?;
        let (commit, welcome, group_info) = bundle.into_messages();
        let staged = group
            .pending_commit()
            .ok_or_else(|| MlsError::Mls("no pending commit after staging".into()))?;
        let tree = staged
            .export_ratchet_tree(self.provider.crypto(), group.export_ratchet_tree())
            .map_err(mls_err)?
            .ok_or_else(|| MlsError::Mls("no ratchet tree for the new epoch".into()))?;
        Ok(OutgoingCommit {
            commit: serialize(&commit)?,
            welcome: welcome.as_ref().map(serialize).transpose()?,
            group_info: serialize(
                &group_info.ok_or_else(|| MlsError::Mls("no group info".into()))?,
            )?,
            ratchet_tree: tree.tls_serialize_detached().map_err(mls_err)?,
        })
    }

    /// The server accepted our pending commit: move to the new epoch.
    pub fn confirm(&self, group: &mut MlsGroup) -> Result<(), MlsError> {
        group.merge_pending_commit(&self.provider).map_err(mls_err)
    }

    /// Our pending commit lost: forget it.
    pub fn abandon(&self, group: &mut MlsGroup) -> Result<(), MlsError> {
        group
            .clear_pending_commit(self.provider.storage())
            .map_err(mls_err)
    }

    /// Deletes a group's state from the home (after leaving it, or after a
    /// failed join).
    pub fn forget(&self, group: &mut MlsGroup) -> Result<(), MlsError> {
        group.delete(self.provider.storage()).map_err(mls_err)
    }

    /// Encrypts an application message.
    pub fn encrypt(&self, group: &mut MlsGroup, plaintext: &[u8]) -> Result<Vec<u8>, MlsError> {
        let msg = group
            .create_message(&self.provider, self.signer, plaintext)
            .map_err(mls_err)?;
        serialize(&msg)
    }

    /// Processes a public or private message of `group`.
    pub fn process(
        &self,
        group: &mut MlsGroup,
        msg: ProtocolMessage,
    ) -> Result<ProcessedMessage, MlsError> {
        group.process_message(&self.provider, msg).map_err(mls_err)
    }

    /// Applies a commit from another member (already checked).
    pub fn merge(&self, group: &mut MlsGroup, staged: StagedCommit) -> Result<(), MlsError> {
        group
            .merge_staged_commit(&self.provider, staged)
            .map_err(mls_err)
    }

    /// Opens a Welcome (using up the key package it was made for) and
    /// says which epoch it joins; [`Engine::join`] finishes with that
    /// epoch's ratchet tree, fetched out of band.
    pub fn open_welcome(&self, welcome: Welcome) -> Result<(ProcessedWelcome, u64), MlsError> {
        let processed =
            ProcessedWelcome::new_from_welcome(&self.provider, &Self::join_config(), welcome)
                .map_err(mls_err)?;
        let epoch = processed.unverified_group_info().epoch().as_u64();
        Ok((processed, epoch))
    }

    /// Joins from an opened Welcome and the ratchet tree of its epoch.
    pub fn join(
        &self,
        welcome: ProcessedWelcome,
        tree: RatchetTreeIn,
    ) -> Result<MlsGroup, MlsError> {
        welcome
            .into_staged_welcome(&self.provider, Some(tree))
            .map_err(mls_err)?
            .into_group(&self.provider)
            .map_err(mls_err)
    }

    /// Joins by external commit from a GroupInfo and ratchet tree (a new
    /// device of a member, or a device whose Welcome came too late).
    pub fn join_external(
        &self,
        group_info: &[u8],
        tree: RatchetTreeIn,
    ) -> Result<(MlsGroup, OutgoingCommit), MlsError> {
        let MlsMessageBodyIn::GroupInfo(info) = parse(group_info)?.extract() else {
            return Err(MlsError::Malformed("not a group info".into()));
        };
        let (group, bundle) = MlsGroup::external_commit_builder()
            .with_config(Self::join_config())
            .with_ratchet_tree(tree)
            .build_group(&self.provider, info, self.credential_with_key())
            .map_err(mls_err)?
            .leaf_node_parameters(
                LeafNodeParameters::builder()
                    .with_capabilities(capabilities())
                    .build(),
            )
            .load_psks(self.provider.storage())
            .map_err(mls_err)?
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                self.signer,
                |_| true,
            )
            .map_err(mls_err)?
            .finalize(&self.provider)
            .map_err(mls_err)?;
        // The builder merged the commit already: the group is at the new
        // epoch (and is discarded if the server refuses the commit).
        let (commit, _, _) = bundle.into_messages();
        let group_info = group
            .export_group_info(self.provider.crypto(), self.signer, false)
            .map_err(mls_err)?;
        let commit = OutgoingCommit {
            commit: serialize(&commit)?,
            welcome: None,
            group_info: serialize(&group_info)?,
            ratchet_tree: group
                .export_ratchet_tree()
                .tls_serialize_detached()
                .map_err(mls_err)?,
        };
        Ok((group, commit))
    }
}
