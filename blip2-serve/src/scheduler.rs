//! The one thread that owns the model: it takes jobs off a bounded queue and batches compatible
//! generation requests into one `generate` call.
//!
//! Requests are compatible when they ask for the same generation settings and do not sample
//! (a sampled request keeps its own seed's draws, so it runs alone). A batch is whatever is
//! queued within `max_wait` of its first request, up to `max_batch_size`. If a batched call
//! fails, each request is run again alone, so one bad request cannot fail its neighbours.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blip2::image::DynamicImage;
use blip2::{Blip2, Blip2Retrieval, Generation, GenerationConfig, ImageEmbeddings};
use tokio::sync::{mpsc, oneshot};

use crate::cache::{ImageCache, ImageKey};
use crate::metrics::Metrics;

/// The loaded model: a captioning / question-answering checkpoint or a retrieval one.
// One per server, never moved after loading: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Loaded {
    /// `Blip2ForConditionalGeneration` (OPT or Flan-T5).
    Generation(Blip2),
    /// `Blip2ForImageTextRetrieval`.
    Retrieval(Blip2Retrieval),
}

/// Where one generation request's time went on the model thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spent {
    /// Encoding its image (with the others of its batch); zero when the encoding was cached.
    pub encode: Duration,
    /// Whether its image's encoding came from the cache (an earlier request sent the same bytes).
    pub image_cached: bool,
    /// Generating: the prompt's prefill and decoding, for its whole batch.
    pub generate: Duration,
}

/// What a whole (not streamed) generation request gets back.
pub type Generated = blip2::Result<(Vec<Generation>, Spent)>;

/// How a generation request wants its answer.
pub enum Reply {
    /// All sequences at once.
    Whole(oneshot::Sender<Generated>),
    /// Text pieces as they are generated, then the finished generation.
    Stream {
        /// Each new piece of text; a closed receiver stops the generation.
        pieces: mpsc::UnboundedSender<String>,
        /// The generation, once finished or stopped.
        done: oneshot::Sender<blip2::Result<(Generation, Spent)>>,
    },
}

/// A decoded image and the key its encoding is cached under.
pub struct ImageInput {
    /// The key of the image file's bytes.
    pub key: ImageKey,
    /// The decoded image (not read when its encoding is cached).
    pub image: DynamicImage,
}

/// One image to generate for.
pub struct GenerateJob {
    /// The image.
    pub image: ImageInput,
    /// The language model's prompt; empty to caption.
    pub prompt: String,
    /// Validated generation settings.
    pub config: GenerationConfig,
    /// Where the answer goes.
    pub reply: Reply,
}

impl GenerateJob {
    fn batchable(&self) -> bool {
        matches!(self.reply, Reply::Whole(_)) && !self.config.do_sample
    }

    fn abandoned(&self) -> bool {
        match &self.reply {
            Reply::Whole(tx) => tx.is_closed(),
            Reply::Stream { pieces, .. } => pieces.is_closed(),
        }
    }
}

/// Work for the model thread.
// Jobs are moved once into the queue and once out; boxing the large one would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
pub enum Job {
    /// Generation, batched with compatible requests.
    Generate(GenerateJob),
    /// Anything else that needs the model (matching, embeddings, the readiness probe), run in
    /// queue order.
    Run(Box<dyn FnOnce(&Loaded) + Send>),
}

/// Batching limits.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    /// Most requests per `generate` call.
    pub max_batch_size: usize,
    /// How long the first request of a batch waits for others.
    pub max_wait: Duration,
}

/// The sending side of the queue.
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

/// Why a job was not queued.
pub enum Refused {
    /// The queue is full.
    Full,
    /// The model thread has stopped.
    Stopped,
}

impl Queue {
    /// Queues `job` without waiting.
    pub fn try_push(&self, job: Job) -> Result<(), Refused> {
        match self.tx.try_send(job) {
            Ok(()) => {
                self.metrics.enqueued();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(Refused::Full),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Stopped),
        }
    }
}

