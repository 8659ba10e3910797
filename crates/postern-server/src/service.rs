//! Request handling: accounts, devices and delivery, independent of sockets.
//!
//! [`Service::handle`] takes one decoded request and the session it came on
//! and returns the response; connection handling (conn.rs) is only the
//! shell around it, so the rules here are tested without a network.
//!
//! It must never log phone numbers, codes or payloads, and never look inside
//! a payload. Phone numbers are looked up by their keyed hash and sealed
//! into the vault at registration ([`crate::legal`]); nothing here stores
//! one in clear.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postern_distributor::InviteCode;
use postern_proto::ids::{AccountId, DeviceAddr};
use postern_proto::keys::verify_device_binding;
use postern_proto::pb::{self, ErrorCode, request::Kind as Req, response::Kind as Resp};
use postern_store::{
    Account, Device, Enqueued, NewAccount, NewDevice, NewMessage, Store, StoreError,
};
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Limits;
use crate::hub::Hub;
use crate::legal::{self, Vault};
use crate::phone;
use crate::ratelimit::{LogThrottle, RateLimiter};
use crate::relays::{self, Holding, RelayError, Relays};
use crate::sms::SmsGateway;
use postern_proto::username;

mod mls;

/// How long a device-link token stays valid.
pub const LINK_TOKEN_TTL: Duration = Duration::from_secs(10 * 60);

/// What a request knows about the session it arrived on.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// The device the session is authenticated as, if any.
    pub device: Option<DeviceAddr>,
    /// The client's Noise static public key.
    pub noise_key: [u8; 32],
    /// Where the connection came from (for per-address limits only).
    pub peer_ip: IpAddr,
}

/// A response, and the device the session is authenticated as afterwards
/// when the request registered or linked one.
pub struct Outcome {
    /// What to send back.
    pub response: pb::Response,
    /// Set when the session just became authenticated.
    pub authenticated: Option<DeviceAddr>,
}

/// The server's request handlers and the state they share.
pub struct Service {
    store: Arc<dyn Store>,
    sms: Arc<dyn SmsGateway>,
    hub: Arc<Hub>,
    limits: Limits,
    message_ttl: Duration,
    code_requests_by_ip: RateLimiter<IpAddr>,
    verify_attempts_by_ip: RateLimiter<IpAddr>,
    key_package_claims: RateLimiter<DeviceAddr>,
    relay_requests: RateLimiter<AccountId>,
    relays: Arc<Relays>,
    vault: Arc<Vault>,
    cases: Option<Arc<crate::cases::Cases>>,
    reachability: Arc<crate::reachability::Reachability>,
    group_locks: mls::GroupLocks,
    mls_ciphersuite: u16,
    rate_limit_log: LogThrottle,
    directory: Option<Arc<crate::directory::Published>>,
}

/// A handler's early exit: an error to return to the client.
struct Refusal(pb::Error);

type Handled<T> = Result<T, Refusal>;

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal(pb::Error {
        code: code as i32,
        message: message.into(),
        retry_after_ms: 0,
        current_epoch: 0,
    })
}

fn rate_limited(what: &str, wait: Duration) -> Refusal {
    let secs = wait.as_secs().max(1);
    Refusal(pb::Error {
        code: ErrorCode::RateLimited as i32,
        message: format!("too many {what}; try again in {secs} s"),
        retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
        current_epoch: 0,
    })
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::PhoneTaken => refuse(
                ErrorCode::AlreadyRegistered,
                "this phone number already has an account; link this device from one of its devices",
            ),
            StoreError::UsernameTaken => refuse(ErrorCode::UsernameTaken, "this username is taken"),
            StoreError::DeviceKeyTaken => refuse(
                ErrorCode::AlreadyAuthenticated,
                "this device is already registered",
            ),
            StoreError::UnknownAccount => refuse(ErrorCode::UnknownRecipient, "no such account"),
            StoreError::GroupExists => refuse(
                ErrorCode::GroupExists,
                "a group with this id exists; choose another id",
            ),
            e => {
                tracing::error!(error = %e, "store failure");
                refuse(ErrorCode::Internal, "the server failed; try again")
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Keyed through the phone key, so that a database copy cannot be searched
/// for a number by hashing candidates with every code.
fn code_hash(phone_key: &[u8; 32], code: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"postern code v2\0");
    h.update(phone_key);
    h.update([0]);
    h.update(code.as_bytes());
    h.finalize().into()
}

fn token_hash(token: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"postern link token v1\0");
    h.update(token);
    h.finalize().into()
}

