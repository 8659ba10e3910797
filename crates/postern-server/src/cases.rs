//! Lawful requests on the server: submission (order verified, policy
//! decided, the decision appended to the transparency log), two operators'
//! approvals, the bundle custodians review, and the disclosure.
//!
//! Cases live as files under `DATA_DIR/legal/` (one directory per case:
//! `case.json`, the bundle without its proof, the request's one-time
//! disclosure key, mode 0600), on the node that hosts the transparency
//! log. Every submission that parses is logged, granted or refused, once:
//! a resubmission of the same request, order and signature is refused
//! before anything is verified or logged. A request file that does not
//! parse, or an order past the size limits, is refused with its error and
//! not logged (there is nothing to record). A disclosure is all or
//! nothing (`postern_legal::disclosure`), and happens once per case.
//!
//! This module never logs a request's content, a target or anything it
//! discloses.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ed25519_dalek::SigningKey;
use postern_legal::bundle::{Bundle, record_case};
use postern_legal::custodian::{DisclosureKey, ReleasedShare, WrappedShare};
use postern_legal::disclosure::{AccountVault, SignedPackage, disclose};
use postern_legal::order::{MAX_DOCUMENT_BYTES, MAX_SIGNATURE_BYTES, TrustStore, verify_order};
use postern_legal::policy::{OrderStatus, Policy, decide};
use postern_legal::request::{MAX_REQUEST_BYTES, Request, Target};
use postern_legal::vault::{SealedRecord, VaultPublicKey};
use postern_proto::ids::AccountId;
use postern_store::Store;
use postern_tlog::entry::{Disclosure, Entry, Month, Outcome};
use postern_tlog::{DirFetch, ProofBundle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::LegalConfig;
use crate::legal::Vault;
use crate::transparency::TransparencyLog;

/// How long a bundle waits for the witnesses to cosign the checkpoint
/// holding its decision.
const COSIGN_WAIT: Duration = Duration::from_secs(15);

/// Distinct operators who must approve before a bundle is handed out.
pub const APPROVALS_NEEDED: usize = 2;

/// What an operator sees of a case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseState {
    /// 32 hex digits.
    pub id: String,
    /// When it was received (UNIX seconds).
    pub received_at: u64,
    /// The requesting jurisdiction.
    pub jurisdiction: String,
    /// The authority's name.
    pub authority: String,
    /// Its case reference.
    pub case_reference: String,
    /// The legal basis it invoked.
    pub legal_basis: String,
    /// `granted`, `partly_granted` or `refused`.
    pub outcome: String,
    /// Reason codes (`no_valid_order`, …), the first one logged.
    pub reasons: Vec<String>,
    /// The accounts granted (32 hex digits each).
    pub accounts: Vec<String>,
    /// The data categories granted (`phone_number`, `connection_ips`).
    pub categories: Vec<String>,
    /// The decision's index in the transparency log.
    pub log_index: u64,
    /// When the gag lapses (UNIX seconds), if there is one.
    pub gag_until: Option<u64>,
    /// When the sealed entry's opening was appended to the log, once the
    /// gag lapsed.
    pub opened_at: Option<u64>,
    /// Operators who approved (public keys, hex).
    pub approvals: Vec<String>,
    /// When it was disclosed (UNIX seconds).
    pub disclosed_at: Option<u64>,
}

/// Why a case operation did not happen; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The input is malformed or too large; nothing was logged.
    #[error("{0}")]
    BadRequest(String),
    /// The same request was submitted before; nothing was logged again.
    #[error("this request, order and signature were already submitted as case {0}")]
    Duplicate(String),
    /// No such case.
    #[error("no case with this id")]
    NotFound,
    /// The case is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    /// Something the process needs is missing or down.
    #[error("{0}")]
    Unavailable(String),
    /// The server failed.
    #[error("the server failed: {0:#}")]
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for CaseError {
    fn from(e: anyhow::Error) -> Self {
        CaseError::Internal(e)
    }
}

