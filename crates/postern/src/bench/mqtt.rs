//! `postern bench mqtt`: the traffic pattern of `postern bench delivery`
//! carried by an MQTT 3.1.1 broker (Mosquitto, started by
//! `scripts/bench-delivery.sh`), so the two can be compared in one run.
//!
//! Each pair is a publisher and a subscriber on the topic
//! `postern-bench/<pair>`. Subscribers hold a persistent session (clean
//! session off, fixed client id) and subscribe with QoS 1, acknowledging
//! every message; publishers keep `window` QoS 1 PUBLISHes in flight,
//! waiting for PUBACK. The first 8 payload bytes carry the send time (ns
//! since a base instant shared by all tasks of this process), from which the
//! subscriber computes send-to-receive latency.
//!
//! The client is a minimal MQTT 3.1.1 codec written here (only the packets
//! the benchmark needs) over tokio sockets: reads are buffered, writes are
//! batched (one `write_all` per window of PUBLISHes or per burst of PUBACKs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Options of `postern bench mqtt`.
#[derive(clap::Args)]
pub struct MqttArgs {
    /// Address of the MQTT broker (host:port).
    #[arg(long)]
    addr: String,
    #[command(flatten)]
    traffic: super::Traffic,
    /// Process id of the broker, to report its resident memory (Linux).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Accepted so that the same arguments can be given to `bench delivery`
    /// and `bench mqtt`; it has no effect on the broker.
    #[arg(long, hide = true)]
    synchronous: Option<String>,
}

/// Keep-alive announced in CONNECT. The benchmark sends no PINGREQ; every
/// connection sends PUBLISH or PUBACK packets while the run lasts, and the
/// broker only drops a client after 1.5 × this without any packet.
const KEEP_ALIVE_SECS: u16 = 600;
/// Largest remaining length MQTT can encode (4 bytes of 7 bits).
const MAX_REMAINING_LEN: usize = 268_435_455;

fn topic(pair: usize) -> String {
    format!("postern-bench/{pair}")
}

pub async fn run(a: MqttArgs) -> anyhow::Result<()> {
    let t = &a.traffic;
    let per_pub = t.per_sender()?;
    if t.window > usize::from(u16::MAX) {
        bail!("--window must be at most 65535 (MQTT packet identifiers are 16-bit)");
    }
    let total = per_pub * t.pairs as u64;
    // Room for the topic and headers around the largest payload.
    let max_packet = t.size + 1024;
    let base = Instant::now();
    eprintln!(
        "Connecting {} subscribers to the MQTT broker at {}…",
        t.pairs, a.addr
    );
    let mut subscribers = tokio::task::JoinSet::new();
    // Connect and subscribe every subscriber before any publisher starts.
    for pair in 0..t.pairs {
        let client_id = format!("postern-bench-sub-{pair}");
        // A clean connect first drops whatever session an earlier run left
        // under this fixed id, so that no stale message is counted.
        let (r, mut w) = connect(&a.addr, &client_id, true, max_packet).await?;
        w.write_all(&encode_disconnect()).await?;
        drop((r, w));
        let (mut r, mut w) = connect(&a.addr, &client_id, false, max_packet).await?;
        let mut out = Vec::new();
        encode_subscribe(1, &topic(pair), 1, &mut out)?;
        w.write_all(&out).await?;
        match r.next().await? {
            Packet::SubAck {
                packet_id: 1,
                codes,
            } => match codes {
                [1] => {}
                [0x80] => bail!("the broker refused the subscription to {}", topic(pair)),
                [q] => bail!("the broker granted QoS {q} instead of 1 on {}", topic(pair)),
                _ => bail!(
                    "SUBACK with {} return codes for one topic filter",
                    codes.len()
                ),
            },
            p => bail!("expected SUBACK for packet id 1, got {}", p.name()),
        }
        subscribers.spawn(subscribe(r, w, pair, per_pub, base));
    }
    eprintln!("Publishing {} with QoS 1…", t.describe(total, "publishers"));
    let start = Instant::now();
    let cpu = super::CpuMeter::start(a.server_pid);
    let mut publishers = tokio::task::JoinSet::new();
    for pair in 0..t.pairs {
        let (r, w) = connect(
            &a.addr,
            &format!("postern-bench-pub-{pair}"),
            true,
            max_packet,
        )
        .await?;
        let rate = t.sender_rate();
        publishers.spawn(publish(r, w, pair, per_pub, t.size, t.window, rate, base));
    }
    let run = super::Run::collect(publishers, subscribers, start, cpu).await?;
    super::Report {
        bench: "mqtt",
        traffic: t,
        // Mosquitto's durability is its own (periodic snapshot), not SQLite's.
        synchronous: "broker",
        store: "broker",
        nodes: 1,
        messages: total,
        server_rss_kib: a.server_pid.and_then(super::rss_kib).unwrap_or(0),
        run,
    }
    .print();
    Ok(())
}