impl Service {
    /// A service over `store`, sending codes through `sms`, waking
    /// connections through `hub`, handing out `relays` and sealing phone
    /// numbers and connections into `vault`.
    pub fn new(
        store: Arc<dyn Store>,
        sms: Arc<dyn SmsGateway>,
        hub: Arc<Hub>,
        relays: Arc<Relays>,
        vault: Arc<Vault>,
        limits: Limits,
        message_ttl: Duration,
    ) -> Self {
        let hour = Duration::from_secs(3600);
        Service {
            code_requests_by_ip: RateLimiter::new(limits.code_requests_per_ip_per_hour, hour),
            verify_attempts_by_ip: RateLimiter::new(limits.verify_attempts_per_ip_per_hour, hour),
            key_package_claims: RateLimiter::new(
                limits.key_package_claims_per_device_per_hour,
                hour,
            ),
            relay_requests: RateLimiter::new(limits.relay_requests_per_account_per_hour, hour),
            relays,
            vault,
            cases: None,
            reachability: Arc::new(crate::reachability::Reachability::new([])),
            group_locks: mls::GroupLocks::default(),
            mls_ciphersuite: postern_proto::mls::CIPHERSUITES[0].0,
            rate_limit_log: LogThrottle::new(Duration::from_secs(10)),
            directory: None,
            store,
            sms,
            hub,
            limits,
            message_ttl,
        }
    }

    /// Counts blocked-route reports in `r`.
    pub fn with_reachability(mut self, r: Arc<crate::reachability::Reachability>) -> Self {
        self.reachability = r;
        self
    }

    /// The blocked-route reports so far.
    pub fn reachability(&self) -> &crate::reachability::Reachability {
        &self.reachability
    }

    /// Tells clients to use this MLS ciphersuite (an RFC 9420 number).
    pub fn with_mls_ciphersuite(mut self, suite: u16) -> Self {
        self.mls_ciphersuite = suite;
        self
    }

    /// Answers `FetchNotices` from these lawful-request cases.
    pub fn with_cases(mut self, cases: Arc<crate::cases::Cases>) -> Self {
        self.cases = Some(cases);
        self
    }

    /// Answers `FetchDirectory` with what `published` holds.
    pub fn with_directory(mut self, published: Option<Arc<crate::directory::Published>>) -> Self {
        self.directory = published;
        self
    }

    /// The MLS ciphersuite clients are told to use.
    pub fn mls_ciphersuite(&self) -> u16 {
        self.mls_ciphersuite
    }

    /// The store this service writes to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The wake-up hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The relays and their distributor.
    pub fn relays(&self) -> &Arc<Relays> {
        &self.relays
    }

