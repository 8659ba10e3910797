//! Sending: the outbox, encryption for the current epoch, and retries
//! after losing a race to a commit.

use super::*;

impl Connection {
    /// Sends a text to a contact or group; returns once the server has
    /// stored it for every member device.
    pub async fn send_text(&mut self, to: &Target, text: &str) -> Result<pb::Sent, ClientError> {
        let pending = self.queue_text(to, text).await?;
        self.send_pending(&pending).await
    }

    /// Sends any kind of content — a reply, an edit, a deletion, a reaction,
    /// an attachment reference — to a contact or group.
    pub async fn send_body(
        &mut self,
        to: &Target,
        body: content::content::Body,
        reply_to: Option<[u8; 16]>,
    ) -> Result<pb::Sent, ClientError> {
        let pending = self.queue_body(to, body, reply_to).await?;
        self.send_pending(&pending).await
    }

    /// The full id of a message in a conversation, from its id or the short
    /// form `recv` and `history` show (the last 8 hex digits).
    pub async fn find_message(&mut self, to: &Target, id: &str) -> Result<[u8; 16], ClientError> {
        let c = self.conversation_for(to).await?;
        let id = id.trim().to_ascii_lowercase();
        let found: Vec<[u8; 16]> = self
            .client
            .with_home(|h| h.timeline(&c.group_id, 10_000))?
            .into_iter()
            .filter_map(|item| item.message_id)
            .filter(|m| hex::encode(m).ends_with(&id) && id.len() >= 8)
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(refused(
                ErrorCode::BadRequest,
                format!("no message {id} in this conversation (`postern history` shows ids)"),
            )),
            _ => Err(refused(
                ErrorCode::BadRequest,
                format!("{id} matches several messages; give more digits"),
            )),
        }
    }

    /// [`Connection::queue_body`] for a text.
    pub async fn queue_text(
        &mut self,
        to: &Target,
        text: &str,
    ) -> Result<PendingSend, ClientError> {
        let body = content::content::Body::Text(content::Text { text: text.into() });
        self.queue_body(to, body, None).await
    }

    /// Catches up, finds (or starts) the conversation and puts the content
    /// in the outbox with a fresh id, without sending it;
    /// [`Connection::send_pending`] or [`Connection::flush_outbox`] sends
    /// it, with that id, however many times it takes.
    pub async fn queue_body(
        &mut self,
        to: &Target,
        body: content::content::Body,
        reply_to: Option<[u8; 16]>,
    ) -> Result<PendingSend, ClientError> {
        // Offline (the connection just broke): still queue for a known
        // conversation, so the message waits in the outbox for the next
        // connection instead of being lost.
        if let Err(e) = self.sync().await
            && !(e.is_transient() && self.client.find_conversation(to)?.is_some())
        {
            return Err(e);
        }
        let c = self.conversation_for(to).await?;
        let mut content = Content::new(new_message_id(), now_ms(), body);
        if let Some(target) = reply_to {
            content = content.replying_to(target);
        }
        let pending = PendingSend {
            client_message_id: content.message_id[..]
                .try_into()
                .map_err(|_| ClientError::Protocol("message ids are 16 bytes"))?,
            group_id: c.group_id,
            content: content.encode_to_vec(),
        };
        self.client
            .with_home(|h| h.outbox_add(&pending, now_ms()))?;
        Ok(pending)
    }

    /// Puts a content in the outbox, then sends it.
    pub async fn send_content(
        &mut self,
        c: &Conversation,
        content: Content,
    ) -> Result<pb::Sent, ClientError> {
        let client_message_id: [u8; 16] = content.message_id[..]
            .try_into()
            .map_err(|_| ClientError::Protocol("message ids are 16 bytes"))?;
        let pending = PendingSend {
            client_message_id,
            group_id: c.group_id.clone(),
            content: content.encode_to_vec(),
        };
        self.client
            .with_home(|h| h.outbox_add(&pending, now_ms()))?;
        self.send_pending(&pending).await
    }

    /// Encrypts and sends one outbox entry for the group's current epoch;
    /// after losing a race to a commit, catches up and encrypts again. The
    /// id stays the same, so the server stores it once.
    pub async fn send_pending(&mut self, p: &PendingSend) -> Result<pb::Sent, ClientError> {
        for _ in 0..MAX_ATTEMPTS {
            let message = self.client.with_engine(|e, _| {
                let mut g = e.load(&p.group_id).map_err(mls_failure)?.ok_or_else(|| {
                    refused(
                        ErrorCode::NotAMember,
                        "this device is not in that conversation",
                    )
                })?;
                e.encrypt(&mut g, &p.content).map_err(mls_failure)
            })?;
            let req = Req::GroupSend(pb::GroupSend {
                client_message_id: p.client_message_id.to_vec().into(),
                group_id: p.group_id.clone().into(),
                message: message.into(),
            });
            match self.call(req).await {
                Ok(Resp::Sent(sent)) => {
                    let me = self.device;
                    let body = Content::decode(&p.content[..])
                        .map(|c| render(&c))
                        .unwrap_or_default();
                    let item = NewItem {
                        group_id: p.group_id.clone(),
                        sender: me,
                        message_id: Some(p.client_message_id),
                        kind: "own",
                        body,
                        content: Some(p.content.clone()),
                        sent_at: now_ms(),
                        received_at: sent.received_at_ms,
                    };
                    let txn = Txn::begin(&self.client)?;
                    self.client.with_home(|h| {
                        h.outbox_remove(&p.client_message_id)?;
                        h.add_items(vec![item])
                    })?;
                    txn.commit()?;
                    return Ok(sent);
                }
                Ok(_) => return Err(ClientError::Protocol("unexpected answer to a group send")),
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => {
                    self.lost_races += 1;
                    self.catch_up().await?
                }
                Err(e) => return Err(e),
            }
        }
        Err(refused(
            ErrorCode::StaleEpoch,
            "the group kept changing; the message stays in the outbox",
        ))
    }

    /// Sends everything in the outbox, oldest first.
    pub async fn flush_outbox(&mut self) -> Result<Vec<(PendingSend, pb::Sent)>, ClientError> {
        self.sync().await?;
        let pending = self.client.with_home(|h| h.outbox())?;
        let mut done = Vec::with_capacity(pending.len());
        for p in pending {
            let sent = self.send_pending(&p).await?;
            done.push((p, sent));
        }
        Ok(done)
    }
}