/// Opens a TCP connection, sends CONNECT and waits for a successful CONNACK.
async fn connect(
    addr: &str,
    client_id: &str,
    clean: bool,
    max_packet: usize,
) -> anyhow::Result<(PacketReader<OwnedReadHalf>, OwnedWriteHalf)> {
    let stream = tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to the MQTT broker at {addr} timed out"))?
        .with_context(|| format!("cannot connect to the MQTT broker at {addr}"))?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = PacketReader::new(r, max_packet);
    let mut out = Vec::new();
    encode_connect(client_id, clean, KEEP_ALIVE_SECS, &mut out)?;
    w.write_all(&out).await?;
    let answer = tokio::time::timeout(Duration::from_secs(30), r.next())
        .await
        .context("no CONNACK from the broker within 30 s")??;
    match answer {
        Packet::ConnAck { code: 0, .. } => Ok((r, w)),
        Packet::ConnAck { code, .. } => bail!(
            "the broker refused the connection of {client_id}: {}",
            connack_reason(code)
        ),
        p => bail!("expected CONNACK, got {}", p.name()),
    }
}

/// Publishes `count` QoS 1 messages on the pair's topic, `window` in flight.
#[allow(clippy::too_many_arguments)]
async fn publish(
    mut r: PacketReader<OwnedReadHalf>,
    mut w: OwnedWriteHalf,
    pair: usize,
    count: u64,
    size: usize,
    window: usize,
    rate: Option<f64>,
    base: Instant,
) -> anyhow::Result<()> {
    // Free packet identifiers: taking one is taking a window permit; the
    // PUBACK reader gives it back.
    let (free_tx, mut free_rx) = tokio::sync::mpsc::unbounded_channel::<u16>();
    for id in 1..=window as u16 {
        free_tx.send(id).ok();
    }
    let in_flight: Arc<Vec<AtomicBool>> =
        Arc::new((0..=window).map(|_| AtomicBool::new(false)).collect());
    let acks = {
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            let mut confirmed = 0;
            while confirmed < count {
                match r.next().await? {
                    Packet::PubAck { packet_id } => {
                        let slot = in_flight.get(usize::from(packet_id));
                        if !slot.is_some_and(|s| s.swap(false, Ordering::AcqRel)) {
                            bail!("PUBACK for packet id {packet_id}, which is not in flight");
                        }
                        confirmed += 1;
                        // The receiver lives as long as the publishing loop,
                        // which only ends once every send is confirmed.
                        free_tx.send(packet_id).ok();
                    }
                    p => bail!("unexpected {} on a publisher connection", p.name()),
                }
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let topic = topic(pair);
    let mut payload = vec![0x5a; size];
    let mut sent = 0u64;
    let mut batch = Vec::with_capacity(window * (size + topic.len() + 8));
    while sent < count {
        if let Some(rate) = rate {
            let due = base + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let Some(first) = free_rx.recv().await else {
            // The PUBACK reader stopped: report its error.
            acks.await??;
            bail!("the PUBACK reader ended early");
        };
        batch.clear();
        let mut next = Some(first);
        while let Some(id) = next {
            let stamp = base.elapsed().as_nanos() as u64;
            payload[..8].copy_from_slice(&stamp.to_be_bytes());
            in_flight[usize::from(id)].store(true, Ordering::Release);
            encode_publish(&topic, Some(id), &payload, &mut batch)?;
            sent += 1;
            next = if sent < count && rate.is_none() {
                free_rx.try_recv().ok()
            } else {
                None
            };
        }
        w.write_all(&batch).await?;
    }
    acks.await??;
    w.write_all(&encode_disconnect()).await?;
    Ok(())
}

/// Receives `count` messages on the pair's topic, acknowledging each one;
/// returns latencies in µs.
async fn subscribe(
    mut r: PacketReader<OwnedReadHalf>,
    mut w: OwnedWriteHalf,
    pair: usize,
    count: u64,
    base: Instant,
) -> anyhow::Result<Vec<u32>> {
    let topic = topic(pair);
    let mut latencies = Vec::with_capacity(count as usize);
    let mut acks = Vec::new();
    while (latencies.len() as u64) < count {
        // Send the PUBACKs gathered so far before waiting on the socket.
        if !acks.is_empty() && !r.has_packet()? {
            w.write_all(&acks).await?;
            acks.clear();
        }
        let packet = tokio::time::timeout(Duration::from_secs(60), r.next())
            .await
            .context("no message for 60 s")??;
        let Packet::Publish {
            topic: t,
            packet_id,
            payload,
            ..
        } = packet
        else {
            bail!("unexpected {} on a subscriber connection", packet.name());
        };
        if t != topic.as_bytes() {
            bail!(
                "message on {:?}, expected {topic}",
                String::from_utf8_lossy(t)
            );
        }
        let now = base.elapsed().as_nanos() as u64;
        let sent = payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes);
        let micros = now.saturating_sub(sent.unwrap_or(now)) / 1000;
        latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
        if let Some(id) = packet_id {
            encode_puback(id, &mut acks);
        }
    }
    acks.extend_from_slice(&encode_disconnect());
    w.write_all(&acks).await?;
    Ok(latencies)
}

/// A packet from the broker, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Packet<'a> {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish {
        dup: bool,
        qos: u8,
        retain: bool,
        topic: &'a [u8],
        packet_id: Option<u16>,
        payload: &'a [u8],
    },
    PubAck {
        packet_id: u16,
    },
    SubAck {
        packet_id: u16,
        codes: &'a [u8],
    },
    PingResp,
}