impl From<postern_store::StoreError> for CaseError {
    fn from(e: postern_store::StoreError) -> Self {
        CaseError::Internal(e.into())
    }
}

/// The lawful-request process of one server.
pub struct Cases {
    dir: PathBuf,
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    log: Option<TransparencyLog>,
    trust: TrustStore,
    policy: Policy,
    signer: SigningKey,
    lock: tokio::sync::Mutex<()>,
}

impl Cases {
    /// Loads the policy, the court anchors and the disclosure-signing key
    /// (`DATA_DIR/disclosure.key`, created once) named by `[legal]`.
    pub fn open(
        cfg: &LegalConfig,
        data_dir: &Path,
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
        log: Option<TransparencyLog>,
    ) -> anyhow::Result<Cases> {
        let policy = match &cfg.policy {
            None => Policy::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read [legal] policy {}", path.display()))?;
                Policy::parse(&text)
                    .with_context(|| format!("[legal] policy {} is not valid", path.display()))?
            }
        };
        let mut trust = TrustStore::new();
        for (jurisdiction, path) in &cfg.trust_anchors {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the court anchors {}", path.display()))?;
            trust.add_anchors(jurisdiction, &pem).with_context(|| {
                format!("[legal] trust_anchors {jurisdiction}: {}", path.display())
            })?;
        }
        let signer = SigningKey::from_bytes(&crate::legal::load_or_create_secret(
            &data_dir.join("disclosure.key"),
        )?);
        let dir = data_dir.join("legal");
        std::fs::create_dir_all(dir.join("submitted"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Cases {
            dir,
            store,
            vault,
            log,
            trust,
            policy,
            signer,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The key disclosure packages are signed with.
    pub fn package_key(&self) -> ed25519_dalek::VerifyingKey {
        self.signer.verifying_key()
    }

    fn log(&self) -> Result<&TransparencyLog, CaseError> {
        self.log.as_ref().ok_or_else(|| {
            CaseError::Unavailable(
                "this server hosts no transparency log, so it cannot record requests".into(),
            )
        })
    }

    /// Submits a request: verifies the order, decides, appends the decision
    /// to the log (waiting for its checkpoint) and keeps the case.
    pub async fn submit(
        &self,
        request_toml: &str,
        document: &[u8],
        signature: &[u8],
        now: u64,
    ) -> Result<CaseState, CaseError> {
        if request_toml.len() > MAX_REQUEST_BYTES {
            return Err(CaseError::BadRequest(format!(
                "the request file is {} bytes; at most {MAX_REQUEST_BYTES}",
                request_toml.len()
            )));
        }
        if document.len() > MAX_DOCUMENT_BYTES || signature.len() > MAX_SIGNATURE_BYTES {
            return Err(CaseError::BadRequest(format!(
                "the order is at most {MAX_DOCUMENT_BYTES} bytes and its signature at most \
                 {MAX_SIGNATURE_BYTES}"
            )));
        }
        let request = Request::parse(request_toml.as_bytes())
            .map_err(|e| CaseError::BadRequest(format!("REQUEST.toml: {e}")))?;
        let log = self.log()?;
        let _guard = self.lock.lock().await;
        let fingerprint = submission_fingerprint(request_toml, document, signature);
        let marker = self.dir.join("submitted").join(&fingerprint);
        if let Ok(id) = std::fs::read_to_string(&marker) {
            return Err(CaseError::Duplicate(id.trim().to_owned()));
        }
        let status = match verify_order(
            &self.trust,
            request.jurisdiction.as_str(),
            document,
            signature,
            now,
        ) {
            Ok(_) => OrderStatus::Valid,
            Err(e) => e.status(),
        };
        let mut resolved = Vec::with_capacity(request.targets.len());
        for t in &request.targets {
            resolved.push(self.resolve(t).await?.map(|a| a.0));
        }
        let decision = decide(&self.policy, &request, status, &resolved);
        let id: [u8; 16] = rand::random();
        let case = record_case(id, now, &request, &decision, document);
        let log_index = log
            .append(&case.entry)
            .await
            .map_err(|e| CaseError::Unavailable(format!("the transparency log failed: {e}")))?;
        let key = DisclosureKey::generate();
        let mut shares = Vec::new();
        for account in &decision.accounts {
            let entry = self
                .store
                .vault(AccountId(*account))
                .await?
                .context("a granted account has no vault entry")?;
            for (_, wrapped) in &entry.shares {
                let w = WrappedShare::decode(wrapped).context("a stored share is malformed")?;
                shares.push((*account, w));
            }
        }
        let placeholder = ProofBundle {
            extra: None,
            index: log_index,
            proof: Vec::new(),
            checkpoint: String::new(),
        };
        let bundle = Bundle::new(
            request_toml,
            document,
            signature,
            now,
            &decision,
            &case,
            &placeholder,
            key.public_key().context("disclosure key")?,
            &shares,
        );
        let state = CaseState {
            id: hex::encode(id),
            received_at: now,
            jurisdiction: request.jurisdiction.as_str().to_owned(),
            authority: request.authority_name.clone(),
            case_reference: request.case_reference.clone(),
            legal_basis: request.legal_basis.clone(),
            outcome: match decision.outcome {
                Outcome::Granted => "granted",
                Outcome::PartlyGranted(_) => "partly_granted",
                Outcome::Refused(_) => "refused",
            }
            .into(),
            reasons: decision
                .reasons
                .iter()
                .map(|r| r.name().to_owned())
                .collect(),
            accounts: decision.accounts.iter().map(hex::encode).collect(),
            categories: decision
                .categories
                .iter()
                .map(|c| c.name().to_owned())
                .collect(),
            log_index,
            gag_until: (request.gag_days > 0).then(|| now + u64::from(request.gag_days) * 86_400),
            opened_at: None,
            approvals: Vec::new(),
            disclosed_at: None,
        };
        let case_dir = self.dir.join(&state.id);
        std::fs::create_dir_all(&case_dir).context("cannot create the case directory")?;
        crate::write_private(
            &case_dir.join("disclosure.key"),
            hex::encode(*key.to_bytes()).as_bytes(),
        )
        .context("cannot write the case's disclosure key")?;
        write_json(&case_dir.join("bundle.json"), &bundle.to_json())?;
        self.save(&state)?;
        std::fs::write(&marker, &state.id).context("cannot record the submission")?;
        tracing::info!(outcome = %state.outcome, log_index, "lawful request recorded");
        Ok(state)
    }

    async fn resolve(&self, target: &Target) -> Result<Option<AccountId>, CaseError> {
        Ok(match target {
            Target::Phone(p) => match crate::phone::normalize(p) {
                Ok(p) => self
                    .store
                    .account_by_phone_key(&self.vault.phone_key(&p))
                    .await?
                    .map(|a| a.id),
                Err(_) => None,
            },
            Target::Username(u) => match postern_proto::username::normalize(u) {
                Ok(u) => self.store.account_by_username(&u).await?.map(|a| a.id),
                Err(_) => None,
            },
            Target::Account(id) => self.store.account(AccountId(*id)).await?.map(|a| a.id),
            Target::Everyone => None,
        })
    }

    /// Every case, newest first.
    pub fn list(&self) -> Result<Vec<CaseState>, CaseError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).context("cannot list cases")? {
            let entry = entry.context("cannot list cases")?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.len() == 32 && entry.path().join("case.json").exists() {
                out.push(self.load(&name)?);
            }
        }
        out.sort_by(|a, b| b.received_at.cmp(&a.received_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// One case.
    pub fn load(&self, id: &str) -> Result<CaseState, CaseError> {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CaseError::NotFound);
        }
        let path = self.dir.join(id.to_ascii_lowercase()).join("case.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CaseError::NotFound);
            }
            Err(e) => return Err(anyhow::Error::new(e).context("cannot read a case").into()),
        };
        Ok(serde_json::from_str(&text).context("a case file is damaged")?)
    }

    fn save(&self, state: &CaseState) -> Result<(), CaseError> {
        let text = serde_json::to_string_pretty(state).context("a case serialises")?;
        write_json(&self.dir.join(&state.id).join("case.json"), &text)?;
        Ok(())
    }

    /// Records an operator's approval (once per operator).
    pub async fn approve(&self, id: &str, operator: &str) -> Result<CaseState, CaseError> {
        let _guard = self.lock.lock().await;
        let mut state = self.load(id)?;
        if state.outcome == "refused" {
            return Err(CaseError::Conflict(format!(
                "case {} was refused ({}); there is nothing to approve",
                state.id,
                state.reasons.join(", ")
            )));
        }
        if !state.approvals.iter().any(|a| a == operator) {
            state.approvals.push(operator.to_owned());
            self.save(&state)?;
            tracing::info!(approvals = state.approvals.len(), "lawful request approved");
        }
        Ok(state)
    }

    /// The bundle custodians review and approve, with a fresh inclusion
    /// proof of the decision in a witness-cosigned checkpoint.
    pub async fn bundle(&self, id: &str) -> Result<Bundle, CaseError> {
        let state = self.load(id)?;
        if state.outcome == "refused" {
            return Err(CaseError::Conflict(format!(
                "case {} was refused ({}); custodians have nothing to release",
                state.id,
                state.reasons.join(", ")
            )));
        }
        if state.approvals.len() < APPROVALS_NEEDED {
            return Err(CaseError::Conflict(format!(
                "case {} needs the approval of {APPROVALS_NEEDED} operators first (has {})",
                state.id,
                state.approvals.len()
            )));
        }
        let text = std::fs::read_to_string(self.dir.join(&state.id).join("bundle.json"))
            .context("cannot read the case's bundle")?;
        let mut bundle = Bundle::parse(text.as_bytes()).context("the stored bundle")?;
        let entry = hex::decode(&bundle.entry).context("the stored entry")?;
        let log = self.log()?;
        let fetch = DirFetch(log.dir().to_owned());
        let deadline = tokio::time::Instant::now() + COSIGN_WAIT;
        let proof = loop {
            match postern_tlog::client::prove_inclusion(
                &fetch,
                log.policy(),
                state.log_index,
                &entry,
                None,
            )
            .await
            {
                Ok(p) => break p,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(CaseError::Unavailable(format!(
                        "no checkpoint cosigned by the witness quorum includes the decision yet: {e}"
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        bundle.proof = proof.to_string();
        Ok(bundle)
    }

    /// Discloses what the case grants, from the custodians' released
    /// shares (hex, as `postern custodian approve` writes them).
    pub async fn disclose(
        &self,
        id: &str,
        released: &[String],
        now: u64,
    ) -> Result<SignedPackage, CaseError> {
        let bundle = self.bundle(id).await?;
        let _guard = self.lock.lock().await;
        let mut state = self.load(id)?;
        if let Some(at) = state.disclosed_at {
            return Err(CaseError::Conflict(format!(
                "case {} was disclosed already (at {at}); a case is disclosed once",
                state.id
            )));
        }
        let shares = released
            .iter()
            .flat_map(|text| text.lines())
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                hex::decode(l)
                    .ok()
                    .and_then(|b| ReleasedShare::decode(&b).ok())
                    .ok_or_else(|| CaseError::BadRequest("a released share is malformed".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let key_hex = std::fs::read_to_string(self.dir.join(&state.id).join("disclosure.key"))
            .context("cannot read the case's disclosure key")?;
        let key_bytes: [u8; 32] = hex::decode(key_hex.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .context("the case's disclosure key is damaged")?;
        let key = DisclosureKey::from_bytes(key_bytes);
        let mut vaults = Vec::new();
        for account in &state.accounts {
            let id: [u8; 16] = hex::decode(account)
                .ok()
                .and_then(|v| v.try_into().ok())
                .context("a case names a malformed account")?;
            let Some(entry) = self.store.vault(AccountId(id)).await? else {
                continue;
            };
            let connections = self
                .store
                .connections(AccountId(id), 0, i64::MAX)
                .await?
                .iter()
                .filter_map(|c| SealedRecord::decode(&c.sealed).ok())
                .collect();
            vaults.push(AccountVault {
                account: id,
                public_key: VaultPublicKey(entry.public_key),
                phone: SealedRecord::decode(&entry.sealed_phone)
                    .context("a stored phone record is malformed")?,
                connections,
            });
        }
        let log = self.log()?;
        let package = disclose(
            &bundle,
            log.policy(),
            &key,
            &shares,
            self.vault.custodians(),
            self.vault.threshold(),
            &vaults,
            &self.signer,
            now,
        )
        .map_err(|e| CaseError::Conflict(format!("nothing was disclosed: {e}")))?;
        // The disclosure goes into the log before the package leaves the
        // server: no package without its entry.
        let (year, month) = postern_legal::date::year_month(now);
        let entry = Entry::Disclosure(Disclosure {
            id: request_id(&state.id)?,
            month: Month::new(
                u16::try_from(year).unwrap_or(0),
                u8::try_from(month).unwrap_or(0),
            )
            .map_err(|e| CaseError::Internal(anyhow::anyhow!("disclosure month: {e}")))?,
        });
        log.append(&entry).await.map_err(|e| {
            CaseError::Unavailable(format!(
                "the transparency log failed, nothing was disclosed: {e}"
            ))
        })?;
        state.disclosed_at = Some(now);
        self.save(&state)?;
        tracing::info!(accounts = vaults.len(), "lawful request disclosed");
        Ok(package)
    }
}

impl Cases {
    /// Appends the opening of every sealed case whose gag has lapsed, so
    /// that reports count its details; returns how many.
    pub async fn open_lapsed_gags(&self, now: u64) -> Result<usize, CaseError> {
        let _guard = self.lock.lock().await;
        let mut opened = 0;
        for mut state in self.list()? {
            if state.opened_at.is_some() || state.gag_until.is_none_or(|g| g > now) {
                continue;
            }
            let text = std::fs::read_to_string(self.dir.join(&state.id).join("bundle.json"))
                .context("cannot read the case's bundle")?;
            let bundle = Bundle::parse(text.as_bytes()).context("the stored bundle")?;
            let opening = bundle
                .opening
                .as_deref()
                .context("a gagged case without an opening")?;
            let entry = Entry::decode(&hex::decode(opening).context("the stored opening")?)
                .context("the stored opening")?;
            self.log()?
                .append(&entry)
                .await
                .map_err(|e| CaseError::Unavailable(format!("the transparency log failed: {e}")))?;
            state.opened_at = Some(now);
            self.save(&state)?;
            opened += 1;
        }
        Ok(opened)
    }

    /// What `account` may be told: its disclosures whose gag has lapsed
    /// (or that had none).
    pub fn notices(&self, account: AccountId, now: u64) -> Result<Vec<CaseState>, CaseError> {
        let me = hex::encode(account.0);
        Ok(self
            .list()?
            .into_iter()
            .filter(|c| {
                c.disclosed_at.is_some()
                    && c.gag_until.is_none_or(|g| g <= now)
                    && c.accounts.contains(&me)
            })
            .collect())
    }
}

/// Every minute, appends the openings of lapsed gags.
pub async fn gag_loop(cases: Arc<Cases>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match cases.open_lapsed_gags(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(cases = n, "gags lapsed; openings appended to the log"),
            Err(e) => tracing::warn!(error = %e, "appending lapsed gags' openings failed"),
        }
    }
}

fn request_id(hex_id: &str) -> Result<[u8; 16], CaseError> {
    hex::decode(hex_id)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| CaseError::Internal(anyhow::anyhow!("a case id is malformed")))
}

/// What makes two submissions the same: the request file, the order and
/// its signature, byte for byte.
fn submission_fingerprint(request: &str, document: &[u8], signature: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"postern submission v1\0");
    for part in [request.as_bytes(), document, signature] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

/// Writes a file whole: to a temporary name, then renamed over.
fn write_json(path: &Path, text: &str) -> Result<(), CaseError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
