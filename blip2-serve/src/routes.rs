//! The HTTP endpoints: thin handlers that validate, decode and enqueue.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use blip2::image::DynamicImage;
use blip2::preprocess::decode_image;
use blip2::{Blip2, Blip2Retrieval, Generation, GenerationConfig, StopReason};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::api::{self, ChatFields, GenerationOptions, CHAT_FIELDS};
use crate::error::ApiError;
use crate::scheduler::{GenerateJob, ImageInput, Job, Loaded, Queue, Refused, Reply, Spent};
use crate::AppState;

type Shared = State<Arc<AppState>>;

/// Every route, with the API-key check on `/v1/*`, metrics on all, and a panic turned into a 500.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/info", get(info))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/caption", post(caption))
        .route("/v1/match", post(match_scores))
        .route("/v1/embeddings", post(embeddings))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let pages = if state.config.ui {
        crate::ui::routes()
    } else {
        Router::new()
    };
    Router::new()
        .merge(pages)
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(v1)
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(CatchPanicLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Counts each request by endpoint and status, and times `/v1/*` requests.
async fn track(State(s): Shared, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let response = next.run(request).await;
    s.metrics.request(&endpoint, response.status().as_u16());
    if endpoint.starts_with("/v1/") {
        s.metrics.total(start.elapsed());
    }
    response
}

/// With `--api-key`, `/v1/*` needs `Authorization: Bearer <key>`.
async fn authorize(State(s): Shared, request: Request, next: Next) -> Response {
    if let Some(key) = &s.config.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same_secret(g.as_bytes(), key.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a missing or wrong API key (send Authorization: Bearer <key>)",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Compares secrets in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(s): Shared) -> Result<Json<Value>, ApiError> {
    s.loaded()?;
    Ok(Json(
        json!({ "status": "ready", "model": s.config.model_name }),
    ))
}

async fn metrics(State(s): Shared) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn models(State(s): Shared) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{ "id": s.config.model_name, "object": "model", "created": 0, "owned_by": "blip2" }],
    }))
}

/// `GET /v1/info`: what is loaded and how it can be asked (the web page reads it): the
/// checkpoint, its kind and language model, backend and precision, the checkpoint's generation
/// defaults and this server's limits. 503 while loading.
async fn info(State(s): Shared) -> Result<Json<Value>, ApiError> {
    let (model, _) = s.loaded()?;
    let c = &s.config;
    let limits = json!({
        "max_body_bytes": c.max_body_bytes,
        "max_tokens": c.limits.max_new_tokens,
        "max_beams": c.limits.max_beams,
        "max_n": c.limits.max_n,
        "max_image_pixels": c.image_limits.max_pixels,
    });
    let (kind, family, language_model, dtype, defaults) = match model {
        Loaded::Retrieval(_) => (
            "retrieval",
            "blip-2",
            Value::Null,
            "f32".to_owned(),
            Value::Null,
        ),
        Loaded::Generation(m) => {
            let g = m.generation_config();
            let defaults = json!({
                "max_tokens": g.max_new_tokens.unwrap_or(blip2::lm::DEFAULT_MAX_NEW_TOKENS),
                "num_beams": g.num_beams,
                "do_sample": g.do_sample,
                "temperature": g.temperature,
                "top_p": g.top_p,
                "repetition_penalty": g.repetition_penalty,
            });
            let lm = match m.language_model() {
                blip2::TextModel::Opt(_) => "opt",
                blip2::TextModel::T5(_) => "t5",
                blip2::TextModel::Llama(_) => "llama",
                _ => "other",
            };
            let family = if m.is_instructblip() {
                "instructblip"
            } else {
                "blip-2"
            };
            (
                "generation",
                family,
                json!(lm),
                m.dtype().to_string(),
                defaults,
            )
        }
    };
    Ok(Json(json!({
        "model": c.model_name,
        "kind": kind,
        "family": family,
        "language_model": language_model,
        "backend": c.backend,
        "dtype": dtype,
        "image_cache": c.image_cache,
        "defaults": defaults,
        "limits": limits,
    })))
}