    /// The PII vault.
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// Appends a connection of `account` from `ip` to its sealed IP log.
    pub async fn record_connection(&self, account: AccountId, ip: IpAddr) {
        self.vault
            .record_connection(self.store.as_ref(), account, ip, now_ms())
            .await;
        // A session through a registered relay: the relay-side signal
        // (distinct members per country per day) for the distributor.
        if let Some(relay) = self.relays.relay_at(ip)
            && let Ok(Some(a)) = self.store.account(account).await
        {
            let country = legal::stored_country(&a.country);
            if let Err(e) = self
                .relays
                .observe_session(relay, account, country, relays::now())
                .await
            {
                tracing::warn!("relay signal not recorded: {e}");
            }
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Handles one request. Subscribe and Ack are connection state and are
    /// handled by the connection; here they only check authentication.
    pub async fn handle(&self, session: &SessionInfo, request: pb::Request) -> Outcome {
        let mut authenticated = None;
        let result = match request.kind {
            None => Err(refuse(ErrorCode::BadRequest, "empty request")),
            Some(Req::RequestCode(r)) => self.request_code(session, r).await,
            Some(Req::Register(r)) => self
                .register(session, r)
                .await
                .inspect(|(_, d)| authenticated = Some(*d))
                .map(|(r, _)| r),
            Some(Req::CreateLinkToken(_)) => self.create_link_token(session).await,
            Some(Req::LinkDevice(r)) => self
                .link_device(session, r)
                .await
                .inspect(|(_, d)| authenticated = Some(*d))
                .map(|(r, _)| r),
            Some(Req::SetUsername(r)) => self.set_username(session, r).await,
            Some(Req::Whoami(_)) => self.whoami(session).await,
            Some(Req::Resolve(r)) => self.resolve(session, r).await,
            Some(Req::Send(r)) => self.send(session, r).await,
            Some(Req::Subscribe(_)) | Some(Req::Ack(_)) => {
                authed(session).map(|_| Resp::Ok(pb::Ok {}))
            }
            Some(Req::Ping(_)) => Ok(Resp::Pong(pb::Pong {
                server_time_ms: now_ms(),
            })),
            Some(Req::UploadKeyPackages(r)) => self.upload_key_packages(session, r).await,
            Some(Req::ClaimKeyPackages(r)) => self.claim_key_packages(session, r).await,
            Some(Req::CreateGroup(r)) => self.create_group(session, r).await,
            Some(Req::GroupCommit(r)) => self.group_commit(session, r).await,
            Some(Req::GroupSend(r)) => self.group_send(session, r).await,
            Some(Req::FetchGroupInfo(r)) => self.fetch_group_info(session, r).await,
            Some(Req::ListGroups(_)) => self.list_groups(session).await,
            Some(Req::RemoveDevice(r)) => self.remove_device(session, r).await,
            Some(Req::Sync(_)) => self.sync(session).await,
            Some(Req::FetchRelays(_)) => self.fetch_relays(session).await,
            Some(Req::ReportBlocked(r)) => self.report_blocked(session, r).await,
            Some(Req::CreateInvite(_)) => self.create_invite(session).await,
            Some(Req::FetchDirectory(_)) => self.fetch_directory(),
            Some(Req::ReportRoutes(r)) => self.report_routes(session, r).await,
            Some(Req::RegisterRelay(r)) => self.register_relay(session, r).await,
            Some(Req::RelayHealth(r)) => self.relay_health(session, r).await,
            Some(Req::FetchNotices(_)) => self.fetch_notices(session),
        };
        if let Err(Refusal(e)) = &result
            && e.code == ErrorCode::RateLimited as i32
            && let Some(refused) = self.rate_limit_log.hit(Instant::now())
        {
            // No number or address: only that a limit is being hit, and how often.
            tracing::info!(refused, "requests refused by rate limits");
        }
        let kind = result.unwrap_or_else(|Refusal(e)| Resp::Error(e));
        Outcome {
            response: pb::Response { kind: Some(kind) },
            authenticated,
        }
    }

    async fn request_code(&self, s: &SessionInfo, r: pb::RequestCode) -> Handled<Resp> {
        let phone = phone::normalize(&r.phone)
            .map_err(|e| refuse(ErrorCode::InvalidPhone, e.to_string()))?;
        self.code_requests_by_ip
            .check(&s.peer_ip, Instant::now())
            .map_err(|w| rate_limited("code requests from your network", w))?;
        let key = self.vault.phone_key(&phone);
        let now = now_ms();
        let interval = ms(self.limits.code_interval);
        if self.store.codes_issued_since(&key, now - interval).await? > 0 {
            return Err(rate_limited(
                "codes for this number",
                self.limits.code_interval,
            ));
        }
        let hour = ms(Duration::from_secs(3600));
        if self.store.codes_issued_since(&key, now - hour).await?
            >= self.limits.codes_per_phone_per_hour
        {
            return Err(rate_limited(
                "codes for this number",
                Duration::from_secs(3600),
            ));
        }
        let code = format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000u32));
        self.store
            .issue_code(
                &key,
                code_hash(&key, &code),
                now,
                now + ms(self.limits.code_ttl),
            )
            .await?;
        if let Err(e) = self.sms.send_code(&phone, &code, now).await {
            tracing::error!(error = %e, "SMS gateway failed");
            return Err(refuse(
                ErrorCode::Internal,
                "the server could not send the SMS; try again later",
            ));
        }
        Ok(Resp::CodeSent(pb::CodeSent {
            phone,
            expires_in_ms: u64::try_from(ms(self.limits.code_ttl)).unwrap_or(0),
        }))
    }