/// Starts the model thread with a queue of `capacity` waiting jobs, keeping the encodings of
/// the last `image_cache` images.
pub fn start(
    model: Arc<Loaded>,
    capacity: usize,
    batching: Batching,
    image_cache: usize,
    metrics: Arc<Metrics>,
) -> Queue {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    let worker = Worker {
        model,
        rx,
        batching,
        metrics: metrics.clone(),
        pending: VecDeque::new(),
        cache: ImageCache::new(image_cache),
    };
    std::thread::Builder::new()
        .name("blip2-model".to_owned())
        .spawn(move || worker.run())
        .expect("spawning the model thread");
    Queue { tx, metrics }
}

struct Worker {
    model: Arc<Loaded>,
    rx: Receiver<Job>,
    batching: Batching,
    metrics: Arc<Metrics>,
    /// Jobs taken off the queue while a batch was collected that did not fit it.
    pending: VecDeque<Job>,
    /// Encoded images, by the key of their bytes.
    cache: ImageCache<ImageEmbeddings>,
}

/// A batch's images, encoded or taken from the cache.
struct Encoded {
    embeddings: ImageEmbeddings,
    /// Time spent encoding the ones not cached.
    encode: Duration,
    /// Per image, whether it was cached.
    cached: Vec<bool>,
}

impl Worker {
    fn run(mut self) {
        while let Some(job) = self.next() {
            match job {
                Job::Run(f) => f(&self.model),
                Job::Generate(g) if g.batchable() => {
                    let batch = self.collect(g);
                    self.generate_batch(batch);
                }
                Job::Generate(g) => self.generate_alone(g),
            }
        }
    }

    /// The next job: a pending one, else one from the queue (waiting until the queue closes).
    fn next(&mut self) -> Option<Job> {
        if let Some(job) = self.pending.pop_front() {
            return Some(job);
        }
        let job = self.rx.recv().ok();
        if job.is_some() {
            self.metrics.dequeued();
        }
        job
    }

    /// `first` and the compatible requests that arrive within `max_wait`.
    fn collect(&mut self, first: GenerateJob) -> Vec<GenerateJob> {
        let fits =
            |job: &GenerateJob, first: &GenerateJob| job.batchable() && job.config == first.config;
        let mut batch = vec![first];
        // Pending jobs that fit go first: they have waited longest.
        let mut rest = VecDeque::new();
        while let Some(job) = self.pending.pop_front() {
            match job {
                Job::Generate(g)
                    if batch.len() < self.batching.max_batch_size && fits(&g, &batch[0]) =>
                {
                    batch.push(g)
                }
                other => rest.push_back(other),
            }
        }
        self.pending = rest;
        let deadline = Instant::now() + self.batching.max_wait;
        while batch.len() < self.batching.max_batch_size {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Ok(job) = self.rx.recv_timeout(left) else {
                break;
            };
            self.metrics.dequeued();
            match job {
                Job::Generate(g) if fits(&g, &batch[0]) => batch.push(g),
                // Run the batch now: holding more jobs here would take them off the bounded
                // queue into an unbounded list.
                other => {
                    self.pending.push_back(other);
                    break;
                }
            }
        }
        batch
    }

    /// The batch's images as one batch of embeddings: cached ones from the cache, the others
    /// encoded together (and then cached).
    fn encode(&mut self, blip2: &Blip2, images: &[&ImageInput]) -> blip2::Result<Encoded> {
        let mut found: Vec<Option<ImageEmbeddings>> =
            images.iter().map(|i| self.cache.get(&i.key)).collect();
        let cached: Vec<bool> = found.iter().map(Option::is_some).collect();
        let missing: Vec<usize> = (0..images.len()).filter(|&i| !cached[i]).collect();
        self.metrics
            .image_cache(images.len() - missing.len(), missing.len());
        let mut fresh = None;
        let mut encode = Duration::ZERO;
        if !missing.is_empty() {
            let start = Instant::now();
            let pixels: Vec<DynamicImage> =
                missing.iter().map(|&i| images[i].image.clone()).collect();
            let encoded = blip2.encode_images(&pixels)?;
            for (n, &i) in missing.iter().enumerate() {
                let one = encoded.image(n)?;
                self.cache.insert(images[i].key, one.clone());
                found[i] = Some(one);
            }
            fresh = Some(encoded);
            encode = start.elapsed();
        }
        let embeddings = match fresh {
            // Nothing was cached: the batch as encoded.
            Some(all) if missing.len() == images.len() => all,
            _ => {
                let mut parts: Vec<ImageEmbeddings> = found.into_iter().flatten().collect();
                match parts.len() {
                    1 => parts.pop().expect("one part"),
                    _ => ImageEmbeddings::concat(&parts)?,
                }
            }
        };
        Ok(Encoded {
            embeddings,
            encode,
            cached,
        })
    }