impl AppState {
    fn generation(&self) -> Result<(&Blip2, &Queue), ApiError> {
        match self.loaded()? {
            (Loaded::Generation(m), q) => Ok((m, q)),
            (Loaded::Retrieval(_), _) => Err(ApiError::bad_request(
                "this server runs a retrieval checkpoint: use /v1/match or /v1/embeddings",
            )),
        }
    }

    fn retrieval(&self) -> Result<(&Blip2Retrieval, &Queue), ApiError> {
        match self.loaded()? {
            (Loaded::Retrieval(m), q) => Ok((m, q)),
            (Loaded::Generation(_), _) => Err(ApiError::bad_request(
                "this server runs a captioning checkpoint: use /v1/chat/completions or /v1/caption",
            )),
        }
    }

    fn push(&self, queue: &Queue, job: Job) -> Result<(), ApiError> {
        queue.try_push(job).map_err(|r| match r {
            Refused::Full => ApiError::queue_full(),
            Refused::Stopped => ApiError::not_ready("the model thread has stopped"),
        })
    }

    fn completion_id(&self) -> String {
        format!("chatcmpl-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Reads a whole body within the size limit and the upload deadline.
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
        let limit = self.config.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large(limit));
        }
        let read = async {
            let mut body = body;
            let mut out = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > limit {
                        return Err(too_large(limit));
                    }
                    out.extend_from_slice(&data);
                }
            }
            Ok(Bytes::from(out))
        };
        self.within_body_deadline(read).await?
    }

    async fn within_body_deadline<T>(
        &self,
        f: impl std::future::Future<Output = T>,
    ) -> Result<T, ApiError> {
        tokio::time::timeout(self.config.body_timeout, f)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} s",
                        self.config.body_timeout.as_secs_f32()
                    ),
                )
            })
    }

    /// Decodes image bytes off the async threads, within the image limits.
    async fn decode(&self, bytes: Vec<u8>) -> Result<DynamicImage, ApiError> {
        let limits = self.config.image_limits;
        tokio::task::spawn_blocking(move || decode_image(&bytes, limits))
            .await
            .map_err(|e| ApiError::internal(format!("decoding the image: {e}")))?
            .map_err(ApiError::from)
    }

    /// An image file's bytes, decoded, with the key its encoding is cached under.
    async fn image_input(&self, bytes: Vec<u8>) -> Result<ImageInput, ApiError> {
        let key = self.image_keys.key(&bytes);
        let image = self.decode(bytes).await?;
        Ok(ImageInput { key, image })
    }

    /// The image a chat message points to: a `data:` URL, or an http(s) one when the server
    /// allows remote images (refused by default: a server that fetches what clients name can be
    /// made to reach inside its network).
    async fn image_from_url(&self, url: &str) -> Result<ImageInput, ApiError> {
        if api::is_remote(url) {
            if !self.config.allow_remote_images {
                return Err(ApiError::bad_request(
                    "remote image URLs are not fetched; send the image as a data: URL \
                     (data:image/png;base64,...), or start the server with \
                     --allow-remote-images",
                ));
            }
            let bytes = self.fetch_remote(url).await?;
            return self.image_input(bytes).await;
        }
        if !url.starts_with("data:") {
            return Err(ApiError::bad_request("image_url must be a data: URL"));
        }
        self.image_input(api::decode_base64_image(url)?).await
    }

    /// Downloads a remote image, within the body size and time limits of an upload.
    #[cfg(feature = "remote-images")]
    async fn fetch_remote(&self, url: &str) -> Result<Vec<u8>, ApiError> {
        let (url, max, timeout) = (
            url.to_owned(),
            self.config.max_body_bytes,
            self.config.body_timeout,
        );
        tokio::task::spawn_blocking(move || crate::remote::fetch(&url, max, timeout))
            .await
            .map_err(|e| ApiError::internal(format!("fetching the image: {e}")))?
    }

    /// Without the `remote-images` feature there is no HTTP client to fetch with.
    #[cfg(not(feature = "remote-images"))]
    async fn fetch_remote(&self, _url: &str) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "this server was built without the remote-images feature",
        ))
    }

    /// Queues one generation and waits for all its sequences.
    async fn generate(
        &self,
        queue: &Queue,
        image: ImageInput,
        prompt: String,
        config: GenerationConfig,
    ) -> Result<(Vec<Generation>, Spent), ApiError> {
        let (tx, rx) = oneshot::channel();
        self.push(
            queue,
            Job::Generate(GenerateJob {
                image,
                prompt,
                config,
                reply: Reply::Whole(tx),
            }),
        )?;
        Ok(rx
            .await
            .map_err(|_| ApiError::internal("the model thread stopped"))??)
    }

    /// Runs `f` on the model thread, in queue order, and waits for its result.
    async fn run<T: Send + 'static>(
        &self,
        queue: &Queue,
        f: impl FnOnce(&Loaded) -> blip2::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.push(
            queue,
            Job::Run(Box::new(move |model: &Loaded| {
                let _ = tx.send(f(model));
            })),
        )?;
        Ok(rx
            .await
            .map_err(|_| ApiError::internal("the model thread stopped"))??)
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than this server's limit of {limit} bytes"),
    )
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_reason(reason: StopReason, stopped_by_string: bool) -> &'static str {
    match (reason, stopped_by_string) {
        (_, true) | (StopReason::Eos | StopReason::Stopped, _) => "stop",
        (StopReason::Length, false) => "length",
    }
}

