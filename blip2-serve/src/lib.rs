//! `blip2 serve`: BLIP-2 over HTTP.
//!
//! One model, loaded once on a background thread while the server already answers `/health`,
//! and owned by one model thread that batches compatible requests (same options, no sampling,
//! within `max_wait`, up to `max_batch_size`). Handlers
//! only validate, decode images (on blocking threads) and enqueue; the queue is bounded
//! (429 when full), and so are bodies (413), body upload time (408), image pixels, tokens, beams
//! and sequences (400).
//!
//! Endpoints: OpenAI's `POST /v1/chat/completions` (streaming too) and `GET /v1/models`;
//! `POST /v1/caption`, and for a retrieval checkpoint `POST /v1/match` and `POST /v1/embeddings`;
//! `GET /health`, `GET /ready` (503 until the model has loaded and answered one probe) and
//! `GET /metrics` (Prometheus). See `docs/serving.md`.
//!
//! Chat messages name their image as a `data:` URL. An http(s) URL is fetched only when
//! [`ServeConfig::allow_remote_images`] is set and the crate is built with its `remote-images`
//! feature (an HTTP client; off by default), within the body size and time limits.

#![warn(missing_docs)]

mod api;
mod cache;
mod error;
mod metrics;
#[cfg(feature = "remote-images")]
mod remote;
mod routes;
mod scheduler;
mod ui;

use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use blip2::preprocess::ImageLimits;
use tokio::sync::{oneshot, Notify};

pub use api::RequestLimits;
pub use error::ApiError;
pub use scheduler::Loaded;

use cache::ImageKeys;
use metrics::Metrics;
use scheduler::{Batching, Queue};

/// How the server runs: its address, batching, limits and key.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Where to listen (default `127.0.0.1:8080`: loopback only).
    pub addr: SocketAddr,
    /// The model's name in responses and `/v1/models`.
    pub model_name: String,
    /// The backend's name, as `/v1/info` and the web page report it (default: the first
    /// backend compiled in, which is what a default [`blip2::Device`] picks).
    pub backend: String,
    /// Serve the web page at `/` (see `docs/serving.md`). Off by default here; `blip2 serve`
    /// turns it on when listening on loopback only.
    pub ui: bool,
    /// Most requests per `generate` call.
    pub max_batch_size: usize,
    /// How long a request waits for others to batch with.
    pub max_wait: Duration,
    /// Most requests waiting for the model; more get 429.
    pub queue: usize,
    /// How many images' encodings the model thread keeps, so that a question about an image
    /// sent before (the same bytes) does not encode it again; 0 keeps none.
    pub image_cache: usize,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Longest time a client may take to send its body; slower ones get 408.
    pub body_timeout: Duration,
    /// Whether chat messages may name an http(s) `image_url`, which the server then fetches
    /// (within `max_body_bytes` and `body_timeout`). Off by default; needs the `remote-images`
    /// feature (without it such requests get 501).
    pub allow_remote_images: bool,
    /// When set, `/v1/*` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Limits on decoded images.
    pub image_limits: ImageLimits,
    /// Limits on what one request may ask for.
    pub limits: RequestLimits,
    /// How long shutdown waits for requests in flight.
    pub shutdown_timeout: Duration,
    /// Shut down gracefully on SIGINT and SIGTERM (what a command wants; tests do not).
    pub stop_on_signals: bool,
}

impl ServeConfig {
    /// The defaults, for a model called `model_name`.
    pub fn new(model_name: impl Into<String>) -> Self {
        ServeConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            model_name: model_name.into(),
            backend: blip2::backend::available_backends()
                .first()
                .map_or_else(String::new, |b| (*b).to_owned()),
            ui: false,
            max_batch_size: 8,
            max_wait: Duration::from_millis(5),
            queue: 64,
            image_cache: 64,
            max_body_bytes: 20 << 20,
            body_timeout: Duration::from_secs(30),
            allow_remote_images: false,
            api_key: None,
            image_limits: ImageLimits {
                max_pixels: 40_000_000,
            },
            limits: RequestLimits::default(),
            shutdown_timeout: Duration::from_secs(30),
            stop_on_signals: false,
        }
    }
}

/// The state every handler shares.
struct AppState {
    config: ServeConfig,
    metrics: Arc<Metrics>,
    model: OnceLock<(Arc<Loaded>, Queue)>,
    ready: AtomicBool,
    load_error: OnceLock<String>,
    next_id: AtomicU64,
    image_keys: ImageKeys,
}