    fn generate_batch(&mut self, batch: Vec<GenerateJob>) {
        let batch: Vec<GenerateJob> = batch.into_iter().filter(|j| !j.abandoned()).collect();
        let model = self.model.clone();
        let Loaded::Generation(blip2) = model.as_ref() else {
            return;
        };
        if batch.is_empty() {
            return;
        }
        if batch.len() == 1 {
            return self.generate_alone(batch.into_iter().next().expect("one job"));
        }
        let images: Vec<&ImageInput> = batch.iter().map(|j| &j.image).collect();
        let prompts: Vec<&str> = batch.iter().map(|j| j.prompt.as_str()).collect();
        let result = self.encode(blip2, &images).and_then(|encoded| {
            let start = Instant::now();
            let (out, timings) = blip2.generate_from_embeddings_timed(
                &encoded.embeddings,
                &prompts,
                &batch[0].config,
            )?;
            Ok((out, timings, encoded, start.elapsed()))
        });
        match result {
            Ok((out, timings, encoded, generate)) => {
                let tokens = out.iter().flatten().map(|g| g.token_ids.len()).sum();
                let timings = blip2::Timings {
                    encode: encoded.encode,
                    ..timings
                };
                self.metrics.batch(batch.len(), &timings, tokens);
                for ((job, generations), image_cached) in
                    batch.into_iter().zip(out).zip(encoded.cached)
                {
                    let spent = Spent {
                        encode: if image_cached {
                            Duration::ZERO
                        } else {
                            encoded.encode
                        },
                        image_cached,
                        generate,
                    };
                    if let Reply::Whole(tx) = job.reply {
                        let _ = tx.send(Ok((generations, spent)));
                    }
                }
            }
            // One request may be what failed (a prompt too long for the positions, say): run
            // each alone so that only that one gets the error.
            Err(_) => {
                for job in batch {
                    self.generate_alone(job);
                }
            }
        }
    }

    fn generate_alone(&mut self, job: GenerateJob) {
        let model = self.model.clone();
        let Loaded::Generation(blip2) = model.as_ref() else {
            return;
        };
        if job.abandoned() {
            return;
        }
        let encoded = self.encode(blip2, &[&job.image]);
        let spent = |encoded: &Encoded, start: Instant| Spent {
            encode: encoded.encode,
            image_cached: encoded.cached[0],
            generate: start.elapsed(),
        };
        match job.reply {
            Reply::Whole(tx) => {
                let result = encoded.and_then(|encoded| {
                    let start = Instant::now();
                    let (mut out, timings) = blip2.generate_from_embeddings_timed(
                        &encoded.embeddings,
                        &[job.prompt.as_str()],
                        &job.config,
                    )?;
                    let generations = out.pop().unwrap_or_default();
                    let tokens = generations.iter().map(|g| g.token_ids.len()).sum();
                    let timings = blip2::Timings {
                        encode: encoded.encode,
                        ..timings
                    };
                    self.metrics.batch(1, &timings, tokens);
                    Ok((generations, spent(&encoded, start)))
                });
                let _ = tx.send(result);
            }
            Reply::Stream { pieces, done } => {
                let prompt = (!job.prompt.is_empty()).then_some(job.prompt.as_str());
                let result = encoded.and_then(|encoded| {
                    let start = Instant::now();
                    let generation = blip2.generate_stream_from_embeddings(
                        &encoded.embeddings,
                        prompt,
                        &job.config,
                        &mut |piece| match pieces.send(piece.to_owned()) {
                            Ok(()) => ControlFlow::Continue(()),
                            // The client went away.
                            Err(_) => ControlFlow::Break(()),
                        },
                    )?;
                    self.metrics.streamed(generation.token_ids.len());
                    Ok((generation, spent(&encoded, start)))
                });
                let _ = done.send(result);
            }
        }
    }
}
