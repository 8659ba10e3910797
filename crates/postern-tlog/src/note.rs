//! C2SP signed notes (`c2sp.org/signed-note`): Ed25519 signers and
//! verifiers, their `vkey` and `skey` text encodings, and parsing,
//! signing and verifying notes.
//!
//! Two signature types are supported: plain Ed25519 (type `0x01`, what a
//! log signs its checkpoints with) and timestamped Ed25519 checkpoint
//! cosignatures (type `0x04`, `c2sp.org/tlog-cosignature`, what witnesses
//! sign with). Parsing never trusts the input: a note is bounded in size
//! and in signatures, and signatures from keys the caller does not know are
//! kept but ignored, as the spec requires.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The largest note [`Note::parse`] accepts, in bytes. A checkpoint with
/// a hundred signatures is about 10 KiB.
pub const MAX_NOTE_LEN: usize = 64 * 1024;

/// The most signature lines [`Note::parse`] accepts (the spec asks
/// verifiers to accept at least 16; Go's implementation stops at 100).
pub const MAX_SIGNATURES: usize = 100;

/// The header line of a cosignature's signed message.
const COSIGNATURE_HEADER: &str = "cosignature/v1\n";

/// A signature type, as the one-byte identifier in keys and key ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `0x01`: Ed25519 over the note text.
    Ed25519,
    /// `0x04`: timestamped Ed25519 checkpoint cosignature (cosignature/v1).
    CosignatureV1,
}

impl Algorithm {
    /// The identifier byte.
    pub fn id(self) -> u8 {
        match self {
            Algorithm::Ed25519 => 0x01,
            Algorithm::CosignatureV1 => 0x04,
        }
    }

    fn from_id(id: u8) -> Result<Algorithm, KeyError> {
        match id {
            0x01 => Ok(Algorithm::Ed25519),
            0x04 => Ok(Algorithm::CosignatureV1),
            other => Err(KeyError::UnknownAlgorithm(other)),
        }
    }
}

/// What was wrong with a `vkey` or `skey`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text does not have the `name+id+key` shape.
    #[error("the key is not of the form NAME+KEYID+BASE64 (or PRIVATE+KEY+NAME+KEYID+BASE64)")]
    Malformed,
    /// The key name is empty or holds a space or a plus sign.
    #[error("the key name is empty or contains a space or '+'")]
    BadName,
    /// The signature type byte is not one this crate implements.
    #[error("unsupported signature type 0x{0:02x}")]
    UnknownAlgorithm(u8),
    /// The key material is not a valid Ed25519 key of 32 bytes.
    #[error("the key material is not a valid 32-byte Ed25519 key")]
    BadKey,
    /// The key id in the text is not the one the name and key give.
    #[error("the key id {given:08x} does not match the key (expected {expected:08x})")]
    KeyIdMismatch {
        /// The id written in the key.
        given: u32,
        /// The id the name and key material give.
        expected: u32,
    },
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing it failed.
    #[error("{path}: {source}", path = .0.display(), source = .1)]
    Io(std::path::PathBuf, std::io::Error),
    /// It does not hold a valid `skey`.
    #[error("{path}: {error}", path = .0.display(), error = .1)]
    Key(std::path::PathBuf, KeyError),
    /// It holds a key with another name or type.
    #[error("{} holds the key {found}, with another name or type than asked for; move it away to generate a new one", path.display())]
    Mismatch {
        /// The file.
        path: std::path::PathBuf,
        /// The vkey of the key it holds.
        found: String,
    },
}

/// What was wrong with a note, or with its signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The note is larger than [`MAX_NOTE_LEN`].
    #[error("the note is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The note is not valid UTF-8.
    #[error("the note is not valid UTF-8")]
    NotUtf8,
    /// The note holds an ASCII control character other than newline.
    #[error("the note contains a control character at byte {0}")]
    ControlCharacter(usize),
    /// The note text is empty or does not end in a newline.
    #[error("the note text is empty or does not end with a newline")]
    BadText,
    /// No blank line separates the text from signatures, or there are none.
    #[error("the note has no signature block")]
    NoSignatures,
    /// A signature line is not `— NAME BASE64`.
    #[error("signature line {0} is malformed")]
    MalformedSignature(usize),
    /// More than [`MAX_SIGNATURES`] signature lines.
    #[error("the note has more than {max} signatures")]
    TooManySignatures {
        /// The limit.
        max: usize,
    },
    /// No signature from a key the verifier trusts is on the note.
    #[error("no signature from a trusted key")]
    NoTrustedSignature,
    /// A signature from a trusted key failed to verify.
    #[error("the signature of {name} (key id {key_id:08x}) does not verify")]
    BadSignature {
        /// The key name.
        name: String,
        /// The key id.
        key_id: u32,
    },
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(char::is_whitespace) && !name.contains('+')
}

