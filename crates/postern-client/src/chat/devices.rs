//! This account's devices in conversations — joining by external commit,
//! removal — and safety numbers.

use super::*;

impl Connection {
    /// From a new device: joins every conversation of the account by
    /// external commit (RFC 9420 §12.4.3.2), using the GroupInfo and tree
    /// the server keeps. Returns how many it joined.
    pub async fn join_account_conversations(&mut self) -> Result<usize, ClientError> {
        self.catch_up().await?;
        let Resp::Groups(groups) = self.call(Req::ListGroups(pb::ListGroups {})).await? else {
            return Err(ClientError::Protocol("unexpected answer to list groups"));
        };
        let mut joined = 0;
        for group_id in groups.group_ids {
            let known = self.client.with_home(|h| h.conversation(&group_id))?;
            if known.is_some_and(|c| c.state == "active") {
                continue;
            }
            self.join_external(&group_id, "joined from this new device")
                .await?;
            joined += 1;
        }
        Ok(joined)
    }

    pub(super) async fn join_external(
        &mut self,
        group_id: &[u8],
        note: &str,
    ) -> Result<(), ClientError> {
        let me = self.me()?;
        for _ in 0..MAX_ATTEMPTS {
            let Resp::GroupInfo(info) = self
                .call(Req::FetchGroupInfo(pb::FetchGroupInfo {
                    group_id: group_id.to_vec().into(),
                    epoch: None,
                }))
                .await?
            else {
                return Err(ClientError::Protocol(
                    "unexpected answer to fetch group info",
                ));
            };
            let txn = Txn::begin(&self.client)?;
            let (group_members, request, meta) = self.client.with_engine(|e, h| {
                let tree = mls::parse_tree(&info.ratchet_tree).map_err(mls_failure)?;
                let (g, out) = e
                    .join_external(&info.group_info, tree)
                    .map_err(mls_failure)?;
                let request = pb::GroupCommit {
                    client_message_id: new_message_id().to_vec().into(),
                    group_id: group_id.to_vec().into(),
                    commit: out.commit.into(),
                    welcome: Default::default(),
                    welcome_to: Vec::new(),
                    added: vec![addr(me)],
                    removed: Vec::new(),
                    group_info: out.group_info.into(),
                    ratchet_tree: out.ratchet_tree.into(),
                };
                h.set_pending_commit(group_id, &request.encode_to_vec())?;
                Ok((members(&g), request, group_meta(&g)))
            })?;
            // Check everyone already in the group before joining it.
            let (dir, _) = self
                .directory(group_members.iter().map(|(_, d)| d.account))
                .await?;
            self.client.with_engine(|e, _| {
                let g = e
                    .load(group_id)
                    .map_err(mls_failure)?
                    .ok_or(ClientError::Protocol("joined group vanished"))?;
                for m in g.members() {
                    if mls::credential_device(&m.credential).ok() == Some(me) {
                        continue;
                    }
                    mls::check_member(&dir, &m.credential, &m.signature_key)
                        .map_err(mls_failure)?;
                }
                Ok(())
            })?;
            txn.commit()?;
            let outcome = self.call(Req::GroupCommit(request)).await.map(|_| ());
            match self.conclude_commit(group_id, outcome)? {
                Ok(()) => {
                    let conversation = conversation_from(group_id, &meta, &group_members, me);
                    let name = self.client.conversation_name(&conversation);
                    self.client.with_home(|h| {
                        h.add_conversation(&conversation, now_ms())?;
                        h.add_items(vec![system(group_id, format!("{note}: {name}"))])
                    })?;
                    return Ok(());
                }
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => {
                    self.forget_group(group_id)?;
                }
                Err(e) => {
                    self.forget_group(group_id)?;
                    return Err(e);
                }
            }
        }
        Err(refused(
            ErrorCode::StaleEpoch,
            "the group kept changing while joining; try again",
        ))
    }

    pub(super) fn forget_group(&self, group_id: &[u8]) -> Result<(), ClientError> {
        self.client.with_engine(|e, _| {
            if let Some(mut g) = e.load(group_id).map_err(mls_failure)? {
                e.forget(&mut g).map_err(mls_failure)?;
            }
            Ok(())
        })
    }

    /// Removes one of this account's other devices: from the server (it
    /// can no longer connect or receive) and from every conversation (it
    /// cannot decrypt anything sent after). Returns how many conversations
    /// it was removed from.
    pub async fn remove_device(&mut self, device_id: u32) -> Result<usize, ClientError> {
        let me = self.me()?;
        self.call(Req::RemoveDevice(pb::RemoveDevice { device_id }))
            .await?;
        let target = DeviceAddr {
            account: me.account,
            device: device_id,
        };
        self.sync().await?;
        let mut removed = 0;
        for c in self.client.with_home(|h| h.conversations())? {
            if c.state != "active" {
                continue;
            }
            let inside = self
                .group_members(&c.group_id)?
                .iter()
                .any(|m| m.device == target);
            if inside {
                self.commit_change(&c.group_id, Vec::new(), vec![target], None)
                    .await?;
                self.client.with_home(|h| {
                    h.add_items(vec![note(
                        &c.group_id,
                        format!("you removed your device {device_id}"),
                    )])
                })?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The safety number between this account and a contact, from the
    /// directory's current keys.
    pub async fn safety_number(
        &mut self,
        contact: &Recipient,
    ) -> Result<SafetyReport, ClientError> {
        let me = self.me()?;
        let account = self.resolve(contact).await?;
        let (dir, changed) = self.directory([me.account, account]).await?;
        let notices = self.key_change_notices(&changed, None)?;
        if !notices.is_empty() {
            self.client.with_home(|h| h.add_items(notices))?;
        }
        let keys = |a: AccountId| -> Vec<[u8; 32]> {
            dir.get(&a)
                .map(|d| d.values().copied().collect())
                .unwrap_or_default()
        };
        let number = crate::safety::safety_number(
            (me.account, &keys(me.account)),
            (account, &keys(account)),
        );
        let verified = self
            .client
            .with_home(|h| h.verified(account))?
            .map(|(n, at)| (at, n == number));
        Ok(SafetyReport {
            contact: self.client.name_of(account),
            number,
            verified,
            changed: !changed.is_empty(),
        })
    }

    /// Records that the member compared and confirmed the safety number.
    pub async fn mark_verified(
        &mut self,
        contact: &Recipient,
    ) -> Result<SafetyReport, ClientError> {
        let report = self.safety_number(contact).await?;
        let account = self.resolve(contact).await?;
        self.client
            .with_home(|h| h.set_verified(account, &report.number, now_ms()))?;
        Ok(SafetyReport {
            verified: Some((now_ms(), true)),
            ..report
        })
    }
}
