//! A bounded load generator: N conversations over loopback for M seconds, each a WebSocket client
//! speaking Kyutai's protocol at real-time pace (one 40 ms Ogg page of two 20 ms Opus packets per
//! message, as their web client), then a report: frames late and step-time percentiles from the
//! server, frames received and stalls seen by the clients. It refuses any host that is not
//! loopback, and stops by itself after M seconds (plus a few seconds to connect and close).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use opus_rs::{Application, OpusEncoder};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::ogg_stream::{opus_head, opus_tags};
use crate::protocol::{decode, Decoded, Message};

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub conversations: usize,
    pub seconds: f64,
    pub connected: usize,
    pub refused: usize,
    /// Frames each conversation would receive at exactly real time.
    pub frames_expected: usize,
    pub frames_received_min: usize,
    pub frames_received_median: usize,
    /// Gaps of more than 200 ms between two audio messages, summed over conversations (after the
    /// first audio message of each).
    pub client_stalls: usize,
    /// Per connected conversation, in the order they connected: ms from the WebSocket connect
    /// to the handshake (PersonaPlex: the prompt is fed in between).
    pub handshake_ms: Vec<f64>,
    /// From the server (in-process runs): batched steps, steps that ended after their deadline,
    /// step-time percentiles in ms, input underruns.
    pub server: Option<ServerSide>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerSide {
    pub steps: u64,
    pub frames_late: u64,
    pub late_fraction: f64,
    pub step_ms_p50: f64,
    pub step_ms_p90: f64,
    pub step_ms_p99: f64,
    pub step_ms_max: f64,
    pub input_underruns: u64,
}

/// Check that `url` points at this machine.
pub fn check_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(|| anyhow::anyhow!("--url must start with ws:// or wss://, got {url}"))?;
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(authority)
    };
    let ok = host == "localhost" || host.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false);
    anyhow::ensure!(ok, "the load generator only targets loopback (127.0.0.0/8, ::1, localhost), not {host:?}");
    Ok(())
}

/// `audio` (24 kHz mono, looped) as a client's Ogg pages: the two header pages, then one page per
/// 40 ms.
fn client_pages(audio: &[f32], seconds: f64) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut enc = OpusEncoder::new(24_000, 1, Application::Voip).map_err(|e| anyhow::anyhow!(e))?;
    let mut w = ogg::PacketWriter::new(Vec::new());
    let end = ogg::PacketWriteEndInfo::EndPage;
    let mut pages = Vec::new();
    w.write_packet(opus_head(3840, 24_000), 1, end, 0)?;
    pages.push(std::mem::take(w.inner_mut()));
    w.write_packet(opus_tags("moshi-rs load"), 1, end, 0)?;
    pages.push(std::mem::take(w.inner_mut()));
    let n_packets = (seconds / 0.02).ceil() as usize;
    let mut buf = vec![0u8; 4000];
    let silence = [0f32; 480];
    for i in 0..n_packets {
        let frame: Vec<f32> = if audio.len() >= 480 {
            (0..480).map(|j| audio[(i * 480 + j) % audio.len()]).collect()
        } else {
            silence.to_vec()
        };
        let n = enc.encode(&frame, 480, &mut buf).map_err(|e| anyhow::anyhow!(e))?;
        let info = if i % 2 == 1 { end } else { ogg::PacketWriteEndInfo::NormalPacket };
        w.write_packet(buf[..n].to_vec(), 1, info, (i as u64 + 1) * 960)?;
        if i % 2 == 1 {
            pages.push(std::mem::take(w.inner_mut()));
        }
    }
    Ok(pages)
}

enum Outcome {
    Refused,
    Ran { frames: usize, stalls: usize, handshake_ms: f64 },
}

/// What the load generator runs.
#[derive(Debug, Clone, Copy)]
pub struct LoadPlan {
    pub conversations: usize,
    /// Seconds each conversation streams audio (after its handshake).
    pub seconds: f64,
    /// Seconds between one client's connection and the next.
    pub stagger_s: f64,
}