/// `text` cut before the first stop string, and whether one was found.
fn cut_at_stop<'a>(text: &'a str, stop: &[String]) -> (&'a str, bool) {
    match stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        Some(at) => (&text[..at], true),
        None => (text, false),
    }
}

/// How many trailing bytes of `text` could begin a stop string, so must wait for more text.
fn held_back(text: &str, stop: &[String]) -> usize {
    stop.iter()
        .flat_map(|s| (1..s.len()).filter(|&k| s.is_char_boundary(k) && text.ends_with(&s[..k])))
        .max()
        .unwrap_or(0)
}

/// The model's prompt for a chat turn or a caption request: the question in the model's
/// template, or the model's caption prompt (nothing for BLIP-2).
fn prompt_of(model: &Blip2, question: &str) -> String {
    if question.is_empty() {
        model.caption_prompt().to_owned()
    } else {
        model.question_prompt(question)
    }
}

async fn chat_completions(
    State(s): Shared,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (model, queue) = s.generation()?;
    let bytes = s.read_body(&headers, body).await?;
    let (fields, options): (ChatFields, GenerationOptions) =
        api::split_options(api::parse_json(&bytes)?, CHAT_FIELDS)?;
    let input = api::chat_input(&fields.messages)?;
    let config = options.apply(model.generation_config(), &s.config.limits)?;
    let stop = fields
        .stop
        .as_ref()
        .map(api::Stop::strings)
        .unwrap_or_default();
    let prompt = prompt_of(model, &input.question);
    let prompt_tokens = model.input_tokens(&prompt)?;
    if fields.stream && (config.num_beams > 1 || config.num_return_sequences > 1) {
        return Err(ApiError::bad_request(
            "stream needs one sequence (n = 1, num_beams = 1)",
        ));
    }
    let image = s.image_from_url(&input.image_url).await?;
    let job = GenerateRequest {
        image,
        prompt,
        config,
    };
    let reply = ChatReply {
        chunks: ChunkWriter {
            id: s.completion_id(),
            created: unix_time(),
            model: s.config.model_name.clone(),
        },
        prompt_tokens,
        stop,
    };
    if fields.stream {
        let include_usage = fields.stream_options.is_some_and(|o| o.include_usage);
        return stream_completion(&s, queue, job, reply, include_usage);
    }
    let (generations, spent) = s.generate(queue, job.image, job.prompt, job.config).await?;
    Ok(Json(reply.completion(&generations, &spent)).into_response())
}

/// One generation request, ready for the model thread.
struct GenerateRequest {
    image: ImageInput,
    prompt: String,
    config: GenerationConfig,
}

