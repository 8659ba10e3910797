//! Court orders: checking a detached CMS (PKCS#7) signature over the order
//! document, and its X.509 chain, against the trust anchors configured for
//! the requesting jurisdiction.
//!
//! What is checked, in order, so that the reason given is the strongest
//! that applies:
//!
//! 1. the blob is a DER (or PEM) `ContentInfo` of type `signedData`, at
//!    most [`MAX_SIGNATURE_BYTES`], with a *detached* content of type
//!    `id-data` and exactly one signer; the order document is at most
//!    [`MAX_DOCUMENT_BYTES`];
//! 2. the signer's certificate is among the certificates carried, and its
//!    key verifies the signature — over the signed attributes (whose
//!    `messageDigest` must be the document's digest and `contentType`
//!    `id-data`), or over the document when there are none. A forged
//!    signature, or one over another document, stops here
//!    ([`OrderError::status`] is [`OrderStatus::Invalid`]);
//! 3. a chain from the signer to one of the jurisdiction's anchors: each
//!    certificate signed by the next, every issuer a CA (basic
//!    constraints), at most [`MAX_CHAIN`] certificates. None: the court is
//!    not trusted for that jurisdiction (a court of another country lands
//!    here);
//! 4. no certificate of the chain is on the jurisdiction's revocation
//!    list (SHA-256 fingerprints of the certificates' DER, configured by
//!    the operator: CRLs and OCSP are not fetched);
//! 5. every certificate of the chain is valid at the time of the check.
//!
//! Supported algorithms: digests SHA-256, SHA-384, SHA-512; signatures
//! RSA PKCS#1 v1.5 (2048–4096-bit keys) and ECDSA on P-256. Anything else
//! is refused with a message naming it. This module does no I/O and reads
//! no clock: the caller passes the documents, the anchors and the time.

use std::collections::HashMap;

use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256, Sha384, Sha512};
use x509_cert::Certificate;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{BasicConstraints, SubjectKeyIdentifier};
use x509_cert::spki::SubjectPublicKeyInfoOwned;

use crate::policy::OrderStatus;

/// The largest signature blob accepted, in bytes.
pub const MAX_SIGNATURE_BYTES: usize = 1024 * 1024;

/// The largest order document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;

/// The most certificates in a chain, signer and anchor included.
pub const MAX_CHAIN: usize = 6;

/// The most certificates a signature may carry.
pub const MAX_CARRIED_CERTS: usize = 16;

const OID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const OID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const OID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const OID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const OID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_RSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const OID_RSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_ECDSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_SUBJECT_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");

/// Why an order did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// A document or signature larger than the limits.
    #[error("the {what} is {size} bytes; at most {max} are accepted")]
    TooLarge {
        /// Which input.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not a well-formed detached CMS signature.
    #[error(
        "the signature is not a detached CMS signature: {0} (make it with `openssl cms -sign -binary -outform DER`)"
    )]
    Malformed(String),
    /// An algorithm this build does not verify.
    #[error("unsupported {0}")]
    Unsupported(String),
    /// The signature does not verify over this document.
    #[error("the signature does not verify over this document: {0}")]
    BadSignature(&'static str),
    /// No anchors are configured for the jurisdiction.
    #[error("no trusted court certificates are configured for jurisdiction {0}")]
    NoAnchors(String),
    /// The chain does not lead to the jurisdiction's anchors.
    #[error("the signer ({signer}) is not trusted for {jurisdiction}: {why}")]
    Untrusted {
        /// The signer's subject.
        signer: String,
        /// The jurisdiction.
        jurisdiction: String,
        /// What broke the chain.
        why: String,
    },
    /// A certificate of the chain is revoked.
    #[error("certificate {0} is revoked")]
    Revoked(String),
    /// A certificate of the chain is not valid at the time of the check.
    #[error("certificate {subject} is valid only from {not_before} until {not_after}")]
    Expired {
        /// Its subject.
        subject: String,
        /// Start of validity (RFC 3339).
        not_before: String,
        /// End of validity (RFC 3339).
        not_after: String,
    },
}

