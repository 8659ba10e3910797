//! Conversations and their membership: finding or starting one, creating
//! groups, adding, removing, leaving.

use super::*;

impl Connection {
    /// The conversation a target names, creating the direct chat with a
    /// contact on first use.
    pub async fn conversation_for(&mut self, to: &Target) -> Result<Conversation, ClientError> {
        match to {
            Target::GroupId(id) => self
                .client
                .with_home(|h| h.conversation(id))?
                .ok_or_else(|| refused(ErrorCode::UnknownGroup, "no group with this id here")),
            Target::GroupName(name) => {
                let found = self.client.with_home(|h| h.conversations_named(name))?;
                match found.len() {
                    0 => Err(refused(
                        ErrorCode::UnknownGroup,
                        format!("no group called #{name} here (`postern group list` shows them)"),
                    )),
                    1 => Ok(found.into_iter().next().expect("one")),
                    _ => Err(refused(
                        ErrorCode::BadRequest,
                        format!("several groups are called #{name}; name one by its id (#HEX)"),
                    )),
                }
            }
            Target::Contact(r) => {
                let account = self.resolve(r).await?;
                if Some(account) == self.device.map(|d| d.account) {
                    return Err(refused(
                        ErrorCode::BadRequest,
                        "that is your own account; your other devices see what you send",
                    ));
                }
                if let Some(c) = self.client.with_home(|h| h.direct_with(account))? {
                    return Ok(c);
                }
                self.create_conversation(ConversationKind::Direct, "", vec![account])
                    .await
            }
        }
    }

    pub(super) async fn create_conversation(
        &mut self,
        kind: ConversationKind,
        name: &str,
        accounts: Vec<AccountId>,
    ) -> Result<Conversation, ClientError> {
        let me = self.me()?;
        let mut everyone: Vec<AccountId> = accounts.clone();
        everyone.push(me.account);
        let (dir, changed) = self.directory(everyone.iter().copied()).await?;
        let mut invited = accounts.clone();
        invited.push(me.account);
        invited.sort_unstable();
        invited.dedup();
        let adds = self.claim_packages(&invited, &dir).await?;
        let group_id = rand::random::<[u8; 16]>().to_vec();
        let conversation = Conversation {
            group_id: group_id.clone(),
            kind,
            name: name.to_owned(),
            peer: (kind == ConversationKind::Direct).then(|| accounts[0]),
            state: "active".into(),
        };
        let meta = GroupMeta {
            version: content::CONTENT_VERSION,
            kind: match kind {
                ConversationKind::Direct => content::group_meta::Kind::Direct,
                ConversationKind::Group => content::group_meta::Kind::Group,
            } as i32,
        };
        self.commit_change(
            &group_id,
            adds,
            Vec::new(),
            Some((meta, conversation.clone())),
        )
        .await?;
        let names: Vec<String> = accounts.iter().map(|a| self.client.name_of(*a)).collect();
        let mut items = self.key_change_notices(&changed, Some(&group_id))?;
        items.push(note(
            &group_id,
            match kind {
                ConversationKind::Direct => format!("you started a chat with {}", names.join(", ")),
                ConversationKind::Group => {
                    format!("you created #{name} with {}", names.join(", "))
                }
            },
        ));
        self.client.with_home(|h| h.add_items(items))?;
        if kind == ConversationKind::Group {
            self.send_group_name(&conversation).await?;
        }
        Ok(conversation)
    }

    /// Tells the group its name, encrypted (see [`content::GroupName`]).
    pub(super) async fn send_group_name(&mut self, c: &Conversation) -> Result<(), ClientError> {
        let content = Content {
            version: content::CONTENT_VERSION,
            message_id: new_message_id().to_vec().into(),
            sent_at_ms: now_ms(),
            in_reply_to: Default::default(),
            body: Some(content::content::Body::GroupName(content::GroupName {
                name: c.name.clone(),
            })),
        };
        self.send_content(c, content).await.map(drop)
    }

    /// Creates a named group with these members (and all their devices).
    pub async fn create_group(
        &mut self,
        name: &str,
        members: &[Recipient],
    ) -> Result<Conversation, ClientError> {
        if name.is_empty() || name.len() > 64 || name.contains(char::is_whitespace) {
            return Err(refused(
                ErrorCode::BadRequest,
                "group names are 1 to 64 bytes without spaces",
            ));
        }
        self.sync().await?;
        let accounts = self.others(members).await?;
        self.create_conversation(ConversationKind::Group, name, accounts)
            .await
    }