impl AppState {
    /// The model and its queue, or 503 while loading (or after loading failed).
    fn loaded(&self) -> Result<(&Loaded, &Queue), ApiError> {
        if let Some(e) = self.load_error.get() {
            return Err(ApiError::not_ready(format!(
                "the model failed to load: {e}"
            )));
        }
        match (self.model.get(), self.ready.load(Ordering::Acquire)) {
            (Some((model, queue)), true) => Ok((model.as_ref(), queue)),
            _ => Err(ApiError::not_ready("the model is still loading")),
        }
    }
}

/// A server running on its own threads.
pub struct RunningServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: std::thread::JoinHandle<io::Result<()>>,
}

impl RunningServer {
    /// The address it listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish (up to the shutdown timeout), and waits.
    pub fn stop(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait()
    }

    /// Waits until the server stops: on SIGINT/SIGTERM with [`ServeConfig::stop_on_signals`],
    /// or when the model fails to load (then the error).
    pub fn wait(self) -> io::Result<()> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the server thread panicked")))
    }
}

/// Starts a server on `config.addr`, loading the model with `load` on a background thread.
/// Returns once the address is bound; `/health` answers at once, `/ready` once loaded.
pub fn spawn(
    config: ServeConfig,
    load: impl FnOnce() -> blip2::Result<Loaded> + Send + 'static,
) -> io::Result<RunningServer> {
    let on_signals = config.stop_on_signals;
    let listener = std::net::TcpListener::bind(config.addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        metrics: Arc::new(Metrics::new()),
        model: OnceLock::new(),
        ready: AtomicBool::new(false),
        load_error: OnceLock::new(),
        next_id: AtomicU64::new(0),
        image_keys: ImageKeys::new(),
        config,
    });
    let failed = Arc::new(Notify::new());
    spawn_loader(state.clone(), failed.clone(), load);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("blip2-http")
        .build()?;
    let thread = std::thread::Builder::new()
        .name("blip2-serve".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let deadline = state.config.shutdown_timeout;
                let app = routes::router(state.clone());
                let (stopping_tx, stopping_rx) = oneshot::channel::<()>();
                let stop = async move {
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = failed.notified() => {}
                        _ = signals(on_signals) => {}
                    }
                    tracing::info!("shutting down");
                    let _ = stopping_tx.send(());
                };
                let server = axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .into_future();
                let result = tokio::select! {
                    r = server => r,
                    _ = async {
                        let _ = stopping_rx.await;
                        tokio::time::sleep(deadline).await;
                    } => {
                        tracing::warn!("requests still in flight after the shutdown timeout");
                        Ok(())
                    }
                };
                match state.load_error.get() {
                    Some(e) => Err(io::Error::other(format!("the model failed to load: {e}"))),
                    None => result,
                }
            })
        })?;
    Ok(RunningServer {
        addr,
        stop: Some(stop_tx),
        thread,
    })
}

/// SIGINT or SIGTERM when `enabled`; never otherwise.
async fn signals(enabled: bool) {
    if !enabled {
        return std::future::pending().await;
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Loads the model, starts the model thread, and marks the server ready once the model has
/// answered one probe.
fn spawn_loader(
    state: Arc<AppState>,
    failed: Arc<Notify>,
    load: impl FnOnce() -> blip2::Result<Loaded> + Send + 'static,
) {
    std::thread::spawn(move || {
        let fail = |e: String| {
            tracing::error!("the model failed to load: {e}");
            let _ = state.load_error.set(e);
            failed.notify_one();
        };
        let model = match load() {
            Ok(model) => Arc::new(model),
            Err(e) => return fail(e.to_string()),
        };
        let batching = Batching {
            max_batch_size: state.config.max_batch_size.max(1),
            max_wait: state.config.max_wait,
        };
        let queue = scheduler::start(
            model.clone(),
            state.config.queue.max(1),
            batching,
            state.config.image_cache,
            state.metrics.clone(),
        );
        match routes::probe(&queue) {
            Ok(()) => {
                let _ = state.model.set((model, queue));
                state.ready.store(true, Ordering::Release);
                tracing::info!("the model is ready");
            }
            Err(e) => fail(format!("the probe request failed: {e}")),
        }
    });
}