/// What a chat completion's response says besides the generations.
struct ChatReply {
    /// The id, creation time and model name of the response (every chunk repeats them).
    chunks: ChunkWriter,
    prompt_tokens: usize,
    stop: Vec<String>,
}

impl ChatReply {
    /// A `chat.completion` body.
    fn completion(&self, generations: &[Generation], spent: &Spent) -> Value {
        let completion_tokens: usize = generations.iter().map(|g| g.token_ids.len()).sum();
        let choices: Vec<Value> = generations
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let (text, cut) = cut_at_stop(&g.text, &self.stop);
                json!({
                    "index": i,
                    "message": { "role": "assistant", "content": text },
                    "finish_reason": finish_reason(g.stop_reason, cut),
                    "logprobs": null,
                })
            })
            .collect();
        let prompt_tokens = self.prompt_tokens;
        json!({
            "id": self.chunks.id,
            "object": "chat.completion",
            "created": self.chunks.created,
            "model": self.chunks.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "timings": timings(spent),
        })
    }
}

/// Queues a streamed generation and answers with its server-sent events.
fn stream_completion(
    s: &AppState,
    queue: &Queue,
    job: GenerateRequest,
    reply: ChatReply,
    include_usage: bool,
) -> Result<Response, ApiError> {
    let (pieces_tx, pieces_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = oneshot::channel();
    s.push(
        queue,
        Job::Generate(GenerateJob {
            image: job.image,
            prompt: job.prompt,
            config: job.config,
            reply: Reply::Stream {
                pieces: pieces_tx,
                done: done_tx,
            },
        }),
    )?;
    let (events_tx, events_rx) = mpsc::channel(16);
    tokio::spawn(stream_chat(
        reply.chunks,
        pieces_rx,
        done_rx,
        reply.stop,
        include_usage.then_some(reply.prompt_tokens),
        events_tx,
    ));
    let events = futures_util::stream::unfold(events_rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<Event, Infallible>(e), rx))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The `timings` extension of a response (as llama.cpp's server has): where the request's time
/// went on the model thread, in milliseconds.
fn timings(spent: &Spent) -> Value {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    json!({
        "encode_ms": ms(spent.encode),
        "image_cached": spent.image_cached,
        "generate_ms": ms(spent.generate),
    })
}

/// Builds OpenAI's `chat.completion.chunk` events.
struct ChunkWriter {
    id: String,
    created: u64,
    model: String,
}

impl ChunkWriter {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Event {
        self.event(self.chunk_value(delta, finish_reason))
    }

    fn chunk_value(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null }],
        })
    }

    /// The last chunk: the finish reason, and the request's timings.
    fn finish(&self, finish_reason: &str, spent: &Spent) -> Event {
        let mut value = self.chunk_value(json!({}), Some(finish_reason));
        value["timings"] = timings(spent);
        self.event(value)
    }

    fn usage(&self, prompt_tokens: usize, completion_tokens: usize) -> Event {
        self.event(json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }))
    }

    fn event(&self, value: Value) -> Event {
        Event::default().data(value.to_string())
    }
}

