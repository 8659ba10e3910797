//! Receiving: each queued MLS message — Welcome, commit or application
//! message — processed in one transaction with what it changes.

use super::*;

impl Connection {
    /// The oldest timeline entry not yet shown by [`Connection::recv`] — an
    /// event, or a message from someone else (or another device of ours) —
    /// marked shown as it is returned.
    pub(crate) fn next_unshown(&self) -> Result<Option<ReceivedMessage>, ClientError> {
        let Some(item) = self.client.with_home(|h| h.next_unshown())? else {
            return Ok(None);
        };
        self.client.with_home(|h| h.mark_shown(item.id))?;
        let conversation = self
            .client
            .with_home(|h| h.conversation(&item.group_id))?
            .map(|c| self.client.conversation_name(&c))
            .unwrap_or_default();
        let from = item
            .sender
            .map(|s| self.client.name_of(s.account))
            .unwrap_or_default();
        Ok(Some(ReceivedMessage {
            conversation,
            from,
            item,
        }))
    }

    /// Processes one delivered batch: each message in its own transaction
    /// with the MLS state change it causes; then acks the batch.
    pub(crate) async fn take_batch(&mut self, batch: pb::Deliver) -> Result<(), ClientError> {
        let Some(last) = batch.messages.iter().map(|m| m.seq).max() else {
            return Ok(());
        };
        let mut messages = batch.messages;
        messages.sort_by_key(|m| m.seq);
        for m in messages {
            // Checked inside the transaction: another connection of this
            // device may have processed it meanwhile.
            let txn = Txn::begin(&self.client)?;
            if m.seq <= self.client.with_home(|h| h.last_seq())? {
                continue;
            }
            let items = match self.process_queued(&m).await {
                Ok(items) => items,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    tracing::warn!(seq = m.seq, error = %e, "could not process a message");
                    let group = m.group_id.to_vec();
                    vec![system(&group, format!("a message could not be read: {e}"))]
                }
            };
            self.client.with_home(|h| {
                h.add_items(items)?;
                h.set_last_seq(m.seq)
            })?;
            txn.commit()?;
        }
        self.call(Req::Ack(pb::Ack { up_to_seq: last })).await?;
        Ok(())
    }

    pub(super) async fn process_queued(
        &mut self,
        m: &pb::QueuedMessage,
    ) -> Result<Vec<NewItem>, ClientError> {
        let sender = m
            .sender
            .as_ref()
            .and_then(device_of)
            .ok_or(ClientError::Protocol("queued message without a sender"))?;
        let msg = mls::parse(&m.payload).map_err(mls_failure)?;
        if msg.wire_format() == WireFormat::Welcome {
            let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
                return Err(mls_failure(MlsError::Malformed("not a welcome".into())));
            };
            return self.on_welcome(&m.group_id, sender, welcome).await;
        }
        let protocol = msg
            .try_into_protocol_message()
            .map_err(|e| mls_failure(mls::mls_err(e)))?;
        let group_id = protocol.group_id().as_slice().to_vec();
        let Some(c) = self.client.with_home(|h| h.conversation(&group_id))? else {
            tracing::debug!("message for a group this device is not in");
            return Ok(Vec::new());
        };
        if c.state != "active" {
            return Ok(Vec::new());
        }
        let (mut group, processed) = self.client.with_engine(|e, _| {
            let mut g = e
                .load(&group_id)
                .map_err(mls_failure)?
                .ok_or(ClientError::Protocol("conversation without MLS state"))?;
            let processed = e.process(&mut g, protocol).map_err(mls_failure)?;
            Ok((g, processed))
        })?;
        let from = mls::credential_device(processed.credential()).map_err(mls_failure)?;
        let is_external = matches!(processed.sender(), Sender::NewMemberCommit);
        let sent_at = m.received_at_ms;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let bytes = app.into_bytes();
                let content = Content::decode(&bytes[..])
                    .map_err(|_| ClientError::Protocol("undecodable content"))?;
                match &content.body {
                    Some(content::content::Body::Leave(_)) => {
                        self.on_leave(&group, &group_id, from)
                    }
                    Some(content::content::Body::GroupName(n)) => {
                        if c.kind != ConversationKind::Group || n.name == c.name {
                            return Ok(Vec::new());
                        }
                        let renamed = Conversation {
                            name: n.name.clone(),
                            ..c.clone()
                        };
                        self.client
                            .with_home(|h| h.add_conversation(&renamed, now_ms()))?;
                        let who = self.client.name_of(from.account);
                        let body = if c.name.is_empty() {
                            format!("the group is called #{}", n.name)
                        } else {
                            format!("{who} renamed #{} to #{}", c.name, n.name)
                        };
                        return Ok(vec![system(&group_id, body)]);
                    }
                    _ => {}
                }
                let message_id = content.message_id[..].try_into().ok();
                Ok(vec![NewItem {
                    group_id,
                    sender: Some(from),
                    message_id,
                    kind: "message",
                    body: render(&content),
                    content: Some(bytes),
                    sent_at: if content.sent_at_ms > 0 {
                        content.sent_at_ms
                    } else {
                        sent_at
                    },
                    received_at: now_ms(),
                }])
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let mut added: Vec<(openmls::prelude::Credential, Vec<u8>)> = staged
                    .add_proposals()
                    .map(|p| {
                        let leaf = p.add_proposal().key_package().leaf_node();
                        (
                            leaf.credential().clone(),
                            leaf.signature_key().as_slice().to_vec(),
                        )
                    })
                    .collect();
                if is_external && let Some(leaf) = staged.update_path_leaf_node() {
                    added.push((
                        leaf.credential().clone(),
                        leaf.signature_key().as_slice().to_vec(),
                    ));
                }
                let removed: Vec<DeviceAddr> = staged
                    .remove_proposals()
                    .filter_map(|p| group.member(p.remove_proposal().removed()))
                    .filter_map(|cred| mls::credential_device(cred).ok())
                    .collect();
                let accounts: Vec<AccountId> = added
                    .iter()
                    .filter_map(|(cred, _)| mls::credential_device(cred).ok())
                    .map(|d| d.account)
                    .collect();
                let (dir, changed) = self.directory(accounts).await?;
                let mut items = self.key_change_notices(&changed, Some(&group_id))?;
                let mut added_devices = Vec::new();
                for (cred, key) in &added {
                    match mls::check_member(&dir, cred, key) {
                        Ok(d) => added_devices.push(d),
                        Err(e) => {
                            self.client
                                .with_home(|h| h.set_conversation_state(&group_id, "broken"))?;
                            items.push(system(
                                &group_id,
                                format!(
                                    "a change by {} was NOT applied and this conversation is \
                                     frozen: {e}",
                                    self.client.name_of(from.account)
                                ),
                            ));
                            return Ok(items);
                        }
                    }
                }
                let before: BTreeSet<AccountId> =
                    members(&group).iter().map(|(_, d)| d.account).collect();
                let self_removed = staged.self_removed();
                self.client
                    .with_engine(|e, _| e.merge(&mut group, *staged).map_err(mls_failure))?;
                let who = self.client.name_of(from.account);
                let mut by_account: BTreeMap<AccountId, usize> = BTreeMap::new();
                for d in &added_devices {
                    *by_account.entry(d.account).or_default() += 1;
                }
                if is_external
                    && c.kind == ConversationKind::Group
                    && Some(from.account) == self.device.map(|d| d.account)
                {
                    // Our account's new device joined: the lowest of our
                    // other devices tells it the name.
                    let lowest = members(&group)
                        .into_iter()
                        .filter(|(_, d)| d.account == from.account && *d != from)
                        .min_by_key(|(i, _)| i.u32())
                        .map(|(_, d)| d);
                    if lowest == self.device {
                        self.tasks.push(Task::SendName {
                            group_id: group_id.clone(),
                        });
                    }
                }
                for (account, _) in by_account {
                    let name = self.client.name_of(account);
                    items.push(system(
                        &group_id,
                        if is_external && account == from.account {
                            format!("{name} joined from a new device")
                        } else if before.contains(&account) {
                            format!("{who} added a device of {name}")
                        } else {
                            format!("{who} added {name}")
                        },
                    ));
                }
                let after: BTreeSet<AccountId> =
                    members(&group).iter().map(|(_, d)| d.account).collect();
                let mut gone: Vec<AccountId> = removed.iter().map(|d| d.account).collect();
                gone.sort_unstable();
                gone.dedup();
                for account in gone {
                    let name = self.client.name_of(account);
                    items.push(system(
                        &group_id,
                        if after.contains(&account) {
                            format!("{who} removed a device of {name}")
                        } else {
                            format!("{who} removed {name}")
                        },
                    ));
                }
                if self_removed {
                    self.client
                        .with_home(|h| h.set_conversation_state(&group_id, "removed"))?;
                    items.push(system(
                        &group_id,
                        "this device was removed from the conversation".into(),
                    ));
                }
                Ok(items)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// A member left: the remaining device with the lowest leaf index
    /// commits the removal of all its devices.
    pub(super) fn on_leave(&mut self, group: &MlsGroup, group_id: &[u8], leaver: DeviceAddr) {
        let Some(me) = self.device else { return };
        if me.account == leaver.account {
            // Another device of ours left: so do we, here.
            let _ = self
                .client
                .with_home(|h| h.set_conversation_state(group_id, "left"));
            return;
        }
        let lowest = members(group)
            .into_iter()
            .filter(|(_, d)| d.account != leaver.account)
            .map(|(i, d)| (i.u32(), d))
            .min_by_key(|(i, _)| *i)
            .map(|(_, d)| d);
        if lowest == Some(me) {
            self.tasks.push(Task::RemoveAccount {
                group_id: group_id.to_vec(),
                account: leaver.account,
            });
        }
    }

    pub(super) async fn on_welcome(
        &mut self,
        group_id: &[u8],
        sender: DeviceAddr,
        welcome: openmls::prelude::Welcome,
    ) -> Result<Vec<NewItem>, ClientError> {
        let me = self.me()?;
        if let Some(c) = self.client.with_home(|h| h.conversation(group_id))?
            && c.state == "active"
        {
            return Ok(Vec::new());
        }
        let (opened, epoch) = self
            .client
            .with_engine(|e, _| e.open_welcome(welcome).map_err(mls_failure))?;
        let tree = self
            .call(Req::FetchGroupInfo(pb::FetchGroupInfo {
                group_id: group_id.to_vec().into(),
                epoch: Some(epoch),
            }))
            .await;
        let joined = match tree {
            Ok(Resp::GroupInfo(info)) => self.client.with_engine(|e, _| {
                let tree = mls::parse_tree(&info.ratchet_tree).map_err(mls_failure)?;
                Ok(e.join(opened, tree))
            })?,
            Ok(_) => {
                return Err(ClientError::Protocol(
                    "unexpected answer to fetch group info",
                ));
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => Err(MlsError::Mls(e.to_string())),
        };
        let group = match joined {
            Ok(g) => g,
            Err(e) => {
                // The tree of the Welcome's epoch is gone (the Welcome
                // waited longer than the server keeps it): join the current
                // epoch by external commit; what was sent before is lost to
                // this device.
                tracing::info!(error = %e, "cannot join at the welcome's epoch; joining by external commit");
                self.join_external(group_id, "you were added").await?;
                return Ok(Vec::new());
            }
        };
        let devices = members(&group);
        let (dir, changed) = self
            .directory(devices.iter().map(|(_, d)| d.account))
            .await?;
        let mut items = self.key_change_notices(&changed, Some(group_id))?;
        for m in group.members() {
            if let Err(e) = mls::check_member(&dir, &m.credential, &m.signature_key) {
                self.forget_group(group_id)?;
                return Err(mls_failure(e));
            }
        }
        let meta = group_meta(&group);
        let conversation = conversation_from(group_id, &meta, &devices, me);
        self.client
            .with_home(|h| h.add_conversation(&conversation, now_ms()))?;
        let who = self.client.name_of(sender.account);
        items.push(system(
            group_id,
            match conversation.kind {
                ConversationKind::Direct => format!("{who} started a chat with you"),
                ConversationKind::Group => format!("{who} added you to a group"),
            },
        ));
        Ok(items)
    }
}