impl OrderError {
    /// What the policy engine makes of this failure.
    pub fn status(&self) -> OrderStatus {
        match self {
            OrderError::NoAnchors(_) | OrderError::Untrusted { .. } => OrderStatus::UntrustedCourt,
            OrderError::Revoked(_) => OrderStatus::Revoked,
            OrderError::Expired { .. } => OrderStatus::Expired,
            OrderError::TooLarge { .. }
            | OrderError::Malformed(_)
            | OrderError::Unsupported(_)
            | OrderError::BadSignature(_) => OrderStatus::Invalid,
        }
    }
}

fn malformed(e: impl std::fmt::Display) -> OrderError {
    OrderError::Malformed(e.to_string())
}

/// The trust anchors (court or judiciary root certificates) and
/// revocations configured per jurisdiction.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    jurisdictions: HashMap<String, Anchors>,
}

#[derive(Clone, Debug, Default)]
struct Anchors {
    certs: Vec<Certificate>,
    revoked: Vec<[u8; 32]>,
}

/// The SHA-256 fingerprint of a certificate's DER.
pub fn fingerprint(cert: &Certificate) -> Result<[u8; 32], OrderError> {
    Ok(Sha256::digest(cert.to_der().map_err(malformed)?).into())
}

impl TrustStore {
    /// An empty store.
    pub fn new() -> TrustStore {
        TrustStore::default()
    }

    /// Adds every certificate of a PEM file (or one DER certificate) as an
    /// anchor for `jurisdiction`; returns how many.
    pub fn add_anchors(&mut self, jurisdiction: &str, bytes: &[u8]) -> Result<usize, OrderError> {
        let certs = if bytes.starts_with(b"-----BEGIN") {
            Certificate::load_pem_chain(bytes).map_err(malformed)?
        } else {
            vec![Certificate::from_der(bytes).map_err(malformed)?]
        };
        let n = certs.len();
        self.jurisdictions
            .entry(jurisdiction.to_owned())
            .or_default()
            .certs
            .extend(certs);
        Ok(n)
    }

    /// Marks the certificate with this SHA-256 fingerprint (of its DER)
    /// revoked for `jurisdiction`.
    pub fn revoke(&mut self, jurisdiction: &str, fingerprint: [u8; 32]) {
        self.jurisdictions
            .entry(jurisdiction.to_owned())
            .or_default()
            .revoked
            .push(fingerprint);
    }

    /// The jurisdictions with anchors.
    pub fn jurisdictions(&self) -> impl Iterator<Item = &str> {
        self.jurisdictions
            .iter()
            .filter(|(_, a)| !a.certs.is_empty())
            .map(|(j, _)| j.as_str())
    }
}