/// Turns the model thread's text pieces into chunks: a role chunk, content chunks (holding back
/// text that may begin a stop string), a last chunk with the finish reason, optionally usage,
/// then `[DONE]`. Stops the generation (by dropping the pieces) at a stop string or when the
/// client has gone.
async fn stream_chat(
    chunks: ChunkWriter,
    mut pieces: mpsc::UnboundedReceiver<String>,
    done: oneshot::Receiver<blip2::Result<(Generation, Spent)>>,
    stop: Vec<String>,
    usage: Option<usize>,
    events: mpsc::Sender<Event>,
) {
    let send = |e: Event| events.send(e);
    if send(chunks.chunk(json!({ "role": "assistant", "content": "" }), None))
        .await
        .is_err()
    {
        return;
    }
    let mut text = String::new();
    let mut sent = 0;
    let mut cut = false;
    while let Some(piece) = pieces.recv().await {
        text.push_str(&piece);
        let (upto, found) = match cut_at_stop(&text, &stop) {
            (head, true) => (head.len(), true),
            (_, false) => (text.len() - held_back(&text, &stop), false),
        };
        if upto > sent {
            let delta = json!({ "content": &text[sent..upto] });
            if send(chunks.chunk(delta, None)).await.is_err() {
                return;
            }
            sent = upto;
        }
        if found {
            cut = true;
            break;
        }
    }
    // Dropping the receiver stops the generation at its next token.
    drop(pieces);
    let (generation, spent) = match done.await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            let e = ApiError::from(e);
            let _ = send(Event::default().data(error_body(&e).to_string())).await;
            let _ = send(Event::default().data("[DONE]")).await;
            return;
        }
        Err(_) => return,
    };
    if !cut && sent < text.len() {
        let _ = send(chunks.chunk(json!({ "content": &text[sent..] }), None)).await;
    }
    let reason = finish_reason(generation.stop_reason, cut);
    let _ = send(chunks.finish(reason, &spent)).await;
    if let Some(prompt_tokens) = usage {
        let _ = send(chunks.usage(prompt_tokens, generation.token_ids.len())).await;
    }
    let _ = send(Event::default().data("[DONE]")).await;
}

fn error_body(e: &ApiError) -> Value {
    json!({ "error": { "message": e.message(), "code": e.status().as_u16() } })
}

/// `/v1/caption`'s own fields (generation options come beside them).
#[derive(Debug, Default, Deserialize)]
struct CaptionFields {
    /// The image, base64 or a data URL (JSON bodies only).
    image: Option<String>,
    /// A raw prompt for the language model.
    prompt: Option<String>,
    /// A question, put into the model's question template.
    question: Option<String>,
    /// Ignored: the server has one model.
    #[allow(dead_code)]
    model: Option<String>,
}

const CAPTION_FIELDS: &[&str] = &["image", "prompt", "question", "model"];

/// `POST /v1/caption`: the image as the raw body (options in the query string), as a multipart
/// form (an `image` file and text fields), or as JSON (`image` in base64).
async fn caption(State(s): Shared, request: Request) -> Result<Response, ApiError> {
    let (model, queue) = s.generation()?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (fields, options, image_bytes) = if content_type.starts_with("application/json") {
        let (parts, body) = request.into_parts();
        let bytes = s.read_body(&parts.headers, body).await?;
        let (fields, options): (CaptionFields, GenerationOptions) =
            api::split_options(api::parse_json(&bytes)?, CAPTION_FIELDS)?;
        let image = fields
            .image
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("no image: give \"image\" (base64)"))?;
        let bytes = api::decode_base64_image(image)?;
        (fields, options, bytes)
    } else if content_type.starts_with("multipart/form-data") {
        s.within_body_deadline(read_form(request, &s)).await??
    } else {
        let query: Vec<(String, String)> = Query::try_from_uri(request.uri())
            .map(|Query(q)| q)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let (parts, body) = request.into_parts();
        let bytes = s.read_body(&parts.headers, body).await?;
        let (fields, options): (CaptionFields, GenerationOptions) = api::split_options(
            api::text_fields_to_json(query),
            &["prompt", "question", "model"],
        )?;
        (fields, options, bytes.to_vec())
    };
    if image_bytes.is_empty() {
        return Err(ApiError::bad_request("no image in the request"));
    }
    let prompt = match (&fields.prompt, &fields.question) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give a prompt or a question, not both",
            ))
        }
        (Some(p), None) => p.clone(),
        (None, Some(q)) => prompt_of(model, q.trim()),
        (None, None) => model.caption_prompt().to_owned(),
    };
    let config = options.apply(model.generation_config(), &s.config.limits)?;
    let prompt_tokens = model.input_tokens(&prompt)?;
    let image = s.image_input(image_bytes).await?;
    let (generations, spent) = s.generate(queue, image, prompt, config).await?;
    let completion_tokens: usize = generations.iter().map(|g| g.token_ids.len()).sum();
    let list: Vec<Value> = generations
        .iter()
        .map(|g| {
            json!({
                "text": g.text,
                "finish_reason": finish_reason(g.stop_reason, false),
                "token_ids": g.token_ids,
            })
        })
        .collect();
    Ok(Json(json!({
        "model": s.config.model_name,
        "text": generations.first().map_or("", |g| g.text.as_str()),
        "generations": list,
        "usage": { "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens },
        "timings": timings(&spent),
    }))
    .into_response())
}