impl Packet<'_> {
    fn name(&self) -> &'static str {
        match self {
            Packet::ConnAck { .. } => "CONNACK",
            Packet::Publish { .. } => "PUBLISH",
            Packet::PubAck { .. } => "PUBACK",
            Packet::SubAck { .. } => "SUBACK",
            Packet::PingResp => "PINGRESP",
        }
    }
}

fn connack_reason(code: u8) -> String {
    match code {
        1 => "unacceptable protocol version".into(),
        2 => "client identifier rejected".into(),
        3 => "server unavailable".into(),
        4 => "bad user name or password".into(),
        5 => "not authorized".into(),
        c => format!("return code {c}"),
    }
}

/// Appends the MQTT remaining-length encoding of `len` (1 to 4 bytes).
pub(crate) fn encode_remaining_length(mut len: usize, out: &mut Vec<u8>) -> anyhow::Result<()> {
    if len > MAX_REMAINING_LEN {
        bail!("MQTT packet too large: remaining length {len} exceeds {MAX_REMAINING_LEN}");
    }
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return Ok(());
        }
    }
}

/// Decodes a remaining length at the start of `buf`: `Ok(None)` if more
/// bytes are needed, else the value and the bytes it took.
pub(crate) fn decode_remaining_length(buf: &[u8]) -> anyhow::Result<Option<(usize, usize)>> {
    let mut value = 0usize;
    for (i, &b) in buf.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        bail!("malformed MQTT remaining length: longer than 4 bytes");
    }
    Ok(None)
}