/// What a verified order tells about who signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedOrder {
    /// The signing court's certificate subject.
    pub signer: String,
    /// The anchor the chain ends at.
    pub anchor: String,
    /// Certificates in the chain, signer and anchor included.
    pub chain_len: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn from_oid(oid: &ObjectIdentifier) -> Result<Hash, OrderError> {
        match *oid {
            OID_SHA256 => Ok(Hash::Sha256),
            OID_SHA384 => Ok(Hash::Sha384),
            OID_SHA512 => Ok(Hash::Sha512),
            other => Err(OrderError::Unsupported(format!("digest algorithm {other}"))),
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha384 => Sha384::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// The hash a signature algorithm uses; `rsaEncryption` (as CMS writes
/// it) takes the signer's digest algorithm.
fn signature_hash(alg: &ObjectIdentifier, digest: Option<Hash>) -> Result<Hash, OrderError> {
    match *alg {
        OID_RSA => digest.ok_or_else(|| OrderError::Unsupported("bare rsaEncryption".into())),
        OID_RSA_SHA256 | OID_ECDSA_SHA256 => Ok(Hash::Sha256),
        OID_RSA_SHA384 | OID_ECDSA_SHA384 => Ok(Hash::Sha384),
        OID_RSA_SHA512 | OID_ECDSA_SHA512 => Ok(Hash::Sha512),
        other => Err(OrderError::Unsupported(format!(
            "signature algorithm {other}"
        ))),
    }
}

/// Verifies `signature` (by the algorithm `alg`) over `message` with `key`.
fn verify_with(
    key: &SubjectPublicKeyInfoOwned,
    alg: &ObjectIdentifier,
    hash: Hash,
    message: &[u8],
    signature: &[u8],
) -> Result<(), OrderError> {
    let digest = hash.digest(message);
    let rsa_alg = matches!(
        *alg,
        OID_RSA | OID_RSA_SHA256 | OID_RSA_SHA384 | OID_RSA_SHA512
    );
    let ec_alg = matches!(*alg, OID_ECDSA_SHA256 | OID_ECDSA_SHA384 | OID_ECDSA_SHA512);
    let key_bytes = key.subject_public_key.raw_bytes();
    match key.algorithm.oid {
        OID_RSA if rsa_alg => {
            let pk = rsa::RsaPublicKey::from_pkcs1_der(key_bytes)
                .map_err(|e| OrderError::Unsupported(format!("RSA key: {e}")))?;
            let bits = pk.n().bits();
            if !(2048..=4096).contains(&bits) {
                return Err(OrderError::Unsupported(format!(
                    "RSA key of {bits} bits (2048 to 4096 are accepted)"
                )));
            }
            let scheme = match hash {
                Hash::Sha256 => rsa::Pkcs1v15Sign::new::<Sha256>(),
                Hash::Sha384 => rsa::Pkcs1v15Sign::new::<Sha384>(),
                Hash::Sha512 => rsa::Pkcs1v15Sign::new::<Sha512>(),
            };
            pk.verify(scheme, &digest, signature)
                .map_err(|_| OrderError::BadSignature("RSA signature"))
        }
        OID_EC_PUBLIC_KEY if ec_alg => {
            let curve = key
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            if curve != Some(OID_P256) {
                return Err(OrderError::Unsupported(
                    "elliptic curve (only P-256 is accepted)".into(),
                ));
            }
            let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(key_bytes)
                .map_err(|_| OrderError::Malformed("P-256 public key".into()))?;
            let sig = p256::ecdsa::Signature::from_der(signature)
                .map_err(|_| OrderError::BadSignature("ECDSA signature encoding"))?;
            vk.verify_prehash(&digest, &sig)
                .map_err(|_| OrderError::BadSignature("ECDSA signature"))
        }
        other => Err(OrderError::Unsupported(format!(
            "key type {other} with signature algorithm {alg}"
        ))),
    }
}

fn subject(cert: &Certificate) -> String {
    cert.tbs_certificate.subject.to_string()
}

fn extension(cert: &Certificate, oid: ObjectIdentifier) -> Option<&[u8]> {
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id == oid)
        .map(|e| e.extn_value.as_bytes())
}

fn is_ca(cert: &Certificate) -> bool {
    extension(cert, OID_BASIC_CONSTRAINTS)
        .and_then(|b| BasicConstraints::from_der(b).ok())
        .is_some_and(|bc| bc.ca)
}

/// Whether `issuer` signed `cert`.
fn signed_by(cert: &Certificate, issuer: &Certificate) -> bool {
    if cert.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return false;
    }
    let Ok(tbs) = cert.tbs_certificate.to_der() else {
        return false;
    };
    let Some(sig) = cert.signature.as_bytes() else {
        return false;
    };
    let alg = &cert.signature_algorithm.oid;
    signature_hash(alg, None).is_ok_and(|hash| {
        verify_with(
            &issuer.tbs_certificate.subject_public_key_info,
            alg,
            hash,
            &tbs,
            sig,
        )
        .is_ok()
    })
}

fn validity(cert: &Certificate) -> (u64, u64) {
    let v = &cert.tbs_certificate.validity;
    (
        v.not_before.to_unix_duration().as_secs(),
        v.not_after.to_unix_duration().as_secs(),
    )
}

fn parse_signed_data(signature: &[u8]) -> Result<SignedData, OrderError> {
    let der = if signature.starts_with(b"-----BEGIN") {
        let (_label, der) = x509_cert::der::pem::decode_vec(signature).map_err(malformed)?;
        der
    } else {
        signature.to_vec()
    };
    let ci = ContentInfo::from_der(&der).map_err(malformed)?;
    if ci.content_type != OID_SIGNED_DATA {
        return Err(OrderError::Malformed(format!(
            "content type {} is not signedData",
            ci.content_type
        )));
    }
    ci.content.decode_as::<SignedData>().map_err(malformed)
}