/// A multipart caption request: the `image` file and the other fields as options.
async fn read_form(
    request: Request,
    s: &AppState,
) -> Result<(CaptionFields, GenerationOptions, Vec<u8>), ApiError> {
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut image = None;
    let mut text_fields = Vec::new();
    let limit = s.config.max_body_bytes;
    while let Some(field) = form.next_field().await.map_err(form_error(limit))? {
        let name = field.name().unwrap_or("").to_owned();
        if name == "image" {
            image = Some(field.bytes().await.map_err(form_error(limit))?.to_vec());
        } else {
            let value = field.text().await.map_err(form_error(limit))?;
            text_fields.push((name, value));
        }
    }
    let image = image.ok_or_else(|| ApiError::bad_request("no \"image\" field in the form"))?;
    let (fields, options) = api::split_options(
        api::text_fields_to_json(text_fields),
        &["prompt", "question", "model"],
    )?;
    Ok((fields, options, image))
}

fn form_error(limit: usize) -> impl Fn(axum::extract::multipart::MultipartError) -> ApiError {
    move |e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(limit)
        } else {
            ApiError::bad_request(e.body_text())
        }
    }
}

/// `POST /v1/match`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchRequest {
    /// Images, base64 or data URLs.
    images: Vec<String>,
    /// Texts to score against every image.
    texts: Vec<String>,
    /// ITC similarity only (no ITM pass).
    #[serde(default)]
    itc_only: bool,
    /// Ignored: the server has one model.
    #[allow(dead_code)]
    model: Option<String>,
}

/// Most images and texts in one `/v1/match` or `/v1/embeddings` request.
const MAX_RETRIEVAL_IMAGES: usize = 16;
const MAX_RETRIEVAL_TEXTS: usize = 256;

impl AppState {
    /// The retrieval model's queue and the request body parsed as `T`.
    async fn retrieval_request<T: serde::de::DeserializeOwned>(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(&Queue, T), ApiError> {
        let (_, queue) = self.retrieval()?;
        let bytes = self.read_body(headers, body).await?;
        let request = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
        Ok((queue, request))
    }

    /// [`AppState::run`] on the retrieval model (checked by [`AppState::retrieval`] before).
    async fn run_retrieval<T: Send + 'static>(
        &self,
        queue: &Queue,
        f: impl FnOnce(&Blip2Retrieval) -> blip2::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.run(queue, move |model| match model {
            Loaded::Retrieval(m) => f(m),
            Loaded::Generation(_) => Err(blip2::Error::Unsupported(
                "a captioning checkpoint cannot match or embed".to_owned(),
            )),
        })
        .await
    }

    async fn decode_all(&self, images: &[String]) -> Result<Vec<DynamicImage>, ApiError> {
        if images.len() > MAX_RETRIEVAL_IMAGES {
            return Err(ApiError::bad_request(format!(
                "{} images; at most {MAX_RETRIEVAL_IMAGES} per request",
                images.len()
            )));
        }
        let mut out = Vec::with_capacity(images.len());
        for image in images {
            out.push(self.decode(api::decode_base64_image(image)?).await?);
        }
        Ok(out)
    }
}

fn check_texts(texts: &[String]) -> Result<(), ApiError> {
    if texts.len() > MAX_RETRIEVAL_TEXTS {
        return Err(ApiError::bad_request(format!(
            "{} texts; at most {MAX_RETRIEVAL_TEXTS} per request",
            texts.len()
        )));
    }
    Ok(())
}

