//! Server settings, and the per-conversation settings Kyutai's clients send as query parameters
//! of `/api/chat` (docs/protocol.md): parsed strictly, every bad value named.

use std::collections::HashMap;
use std::path::PathBuf;

use moshi_engine::exec::RunOptions;
use moshi_engine::lm::{GenConfig, SamplingConfig};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    /// 0: any free port (tests).
    pub port: u16,
    /// Conversation slots: the batch the model steps every frame; one more client is refused.
    pub max_conversations: usize,
    /// Largest WebSocket message accepted (bytes); larger ones get an error and a close.
    pub max_message_bytes: usize,
    /// Seconds of user audio buffered per conversation at most (the oldest is dropped past it).
    pub max_buffered_input_s: f64,
    /// Frames of Moshi's audio queued for a client at most (a slow reader loses the oldest).
    pub max_queued_output_frames: usize,
    /// Browser origins allowed besides the server's own (`Origin` equal to `Host`); clients that
    /// send no `Origin` (non-browsers) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Skip the origin check altogether.
    pub allow_any_origin: bool,
    /// PEM certificate chain and private key: serve HTTPS/WSS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Sampling when the client does not say.
    pub defaults: GenConfig,
    /// What the batch of conversations runs with (the KV cache's kind).
    pub options: RunOptions,
    /// Shown in the metadata message and /health.
    pub model_name: String,
    /// This server's name among several behind a load balancer (`--instance-name`): the
    /// metadata message's `instance_name` and /health's `instance`.
    pub instance_name: String,
    /// A send to a client that takes longer than this closes the connection.
    pub send_timeout_s: f64,
    /// PersonaPlex: where the `voice_prompt` query parameter's presets are (`NATF0.pt` …).
    pub voice_prompt_dir: Option<PathBuf>,
    /// PersonaPlex: prompt positions prefilled per frame for a conversation joining with a prompt
    /// (docs/serve.md: the handshake comes after ⌈positions / this⌉ frames at most).
    pub prefill_positions: usize,
    /// `Host` names served besides loopback names and IP literals (`--allow-host`; `*.example.org`
    /// and `*` work): DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// API keys (`--api-key-file`): `/api/chat`, `/api/info` and `/metrics` need one of them.
    pub api_keys: Option<crate::guard::ApiKeys>,
    /// Serve `/metrics` on this address (`host:port`) of its own, without a key, and not on the
    /// main port (`--metrics-addr`).
    pub metrics_addr: Option<String>,
    /// Seconds a connection may take for its TLS handshake, and to send a request's headers
    /// (also the idle time of a keep-alive connection between requests).
    pub header_timeout_s: f64,
    /// Seconds a conversation may go without audio from its client before it is ended.
    pub idle_timeout_s: f64,
    /// Open connections at most (one more is refused at once).
    pub max_connections: usize,
    /// On SIGTERM/SIGINT ([`crate::RunningServer::drain`]): seconds running conversations may go
    /// on before they are ended.
    pub drain_seconds: f64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8998,
            max_conversations: 4,
            max_message_bytes: 1 << 20,
            max_buffered_input_s: 2.0,
            max_queued_output_frames: 25,
            allowed_origins: Vec::new(),
            allow_any_origin: false,
            tls: None,
            defaults: GenConfig::default(),
            options: RunOptions::default(),
            model_name: "unnamed".into(),
            instance_name: "moshi-rs".into(),
            send_timeout_s: 10.0,
            voice_prompt_dir: None,
            prefill_positions: 256,
            allowed_hosts: Vec::new(),
            api_keys: None,
            metrics_addr: None,
            header_timeout_s: 10.0,
            idle_timeout_s: 30.0,
            max_connections: 512,
            drain_seconds: 30.0,
        }
    }
}

impl ServerConfig {
    /// Loopback, any free port, 4 conversations: what tests start.
    pub fn local_test() -> Self {
        Self { port: 0, model_name: "tiny".into(), ..Self::default() }
    }
}

/// One conversation's settings from the query string.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionParams {
    pub gen: GenConfig,
    /// One seeded noise stream drives a conversation's text and audio sampling.
    pub seed: u64,
    /// Parameters accepted for compatibility with Kyutai's clients but not implemented (their
    /// neutral values are not listed).
    pub ignored: Vec<String>,
    /// PersonaPlex's persona and voice (`text_prompt`, `voice_prompt`), when asked for.
    pub prompt: Option<PromptRequest>,
}

/// A conversation's PersonaPlex prompt as its client asked for it (the names of NVIDIA's server:
/// `text_prompt`, and `voice_prompt`, a preset's file name in the server's `--voice-prompt-dir`).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRequest {
    pub text: String,
    /// The preset found in the voices folder.
    pub voice: Option<PathBuf>,
}

