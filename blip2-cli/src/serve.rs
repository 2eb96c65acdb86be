//! `blip2 serve`: the command-line face of the `blip2-serve` crate.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use blip2::{Blip2, Blip2Retrieval, Checkpoint};
use blip2_serve::{Loaded, RequestLimits, ServeConfig};
use clap::Args;

use crate::{backend_name, device, AnyError, ModelArgs};

/// The server's options.
#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default: give 0.0.0.0 to accept other machines).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most requests batched into one generate call.
    #[arg(long, default_value_t = 8)]
    max_batch_size: usize,
    /// How long a request waits for others to batch with, in milliseconds.
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Most requests waiting for the model; more are answered 429.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// How many images' encodings to keep, so that more questions about an image sent before
    /// (the same bytes) skip encoding it; 0 keeps none.
    #[arg(long, default_value_t = 64)]
    image_cache: usize,
    /// Serve the web page at / (the default when listening on loopback only).
    #[arg(long, conflicts_with = "no_ui")]
    ui: bool,
    /// Do not serve the web page (the default when listening on other addresses).
    #[arg(long)]
    no_ui: bool,
    /// Largest request body in bytes; larger ones are answered 413.
    #[arg(long, default_value_t = 20 << 20)]
    max_body_bytes: usize,
    /// Fetch http(s) `image_url`s in chat messages (refused by default: a server that fetches
    /// what clients name can be pointed inside its network). Size and time limits are those of
    /// a request body.
    #[arg(long)]
    allow_remote_images: bool,
    /// Require `Authorization: Bearer <KEY>` on /v1/* (also read from BLIP2_API_KEY).
    #[arg(long, env = "BLIP2_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Most new tokens one request may ask for.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Seconds a client may take to send its body (408 after).
    #[arg(long, default_value_t = 30)]
    body_timeout_s: u64,
    /// Seconds shutdown waits for requests in flight.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout_s: u64,
}

/// Serves `model` until SIGINT/SIGTERM.
pub fn run(model: &ModelArgs, args: &ServeArgs) -> Result<(), AnyError> {
    if args.max_batch_size == 0 || args.queue == 0 {
        return Err("--max-batch-size and --queue must be at least 1".into());
    }
    if args.allow_remote_images && !cfg!(feature = "remote-images") {
        return Err(
            "--allow-remote-images: this blip2 was built without the remote-images feature".into(),
        );
    }
    let device = device(model)?;
    let mut config = ServeConfig::new(model.model.clone());
    config.addr = SocketAddr::new(args.host, args.port);
    config.backend = backend_name(model)?;
    config.ui = serves_page(args);
    config.image_cache = args.image_cache;
    config.max_batch_size = args.max_batch_size;
    config.max_wait = Duration::from_millis(args.max_wait_ms);
    config.queue = args.queue;
    config.max_body_bytes = args.max_body_bytes;
    config.allow_remote_images = args.allow_remote_images;
    config.api_key = args.api_key.clone();
    config.body_timeout = Duration::from_secs(args.body_timeout_s);
    config.shutdown_timeout = Duration::from_secs(args.shutdown_timeout_s);
    config.limits = RequestLimits {
        max_new_tokens: args.max_new_tokens,
        ..RequestLimits::default()
    };
    config.stop_on_signals = true;
    let (name, revision, dtype) = (model.model.clone(), model.revision.clone(), model.dtype);
    let server = blip2_serve::spawn(config, move || {
        let checkpoint = Checkpoint::open(&name, revision.as_deref())?;
        if checkpoint.dir().config().is_retrieval() {
            if !dtype.is_f32() {
                return Err(blip2::Error::Unsupported(format!(
                    "image-text matching and embeddings run in f32 only (asked for {dtype})"
                )));
            }
            Ok(Loaded::Retrieval(Blip2Retrieval::load(
                &checkpoint,
                &device,
            )?))
        } else {
            Ok(Loaded::Generation(Blip2::load_quantized(
                &checkpoint,
                &device,
                dtype.dtype,
                dtype.quantization,
            )?))
        }
    })?;
    let page = if serves_page(args) {
        format!("; the web page is at http://{}/", server.addr())
    } else {
        String::new()
    };
    eprintln!(
        "listening on http://{} (loading {}; /ready answers 200 once it can serve{page})",
        server.addr(),
        model.model
    );
    server.wait()?;
    Ok(())
}

/// Whether the page is served: `--ui`, or by default on loopback only.
fn serves_page(args: &ServeArgs) -> bool {
    args.ui || (!args.no_ui && args.host.is_loopback())
}