/// `POST /v1/match`: ITC similarity and ITM probability of every image with every text.
async fn match_scores(
    State(s): Shared,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (queue, request): (_, MatchRequest) = s.retrieval_request(&headers, body).await?;
    check_texts(&request.texts)?;
    let images = s.decode_all(&request.images).await?;
    let texts = request.texts;
    let with_itm = !request.itc_only;
    let scores = s
        .run_retrieval(queue, move |m| m.scores(&images, &texts, with_itm))
        .await?;
    Ok(Json(json!({
        "model": s.config.model_name,
        "itc": scores.itc,
        "itm": scores.itm,
    })))
}

/// `POST /v1/embeddings`'s body: OpenAI's (`input`: one text or several), and images.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingsRequest {
    /// Texts to embed.
    #[serde(default)]
    input: Option<TextInput>,
    /// Images to embed (extension), base64 or data URLs.
    #[serde(default)]
    images: Vec<String>,
    /// Only `"float"` is supported.
    encoding_format: Option<String>,
    /// Ignored: the server has one model.
    #[allow(dead_code)]
    model: Option<String>,
    /// Ignored (OpenAI's end-user id).
    #[allow(dead_code)]
    user: Option<String>,
}

/// One text or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TextInput {
    One(String),
    Many(Vec<String>),
}

/// `POST /v1/embeddings`: ITC text embeddings in OpenAI's shape, and image embeddings (one
/// vector per query) under `images`.
async fn embeddings(
    State(s): Shared,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (queue, request): (_, EmbeddingsRequest) = s.retrieval_request(&headers, body).await?;
    if request
        .encoding_format
        .as_deref()
        .is_some_and(|f| f != "float")
    {
        return Err(ApiError::bad_request(
            "only encoding_format \"float\" is supported",
        ));
    }
    let texts = match request.input {
        Some(TextInput::One(t)) => vec![t],
        Some(TextInput::Many(v)) => v,
        None => Vec::new(),
    };
    if texts.is_empty() && request.images.is_empty() {
        return Err(ApiError::bad_request("give input (texts) and/or images"));
    }
    check_texts(&texts)?;
    let images = s.decode_all(&request.images).await?;
    let (text_vectors, image_vectors) = s
        .run_retrieval(queue, move |m| {
            let t = if texts.is_empty() {
                Vec::new()
            } else {
                m.text_embeddings(&texts)?
            };
            let i = if images.is_empty() {
                Vec::new()
            } else {
                m.image_embeddings(&images)?
            };
            Ok((t, i))
        })
        .await?;
    let data: Vec<Value> = text_vectors
        .into_iter()
        .enumerate()
        .map(|(i, e)| json!({ "object": "embedding", "index": i, "embedding": e }))
        .collect();
    let images: Vec<Value> = image_vectors
        .into_iter()
        .enumerate()
        .map(|(i, e)| json!({ "object": "image_embedding", "index": i, "embedding": e }))
        .collect();
    Ok(Json(json!({
        "object": "list",
        "model": s.config.model_name,
        "data": data,
        "images": images,
        "usage": { "prompt_tokens": 0, "total_tokens": 0 },
    })))
}

/// The readiness probe: one tiny request run on the model thread.
pub fn probe(queue: &Queue) -> Result<(), String> {
    let (tx, rx) = oneshot::channel();
    let job = Job::Run(Box::new(move |model: &Loaded| {
        let result = match model {
            Loaded::Generation(m) => {
                let config = GenerationConfig {
                    max_new_tokens: Some(1),
                    max_length: None,
                    min_new_tokens: None,
                    min_length: None,
                    num_beams: 1,
                    num_return_sequences: 1,
                    do_sample: false,
                    ..m.generation_config().clone()
                };
                let image = DynamicImage::new_rgb8(32, 32);
                m.generate(&[image], blip2::NO_PROMPTS, &config).map(drop)
            }
            Loaded::Retrieval(m) => m.text_embeddings(&["a probe"]).map(drop),
        };
        let _ = tx.send(result);
    }));
    queue
        .try_push(job)
        .map_err(|_| "the queue refused the probe".to_owned())?;
    rx.blocking_recv()
        .map_err(|_| "the model thread stopped".to_owned())?
        .map_err(|e| e.to_string())
}
