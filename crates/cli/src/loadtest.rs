//! `moshi-rs loadtest`: N conversations for M seconds over loopback, against a server started
//! in-process on the chosen model (default: the embedded tiny one) with N slots, or against a
//! running server on this machine (`--url`). Prints a JSON report (moshi_server::load).

use clap::Args;
use moshi_server::ServerConfig;

use crate::sources::MoshiSource;

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Concurrent conversations.
    #[arg(long, default_value_t = 4, value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub conversations: usize,
    /// Seconds each conversation streams audio.
    #[arg(long, default_value_t = 20.0, value_parser = crate::values::seconds, allow_negative_numbers = true)]
    pub seconds: f64,
    /// A running server on this machine (ws://127.0.0.1:PORT/api/chat); default: start one
    /// in-process with --conversations slots (the report then includes its step times).
    #[arg(long)]
    pub url: Option<String>,
    /// Slots of the in-process server (default: --conversations).
    #[arg(long)]
    pub slots: Option<usize>,
    #[command(flatten)]
    pub source: MoshiSource,
    #[command(flatten)]
    pub runtime: crate::model::RuntimeArgs,
    /// Query string every client adds to the URL (e.g. `text_prompt=…&voice_prompt=NATF0.pt`
    /// for PersonaPlex; URL-encoded here).
    #[arg(long, default_value = "")]
    pub query: String,
    /// Seconds between one client's connection and the next (0: all at once), so that later
    /// ones join a running batch.
    #[arg(long, default_value_t = 0.0, value_parser = crate::values::seconds, allow_negative_numbers = true)]
    pub stagger: f64,
    /// The in-process server's preset voices (serve --voice-prompt-dir).
    #[arg(long)]
    pub voice_prompt_dir: Option<std::path::PathBuf>,
    /// The in-process server's prompt positions prefilled per frame (serve --prefill-positions).
    #[arg(long, default_value_t = 256, value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub prefill_positions: usize,
}

pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    let audio = moshi_engine::audio::load_mono_24k(std::path::Path::new("assets/hello.wav")).unwrap_or_default();
    let plan = moshi_server::load::LoadPlan { conversations: args.conversations, seconds: args.seconds, stagger_s: args.stagger };
    let with_query = |url: &str| if args.query.is_empty() { url.to_string() } else { format!("{url}?{}", encode_query(&args.query)) };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(async {
        match &args.url {
            Some(url) => moshi_server::load::run(&with_query(url), &plan, &audio, None).await,
            None => {
                let device = crate::model::device(args.runtime.device)?;
                let loaded = args.source.load_with(&args.runtime.load_options(), &device)?;
                eprintln!("model: {}", loaded.identity);
                let cfg = ServerConfig {
                    max_conversations: args.slots.unwrap_or(args.conversations),
                    model_name: loaded.identity.clone(),
                    voice_prompt_dir: args.voice_prompt_dir.clone(),
                    prefill_positions: args.prefill_positions,
                    options: args.runtime.run_options(),
                    ..ServerConfig::local_test()
                };
                let server = moshi_server::start(cfg, loaded.moshi).await?;
                let url = with_query(&format!("ws://{}/api/chat", server.addr()));
                let r = moshi_server::load::run(&url, &plan, &audio, Some(server.metrics())).await;
                server.shutdown().await;
                r
            }
        }
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// `k=v&k=v` with each value percent-encoded (spaces and the like in a persona).
fn encode_query(q: &str) -> String {
    q.split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => format!("{k}={}", url_encode(v)),
            None => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn url_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