/// The key id: the first four bytes of SHA-256(name || 0x0A || type || key).
pub fn key_id(name: &str, algorithm: Algorithm, public_key: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([algorithm.id()]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The message a cosignature/v1 signs: a header, the time, the note text.
fn cosigned_message(text: &str, timestamp: u64) -> Vec<u8> {
    format!("{COSIGNATURE_HEADER}time {timestamp}\n{text}").into_bytes()
}

/// A public key that verifies note signatures, with its name and key id.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    key_id: u32,
    algorithm: Algorithm,
    key: VerifyingKey,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.vkey())
    }
}

impl Verifier {
    /// Parses a verifier key, `<name>+<hex key id>+<base64(type || key)>`.
    pub fn from_vkey(vkey: &str) -> Result<Verifier, KeyError> {
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(KeyError::Malformed);
        };
        let (given, algorithm, key_bytes) = parse_key_parts(name, id, key)?;
        let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| KeyError::BadKey)?;
        let expected = key_id(name, algorithm, key.as_bytes());
        check_id(given, expected)?;
        Ok(Verifier {
            name: name.to_owned(),
            key_id: expected,
            algorithm,
            key,
        })
    }

    /// The `vkey` text.
    pub fn vkey(&self) -> String {
        let mut material = vec![self.algorithm.id()];
        material.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.key_id, B64.encode(material))
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The signature type.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The same key as a witness's cosignature/v1 key (type `0x04`, with
    /// its own key id). Witness keys published as plain Ed25519 vkeys are
    /// read this way, as transparency-dev's tools do.
    pub fn to_cosigner(&self) -> Verifier {
        Verifier {
            name: self.name.clone(),
            key_id: key_id(&self.name, Algorithm::CosignatureV1, self.key.as_bytes()),
            algorithm: Algorithm::CosignatureV1,
            key: self.key,
        }
    }

    /// Checks `signature` (the bytes after the key id) over `text`. For a
    /// cosignature, returns its timestamp.
    fn verify(&self, text: &str, signature: &[u8]) -> Result<Option<u64>, ()> {
        match self.algorithm {
            Algorithm::Ed25519 => {
                let sig = Signature::from_slice(signature).map_err(|_| ())?;
                self.key
                    .verify_strict(text.as_bytes(), &sig)
                    .map_err(|_| ())?;
                Ok(None)
            }
            Algorithm::CosignatureV1 => {
                if signature.len() != 72 {
                    return Err(());
                }
                let (ts, sig) = signature.split_at(8);
                let timestamp = u64::from_be_bytes(ts.try_into().map_err(|_| ())?);
                if timestamp > i64::MAX as u64 {
                    return Err(());
                }
                let sig = Signature::from_slice(sig).map_err(|_| ())?;
                self.key
                    .verify_strict(&cosigned_message(text, timestamp), &sig)
                    .map_err(|_| ())?;
                Ok(Some(timestamp))
            }
        }
    }
}

/// The name, key id, type and 32 bytes of key material of a `vkey` or
/// `skey` body, with the id as written (callers check it against the key).
fn parse_key_parts(
    name: &str,
    id: &str,
    key: &str,
) -> Result<(u32, Algorithm, [u8; 32]), KeyError> {
    if !is_valid_name(name) {
        return Err(KeyError::BadName);
    }
    if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(KeyError::Malformed);
    }
    let given = u32::from_str_radix(id, 16).map_err(|_| KeyError::Malformed)?;
    let material = B64.decode(key).map_err(|_| KeyError::Malformed)?;
    let (&alg, key_bytes) = material.split_first().ok_or(KeyError::Malformed)?;
    let algorithm = Algorithm::from_id(alg)?;
    let key_bytes: [u8; 32] = key_bytes.try_into().map_err(|_| KeyError::BadKey)?;
    Ok((given, algorithm, key_bytes))
}

fn check_id(given: u32, expected: u32) -> Result<(), KeyError> {
    if given == expected {
        Ok(())
    } else {
        Err(KeyError::KeyIdMismatch { given, expected })
    }
}