    /// Checks `code` for `phone` without using it up; returns the code's
    /// id for [`Service::consume`]. A wrong guess counts against the code.
    async fn check_code(&self, phone_key: &[u8; 32], code: &str) -> Handled<i64> {
        let invalid = || refuse(ErrorCode::CodeInvalid, "wrong code");
        let stored = self
            .store
            .latest_code(phone_key)
            .await?
            .ok_or_else(invalid)?;
        if stored.used_at.is_some() {
            return Err(code_used());
        }
        if stored.expires_at <= now_ms() {
            return Err(refuse(
                ErrorCode::CodeExpired,
                "this code has expired; request a new one",
            ));
        }
        if stored.failed_attempts >= self.limits.max_code_attempts {
            return Err(refuse(
                ErrorCode::CodeInvalid,
                "too many wrong codes; request a new one",
            ));
        }
        let given = code_hash(phone_key, code.trim());
        if !bool::from(given.ct_eq(&stored.code_hash)) {
            self.store.record_failed_attempt(stored.id).await?;
            return Err(invalid());
        }
        Ok(stored.id)
    }

    /// Uses up a checked code; fails if a concurrent request used it first.
    async fn consume(&self, code_id: i64) -> Handled<()> {
        if self.store.consume_code(code_id, now_ms()).await? {
            Ok(())
        } else {
            Err(code_used())
        }
    }

    fn new_device(s: &SessionInfo, keys: Option<pb::DeviceKeys>) -> Handled<NewDevice> {
        let keys = keys.ok_or_else(|| refuse(ErrorCode::BadRequest, "device keys missing"))?;
        let identity_key =
            verify_device_binding(&keys.identity_key, &s.noise_key, &keys.binding_signature)
                .map_err(|e| refuse(ErrorCode::BadSignature, e.to_string()))?;
        if keys.name.len() > 64 {
            return Err(refuse(
                ErrorCode::BadRequest,
                "device names are at most 64 bytes",
            ));
        }
        Ok(NewDevice {
            name: keys.name,
            identity_key,
            noise_key: s.noise_key,
        })
    }

    fn unauthenticated(s: &SessionInfo) -> Handled<()> {
        match s.device {
            Some(_) => Err(refuse(
                ErrorCode::AlreadyAuthenticated,
                "this device is already registered",
            )),
            None => Ok(()),
        }
    }

    async fn register(&self, s: &SessionInfo, r: pb::Register) -> Handled<(Resp, DeviceAddr)> {
        Self::unauthenticated(s)?;
        let phone = phone::normalize(&r.phone)
            .map_err(|e| refuse(ErrorCode::InvalidPhone, e.to_string()))?;
        let device = Self::new_device(s, r.device)?;
        let username = if r.username.is_empty() {
            None
        } else {
            Some(
                username::normalize(&r.username)
                    .map_err(|e| refuse(ErrorCode::InvalidUsername, e.to_string()))?,
            )
        };
        let invite = if r.invite.trim().is_empty() {
            None
        } else {
            Some(InviteCode::parse(&r.invite).map_err(|_| invite_invalid())?)
        };
        self.verify_attempts_by_ip
            .check(&s.peer_ip, Instant::now())
            .map_err(|w| rate_limited("attempts from your network", w))?;
        let key = self.vault.phone_key(&phone);
        let code_id = self.check_code(&key, &r.code).await?;
        // Held until the new member is in the distributor, so that two
        // registrations cannot both pass the check of one invitation.
        let mut distributor = self.relays.lock().await;
        if let Some(code) = &invite
            && !distributor.has_invite(code)
        {
            return Err(invite_invalid());
        }
        if self.store.account_by_phone_key(&key).await?.is_some() {
            return Err(StoreError::PhoneTaken.into());
        }
        if let Some(name) = &username
            && self.store.account_by_username(name).await?.is_some()
        {
            return Err(StoreError::UsernameTaken.into());
        }
        let id = AccountId::random();
        let vault = self.vault.escrow(id, &phone).map_err(|e| {
            tracing::error!(error = %e, "sealing a phone number into the vault failed");
            refuse(ErrorCode::Internal, "the server failed; try again")
        })?;
        let country = legal::country_of(&phone);
        self.consume(code_id).await?;
        let new = NewAccount {
            id,
            phone_key: key,
            country: country.as_str().to_owned(),
            username,
            vault: Some(vault),
        };
        let (account, device) = self.store.create_account(new, device, now_ms()).await?;
        self.record_connection(account.id, s.peer_ip).await;
        let member = relays::member_id(account.id);
        let (network, t) = (relays::client_network(s.peer_ip), relays::now());
        let joined = match invite {
            Some(code) => distributor.redeem_invite(code, member, country, network, t),
            None => distributor.register_member(member, country, network, t),
        };
        // The account exists either way; one that could not join the
        // distributor now (a network's daily limit) joins on its first
        // relay request.
        match joined {
            Ok(()) => {
                if let Err(e) = self.relays.save(&distributor).await {
                    tracing::error!(error = %e, "saving the distributor's state failed");
                }
            }
            // The error names the member and network: not for logs.
            Err(_) => tracing::info!("a new account gets relays later (distributor limit)"),
        }
        drop(distributor);
        tracing::info!(device = %device.addr, invited = invite.is_some(), "account registered");
        // The number the client just sent, normalized, for it to keep: the
        // server has no clear copy to answer with later.
        Ok(registered(account, &device, phone))
    }