impl PromptRequest {
    /// From the query: None when neither parameter is there. A voice is a preset's name (`NATF0`
    /// or `NATF0.pt`) in `voice_dir`, never a path (nothing outside the folder can be named);
    /// recordings are not taken by the server (their Mimi encoding would hold up the batch).
    pub fn from_query(q: &HashMap<String, String>, voice_dir: Option<&std::path::Path>) -> Result<Option<Self>, String> {
        let text = q.get("text_prompt").cloned();
        let voice = q.get("voice_prompt").map(|v| v.trim()).filter(|v| !v.is_empty());
        if text.is_none() && voice.is_none() {
            return Ok(None);
        }
        let voice = match voice {
            None => None,
            Some(v) => {
                if v.contains(['/', '\\']) || v.starts_with('.') {
                    return Err(format!("query parameter voice_prompt={v:?}: a voice's file name (e.g. NATF0.pt), not a path"));
                }
                let dir = voice_dir.ok_or_else(|| format!("voice_prompt={v:?}: this server has no voices (start it with --voice-prompt-dir)"))?;
                let path = moshi_engine::persona::resolve_voice(v, Some(dir)).map_err(|e| e.to_string())?;
                if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("pt")) {
                    return Err(format!("voice_prompt={v:?}: the server takes preset voices (.pt) only"));
                }
                Some(path)
            }
        };
        Ok(Some(Self { text: text.unwrap_or_default(), voice }))
    }

    /// The engine's form.
    pub fn spec(&self) -> moshi_engine::persona::PromptSpec {
        use moshi_engine::persona::{PromptSpec, VoiceSource};
        let voice = match &self.voice {
            Some(p) => VoiceSource::File(p.clone()),
            None => VoiceSource::None,
        };
        PromptSpec { text: self.text.clone(), voice }
    }
}

/// The preset voices in `dir` (its `.pt` files, sorted by name): what `voice_prompt` may name.
pub fn voice_names(dir: &std::path::Path) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("--voice-prompt-dir {}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && n.rsplit_once('.').is_some_and(|(_, ext)| ext.eq_ignore_ascii_case("pt")))
        .collect();
    names.sort();
    Ok(names)
}

fn parse<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.trim().parse::<T>().map_err(|_| format!("query parameter {key}={v:?} is not a valid {}", std::any::type_name::<T>()))
}

fn temperature(key: &str, v: &str) -> Result<f64, String> {
    let t: f64 = parse(key, v)?;
    moshi_engine::lm::sampling::check_temperature(t).map_err(|e| format!("query parameter {key}={v:?}: {e}"))
}

/// A top-k past the vocabulary means "no truncation" (Kyutai's clients send 250 whatever the
/// model; a small model's vocabulary can be smaller), so it is clamped.
fn top_k(key: &str, v: &str, vocab: usize) -> Result<usize, String> {
    let k: usize = parse(key, v)?;
    if k == 0 {
        return Err(format!("query parameter {key}={v:?}: top-k must be at least 1"));
    }
    Ok(k.min(vocab))
}

fn sampling(t: f64, k: usize) -> Result<SamplingConfig, String> {
    SamplingConfig::from_user(t, k)
}

