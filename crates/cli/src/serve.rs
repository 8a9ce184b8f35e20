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
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(d) = &args.voice_prompt_dir {
        anyhow::ensure!(d.is_dir(), "--voice-prompt-dir {}: not a folder", d.display());
    }
    let device = crate::model::device(args.runtime.device)?;
    let loaded = args.source.load_with(&args.runtime.load_options(), &device)?;
    eprintln!("model: {}", loaded.identity);
    let defaults = args.sampling.gen_config();
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
        ..ServerConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let server = moshi_server::start(cfg, loaded.moshi).await?;
        eprintln!("moshi-rs serving on {} (open it in a browser; ctrl-c stops)", server.url());
        tokio::select! {
            _ = tokio::signal::ctrl_c() => eprintln!("stopping"),
            _ = std::future::pending::<()>() => {}
        }
        server.shutdown().await;
        anyhow::Ok(())
    })
}
