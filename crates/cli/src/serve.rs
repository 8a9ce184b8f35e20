//! `moshi-rs serve`: real-time voice chat over Kyutai's WebSocket protocol with our web page at
//! `/`; all conversations batched on one copy of the weights (the server lives in moshi-server;
//! docs/serve.md).

use std::path::PathBuf;

use clap::Args;
use moshi_server::ServerConfig;

use crate::model::SamplingArgs;
use crate::sources::MoshiSource;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub source: MoshiSource,
    /// Address to bind; 127.0.0.1 keeps the server local (use 0.0.0.0 to expose it, with TLS).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8998)]
    pub port: u16,
    /// Conversations batched together; one more client is refused with an error message.
    #[arg(long, default_value_t = 4, value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub max_conversations: usize,
    /// Largest WebSocket message accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_message_bytes: usize,
    /// Seconds of user audio buffered per conversation at most.
    #[arg(long, default_value_t = 2.0, value_parser = crate::values::seconds, allow_negative_numbers = true)]
    pub max_buffered_input: f64,
    /// Browser origins allowed besides the server's own page (repeatable), e.g.
    /// https://moshi.example.org. Clients that send no Origin header are always allowed.
    #[arg(long = "allow-origin")]
    pub allow_origin: Vec<String>,
    /// Accept WebSocket connections from pages of any origin.
    #[arg(long)]
    pub allow_any_origin: bool,
    /// PEM certificate chain: serve HTTPS/WSS (browsers allow the microphone only on localhost
    /// or HTTPS). Needs --key.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Default sampling (clients may override it with query parameters).
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub runtime: crate::model::RuntimeArgs,
    /// PersonaPlex: the folder of preset voices (`NATF0.pt` …) that clients name with the
    /// `voice_prompt` query parameter (with `text_prompt`, their persona).
    #[arg(long)]
    pub voice_prompt_dir: Option<PathBuf>,
    /// PersonaPlex: prompt positions prefilled per 80 ms frame for a conversation joining with a
    /// prompt (its handshake comes after ⌈prompt frames / this⌉ frames; the rest of each frame is
    /// the other conversations').
    #[arg(long, default_value_t = 256, value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub prefill_positions: usize,
    /// A Host name served besides loopback names and IP literals (repeatable; `*.example.org`
    /// for the names under it, `*` for any): the name clients reach this server by.
    #[arg(long = "allow-host")]
    pub allow_host: Vec<String>,
    /// API keys, one per line (`#` comments): /api/chat, /api/info and /metrics then need one, in
    /// the `kyutai-api-key` header or the `auth_id` query parameter (as Kyutai's moshi-server).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Serve /metrics on this address of its own (e.g. 127.0.0.1:9100), without a key, and not
    /// on the main port.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Seconds a connection may take for its TLS handshake or a request's headers (also how long
    /// an idle keep-alive connection stays open).
    #[arg(long, default_value_t = 10.0, value_parser = crate::values::positive_seconds, allow_negative_numbers = true)]
    pub header_timeout: f64,
    /// Seconds a conversation may go without audio from its client before it is ended (with an
    /// error message).
    #[arg(long, default_value_t = 30.0, value_parser = crate::values::positive_seconds, allow_negative_numbers = true)]
    pub idle_timeout: f64,
    /// Open connections at most; one more is refused at once.
    #[arg(long, default_value_t = 512, value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub max_connections: usize,
    /// On SIGTERM/SIGINT: seconds the running conversations may go on (no new ones are taken)
    /// before they are ended; a second signal ends them at once.
    #[arg(long, default_value_t = 30.0, value_parser = crate::values::seconds, allow_negative_numbers = true)]
    pub drain_seconds: f64,
    /// This server's name among several behind a load balancer (e.g. the pod's name): sent as the
    /// metadata message's `instance_name` and in /health, so a client can tell where it landed.
    #[arg(long, default_value = "moshi-rs")]
    pub instance_name: String,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(d) = &args.voice_prompt_dir {
        anyhow::ensure!(d.is_dir(), "--voice-prompt-dir {}: not a folder", d.display());
    }
    // Read before the model loads, so that a bad file is named at once.
    let api_keys = match &args.api_key_file {
        Some(f) => Some(moshi_server::guard::ApiKeys::from_file(f).map_err(|e| anyhow::anyhow!(e))?),
        None => None,
    };
    let device = crate::model::device(args.runtime.device)?;
    let loaded = args.source.load_with(&args.runtime.load_options(), &device)?;
    eprintln!("model: {}", loaded.identity);
    if moshi_engine::audio::opus_backend::decoder_name() != "libopus" {
        eprintln!(
            "warning: built without libopus: client audio is decoded by opus-rs, which decodes some Opus \
             configurations differently from libopus (docs/fuzzing.md); build with `--features libopus` (needs CMake)"
        );
    }
    let defaults = args.sampling.gen_config(loaded.moshi.lm.config().default_sampling());
    let cfg = ServerConfig {
        host: args.host,
        port: args.port,
        max_conversations: args.max_conversations,
        max_message_bytes: args.max_message_bytes,
        max_buffered_input_s: args.max_buffered_input,
        allowed_origins: args.allow_origin,
        allow_any_origin: args.allow_any_origin,
        tls: args.cert.zip(args.key),
        defaults,
        options: args.runtime.run_options(),
        model_name: loaded.identity.clone(),
        voice_prompt_dir: args.voice_prompt_dir,
        prefill_positions: args.prefill_positions,
        allowed_hosts: args.allow_host,
        api_keys,
        metrics_addr: args.metrics_addr,
        header_timeout_s: args.header_timeout,
        idle_timeout_s: args.idle_timeout,
        max_connections: args.max_connections,
        drain_seconds: args.drain_seconds,
        instance_name: args.instance_name,
        ..ServerConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        // Listening for signals before the address is printed: a supervisor may stop us at once.
        let mut signals = Signals::new()?;
        let server = moshi_server::start(cfg, loaded.moshi).await?;
        eprintln!("moshi-rs serving on {} (open it in a browser; ctrl-c stops)", server.url());
        if let Some(m) = server.metrics_addr() {
            eprintln!("metrics on http://{m}/metrics");
        }
        let first = signals.next().await;
        // Draining before it is said: whoever reads the line finds /ready already 503.
        server.start_draining();
        eprintln!("{first}: draining (no new conversations; a second signal ends the running ones at once)");
        server.drain(async move {
            let second = signals.next().await;
            eprintln!("{second}: ending the running conversations now");
        })
        .await;
        eprintln!("stopped");
        anyhow::Ok(())
    })
}

/// SIGTERM (what service managers and Kubernetes send) and SIGINT (ctrl-c).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}
