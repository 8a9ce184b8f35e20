//! Prometheus metrics served at `/metrics` (text format), one registry per server.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Every metric the server keeps.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub active_conversations: IntGauge,
    pub conversation_slots: IntGauge,
    /// Slots free for a new conversation (set when `/metrics` is read).
    pub free_slots: IntGauge,
    /// 1 while the server drains (after SIGTERM/SIGINT), else 0.
    pub draining: IntGauge,
    pub connections: IntCounter,
    pub conversations_started: IntCounter,
    /// Seconds per batched model step (Mimi encode + LM + Mimi decode for every slot).
    pub step_seconds: Histogram,
    /// Frames whose step ended after their 80 ms deadline.
    pub frames_late: IntCounter,
    pub frames_stepped: IntCounter,
    /// Frames a conversation had no audio for in time (silence was fed instead).
    pub input_underruns: IntCounter,
    pub input_dropped_samples: IntCounter,
    /// Frames of Moshi's audio dropped because the client read too slowly.
    pub output_dropped_frames: IntCounter,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    /// By kind: protocol, audio, params, capacity, origin, host, auth, connections, idle, draining,
    /// shutdown, send_timeout, engine, socket, prompt, prefill.
    pub errors: IntCounterVec,
    /// Seconds per prompt-prefill chunk (joining PersonaPlex conversations), and positions run.
    pub prefill_seconds: Histogram,
    pub prefill_positions: IntCounter,
    /// The last `STEP_LOG` step times in seconds (exact percentiles for the load generator).
    step_log: Arc<Mutex<VecDeque<f64>>>,
}

const STEP_LOG: usize = 100_000;

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Self {
            active_conversations: IntGauge::new("moshi_active_conversations", "Conversations in progress").unwrap(),
            conversation_slots: IntGauge::new("moshi_conversation_slots", "Conversations the batch holds").unwrap(),
            free_slots: IntGauge::new("moshi_free_slots", "Conversation slots free for a new client").unwrap(),
            draining: IntGauge::new("moshi_draining", "1 while the server drains (refusing new conversations)").unwrap(),
            connections: IntCounter::new("moshi_connections_total", "WebSocket connections accepted").unwrap(),
            conversations_started: IntCounter::new("moshi_conversations_started_total", "Conversations started").unwrap(),
            step_seconds: Histogram::with_opts(
                HistogramOpts::new("moshi_frame_step_seconds", "Time of one batched frame step (all conversations)")
                    .buckets(vec![0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.1, 0.15, 0.2, 0.4, 1.0]),
            )
            .unwrap(),
            frames_late: IntCounter::new("moshi_frames_late_total", "Frame steps that ended after their 80 ms deadline").unwrap(),
            frames_stepped: IntCounter::new("moshi_frames_stepped_total", "Batched frame steps").unwrap(),
            input_underruns: IntCounter::new(
                "moshi_input_underruns_total",
                "Conversation frames without user audio in time (silence fed)",
            )
            .unwrap(),
            input_dropped_samples: IntCounter::new(
                "moshi_input_dropped_samples_total",
                "User samples dropped past the input buffer bound",
            )
            .unwrap(),
            output_dropped_frames: IntCounter::new(
                "moshi_output_dropped_frames_total",
                "Frames of Moshi audio dropped for slow clients",
            )
            .unwrap(),
            bytes_in: IntCounter::new("moshi_bytes_in_total", "WebSocket payload bytes received").unwrap(),
            bytes_out: IntCounter::new("moshi_bytes_out_total", "WebSocket payload bytes sent").unwrap(),
            errors: IntCounterVec::new(Opts::new("moshi_errors_total", "Errors by kind"), &["kind"]).unwrap(),
            prefill_seconds: Histogram::with_opts(
                HistogramOpts::new("moshi_prompt_prefill_seconds", "Time of one prompt-prefill chunk of a joining conversation")
                    .buckets(vec![0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.2, 0.5]),
            )
            .unwrap(),
            prefill_positions: IntCounter::new("moshi_prompt_prefill_positions_total", "Prompt positions prefilled").unwrap(),
            registry,
            step_log: Arc::new(Mutex::new(VecDeque::new())),
        };
        let r = &m.registry;
        r.register(Box::new(m.active_conversations.clone())).unwrap();
        r.register(Box::new(m.conversation_slots.clone())).unwrap();
        r.register(Box::new(m.free_slots.clone())).unwrap();
        r.register(Box::new(m.draining.clone())).unwrap();
        r.register(Box::new(m.connections.clone())).unwrap();
        r.register(Box::new(m.conversations_started.clone())).unwrap();
        r.register(Box::new(m.step_seconds.clone())).unwrap();
        r.register(Box::new(m.frames_late.clone())).unwrap();
        r.register(Box::new(m.frames_stepped.clone())).unwrap();
        r.register(Box::new(m.input_underruns.clone())).unwrap();
        r.register(Box::new(m.input_dropped_samples.clone())).unwrap();
        r.register(Box::new(m.output_dropped_frames.clone())).unwrap();
        r.register(Box::new(m.bytes_in.clone())).unwrap();
        r.register(Box::new(m.bytes_out.clone())).unwrap();
        r.register(Box::new(m.errors.clone())).unwrap();
        r.register(Box::new(m.prefill_seconds.clone())).unwrap();
        r.register(Box::new(m.prefill_positions.clone())).unwrap();
        m
    }

    /// Record one prompt-prefill chunk.
    pub fn observe_prefill(&self, positions: usize, seconds: f64) {
        self.prefill_seconds.observe(seconds);
        self.prefill_positions.inc_by(positions as u64);
    }

    /// Record one batched step's duration.
    pub fn observe_step(&self, seconds: f64) {
        self.step_seconds.observe(seconds);
        let mut log = self.step_log.lock().expect("step log");
        if log.len() == STEP_LOG {
            log.pop_front();
        }
        log.push_back(seconds);
    }

    /// Step times recorded so far (the most recent `STEP_LOG`), in seconds.
    pub fn step_times(&self) -> Vec<f64> {
        self.step_log.lock().expect("step log").iter().copied().collect()
    }

    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
