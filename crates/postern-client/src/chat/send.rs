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

    /// Catches up, finds (or starts) the conversation and puts the text in
    /// the outbox with a fresh id, without sending it; [`Connection::send_pending`]
    /// or [`Connection::flush_outbox`] sends it, with that id, however many
    /// times it takes.
    pub async fn queue_text(
        &mut self,
        to: &Target,
        text: &str,
    ) -> Result<PendingSend, ClientError> {
        self.sync().await?;
        let c = self.conversation_for(to).await?;
        let content = Content::text(new_message_id(), now_ms(), text);
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