/// A private key that signs notes (or cosigns checkpoints), with its name.
#[derive(Clone)]
pub struct Signer {
    name: String,
    key_id: u32,
    algorithm: Algorithm,
    key: SigningKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({})", self.verifier().vkey())
    }
}

impl Signer {
    /// A new random key. Fails only for an invalid name.
    pub fn generate(name: &str, algorithm: Algorithm) -> Result<Signer, KeyError> {
        Signer::from_seed(name, algorithm, rand::random())
    }

    /// The key with this 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, algorithm: Algorithm, seed: [u8; 32]) -> Result<Signer, KeyError> {
        if !is_valid_name(name) {
            return Err(KeyError::BadName);
        }
        let key = SigningKey::from_bytes(&seed);
        Ok(Signer {
            name: name.to_owned(),
            key_id: key_id(name, algorithm, key.verifying_key().as_bytes()),
            algorithm,
            key,
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<hex key id>+<base64(type || seed)>`.
    pub fn from_skey(skey: &str) -> Result<Signer, KeyError> {
        let rest = skey
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(KeyError::Malformed)?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(KeyError::Malformed);
        };
        let (given, algorithm, seed) = parse_key_parts(name, id, key)?;
        let signer = Signer::from_seed(name, algorithm, seed)?;
        check_id(given, signer.key_id)?;
        Ok(signer)
    }

    /// Reads the `skey` in `path`, or generates a key named `name` and
    /// writes it there (mode 0600 on Unix) if the file does not exist.
    /// An existing key must have the expected name and type.
    pub fn load_or_generate(
        path: &std::path::Path,
        name: &str,
        algorithm: Algorithm,
    ) -> Result<Signer, KeyFileError> {
        let file_err = |e: std::io::Error| KeyFileError::Io(path.to_owned(), e);
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let s = Signer::from_skey(text.trim())
                    .map_err(|e| KeyFileError::Key(path.to_owned(), e))?;
                if s.name != name || s.algorithm != algorithm {
                    return Err(KeyFileError::Mismatch {
                        path: path.to_owned(),
                        found: s.verifier().vkey(),
                    });
                }
                Ok(s)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let s = Signer::generate(name, algorithm)
                    .map_err(|e| KeyFileError::Key(path.to_owned(), e))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(file_err)?;
                }
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(path).map_err(file_err)?;
                std::io::Write::write_all(&mut f, format!("{}\n", s.skey()).as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(file_err)?;
                Ok(s)
            }
            Err(e) => Err(file_err(e)),
        }
    }

    /// The `skey` text. It is the private key: store it like one.
    pub fn skey(&self) -> String {
        let mut material = vec![self.algorithm.id()];
        material.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.key_id,
            B64.encode(material)
        )
    }

    /// The matching verifier.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            name: self.name.clone(),
            key_id: self.key_id,
            algorithm: self.algorithm,
            key: self.key.verifying_key(),
        }
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signature type.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// A signature line over `text`. `timestamp` (POSIX seconds) is used
    /// only by cosigners, which sign it along with the text.
    pub fn sign(&self, text: &str, timestamp: u64) -> NoteSignature {
        let signature = match self.algorithm {
            Algorithm::Ed25519 => self.key.sign(text.as_bytes()).to_bytes().to_vec(),
            Algorithm::CosignatureV1 => {
                let timestamp = timestamp.min(i64::MAX as u64);
                let mut out = timestamp.to_be_bytes().to_vec();
                out.extend_from_slice(
                    &self.key.sign(&cosigned_message(text, timestamp)).to_bytes(),
                );
                out
            }
        };
        NoteSignature {
            name: self.name.clone(),
            key_id: self.key_id,
            signature,
        }
    }
}

/// One signature line of a note, verified or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name.
    pub name: String,
    /// The key id.
    pub key_id: u32,
    /// The signature bytes after the key id.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// Parses one line (without its newline): `— NAME BASE64`.
    pub fn parse_line(line: &str) -> Option<NoteSignature> {
        let rest = line.strip_prefix("\u{2014} ")?;
        let (name, b64) = rest.split_once(' ')?;
        if !is_valid_name(name) {
            return None;
        }
        let bytes = B64.decode(b64).ok()?;
        if bytes.len() < 5 {
            return None;
        }
        Some(NoteSignature {
            name: name.to_owned(),
            key_id: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            signature: bytes[4..].to_vec(),
        })
    }
}

impl fmt::Display for NoteSignature {
    /// The signature line, with its final newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = self.key_id.to_be_bytes().to_vec();
        bytes.extend_from_slice(&self.signature);
        writeln!(f, "\u{2014} {} {}", self.name, B64.encode(bytes))
    }
}

/// A signature that verified against a trusted key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedSignature {
    /// The key that made it.
    pub verifier: Verifier,
    /// For a cosignature, the time it states (POSIX seconds).
    pub timestamp: Option<u64>,
}

/// A text with signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    text: String,
    signatures: Vec<NoteSignature>,
}

fn check_chars(bytes: &[u8]) -> Result<&str, NoteError> {
    let text = std::str::from_utf8(bytes).map_err(|_| NoteError::NotUtf8)?;
    if let Some(i) = bytes.iter().position(|&b| b < 0x20 && b != b'\n') {
        return Err(NoteError::ControlCharacter(i));
    }
    Ok(text)
}

impl Note {
    /// An unsigned note. The text must end in a newline and hold no
    /// control characters but newlines.
    pub fn new(text: &str) -> Result<Note, NoteError> {
        check_chars(text.as_bytes())?;
        if text.is_empty() || !text.ends_with('\n') {
            return Err(NoteError::BadText);
        }
        Ok(Note {
            text: text.to_owned(),
            signatures: Vec::new(),
        })
    }

    /// Parses a signed note, checking its shape but no signature.
    pub fn parse(bytes: &[u8]) -> Result<Note, NoteError> {
        if bytes.len() > MAX_NOTE_LEN {
            return Err(NoteError::TooLarge {
                len: bytes.len(),
                max: MAX_NOTE_LEN,
            });
        }
        let all = check_chars(bytes)?;
        let split = all.rfind("\n\n").ok_or(NoteError::NoSignatures)?;
        let (text, block) = (&all[..split + 1], &all[split + 2..]);
        if block.is_empty() || !block.ends_with('\n') {
            return Err(NoteError::NoSignatures);
        }
        let mut signatures = Vec::new();
        for (i, line) in block[..block.len() - 1].split('\n').enumerate() {
            if signatures.len() == MAX_SIGNATURES {
                return Err(NoteError::TooManySignatures {
                    max: MAX_SIGNATURES,
                });
            }
            signatures
                .push(NoteSignature::parse_line(line).ok_or(NoteError::MalformedSignature(i + 1))?);
        }
        Ok(Note {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The signed text, with its final newline.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every signature line, known keys or not.
    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// Adds a signature line, replacing one from the same key.
    pub fn add_signature(&mut self, sig: NoteSignature) {
        self.signatures
            .retain(|s| !(s.name == sig.name && s.key_id == sig.key_id));
        self.signatures.push(sig);
    }

    /// Signs the text with `signer` (see [`Signer::sign`]).
    pub fn sign(&mut self, signer: &Signer, timestamp: u64) {
        let sig = signer.sign(&self.text, timestamp);
        self.add_signature(sig);
    }

    /// Verifies the signatures made by `verifiers`, ignoring the others.
    ///
    /// Fails if a signature from one of them does not verify, or if none
    /// of them signed. Returns the verified signatures, one per key.
    pub fn verify(&self, verifiers: &[Verifier]) -> Result<Vec<VerifiedSignature>, NoteError> {
        let mut out: Vec<VerifiedSignature> = Vec::new();
        for sig in &self.signatures {
            let Some(v) = verifiers
                .iter()
                .find(|v| v.name == sig.name && v.key_id == sig.key_id)
            else {
                continue;
            };
            let timestamp =
                v.verify(&self.text, &sig.signature)
                    .map_err(|()| NoteError::BadSignature {
                        name: sig.name.clone(),
                        key_id: sig.key_id,
                    })?;
            if !out.iter().any(|o| o.verifier == *v) {
                out.push(VerifiedSignature {
                    verifier: v.clone(),
                    timestamp,
                });
            }
        }
        if out.is_empty() {
            return Err(NoteError::NoTrustedSignature);
        }
        Ok(out)
    }
}

impl fmt::Display for Note {
    /// The note as it is sent: text, blank line, signature lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        f.write_str("\n")?;
        for s in &self.signatures {
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_ids_follow_the_spec() {
        let s = Signer::generate("example.org/log", Algorithm::Ed25519).unwrap();
        let again = Signer::from_skey(&s.skey()).unwrap();
        assert_eq!(again.verifier(), s.verifier());
        let v = Verifier::from_vkey(&s.verifier().vkey()).unwrap();
        assert_eq!(v, s.verifier());
        let c = Signer::generate("witness.example", Algorithm::CosignatureV1).unwrap();
        let cv = Verifier::from_vkey(&c.verifier().vkey()).unwrap();
        assert_eq!(cv.algorithm(), Algorithm::CosignatureV1);
        // The same key material under the other type has another id.
        assert_ne!(
            key_id("n", Algorithm::Ed25519, &[7; 32]),
            key_id("n", Algorithm::CosignatureV1, &[7; 32])
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        let s = Signer::generate("example.org/log", Algorithm::Ed25519).unwrap();
        let vkey = s.verifier().vkey();
        let mut material = vec![0x02];
        material.extend_from_slice(s.key.verifying_key().as_bytes());
        let other_type = format!("example.org/log+{:08x}+{}", s.key_id, B64.encode(material));
        for bad in [
            "",
            "name",
            "name+0011",
            "na me+00112233+AQ==",
            "+00112233+AQ==",
            &vkey[..vkey.len() - 4],
            &other_type,
        ] {
            assert!(Verifier::from_vkey(bad).is_err(), "{bad:?}");
        }
        let skey = s.skey();
        // The key material may itself hold '+': split from the left.
        let material = skey.splitn(5, '+').nth(4).unwrap();
        let wrong_id = format!("PRIVATE+KEY+example.org/log+00000000+{material}");
        assert!(matches!(
            Signer::from_skey(&wrong_id),
            Err(KeyError::KeyIdMismatch { .. })
        ));
        assert!(Signer::generate("a+b", Algorithm::Ed25519).is_err());
    }

    #[test]
    fn signature_limits_and_unknown_key_ids() {
        let log = Signer::generate("example.org/log", Algorithm::Ed25519).unwrap();
        let mut note = Note::new("text\n").unwrap();
        note.sign(&log, 0);
        // The same name with another key id is another key: ignored.
        let mut other_id = note.signatures()[0].clone();
        other_id.key_id ^= 1;
        other_id.signature = vec![0; 64];
        let mut with_other = note.clone();
        with_other.signatures.insert(0, other_id.clone());
        let parsed = Note::parse(with_other.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.verify(&[log.verifier()]).unwrap().len(), 1);
        // Only unknown ids: nothing trusted.
        let mut only_other = Note::new("text\n").unwrap();
        only_other.signatures.push(other_id);
        assert_eq!(
            only_other.verify(&[log.verifier()]),
            Err(NoteError::NoTrustedSignature)
        );
        // MAX_SIGNATURES lines parse; one more does not.
        let line = format!("\u{2014} k{} AAAAAAA=\n", "");
        let at_limit = format!("text\n\n{}", line.repeat(MAX_SIGNATURES));
        assert_eq!(
            Note::parse(at_limit.as_bytes()).unwrap().signatures().len(),
            MAX_SIGNATURES
        );
        let over = format!("text\n\n{}", line.repeat(MAX_SIGNATURES + 1));
        assert_eq!(
            Note::parse(over.as_bytes()),
            Err(NoteError::TooManySignatures {
                max: MAX_SIGNATURES
            })
        );
    }

    #[test]
    fn notes_reject_bad_shapes() {
        assert_eq!(Note::parse(b"text\n"), Err(NoteError::NoSignatures));
        assert_eq!(Note::parse(b"text\n\n"), Err(NoteError::NoSignatures));
        assert_eq!(
            Note::parse(b"text\n\n\xe2\x80\x94 name AAAAAAA=\n"),
            Ok(Note {
                text: "text\n".into(),
                signatures: vec![NoteSignature {
                    name: "name".into(),
                    key_id: 0,
                    signature: vec![0]
                }]
            })
        );
        assert_eq!(
            Note::parse(b"text\n\n- name AAAAAAA=\n"),
            Err(NoteError::MalformedSignature(1))
        );
        assert_eq!(
            Note::parse(b"te\txt\n\n"),
            Err(NoteError::ControlCharacter(2))
        );
        assert_eq!(Note::parse(b"\xff\n\n"), Err(NoteError::NotUtf8));
        let big = vec![b'a'; MAX_NOTE_LEN + 1];
        assert!(matches!(Note::parse(&big), Err(NoteError::TooLarge { .. })));
    }
}