    /// Authenticates a relay request, applies the per-account limit, and
    /// makes sure the account is a member of the distributor (accounts
    /// from before relays, or that hit a network limit, join here).
    async fn relay_member(&self, s: &SessionInfo) -> Handled<AccountId> {
        let me = authed(s)?;
        self.relay_requests
            .check(&me.account, Instant::now())
            .map_err(|w| rate_limited("relay requests", w))?;
        if !self.relays.knows(me.account).await {
            let account = self
                .store
                .account(me.account)
                .await?
                .ok_or(StoreError::UnknownAccount)?;
            let mut d = self.relays.lock().await;
            match d.register_member(
                relays::member_id(me.account),
                legal::stored_country(&account.country),
                relays::client_network(s.peer_ip),
                relays::now(),
            ) {
                Ok(()) | Err(postern_distributor::DistributorError::MemberExists(_)) => {}
                Err(e) => return Err(RelayError::Policy(e).into()),
            }
            self.relays.save(&d).await.map_err(RelayError::Store)?;
        }
        Ok(me.account)
    }

    async fn fetch_relays(&self, s: &SessionInfo) -> Handled<Resp> {
        let account = self.relay_member(s).await?;
        Ok(relays_response(self.relays.fetch(account).await?))
    }

    async fn report_blocked(&self, s: &SessionInfo, r: pb::ReportBlocked) -> Handled<Resp> {
        let account = self.relay_member(s).await?;
        Ok(relays_response(self.relays.report(account, &r.link).await?))
    }

    /// A volunteer's relay registers: signed by its operator key, no
    /// account involved.
    async fn register_relay(&self, s: &SessionInfo, r: pb::RegisterRelay) -> Handled<Resp> {
        let (state, message) = self.relays.register(&r, now_ms()).await?;
        self.relays.relay_egress(&r.link, s.peer_ip);
        Ok(Resp::RelayState(pb::RelayState { state, message }))
    }

    async fn relay_health(&self, s: &SessionInfo, r: pb::RelayHealthReport) -> Handled<Resp> {
        let (state, message) = match self.relays.health(&r, now_ms()).await {
            Err(RelayError::UnknownRelay) => {
                return Err(refuse(
                    ErrorCode::UnknownRelay,
                    "this relay is not registered (or by another operator key); register first",
                ));
            }
            other => other?,
        };
        self.relays.relay_egress_of_host(&r.host, s.peer_ip);
        Ok(Resp::RelayState(pb::RelayState { state, message }))
    }

    /// Public: any session may ask, registered or not (a new device needs
    /// the directory before it can register).
    fn fetch_directory(&self) -> Handled<Resp> {
        let d = self
            .directory
            .as_ref()
            .and_then(|p| p.current())
            .ok_or_else(|| refuse(ErrorCode::Unavailable, "this server publishes no directory"))?;
        Ok(Resp::SignedDirectory(pb::SignedDirectory {
            note: d.bytes().to_vec().into(),
        }))
    }