    /// The accounts `members` name, each once, without this device's own.
    pub(super) async fn others(
        &self,
        members: &[Recipient],
    ) -> Result<Vec<AccountId>, ClientError> {
        let mut accounts = Vec::with_capacity(members.len());
        for m in members {
            accounts.push(self.resolve(m).await?);
        }
        accounts.sort_unstable();
        accounts.dedup();
        accounts.retain(|a| Some(*a) != self.device.map(|d| d.account));
        Ok(accounts)
    }

    /// Adds members (all their devices) to a group.
    pub async fn add_members(
        &mut self,
        group: &Target,
        members: &[Recipient],
    ) -> Result<(), ClientError> {
        self.sync().await?;
        let c = self.conversation_for(group).await?;
        let accounts = self.others(members).await?;
        let (dir, changed) = self.directory(accounts.iter().copied()).await?;
        let adds = self.claim_packages(&accounts, &dir).await?;
        self.commit_change(&c.group_id, adds, Vec::new(), None)
            .await?;
        let names: Vec<String> = accounts.iter().map(|a| self.client.name_of(*a)).collect();
        let mut items = self.key_change_notices(&changed, Some(&c.group_id))?;
        items.push(note(&c.group_id, format!("you added {}", names.join(", "))));
        self.client.with_home(|h| h.add_items(items))?;
        if c.kind == ConversationKind::Group {
            self.send_group_name(&c).await?;
        }
        Ok(())
    }

    /// Removes members (all their devices) from a group.
    pub async fn remove_members(
        &mut self,
        group: &Target,
        members: &[Recipient],
    ) -> Result<(), ClientError> {
        self.sync().await?;
        let c = self.conversation_for(group).await?;
        let accounts = self.others(members).await?;
        let devices: Vec<DeviceAddr> = self
            .group_members(&c.group_id)?
            .into_iter()
            .map(|m| m.device)
            .filter(|d| accounts.contains(&d.account))
            .collect();
        if devices.is_empty() {
            return Err(refused(ErrorCode::BadRequest, "they are not in this group"));
        }
        self.commit_change(&c.group_id, Vec::new(), devices, None)
            .await?;
        let names: Vec<String> = accounts.iter().map(|a| self.client.name_of(*a)).collect();
        self.client.with_home(|h| {
            h.add_items(vec![note(
                &c.group_id,
                format!("you removed {}", names.join(", ")),
            )])
        })?;
        Ok(())
    }

    /// Leaves a group: tells the members (one of them commits the removal
    /// of this account's devices) and forgets it here.
    pub async fn leave_group(&mut self, group: &Target) -> Result<(), ClientError> {
        self.sync().await?;
        let c = self.conversation_for(group).await?;
        let me = self.me()?;
        let id = new_message_id();
        let leave = Content {
            version: content::CONTENT_VERSION,
            message_id: id.to_vec().into(),
            sent_at_ms: now_ms(),
            in_reply_to: Default::default(),
            body: Some(content::content::Body::Leave(content::Leave {})),
        };
        self.send_content(&c, leave).await?;
        let txn = Txn::begin(&self.client)?;
        self.client.with_engine(|e, h| {
            if let Some(mut g) = e.load(&c.group_id).map_err(mls_failure)? {
                e.forget(&mut g).map_err(mls_failure)?;
            }
            h.set_conversation_state(&c.group_id, "left")?;
            h.add_items(vec![note(&c.group_id, "you left".into())])?;
            Ok(())
        })?;
        txn.commit()?;
        tracing::debug!(device = %me, "left a group");
        Ok(())
    }

    /// The member devices of a group, as this device's MLS state has them.
    pub fn group_members(&self, group_id: &[u8]) -> Result<Vec<Member>, ClientError> {
        let devices = self.client.with_engine(|e, _| {
            Ok(e.load(group_id)
                .map_err(mls_failure)?
                .map(|g| members(&g))
                .unwrap_or_default())
        })?;
        Ok(devices
            .into_iter()
            .map(|(_, device)| Member {
                device,
                name: self.client.name_of(device.account),
            })
            .collect())
    }
}