/// The length of the complete packet at the start of `buf`, if it is all
/// there.
pub(crate) fn packet_len(buf: &[u8]) -> anyhow::Result<Option<usize>> {
    if buf.is_empty() {
        return Ok(None);
    }
    Ok(decode_remaining_length(&buf[1..])?
        .map(|(len, used)| 1 + used + len)
        .filter(|&total| buf.len() >= total))
}

fn put_str(s: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
    let len = u16::try_from(s.len()).context("MQTT string longer than 65535 bytes")?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
    Ok(())
}

pub(crate) fn encode_connect(
    client_id: &str,
    clean: bool,
    keep_alive: u16,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    out.push(0x10);
    encode_remaining_length(10 + 2 + client_id.len(), out)?;
    put_str(b"MQTT", out)?;
    out.push(4); // protocol level: 3.1.1
    out.push(if clean { 0x02 } else { 0x00 });
    out.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(client_id.as_bytes(), out)
}

pub(crate) fn encode_subscribe(
    packet_id: u16,
    filter: &str,
    qos: u8,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    out.push(0x82);
    encode_remaining_length(2 + 2 + filter.len() + 1, out)?;
    out.extend_from_slice(&packet_id.to_be_bytes());
    put_str(filter.as_bytes(), out)?;
    out.push(qos);
    Ok(())
}

/// Appends a PUBLISH: QoS 1 with `packet_id`, QoS 0 without.
pub(crate) fn encode_publish(
    topic: &str,
    packet_id: Option<u16>,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    out.push(if packet_id.is_some() { 0x32 } else { 0x30 });
    let id_len = if packet_id.is_some() { 2 } else { 0 };
    encode_remaining_length(2 + topic.len() + id_len + payload.len(), out)?;
    put_str(topic.as_bytes(), out)?;
    if let Some(id) = packet_id {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(payload);
    Ok(())
}

pub(crate) fn encode_puback(packet_id: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x40, 0x02]);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

pub(crate) fn encode_disconnect() -> [u8; 2] {
    [0xe0, 0x00]
}

fn u16_at(body: &[u8], at: usize, what: &str) -> anyhow::Result<u16> {
    body.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .with_context(|| format!("truncated MQTT {what}"))
}

/// Decodes one complete packet (as delimited by [`packet_len`]) sent by a
/// broker. Packets a broker must not send to a client, and malformed
/// ones, are errors.
pub(crate) fn decode_packet(buf: &[u8]) -> anyhow::Result<Packet<'_>> {
    let first = *buf.first().context("empty MQTT packet")?;
    let (len, used) = decode_remaining_length(&buf[1..])?.context("truncated MQTT fixed header")?;
    let body = buf
        .get(1 + used..)
        .filter(|b| b.len() == len)
        .context("MQTT packet length mismatch")?;
    let (kind, flags) = (first >> 4, first & 0x0f);
    let fixed = |name: &str, want_flags: u8, want_len: usize| -> anyhow::Result<()> {
        if flags != want_flags {
            bail!("malformed MQTT {name}: flags {flags:#x}");
        }
        if body.len() != want_len {
            bail!(
                "malformed MQTT {name}: remaining length {}, expected {want_len}",
                body.len()
            );
        }
        Ok(())
    };
    Ok(match kind {
        2 => {
            fixed("CONNACK", 0, 2)?;
            if body[0] & 0xfe != 0 {
                bail!("malformed MQTT CONNACK: acknowledge flags {:#x}", body[0]);
            }
            Packet::ConnAck {
                session_present: body[0] & 1 == 1,
                code: body[1],
            }
        }
        3 => {
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                bail!("malformed MQTT PUBLISH: QoS 3");
            }
            let topic_len = usize::from(u16_at(body, 0, "PUBLISH topic")?);
            let topic = body
                .get(2..2 + topic_len)
                .context("truncated MQTT PUBLISH topic")?;
            let mut at = 2 + topic_len;
            let packet_id = if qos > 0 {
                let id = u16_at(body, at, "PUBLISH packet id")?;
                if id == 0 {
                    bail!("malformed MQTT PUBLISH: packet id 0");
                }
                at += 2;
                Some(id)
            } else {
                None
            };
            Packet::Publish {
                dup: flags & 0x08 != 0,
                qos,
                retain: flags & 0x01 != 0,
                topic,
                packet_id,
                payload: &body[at..],
            }
        }
        4 => {
            fixed("PUBACK", 0, 2)?;
            Packet::PubAck {
                packet_id: u16_at(body, 0, "PUBACK")?,
            }
        }
        9 => {
            if flags != 0 || body.len() < 3 {
                bail!("malformed MQTT SUBACK");
            }
            Packet::SubAck {
                packet_id: u16_at(body, 0, "SUBACK")?,
                codes: &body[2..],
            }
        }
        13 => {
            fixed("PINGRESP", 0, 0)?;
            Packet::PingResp
        }
        _ => {
            const NAMES: [&str; 16] = [
                "reserved type 0",
                "CONNECT",
                "CONNACK",
                "PUBLISH",
                "PUBACK",
                "PUBREC",
                "PUBREL",
                "PUBCOMP",
                "SUBSCRIBE",
                "SUBACK",
                "UNSUBSCRIBE",
                "UNSUBACK",
                "PINGREQ",
                "PINGRESP",
                "DISCONNECT",
                "reserved type 15",
            ];
            bail!(
                "unexpected MQTT packet from the broker: {}",
                NAMES[usize::from(kind)]
            )
        }
    })
}