    async fn report_routes(&self, s: &SessionInfo, r: pb::ReportRoutes) -> Handled<Resp> {
        let me = authed(s)?;
        let account = self
            .store
            .account(me.account)
            .await?
            .ok_or(StoreError::UnknownAccount)?;
        let country = legal::stored_country(&account.country);
        let hour = u64::try_from(now_ms() / 3_600_000).unwrap_or(0);
        self.reachability.report(country.as_str(), &r, hour);
        // Relays the member was given and cannot reach: the distributor's
        // blocking reports, as `relay report` makes them by hand. A relay
        // that answered but not as itself (`not-relay`: the member's clock
        // is off, or the secret changed) is not evidence of a block.
        for route in r
            .routes
            .iter()
            .take(crate::reachability::MAX_ROUTES_PER_REPORT)
        {
            if let Some(host) = route.route.strip_prefix("cloak://")
                && route.failure != "not-relay"
            {
                self.relays.report_route(me.account, host).await?;
            }
        }
        Ok(Resp::Ok(pb::Ok {}))
    }

    /// The member's disclosure notices: cases that disclosed its data and
    /// whose gag lapsed.
    fn fetch_notices(&self, s: &SessionInfo) -> Handled<Resp> {
        let me = authed(s)?;
        let Some(cases) = &self.cases else {
            return Ok(Resp::Notices(pb::Notices::default()));
        };
        let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let list = cases.notices(me.account, now).map_err(|e| {
            tracing::error!(error = %e, "reading disclosure notices failed");
            refuse(ErrorCode::Internal, "the server failed; try again")
        })?;
        Ok(Resp::Notices(pb::Notices {
            notices: list
                .into_iter()
                .map(|c| pb::DisclosureNotice {
                    disclosed_at_ms: i64::try_from(c.disclosed_at.unwrap_or(0))
                        .unwrap_or(i64::MAX)
                        .saturating_mul(1000),
                    categories: c.categories,
                    jurisdiction: c.jurisdiction,
                    log_index: c.log_index,
                })
                .collect(),
        }))
    }

    async fn create_invite(&self, s: &SessionInfo) -> Handled<Resp> {
        let account = self.relay_member(s).await?;
        let code = self.relays.create_invite(account).await?;
        Ok(Resp::Invite(pb::Invite {
            code: code.to_string(),
        }))
    }

    async fn create_link_token(&self, s: &SessionInfo) -> Handled<Resp> {
        let me = authed(s)?;
        let token: [u8; 32] = rand::rngs::OsRng.r#gen();
        self.store
            .create_link_token(
                me.account,
                token_hash(&token),
                now_ms() + ms(LINK_TOKEN_TTL),
            )
            .await?;
        Ok(Resp::LinkToken(pb::LinkToken {
            token: token.to_vec().into(),
            expires_in_ms: u64::try_from(ms(LINK_TOKEN_TTL)).unwrap_or(0),
        }))
    }

    async fn link_device(&self, s: &SessionInfo, r: pb::LinkDevice) -> Handled<(Resp, DeviceAddr)> {
        Self::unauthenticated(s)?;
        let device = Self::new_device(s, r.device)?;
        self.verify_attempts_by_ip
            .check(&s.peer_ip, Instant::now())
            .map_err(|w| rate_limited("attempts from your network", w))?;
        let account_id = self
            .store
            .redeem_link_token(token_hash(&r.token), now_ms())
            .await?
            .ok_or_else(|| {
                refuse(
                    ErrorCode::TokenInvalid,
                    "this device link is unknown, used or expired; create a new one",
                )
            })?;
        let device = self.store.add_device(account_id, device, now_ms()).await?;
        let account = self
            .store
            .account(account_id)
            .await?
            .ok_or(StoreError::UnknownAccount)?;
        tracing::info!(device = %device.addr, "device linked");
        Ok(registered(account, &device, String::new()))
    }

    async fn set_username(&self, s: &SessionInfo, r: pb::SetUsername) -> Handled<Resp> {
        let me = authed(s)?;
        let name = if r.username.is_empty() {
            None
        } else {
            Some(
                username::normalize(&r.username)
                    .map_err(|e| refuse(ErrorCode::InvalidUsername, e.to_string()))?,
            )
        };
        self.store.set_username(me.account, name.as_deref()).await?;
        Ok(Resp::Ok(pb::Ok {}))
    }