/// Parses a detached CMS signature far enough to find its signer and
/// certificates, without checking anything cryptographic. For fuzzing and
/// for showing an order to people.
pub fn inspect(signature: &[u8]) -> Result<(String, usize), OrderError> {
    if signature.len() > MAX_SIGNATURE_BYTES {
        return Err(OrderError::TooLarge {
            what: "signature",
            size: signature.len(),
            max: MAX_SIGNATURE_BYTES,
        });
    }
    let sd = parse_signed_data(signature)?;
    let certs = carried_certs(&sd)?;
    let si = single_signer(&sd)?;
    let signer = find_signer(si, &certs)?;
    Ok((subject(signer), certs.len()))
}

fn carried_certs(sd: &SignedData) -> Result<Vec<Certificate>, OrderError> {
    let certs: Vec<Certificate> = sd
        .certificates
        .as_ref()
        .map(|set| {
            set.0
                .iter()
                .filter_map(|c| match c {
                    CertificateChoices::Certificate(c) => Some(c.clone()),
                    CertificateChoices::Other(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if certs.len() > MAX_CARRIED_CERTS {
        return Err(OrderError::Malformed(format!(
            "{} certificates carried; at most {MAX_CARRIED_CERTS}",
            certs.len()
        )));
    }
    Ok(certs)
}

fn single_signer(sd: &SignedData) -> Result<&SignerInfo, OrderError> {
    let signers: Vec<&SignerInfo> = sd.signer_infos.0.iter().collect();
    match signers.as_slice() {
        [one] => Ok(one),
        [] => Err(OrderError::Malformed("no signer".into())),
        _ => Err(OrderError::Malformed(format!(
            "{} signers; exactly one (the court) is accepted",
            signers.len()
        ))),
    }
}

fn find_signer<'a>(
    si: &SignerInfo,
    certs: &'a [Certificate],
) -> Result<&'a Certificate, OrderError> {
    certs
        .iter()
        .find(|c| match &si.sid {
            SignerIdentifier::IssuerAndSerialNumber(isn) => {
                c.tbs_certificate.issuer == isn.issuer
                    && c.tbs_certificate.serial_number == isn.serial_number
            }
            SignerIdentifier::SubjectKeyIdentifier(skid) => extension(c, OID_SUBJECT_KEY_ID)
                .and_then(|b| SubjectKeyIdentifier::from_der(b).ok())
                .is_some_and(|k| k == *skid),
        })
        .ok_or_else(|| {
            OrderError::Malformed(
                "the signer's certificate is not in the signature (sign without -nocerts)".into(),
            )
        })
}

/// Verifies a court order: `signature` is a detached CMS signature over
/// `document`, by a court whose certificate chains to `jurisdiction`'s
/// anchors in `trust`, valid at `now` (UNIX seconds).
pub fn verify_order(
    trust: &TrustStore,
    jurisdiction: &str,
    document: &[u8],
    signature: &[u8],
    now: u64,
) -> Result<VerifiedOrder, OrderError> {
    if document.len() > MAX_DOCUMENT_BYTES {
        return Err(OrderError::TooLarge {
            what: "order document",
            size: document.len(),
            max: MAX_DOCUMENT_BYTES,
        });
    }
    if signature.len() > MAX_SIGNATURE_BYTES {
        return Err(OrderError::TooLarge {
            what: "signature",
            size: signature.len(),
            max: MAX_SIGNATURE_BYTES,
        });
    }
    let sd = parse_signed_data(signature)?;
    if sd.encap_content_info.econtent_type != OID_DATA {
        return Err(OrderError::Malformed(format!(
            "encapsulated content type {} is not id-data",
            sd.encap_content_info.econtent_type
        )));
    }
    if sd.encap_content_info.econtent.is_some() {
        return Err(OrderError::Malformed(
            "the document is embedded; a detached signature is expected".into(),
        ));
    }
    let certs = carried_certs(&sd)?;
    let si = single_signer(&sd)?;
    let signer = find_signer(si, &certs)?;

    // 2. The signature over the document.
    let digest_alg = Hash::from_oid(&si.digest_alg.oid)?;
    let sig_hash = signature_hash(&si.signature_algorithm.oid, Some(digest_alg))?;
    let signed_bytes = match &si.signed_attrs {
        Some(attrs) => {
            let mut content_type_ok = false;
            let mut digest_ok = false;
            for a in attrs.iter() {
                let value = match a.values.iter().collect::<Vec<_>>().as_slice() {
                    [v] => *v,
                    _ => {
                        return Err(OrderError::Malformed(format!(
                            "attribute {} has not exactly one value",
                            a.oid
                        )));
                    }
                };
                if a.oid == OID_CONTENT_TYPE {
                    content_type_ok = value
                        .decode_as::<ObjectIdentifier>()
                        .is_ok_and(|o| o == OID_DATA);
                } else if a.oid == OID_MESSAGE_DIGEST {
                    let md = value
                        .decode_as::<x509_cert::der::asn1::OctetString>()
                        .map_err(malformed)?;
                    digest_ok = md.as_bytes() == digest_alg.digest(document).as_slice();
                }
            }
            if !content_type_ok {
                return Err(OrderError::Malformed(
                    "the signed attributes lack content type id-data".into(),
                ));
            }
            if !digest_ok {
                return Err(OrderError::BadSignature(
                    "the signed digest is not this document's (signed over another document?)",
                ));
            }
            attrs.to_der().map_err(malformed)?
        }
        None => document.to_vec(),
    };
    verify_with(
        &signer.tbs_certificate.subject_public_key_info,
        &si.signature_algorithm.oid,
        sig_hash,
        &signed_bytes,
        si.signature.as_bytes(),
    )?;

    // 3. A chain to the jurisdiction's anchors.
    let anchors = trust
        .jurisdictions
        .get(jurisdiction)
        .filter(|a| !a.certs.is_empty())
        .ok_or_else(|| OrderError::NoAnchors(jurisdiction.to_owned()))?;
    let untrusted = |why: &str| OrderError::Untrusted {
        signer: subject(signer),
        jurisdiction: jurisdiction.to_owned(),
        why: why.to_owned(),
    };
    let mut chain: Vec<&Certificate> = vec![signer];
    loop {
        let current = *chain.last().expect("non-empty");
        if anchors.certs.iter().any(|a| a == current) {
            break;
        }
        if let Some(anchor) = anchors.certs.iter().find(|a| signed_by(current, a)) {
            chain.push(anchor);
            break;
        }
        if chain.len() + 1 >= MAX_CHAIN {
            return Err(untrusted("the chain is too long"));
        }
        let next = certs
            .iter()
            .find(|c| !chain.contains(c) && is_ca(c) && signed_by(current, c))
            .ok_or_else(|| untrusted("no certificate chain to its trust anchors"))?;
        chain.push(next);
    }
    for issuer in chain.iter().skip(1) {
        if !is_ca(issuer) && !anchors.certs.contains(issuer) {
            return Err(untrusted("an issuer in the chain is not a CA"));
        }
    }

    // 4. Revocation, 5. validity.
    for c in &chain {
        if anchors.revoked.contains(&fingerprint(c)?) {
            return Err(OrderError::Revoked(subject(c)));
        }
    }
    for c in &chain {
        let (nb, na) = validity(c);
        if now < nb || now > na {
            return Err(OrderError::Expired {
                subject: subject(c),
                not_before: crate::date::format_datetime(nb),
                not_after: crate::date::format_datetime(na),
            });
        }
    }
    Ok(VerifiedOrder {
        signer: subject(signer),
        anchor: subject(chain.last().expect("non-empty")),
        chain_len: chain.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let t = TrustStore::new();
        for blob in [
            &b""[..],
            b"\x30\x03\x02\x01\x01",
            b"-----BEGIN CMS-----\nxx\n-----END CMS-----\n",
        ] {
            let e = verify_order(&t, "DE", b"doc", blob, 0).unwrap_err();
            assert_eq!(e.status(), OrderStatus::Invalid, "{e}");
        }
        let huge = vec![0u8; MAX_SIGNATURE_BYTES + 1];
        assert!(matches!(
            verify_order(&t, "DE", b"doc", &huge, 0),
            Err(OrderError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_blobs_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = inspect(&bytes);
            let _ = verify_order(&TrustStore::new(), "DE", b"doc", &bytes, 0);
        }
    }
}