/// Buffered reader of whole MQTT packets.
pub(crate) struct PacketReader<R> {
    io: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_packet: usize,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    pub(crate) fn new(io: R, max_packet: usize) -> Self {
        PacketReader {
            io,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            max_packet,
        }
    }

    /// Whether a complete packet is already buffered.
    pub(crate) fn has_packet(&self) -> anyhow::Result<bool> {
        Ok(packet_len(&self.buf[self.start..self.end])?.is_some())
    }

    /// The next packet, reading from the socket when the buffer holds no
    /// complete one.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Packet<'_>> {
        let len = loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(len) = packet_len(pending)? {
                break len;
            }
            // How much the packet needs, once its header is known.
            let need = match pending.len() {
                0 => 0,
                n => decode_remaining_length(&pending[1..])?
                    .map_or(n + 4, |(len, used)| 1 + used + len),
            };
            if need > self.max_packet {
                bail!(
                    "MQTT packet of {need} bytes from the broker exceeds the limit of {}",
                    self.max_packet
                );
            }
            // Move the partial packet to the front; grow if it cannot fit.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if need > self.buf.len() {
                self.buf.resize(need, 0);
            }
            let n = self.io.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                if self.end == 0 {
                    bail!("the broker closed the connection");
                }
                bail!("the broker closed the connection in the middle of a packet");
            }
            self.end += n;
        };
        let at = self.start;
        self.start += len;
        decode_packet(&self.buf[at..at + len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rl(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        encode_remaining_length(len, &mut out).unwrap();
        out
    }

    #[test]
    fn remaining_length_edges() {
        for (len, bytes) in [
            (0, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_151, vec![0xff, 0xff, 0x7f]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (MAX_REMAINING_LEN, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            assert_eq!(rl(len), bytes, "encoding {len}");
            assert_eq!(
                decode_remaining_length(&bytes).unwrap(),
                Some((len, bytes.len())),
                "decoding {len}"
            );
            // Every strict prefix asks for more bytes.
            for cut in 0..bytes.len() {
                assert_eq!(decode_remaining_length(&bytes[..cut]).unwrap(), None);
            }
        }
        assert!(encode_remaining_length(MAX_REMAINING_LEN + 1, &mut Vec::new()).is_err());
        assert!(decode_remaining_length(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
    }

    #[test]
    fn publish_round_trip() {
        for size in [0, 8, 100, 127, 128, 16_383, 16_384, 300_000] {
            let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
            for id in [None, Some(1), Some(u16::MAX)] {
                let mut out = Vec::new();
                encode_publish("postern-bench/7", id, &payload, &mut out).unwrap();
                assert_eq!(packet_len(&out).unwrap(), Some(out.len()));
                assert_eq!(packet_len(&out[..out.len() - 1]).unwrap(), None);
                assert_eq!(
                    decode_packet(&out).unwrap(),
                    Packet::Publish {
                        dup: false,
                        qos: u8::from(id.is_some()),
                        retain: false,
                        topic: b"postern-bench/7",
                        packet_id: id,
                        payload: &payload,
                    }
                );
            }
        }
    }

    #[test]
    fn control_packets() {
        assert_eq!(
            decode_packet(&[0x20, 0x02, 0x01, 0x00]).unwrap(),
            Packet::ConnAck {
                session_present: true,
                code: 0
            }
        );
        let mut out = Vec::new();
        encode_puback(0x1234, &mut out);
        assert_eq!(out, [0x40, 0x02, 0x12, 0x34]);
        assert_eq!(
            decode_packet(&out).unwrap(),
            Packet::PubAck { packet_id: 0x1234 }
        );
        assert_eq!(
            decode_packet(&[0x90, 0x03, 0x00, 0x01, 0x01]).unwrap(),
            Packet::SubAck {
                packet_id: 1,
                codes: &[1]
            }
        );
        let mut out = Vec::new();
        encode_subscribe(1, "postern-bench/0", 1, &mut out).unwrap();
        assert_eq!(out[0], 0x82);
        assert_eq!(&out[out.len() - 1..], [1]);
        let mut out = Vec::new();
        encode_connect("c", false, 600, &mut out).unwrap();
        assert_eq!(
            out,
            [
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0, 0x02, 0x58, 0, 1, b'c'
            ]
        );
    }

    #[test]
    fn bad_packets_are_errors() {
        for bad in [
            &[0x10, 0x00][..],                           // CONNECT from a broker
            &[0x62, 0x02, 0x00, 0x01],                   // PUBREL
            &[0x20, 0x03, 0x00, 0x00, 0x00],             // CONNACK too long
            &[0x42, 0x02, 0x00, 0x01],                   // PUBACK with flags
            &[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01], // QoS 3
            &[0x32, 0x04, 0x00, 0x01, b't', 0x00],       // truncated packet id
            &[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00], // packet id 0
            &[0x30, 0x01, 0x00],                         // truncated topic length
            &[0x30, 0x03, 0x00, 0x05, b't'],             // topic longer than the packet
            &[0x90, 0x02, 0x00, 0x01],                   // SUBACK without codes
        ] {
            assert!(decode_packet(bad).is_err(), "{bad:02x?}");
        }
    }

    #[tokio::test]
    async fn reader_splits_a_stream() {
        let mut stream = Vec::new();
        encode_puback(7, &mut stream);
        encode_publish("t", Some(9), &[0xab; 70_000], &mut stream).unwrap();
        encode_puback(8, &mut stream);
        let (mut tx, rx) = tokio::io::duplex(1000);
        let writer = tokio::spawn(async move { tx.write_all(&stream).await });
        let mut r = PacketReader::new(rx, 100_000);
        assert_eq!(r.next().await.unwrap(), Packet::PubAck { packet_id: 7 });
        match r.next().await.unwrap() {
            Packet::Publish {
                packet_id: Some(9),
                payload,
                ..
            } => assert_eq!(payload.len(), 70_000),
            p => panic!("got {p:?}"),
        }
        assert_eq!(r.next().await.unwrap(), Packet::PubAck { packet_id: 8 });
        writer.await.unwrap().unwrap();
        assert!(r.next().await.is_err(), "end of stream is an error");
        let (mut tx, rx) = tokio::io::duplex(1000);
        tx.write_all(&[0x30, 0xff, 0xff, 0x7f]).await.unwrap();
        let mut r = PacketReader::new(rx, 100_000);
        assert!(r.next().await.is_err(), "oversized packet is refused");
    }
}
