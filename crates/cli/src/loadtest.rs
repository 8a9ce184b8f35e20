//! `moshi-rs loadtest`: N conversations for M seconds over loopback, against a server started
//! in-process on the chosen model (default: the embedded tiny one) with N slots, or against a
//! running server on this machine (`--url`). Prints a JSON report (moshi_server::load).

use clap::Args;
use moshi_server::ServerConfig;

use crate::model::{DeviceArg, DtypeArg};
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
    /// Where the model runs (cuda and metal need a build with that feature).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// The LM's dtype; Mimi always runs in f32.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
}

pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    let audio = moshi_engine::audio::load_mono_24k(std::path::Path::new("assets/hello.wav")).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(async {
        match &args.url {
            Some(url) => moshi_server::load::run(url, args.conversations, args.seconds, &audio, None).await,
            None => {
                let (device, dtype) = (crate::model::device(args.device)?, crate::model::dtype(args.dtype));
                let loaded = args.source.load(dtype, &device)?;
                eprintln!("model: {}", loaded.identity);
                let cfg = ServerConfig {
                    max_conversations: args.slots.unwrap_or(args.conversations),
                    model_name: loaded.identity.clone(),
                    ..ServerConfig::local_test()
                };
                let server = moshi_server::start(cfg, loaded.moshi).await?;
                let url = format!("ws://{}/api/chat", server.addr());
                let r = moshi_server::load::run(&url, args.conversations, args.seconds, &audio, Some(server.metrics())).await;
                server.shutdown().await;
                r
            }
        }
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