async fn one_client(url: String, pages: Vec<Vec<u8>>, seconds: f64) -> anyhow::Result<Outcome> {
    let t0 = Instant::now();
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let (mut tx, mut rx) = ws.split();
    // Metadata, then the handshake; or an error (refused).
    loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.next()).await? {
            Some(Ok(Ws::Binary(b))) => match decode(&b, usize::MAX) {
                Ok(Decoded::Message(Message::Handshake { .. })) => break,
                Ok(Decoded::Message(Message::Error(_))) => return Ok(Outcome::Refused),
                _ => continue,
            },
            Some(Ok(Ws::Close(_))) | None => return Ok(Outcome::Refused),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
    let start = Instant::now();
    let handshake_ms = (start - t0).as_secs_f64() * 1e3;
    let sender = tokio::spawn(async move {
        for (i, page) in pages.into_iter().enumerate() {
            // Header pages at once, then one page per 40 ms of audio, on the wall clock.
            let due = start + Duration::from_millis(40 * i.saturating_sub(2) as u64);
            tokio::time::sleep_until(due.into()).await;
            let mut m = vec![1u8];
            m.extend(page);
            if tx.send(Ws::Binary(m.into())).await.is_err() {
                break;
            }
        }
        let _ = tx.send(Ws::Close(None)).await;
    });
    let (mut frames, mut stalls, mut last): (usize, usize, Option<Instant>) = (0, 0, None);
    let deadline = start + Duration::from_secs_f64(seconds + 1.0);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline.into(), rx.next()).await {
        match msg {
            Ok(Ws::Binary(b)) => {
                if let Ok(Decoded::Message(Message::Audio(_))) = decode(&b, usize::MAX) {
                    let now = Instant::now();
                    if last.is_some_and(|l| now - l > Duration::from_millis(200)) {
                        stalls += 1;
                    }
                    last = Some(now);
                    frames += 1;
                }
            }
            Ok(Ws::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    sender.abort();
    Ok(Outcome::Ran { frames, stalls, handshake_ms })
}

/// Run `conversations` clients against `url` for `seconds`; `metrics` (in-process runs) gives the
/// server's side.
pub async fn run(url: &str, plan: &LoadPlan, audio: &[f32], metrics: Option<&crate::metrics::Metrics>) -> anyhow::Result<LoadReport> {
    let LoadPlan { conversations, seconds, stagger_s } = *plan;
    check_loopback(url)?;
    anyhow::ensure!(stagger_s.is_finite() && (0.0..=600.0).contains(&stagger_s), "--stagger must be in [0, 600] seconds");
    anyhow::ensure!(conversations >= 1, "at least one conversation");
    anyhow::ensure!(seconds > 0.0 && seconds <= 3600.0, "--seconds must be in (0, 3600]");
    let pages = client_pages(audio, seconds)?;
    let (steps0, late0, under0, log0) = match metrics {
        Some(m) => (m.frames_stepped.get(), m.frames_late.get(), m.input_underruns.get(), m.step_times().len()),
        None => (0, 0, 0, 0),
    };
    let mut tasks = Vec::new();
    for i in 0..conversations {
        if i > 0 && stagger_s > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(stagger_s)).await;
        }
        tasks.push(tokio::spawn(one_client(url.to_string(), pages.clone(), seconds)));
    }
    let (mut refused, mut received, mut stalls, mut handshakes) = (0, Vec::new(), 0, Vec::new());
    for t in tasks {
        match t.await? {
            Ok(Outcome::Refused) => refused += 1,
            Ok(Outcome::Ran { frames, stalls: s, handshake_ms }) => {
                received.push(frames);
                stalls += s;
                handshakes.push(handshake_ms);
            }
            Err(e) => return Err(e.context("a load client failed")),
        }
    }
    received.sort_unstable();
    let server = metrics.map(|m| {
        let mut times: Vec<f64> = m.step_times().into_iter().skip(log0).map(|s| s * 1e3).collect();
        times.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| if times.is_empty() { 0.0 } else { times[((times.len() - 1) as f64 * p).round() as usize] };
        let steps = m.frames_stepped.get() - steps0;
        let late = m.frames_late.get() - late0;
        ServerSide {
            steps,
            frames_late: late,
            late_fraction: if steps == 0 { 0.0 } else { late as f64 / steps as f64 },
            step_ms_p50: pct(0.5),
            step_ms_p90: pct(0.9),
            step_ms_p99: pct(0.99),
            step_ms_max: times.last().copied().unwrap_or(0.0),
            input_underruns: m.input_underruns.get() - under0,
        }
    });
    Ok(LoadReport {
        conversations,
        seconds,
        connected: received.len(),
        refused,
        frames_expected: (seconds / 0.08).floor() as usize,
        frames_received_min: received.first().copied().unwrap_or(0),
        frames_received_median: received.get(received.len() / 2).copied().unwrap_or(0),
        client_stalls: stalls,
        handshake_ms: handshakes,
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::check_loopback;

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in ["ws://127.0.0.1:8998/api/chat", "ws://localhost:1/api/chat", "ws://[::1]:80/api/chat", "wss://127.0.0.2/x"] {
            check_loopback(ok).unwrap();
        }
        for bad in ["ws://10.0.0.1:8998/api/chat", "ws://example.org/api/chat", "http://127.0.0.1/", "ws://[2001:db8::1]:1/"] {
            assert!(check_loopback(bad).is_err(), "{bad}");
        }
    }
}