    async fn whoami(&self, s: &SessionInfo) -> Handled<Resp> {
        let me = authed(s)?;
        let account = self
            .store
            .account(me.account)
            .await?
            .ok_or(StoreError::UnknownAccount)?;
        let devices = self.store.devices(me.account).await?;
        Ok(Resp::Account(pb::Account {
            account_id: account.id.0.to_vec().into(),
            // Not kept in clear: the client shows the number it registered.
            phone: String::new(),
            username: account.username.unwrap_or_default(),
            device_id: me.device,
            devices: devices.into_iter().map(device_info).collect(),
        }))
    }

    async fn resolve(&self, s: &SessionInfo, r: pb::Resolve) -> Handled<Resp> {
        authed(s)?;
        use pb::resolve::Who;
        let unknown = || refuse(ErrorCode::UnknownRecipient, "no account with that name");
        let account = match r.who {
            None => return Err(refuse(ErrorCode::BadRequest, "resolve what?")),
            Some(Who::Phone(p)) => {
                let phone = phone::normalize(&p)
                    .map_err(|e| refuse(ErrorCode::InvalidPhone, e.to_string()))?;
                self.store
                    .account_by_phone_key(&self.vault.phone_key(&phone))
                    .await?
            }
            Some(Who::Username(u)) => {
                let name = username::normalize(&u).map_err(|_| unknown())?;
                self.store.account_by_username(&name).await?
            }
            Some(Who::AccountId(id)) => {
                let id = AccountId::from_slice(&id)
                    .ok_or_else(|| refuse(ErrorCode::BadRequest, "account ids are 16 bytes"))?;
                self.store.account(id).await?
            }
        };
        let account = account.ok_or_else(unknown)?;
        let devices = self.store.devices(account.id).await?;
        Ok(Resp::Resolved(pb::Resolved {
            account_id: account.id.0.to_vec().into(),
            username: account.username.unwrap_or_default(),
            devices: devices.into_iter().map(device_info).collect(),
        }))
    }

    async fn send(&self, s: &SessionInfo, r: pb::Send) -> Handled<Resp> {
        let me = authed(s)?;
        let client_message_id: [u8; 16] = r.client_message_id[..]
            .try_into()
            .map_err(|_| refuse(ErrorCode::BadRequest, "client message ids are 16 bytes"))?;
        let to = AccountId::from_slice(&r.to_account_id)
            .ok_or_else(|| refuse(ErrorCode::BadRequest, "account ids are 16 bytes"))?;
        if r.payload.len() > postern_proto::MAX_PAYLOAD_LEN {
            return Err(refuse(
                ErrorCode::PayloadTooLarge,
                format!(
                    "messages are at most {} bytes",
                    postern_proto::MAX_PAYLOAD_LEN
                ),
            ));
        }
        let now = now_ms();
        let msg = NewMessage {
            sender: me,
            client_message_id,
            to: to.into(),
            group_id: None,
            group_epoch: None,
            payload: r.payload,
            received_at: now,
            expires_at: now + ms(self.message_ttl),
        };
        let enqueued = self.store.enqueue(msg.clone()).await?;
        self.push(&msg, &enqueued);
        Ok(sent(&enqueued))
    }

    /// Hands the copies just committed to the connections of their devices.
    fn push(&self, msg: &NewMessage, enqueued: &Enqueued) {
        for (device, seq) in &enqueued.deliveries {
            let queued = Arc::new(pb::QueuedMessage {
                seq: *seq,
                sender: Some(msg.sender.into()),
                client_message_id: msg.client_message_id.to_vec().into(),
                received_at_ms: enqueued.received_at,
                payload: msg.payload.clone(),
                group_id: msg.group_id.clone().unwrap_or_default(),
            });
            self.hub.deliver(device, &queued);
        }
    }

    async fn sync(&self, s: &SessionInfo) -> Handled<Resp> {
        let me = authed(s)?;
        let head_seq = self.store.queue_head(me).await?;
        Ok(Resp::SyncPoint(pb::SyncPoint { head_seq }))
    }

    async fn remove_device(&self, s: &SessionInfo, r: pb::RemoveDevice) -> Handled<Resp> {
        let me = authed(s)?;
        if r.device_id == me.device {
            return Err(refuse(
                ErrorCode::BadRequest,
                "a device cannot remove itself; remove it from another device of the account",
            ));
        }
        let target = DeviceAddr {
            account: me.account,
            device: r.device_id,
        };
        if !self.store.remove_device(target).await? {
            return Err(refuse(
                ErrorCode::UnknownDevice,
                "this account has no such device",
            ));
        }
        tracing::info!(device = %target, by = %me, "device removed");
        Ok(Resp::Ok(pb::Ok {}))
    }
}