impl SessionParams {
    /// Read Kyutai's query parameters over `defaults`; unknown keys are ignored (their clients
    /// send `worker_auth_id`, `email`…). `text_vocab`/`audio_vocab` bound the top-k values.
    pub fn from_query(
        q: &HashMap<String, String>,
        defaults: &GenConfig,
        text_vocab: usize,
        audio_vocab: usize,
        random_seed: u64,
    ) -> Result<Self, String> {
        let get = |k: &str| q.get(k).map(|s| s.as_str()).filter(|s| !s.trim().is_empty());
        let (dt, da) = (defaults.text, defaults.audio);
        let tt = get("text_temperature").map(|v| temperature("text_temperature", v)).transpose()?;
        let tk = get("text_topk").map(|v| top_k("text_topk", v, text_vocab)).transpose()?;
        let at = get("audio_temperature").map(|v| temperature("audio_temperature", v)).transpose()?;
        let ak = get("audio_topk").map(|v| top_k("audio_topk", v, audio_vocab)).transpose()?;
        let text = match (tt, tk) {
            (None, None) => dt,
            (t, k) => sampling(t.unwrap_or(dt.temperature.unwrap_or(0.0)), k.unwrap_or(dt.top_k.max(1)))?,
        };
        let audio = match (at, ak) {
            (None, None) => da,
            (t, k) => sampling(t.unwrap_or(da.temperature.unwrap_or(0.0)), k.unwrap_or(da.top_k.max(1)))?,
        };
        let seed = match (get("text_seed"), get("audio_seed")) {
            (Some(v), _) => parse::<u64>("text_seed", v)?,
            (None, Some(v)) => parse::<u64>("audio_seed", v)?,
            (None, None) => random_seed,
        };
        let mut ignored = Vec::new();
        if let Some(v) = get("pad_mult") {
            if parse::<f32>("pad_mult", v)? != 0.0 {
                ignored.push("pad_mult".to_string());
            }
        }
        if let Some(v) = get("repetition_penalty") {
            if parse::<f32>("repetition_penalty", v)? != 1.0 {
                ignored.push("repetition_penalty".to_string());
            }
        }
        if let Some(v) = get("repetition_penalty_context") {
            parse::<usize>("repetition_penalty_context", v)?;
        }
        Ok(Self { gen: GenConfig { text, audio }, seed, ignored, prompt: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn kyutai_web_client_defaults_parse() {
        let p = SessionParams::from_query(
            &q(&[
                ("text_temperature", "0.7"),
                ("text_topk", "25"),
                ("audio_temperature", "0.8"),
                ("audio_topk", "250"),
                ("pad_mult", "0"),
                ("repetition_penalty_context", "64"),
                ("repetition_penalty", "1.0"),
                ("text_seed", "123"),
                ("audio_seed", "456"),
                ("worker_auth_id", "x"),
            ]),
            &GenConfig::default(),
            32000,
            2048,
            9,
        )
        .unwrap();
        assert_eq!(p.gen, GenConfig::default());
        assert_eq!(p.seed, 123);
        assert!(p.ignored.is_empty());
    }

    #[test]
    fn missing_values_take_defaults_and_a_random_seed() {
        let p = SessionParams::from_query(&q(&[("text_seed", "")]), &GenConfig::greedy(), 100, 100, 77).unwrap();
        assert_eq!(p.gen, GenConfig::greedy());
        assert_eq!(p.seed, 77);
        let p = SessionParams::from_query(&q(&[("audio_temperature", "0")]), &GenConfig::default(), 100, 100, 1).unwrap();
        assert!(p.gen.audio.is_greedy());
        // A temperature that is 0 in f32 (issue 15, F8: it made NaN probabilities) is greedy.
        let p = SessionParams::from_query(&q(&[("text_temperature", "1e-300")]), &GenConfig::default(), 100, 100, 1).unwrap();
        assert!(p.gen.text.is_greedy(), "{:?}", p.gen.text);
    }

    #[test]
    fn bad_values_are_named() {
        let d = GenConfig::default();
        for (k, v, want) in [
            ("text_temperature", "hot", "text_temperature=\"hot\""),
            ("audio_temperature", "-1", "finite and ≥ 0"),
            ("audio_temperature", "NaN", "finite"),
            ("text_topk", "0", "at least 1"),
            ("audio_topk", "x", "audio_topk"),
            ("text_seed", "-3", "text_seed"),
        ] {
            let e = SessionParams::from_query(&q(&[(k, v)]), &d, 32000, 2048, 0).unwrap_err();
            assert!(e.contains(want), "{k}={v}: {e}");
        }
        let p = SessionParams::from_query(&q(&[("audio_topk", "250")]), &d, 32000, 64, 0).unwrap();
        assert_eq!(p.gen.audio.top_k, 64, "clamped to the vocabulary");
        let p = SessionParams::from_query(&q(&[("pad_mult", "1.5")]), &d, 32000, 2048, 0).unwrap();
        assert_eq!(p.ignored, vec!["pad_mult"]);
    }

    #[test]
    fn prompts_name_a_preset_in_the_voices_folder() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden/personaplex_tiny");
        assert_eq!(PromptRequest::from_query(&q(&[("text_seed", "1")]), Some(&dir)).unwrap(), None);
        let p = PromptRequest::from_query(&q(&[("text_prompt", "You are Ada."), ("voice_prompt", "voice.pt")]), Some(&dir)).unwrap().unwrap();
        assert_eq!((p.text.as_str(), p.voice), ("You are Ada.", Some(dir.join("voice.pt"))));
        let p = PromptRequest::from_query(&q(&[("voice_prompt", "voice")]), Some(&dir)).unwrap().unwrap();
        assert_eq!((p.text.as_str(), p.voice), ("", Some(dir.join("voice.pt"))));
        for (v, want) in [("../voice.pt", "not a path"), ("/etc/passwd", "not a path"), ("NOPE", "NOPE.pt"), ("voice.wav", "preset voices (.pt) only")] {
            let e = PromptRequest::from_query(&q(&[("voice_prompt", v)]), Some(&dir)).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
        let e = PromptRequest::from_query(&q(&[("voice_prompt", "voice.pt")]), None).unwrap_err();
        assert!(e.contains("--voice-prompt-dir"), "{e}");
    }

    /// The voice picker's list: `.pt` files only, sorted, hidden files and folders left out;
    /// every name listed is accepted by `voice_prompt`.
    #[test]
    fn voices_are_listed_as_voice_prompt_takes_them() {
        let dir = std::env::temp_dir().join(format!("moshi-voices-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub.pt")).unwrap();
        for f in ["NATM1.pt", "NATF0.PT", "notes.txt", "rec.wav", ".hidden.pt"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let names = voice_names(&dir).unwrap();
        assert_eq!(names, ["NATF0.PT", "NATM1.pt"]);
        for n in &names {
            let p = PromptRequest::from_query(&q(&[("voice_prompt", n)]), Some(&dir)).unwrap().unwrap();
            assert_eq!(p.voice, Some(dir.join(n)));
        }
        assert!(voice_names(&dir.join("missing")).unwrap_err().contains("--voice-prompt-dir"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