fn sent(enqueued: &Enqueued) -> Resp {
    Resp::Sent(pb::Sent {
        received_at_ms: enqueued.received_at,
        duplicate: enqueued.duplicate,
    })
}

fn device_info(d: Device) -> pb::DeviceInfo {
    pb::DeviceInfo {
        device_id: d.addr.device,
        name: d.name,
        identity_key: d.identity_key.to_vec().into(),
        created_at_ms: d.created_at,
    }
}

/// The answer to a registration or device link, and the device the session
/// is now authenticated as. `phone` is the number just registered, or empty
/// (a linked device: the server has no clear copy).
fn registered(account: Account, device: &Device, phone: String) -> (Resp, DeviceAddr) {
    let answer = Resp::Registered(pb::Registered {
        device: Some(device.addr.into()),
        phone,
        username: account.username.unwrap_or_default(),
    });
    (answer, device.addr)
}

fn code_used() -> Refusal {
    refuse(
        ErrorCode::CodeUsed,
        "this code was already used; request a new one",
    )
}

fn invite_invalid() -> Refusal {
    refuse(
        ErrorCode::InviteInvalid,
        "this invitation is unknown or already used; ask for a new one, or register without it",
    )
}

impl From<RelayError> for Refusal {
    fn from(e: RelayError) -> Self {
        use postern_distributor::DistributorError as D;
        match e {
            RelayError::UnknownRelay | RelayError::Policy(D::NotAssigned { .. }) => refuse(
                ErrorCode::UnknownRelay,
                "this is not a relay the server gave you; run `postern relay fetch`",
            ),
            RelayError::Policy(D::NetworkLimit(_)) => rate_limited(
                "new members from your network today",
                Duration::from_secs(postern_distributor::DAY),
            ),
            RelayError::Policy(D::Suspended { until, .. }) => {
                let wait = Duration::from_secs(until.0.saturating_sub(relays::now().0));
                let mut r = refuse(
                    ErrorCode::RelaysRefused,
                    format!(
                        "the relays given to this account were blocked too often; no relays for {} days",
                        wait.as_secs().div_ceil(postern_distributor::DAY).max(1)
                    ),
                );
                r.0.retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
                r
            }
            RelayError::Policy(D::Banned(_)) => refuse(
                ErrorCode::RelaysRefused,
                "the relays given to this account were blocked too often; it gets no more relays",
            ),
            RelayError::Policy(D::NotTrusted(_)) => refuse(
                ErrorCode::NoInvitations,
                "new members cannot invite yet; invitations come with trust, after some time with working relays",
            ),
            RelayError::Policy(D::NoInvitations(_)) => refuse(
                ErrorCode::NoInvitations,
                "you have no invitations left; more come as your trust level rises",
            ),
            RelayError::Policy(D::UnknownInvite) => invite_invalid(),
            RelayError::Registration(message) => refuse(ErrorCode::BadRequest, message),
            RelayError::Store(e) => {
                tracing::error!(error = %e, "relay request failed");
                refuse(ErrorCode::Internal, "the server failed; try again")
            }
            // Unknown member or relay after the checks above: a bug, and
            // the error text names ids, which stay out of the logs.
            RelayError::Policy(_) => {
                tracing::error!("the distributor refused a request it should have accepted");
                refuse(ErrorCode::Internal, "the server failed; try again")
            }
        }
    }
}

fn relays_response(h: Holding) -> Resp {
    Resp::Relays(pb::Relays {
        links: h.links,
        level: u32::from(h.level),
        invitations: h.invitations,
        unserved: h.unserved.map(|u| u.name().to_string()).unwrap_or_default(),
        unserved_text: h
            .unserved
            .map(|u| u.explain().to_string())
            .unwrap_or_default(),
    })
}

fn authed(s: &SessionInfo) -> Handled<DeviceAddr> {
    s.device.ok_or_else(|| {
        refuse(
            ErrorCode::NotAuthenticated,
            "register this device first (postern register PHONE)",
        )
    })
}
