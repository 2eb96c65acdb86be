//! The `blip2` command: captions, questions, raw prompts, image–text matching and embeddings,
//! and captioning whole datasets (resumable, sharded), with transformers' generation options.
//!
//! `--json` prints exactly one JSON document on stdout; logs and progress go to stderr. Errors exit
//! non-zero with one line on stderr.

mod dataset;
mod serve;

use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use blip2::preprocess::{decode_image, load_image, ImageLimits};
use blip2::{
    Blip2, Blip2Retrieval, Builder, Checkpoint, Generation, GenerationConfig, Quantization, Scores,
    StopReason, Timings, WeightDType,
};
use clap::{Args, Parser, Subcommand};
use indicatif::ProgressBar;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "blip2",
    version,
    about = "BLIP-2 on burn: captions, visual questions, image-text matching and embeddings"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print errors only (no warnings) on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More on stderr: -v for progress information, -vv for debugging. Without -q or -v,
    /// `RUST_LOG` (e.g. `RUST_LOG=blip2=debug`) chooses; the default is warnings.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// Sends the libraries' `tracing` events (warnings such as unused tensors or truncated texts) to
/// stderr, at the level `-q`/`-v` or `RUST_LOG` asks for.
fn init_logging(quiet: bool, verbose: u8) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let level = match (quiet, verbose) {
        (true, _) => Some(LevelFilter::ERROR),
        (false, 0) => None,
        (false, 1) => Some(LevelFilter::INFO),
        (false, _) => Some(LevelFilter::DEBUG),
    };
    // `RUST_LOG` as `target=level` pairs and/or a bare default level, e.g. `warn,blip2=debug`.
    let filter = match level {
        Some(level) => Targets::new().with_default(level),
        None => std::env::var("RUST_LOG")
            .ok()
            .and_then(|v| v.parse::<Targets>().ok())
            .unwrap_or_else(|| Targets::new().with_default(LevelFilter::WARN)),
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time();
    tracing_subscriber::registry()
        .with(layer)
        .with(filter)
        .init();
}

/// The model of `caption`, `ask`, `generate` and `inspect` when `--model` is not given.
const GENERATION_MODEL: &str = "Salesforce/blip2-opt-2.7b";
/// The model of `match` and `embed` when `--model` is not given.
const RETRIEVAL_MODEL: &str = "Salesforce/blip2-itm-vit-g";

#[derive(Args, Clone)]
struct ModelArgs {
    /// A model folder, or a hub id already in the Hugging Face cache (nothing is downloaded).
    /// Default: Salesforce/blip2-opt-2.7b; for `match` and `embed`, Salesforce/blip2-itm-vit-g.
    #[arg(long = "model", value_name = "MODEL")]
    model_arg: Option<String>,
    /// `--model`, or the command's default ([`ModelArgs::resolve`]).
    #[arg(skip)]
    model: String,
    /// Branch, tag or commit of a hub id.
    #[arg(long)]
    revision: Option<String>,
    /// Backend to run on (those compiled in; default: the first).
    #[arg(long)]
    backend: Option<String>,
    /// Precision: f32, f16, bf16, or int8 (f32 with the language model's linear layers in
    /// int8: approximate, a quarter of the bytes per token) for captioning and questions;
    /// matching and embeddings run in f32. Flan-T5 runs in f32 (or int8); see
    /// `docs/backends.md` for which backend runs which.
    #[arg(long, default_value = "f32")]
    dtype: Precision,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

/// `--dtype`: a [`WeightDType`], or `int8` (f32 around an int8 language model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Precision {
    dtype: WeightDType,
    quantization: Quantization,
}

impl Precision {
    /// f32, not quantized: what matching and embeddings run in.
    fn is_f32(self) -> bool {
        self.dtype == WeightDType::F32 && self.quantization == Quantization::None
    }
}

impl std::str::FromStr for Precision {
    type Err = blip2::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("int8") {
            return Ok(Precision {
                dtype: WeightDType::F32,
                quantization: Quantization::Int8,
            });
        }
        let dtype = s.parse::<WeightDType>().map_err(|_| {
            blip2::Error::InvalidInput(format!(
                "unknown dtype {s:?}; expected f32, f16, bf16 or int8"
            ))
        })?;
        Ok(Precision {
            dtype,
            quantization: Quantization::None,
        })
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.quantization {
            Quantization::None => write!(f, "{}", self.dtype),
            q => write!(f, "{q}"),
        }
    }
}

impl ModelArgs {
    /// Sets `model` to `--model`, or to `default` when it was not given.
    fn resolve(&mut self, default: &str) {
        self.model = self.model_arg.clone().unwrap_or_else(|| default.to_owned());
    }
}

/// transformers' generation options; unset ones take the checkpoint's defaults.
#[derive(Args, Clone, Default)]
struct GenerationArgs {
    /// Most new tokens.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Fewest new tokens before the end-of-sequence token may be chosen.
    #[arg(long)]
    min_new_tokens: Option<usize>,
    /// Beam width.
    #[arg(long)]
    num_beams: Option<usize>,
    /// Beam score exponent on the length.
    #[arg(long, allow_hyphen_values = true)]
    length_penalty: Option<f32>,
    /// Sample instead of taking the most likely token.
    #[arg(long)]
    do_sample: bool,
    /// Sampling temperature.
    #[arg(long)]
    temperature: Option<f32>,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens reaching this probability.
    #[arg(long)]
    top_p: Option<f32>,
    /// Penalty on tokens already present (> 1 discourages).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Forbid repeating n-grams of this size.
    #[arg(long)]
    no_repeat_ngram_size: Option<usize>,
    /// Sequences per image.
    #[arg(long)]
    num_return_sequences: Option<usize>,
    /// Seed of the sampler.
    #[arg(long)]
    seed: Option<u64>,
    /// Report where the time went: a "timings" object in --json output (load_s, encode_s,
    /// prefill_s, decode_s, decode_s_per_token, tokens), otherwise a line on stderr.
    #[arg(long)]
    timings: bool,
}

impl GenerationArgs {
    /// Contradictions among the flags themselves, found before the model loads (the checkpoint's
    /// own settings are checked once it has loaded, by [`GenerationConfig::validate`]).
    fn check(&self) -> Result<(), String> {
        let positive = [
            ("--num-beams", self.num_beams),
            ("--num-return-sequences", self.num_return_sequences),
            ("--max-new-tokens", self.max_new_tokens),
        ];
        for (flag, value) in positive {
            if value == Some(0) {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if let (Some(min), Some(max)) = (self.min_new_tokens, self.max_new_tokens) {
            if min > max {
                return Err(format!(
                    "--min-new-tokens {min} is more than --max-new-tokens {max}"
                ));
            }
        }
        if let Some(t) = self.temperature {
            if !(t > 0.0 && t.is_finite()) {
                return Err(format!("--temperature must be above 0, got {t}"));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(format!("--top-p must be in (0, 1], got {p}"));
            }
        }
        if let Some(r) = self.repetition_penalty {
            if !(r > 0.0 && r.is_finite()) {
                return Err(format!("--repetition-penalty must be above 0, got {r}"));
            }
        }
        if self.length_penalty.is_some_and(|l| !l.is_finite()) {
            return Err("--length-penalty must be finite".to_owned());
        }
        let beams = self.num_beams.unwrap_or(1);
        if self.do_sample && beams > 1 {
            return Err(
                "--do-sample with --num-beams above 1 (beam sampling) is not supported".into(),
            );
        }
        if let (Some(n), Some(beams), false) =
            (self.num_return_sequences, self.num_beams, self.do_sample)
        {
            if n > beams {
                return Err(format!(
                    "--num-return-sequences {n} needs --num-beams {n} or more, or --do-sample"
                ));
            }
        }
        Ok(())
    }

    /// Warnings about flags that the other flags make meaningless (transformers warns the same).
    fn warnings(&self) -> Vec<String> {
        let sampling_only = [
            ("--temperature", self.temperature.is_some()),
            ("--top-k", self.top_k.is_some()),
            ("--top-p", self.top_p.is_some()),
            ("--seed", self.seed.is_some()),
        ];
        if self.do_sample {
            return Vec::new();
        }
        sampling_only
            .iter()
            .filter(|(_, given)| *given)
            .map(|(flag, _)| format!("{flag} only applies with --do-sample: ignored"))
            .collect()
    }

    /// The checkpoint's generation settings with these flags applied. Sampling without `--seed`
    /// takes a fresh seed each run (report it with `--json` to repeat a run).
    fn apply(&self, base: &GenerationConfig) -> GenerationConfig {
        for warning in self.warnings() {
            eprintln!("warning: {warning}");
        }
        let mut c = base.clone();
        c.max_new_tokens = self.max_new_tokens.or(c.max_new_tokens);
        c.min_new_tokens = self.min_new_tokens.or(c.min_new_tokens);
        c.num_beams = self.num_beams.unwrap_or(c.num_beams);
        c.length_penalty = self.length_penalty.unwrap_or(c.length_penalty);
        c.do_sample |= self.do_sample;
        c.temperature = self.temperature.unwrap_or(c.temperature);
        c.top_k = self.top_k.unwrap_or(c.top_k);
        c.top_p = self.top_p.unwrap_or(c.top_p);
        c.repetition_penalty = self.repetition_penalty.unwrap_or(c.repetition_penalty);
        c.no_repeat_ngram_size = self.no_repeat_ngram_size.unwrap_or(c.no_repeat_ngram_size);
        c.num_return_sequences = self.num_return_sequences.unwrap_or(c.num_return_sequences);
        c.seed = match self.seed {
            Some(seed) => seed,
            None if c.do_sample => blip2::lm::fresh_seed(),
            None => c.seed,
        };
        c
    }
}

/// How generated texts are printed (without these: `IMAGE<TAB>TEXT` lines, or `--json`).
#[derive(Args, Clone, Default)]
struct OutputArgs {
    /// Print only the generated texts, one line each (in input order).
    #[arg(long, conflicts_with = "json")]
    text_only: bool,
    /// Write the text to stdout as it is generated, then a newline: one image and one prompt,
    /// greedy search or sampling. The same text as `--json` reports.
    #[arg(long, conflicts_with_all = ["json", "text_only", "timings"])]
    stream: bool,
}

impl OutputArgs {
    fn check(&self, generation: &GenerationArgs, images: usize) -> Result<(), String> {
        if !self.stream {
            return Ok(());
        }
        if images != 1 {
            return Err(format!("--stream takes one image, got {images}"));
        }
        if generation.num_beams.is_some_and(|b| b > 1)
            || generation.num_return_sequences.is_some_and(|n| n > 1)
        {
            return Err(
                "--stream writes one sequence: not with --num-beams or --num-return-sequences above 1"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

#[derive(Subcommand)]
enum Command {
    /// One caption per image; or caption a dataset (--dir, --input-list, --jsonl, --webdataset,
    /// --parquet) into JSON lines, sharded and resumable (see docs/datasets.md).
    Caption {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        generation: GenerationArgs,
        #[command(flatten)]
        output: OutputArgs,
        /// Images to caption (`-`: read one from stdin).
        images: Vec<String>,
        #[command(flatten)]
        dataset: Box<dataset::DatasetArgs>,
    },
    /// Answer questions about an image ("Question: {q} Answer:"); the image is encoded once.
    Ask {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        generation: GenerationArgs,
        #[command(flatten)]
        output: OutputArgs,
        /// The image (`-`: read it from stdin).
        image: String,
        /// A question (repeat for several; with several, text lines are IMAGE<TAB>QUESTION<TAB>ANSWER).
        #[arg(long = "question", required = true)]
        questions: Vec<String>,
        /// How a question becomes the prompt: `{}` marks the question. Default: the model's,
        /// "Question: {} Answer:" for BLIP-2, the question itself ("{}") for InstructBLIP.
        #[arg(long)]
        question_template: Option<String>,
    },
    /// Generate from raw prompts: one prompt for all images, or one per image in order.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        generation: GenerationArgs,
        #[command(flatten)]
        output: OutputArgs,
        /// The images (`-`: read one from stdin).
        #[arg(required = true)]
        images: Vec<String>,
        /// A prompt (repeat for one per image).
        #[arg(long = "prompt", required = true)]
        prompts: Vec<String>,
        /// Put each prompt into this template, where `{}` marks the prompt
        /// (e.g. "Question: {} Short answer:").
        #[arg(long)]
        prompt_template: Option<String>,
    },
    /// ITM probability and ITC similarity of every image with every text (retrieval checkpoint);
    /// each image is encoded once, the pairs scored in bounded passes.
    Match {
        #[command(flatten)]
        model: ModelArgs,
        /// The images.
        #[arg(required = true)]
        images: Vec<String>,
        /// A text (repeat for several).
        #[arg(long = "text", required = true)]
        texts: Vec<String>,
        /// ITC similarity only, without the (slower) ITM pass over every pair.
        #[arg(long)]
        itc_only: bool,
    },
    /// ITC embeddings of images and/or texts, as JSON (retrieval checkpoint).
    Embed {
        #[command(flatten)]
        model: ModelArgs,
        /// The images.
        images: Vec<String>,
        /// A text (repeat for several).
        #[arg(long = "text")]
        texts: Vec<String>,
    },
    /// Show what a checkpoint holds and how its image processor sees the given images.
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        /// Images to preprocess.
        images: Vec<String>,
    },
    /// Serve the model over HTTP: OpenAI-compatible /v1/chat/completions, /v1/caption,
    /// /v1/match and /v1/embeddings (retrieval checkpoints), /health, /ready, /metrics.
    /// Stops gracefully on SIGINT/SIGTERM. See docs/serving.md.
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        serve: serve::ServeArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`blip2 embed … | head -c 10`): nothing left to tell anyone.
        Err(e) if is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// `println!` that returns the write error (a closed pipe) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// Any error of the command, printed as one line.
type AnyError = Box<dyn std::error::Error>;

impl Command {
    fn model_args(&mut self) -> &mut ModelArgs {
        match self {
            Command::Caption { model, .. }
            | Command::Ask { model, .. }
            | Command::Generate { model, .. }
            | Command::Match { model, .. }
            | Command::Embed { model, .. }
            | Command::Inspect { model, .. }
            | Command::Serve { model, .. } => model,
        }
    }
}

fn run(mut cli: Cli) -> Result<(), AnyError> {
    let default_model = match cli.command {
        Command::Match { .. } | Command::Embed { .. } => RETRIEVAL_MODEL,
        _ => GENERATION_MODEL,
    };
    cli.command.model_args().resolve(default_model);
    match cli.command {
        Command::Caption {
            model,
            generation,
            output,
            images,
            dataset,
        } => caption(&model, &generation, &output, &images, &dataset),
        Command::Ask {
            model,
            generation,
            output,
            image,
            questions,
            question_template,
        } => ask(
            &model,
            &generation,
            &output,
            image,
            &questions,
            question_template,
        ),
        Command::Generate {
            model,
            generation,
            output,
            images,
            prompts,
            prompt_template,
        } => generate(
            &model,
            &generation,
            &output,
            &images,
            prompts,
            prompt_template.as_deref(),
        ),
        Command::Match {
            model,
            images,
            texts,
            itc_only,
        } => match_texts(&model, &images, &texts, itc_only),
        Command::Embed {
            model,
            images,
            texts,
        } => embed(&model, &images, &texts),
        Command::Serve { model, serve } => serve::run(&model, &serve),
        Command::Inspect { model, images } => inspect(&model, &images),
    }
}

/// `blip2 caption`: images from the command line, or a dataset.
fn caption(
    model: &ModelArgs,
    generation: &GenerationArgs,
    output: &OutputArgs,
    images: &[String],
    dataset: &dataset::DatasetArgs,
) -> Result<(), AnyError> {
    dataset.check_usage()?;
    if dataset.is_dataset_mode() {
        generation.check()?;
        if generation.timings || output.stream || output.text_only {
            return Err(
                "--timings, --stream and --text-only are for images given on the \
                        command line, not for a dataset"
                    .into(),
            );
        }
        let run = dataset::DatasetRun::prepare(dataset, images)?;
        let blip2 = load_blip2(model)?;
        let config = generation.apply(blip2.generation_config());
        return dataset::caption_dataset(&blip2, &config, run);
    }
    if images.is_empty() {
        return Err("give images to caption, or --dir / --input-list".into());
    }
    let job = Job::new(model, generation, output, images.len())?;
    job.generate(images, &[], dataset.batch_size)
}

/// `blip2 ask`: questions about one image.
fn ask(
    model: &ModelArgs,
    generation: &GenerationArgs,
    output: &OutputArgs,
    image: String,
    questions: &[String],
    question_template: Option<String>,
) -> Result<(), AnyError> {
    let job = Job::new(model, generation, output, 1)?;
    let template = match question_template {
        Some(t) => t,
        None => {
            // A missing image is reported before the checkpoint is opened.
            check_images(std::slice::from_ref(&image))?;
            default_question_template(model)?
        }
    };
    let prompts = fill_template(&template, questions, "--question-template")?;
    if let [prompt] = prompts.as_slice() {
        return job.generate(&[image], std::slice::from_ref(prompt), 1);
    }
    if output.stream || generation.timings {
        return Err("--stream and --timings take one --question".into());
    }
    job.ask_many(&image, questions, &prompts)
}

/// `blip2 generate`: raw prompts, one for all images or one per image.
fn generate(
    model: &ModelArgs,
    generation: &GenerationArgs,
    output: &OutputArgs,
    images: &[String],
    prompts: Vec<String>,
    prompt_template: Option<&str>,
) -> Result<(), AnyError> {
    let job = Job::new(model, generation, output, images.len())?;
    if prompts.len() != 1 && prompts.len() != images.len() {
        return Err(format!(
            "{} prompts for {} images: give one prompt, or one per image",
            prompts.len(),
            images.len()
        )
        .into());
    }
    let prompts = match prompt_template {
        Some(template) => fill_template(template, &prompts, "--prompt-template")?,
        None => prompts,
    };
    job.generate(images, &prompts, dataset::DEFAULT_BATCH_SIZE)
}

/// `blip2 match`: ITC (and ITM) scores of every image with every text.
fn match_texts(
    model: &ModelArgs,
    images: &[String],
    texts: &[String],
    itc_only: bool,
) -> Result<(), AnyError> {
    check_images(images)?;
    let retrieval = load_retrieval(model)?;
    let decoded = load_images(images)?;
    let Scores { itc, itm } = retrieval.scores(&decoded, texts, !itc_only)?;
    if model.json {
        let mut doc = json!({
            "model": model.model, "images": images, "texts": texts, "itc": itc,
        });
        if let Some(itm) = itm {
            doc["itm"] = itm.into();
        }
        return print_json(&doc);
    }
    for (i, image) in images.iter().enumerate() {
        for (j, text) in texts.iter().enumerate() {
            match &itm {
                Some(itm) => out!(
                    "{image}\t{text}\titm {:.4}\titc {:.4}",
                    itm[i][j],
                    itc[i][j]
                )?,
                None => out!("{image}\t{text}\titc {:.4}", itc[i][j])?,
            }
        }
    }
    Ok(())
}

/// `blip2 embed`: ITC embeddings of images and texts, as JSON.
fn embed(model: &ModelArgs, images: &[String], texts: &[String]) -> Result<(), AnyError> {
    if images.is_empty() && texts.is_empty() {
        return Err("give images and/or --text".into());
    }
    check_images(images)?;
    let retrieval = load_retrieval(model)?;
    let mut doc = json!({ "model": model.model });
    if !images.is_empty() {
        let decoded = load_images(images)?;
        let embeddings = retrieval.image_embeddings(&decoded)?;
        doc["images"] = images
            .iter()
            .zip(embeddings)
            .map(|(image, e)| json!({ "image": image, "embedding": e }))
            .collect();
    }
    if !texts.is_empty() {
        let embeddings = retrieval.text_embeddings(texts)?;
        doc["texts"] = texts
            .iter()
            .zip(embeddings)
            .map(|(text, e)| json!({ "text": text, "embedding": e }))
            .collect();
    }
    print_json(&doc)
}

/// `blip2 inspect`: what a checkpoint is, and what its processor makes of images.
fn inspect(model: &ModelArgs, images: &[String]) -> Result<(), AnyError> {
    check_images(images)?;
    let checkpoint = Checkpoint::open(&model.model, model.revision.as_deref())?;
    let mut seen = Vec::new();
    for path in images {
        let image = read_image(path)?;
        let pixels = checkpoint.image_processor().preprocess(&image)?;
        seen.push((path, image.width(), image.height(), pixels.shape()));
    }
    if model.json {
        let mut doc = serde_json::to_value(checkpoint.info())?;
        doc["images_seen"] = seen
            .iter()
            .map(|(path, w, h, shape)| {
                json!({ "image": path, "width": w, "height": h, "pixel_values": shape })
            })
            .collect();
        return print_json(&doc);
    }
    out!("{}", checkpoint.summary())?;
    for (path, w, h, shape) in seen {
        out!("image        {path}: {w}x{h} -> pixel_values {shape:?}")?;
    }
    Ok(())
}

fn device(model: &ModelArgs) -> Result<blip2::Device, AnyError> {
    Ok(blip2::backend::device(&backend_name(model)?)?)
}

/// `--backend`, or the first one compiled in.
fn backend_name(model: &ModelArgs) -> Result<String, AnyError> {
    let name = match &model.backend {
        Some(name) => name.clone(),
        None => blip2::backend::available_backends()
            .first()
            .ok_or("this build of blip2 has no backend compiled in")?
            .to_string(),
    };
    Ok(name)
}

fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Loads a model with `--model`, `--revision`, `--backend` and `--dtype`, a spinner on stderr
/// meanwhile; `build` is the model's own `Builder::build`.
fn load<M>(model: &ModelArgs, build: fn(Builder<M>) -> blip2::Result<M>) -> Result<M, AnyError> {
    let device = device(model)?;
    let bar = spinner(format!("loading {}", model.model));
    let mut builder = Builder::<M>::new(&model.model)
        .device(device)
        .dtype(model.dtype.dtype)
        .quantization(model.dtype.quantization);
    if let Some(revision) = &model.revision {
        builder = builder.revision(revision);
    }
    let loaded = build(builder);
    bar.finish_and_clear();
    Ok(loaded?)
}

fn load_blip2(model: &ModelArgs) -> Result<Blip2, AnyError> {
    load(model, Builder::<Blip2>::build)
}

/// The question template of the checkpoint's family, read from its config.json (nothing is
/// loaded).
fn default_question_template(model: &ModelArgs) -> Result<String, AnyError> {
    let checkpoint = blip2::Checkpoint::open(&model.model, model.revision.as_deref())?;
    Ok(match checkpoint.dir().config().family {
        blip2::config::ModelFamily::InstructBlip => blip2::INSTRUCTBLIP_QUESTION_TEMPLATE,
        _ => blip2::DEFAULT_QUESTION_TEMPLATE,
    }
    .to_owned())
}

fn load_retrieval(model: &ModelArgs) -> Result<Blip2Retrieval, AnyError> {
    load(model, Builder::<Blip2Retrieval>::build)
}

/// The image path that means "read the image from stdin".
const STDIN: &str = "-";

/// Decodes the image at `path`, or the one on stdin for `-`.
fn read_image(path: &str) -> Result<blip2::image::DynamicImage, AnyError> {
    if path == STDIN {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
            .map_err(|e| format!("cannot read the image on stdin: {e}"))?;
        return Ok(decode_image(&bytes, ImageLimits::default())?);
    }
    Ok(load_image(path, ImageLimits::default())?)
}

fn load_images(paths: &[String]) -> Result<Vec<blip2::image::DynamicImage>, AnyError> {
    paths.iter().map(|p| read_image(p)).collect()
}

/// Every image can be opened (found before the model loads, which can take minutes); `-` (stdin)
/// at most once.
fn check_images(paths: &[String]) -> Result<(), AnyError> {
    if paths.iter().filter(|p| *p == STDIN).count() > 1 {
        return Err("stdin (-) holds one image: give - once".into());
    }
    for path in paths.iter().filter(|p| *p != STDIN) {
        std::fs::File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    }
    Ok(())
}

/// `template` with its `{}` replaced by each of `values`; an error naming `flag` if it has no
/// `{}`.
fn fill_template(template: &str, values: &[String], flag: &str) -> Result<Vec<String>, String> {
    if !template.contains("{}") {
        return Err(format!(
            "{flag} needs a {{}} where the text goes, got {template:?}"
        ));
    }
    Ok(values
        .iter()
        .map(|v| template.replacen("{}", v, 1))
        .collect())
}

fn stop_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Eos => "eos",
        StopReason::Length => "length",
        StopReason::Stopped => "stopped",
    }
}

/// One result line of the generation JSON.
fn result_json(image: &str, prompt: Option<&str>, g: &Generation) -> Value {
    json!({
        "image": image,
        "prompt": prompt,
        "text": g.text,
        "token_ids": g.token_ids,
        "stop_reason": stop_reason(g.stop_reason),
    })
}

/// Prints generated texts as they come: `IMAGE<TAB>TEXT` lines (`IMAGE<TAB>QUESTION<TAB>TEXT`
/// when several questions were asked), texts alone (`--text-only`), or, with `--json`, one
/// document at the end.
struct Printer {
    json: bool,
    text_only: bool,
    results: Vec<Value>,
}

impl Printer {
    fn new(model: &ModelArgs, output: &OutputArgs) -> Self {
        Printer {
            json: model.json,
            text_only: output.text_only,
            results: Vec::new(),
        }
    }

    fn print(
        &mut self,
        image: &str,
        prompt: Option<&str>,
        question: Option<&str>,
        g: &Generation,
    ) -> std::io::Result<()> {
        if self.json {
            let mut result = result_json(image, prompt, g);
            if let Some(question) = question {
                result["question"] = question.into();
            }
            self.results.push(result);
            Ok(())
        } else if self.text_only {
            out!("{}", g.text)
        } else if let Some(question) = question {
            out!("{image}\t{question}\t{}", g.text)
        } else {
            out!("{image}\t{}", g.text)
        }
    }

    /// The `--json` document (or, without `--json`, the timings line on stderr).
    fn finish(
        self,
        model: &ModelArgs,
        config: &GenerationConfig,
        timings: Option<Value>,
    ) -> Result<(), AnyError> {
        if !self.json {
            if let Some(timings) = timings {
                eprintln!("timings: {timings}");
            }
            return Ok(());
        }
        let mut doc = json!({ "model": model.model, "results": self.results });
        if config.do_sample {
            doc["seed"] = config.seed.into();
        }
        if let Some(timings) = timings {
            doc["timings"] = timings;
        }
        print_json(&doc)
    }
}

/// One generation command's options.
struct Job<'a> {
    model: &'a ModelArgs,
    generation: &'a GenerationArgs,
    output: &'a OutputArgs,
}

impl<'a> Job<'a> {
    /// A generation command over `images` images, once its flags are found consistent (before
    /// anything loads).
    fn new(
        model: &'a ModelArgs,
        generation: &'a GenerationArgs,
        output: &'a OutputArgs,
        images: usize,
    ) -> Result<Self, String> {
        generation.check()?;
        output.check(generation, images)?;
        Ok(Job {
            model,
            generation,
            output,
        })
    }

    /// Loads the model and generates for `images` with `prompts` (none, one, or one per image),
    /// at most `batch_size` images at a time, printing each batch's results as soon as it is done
    /// (with `--json`, one document at the end). Only one batch of images is decoded at a time.
    fn generate(
        &self,
        images: &[String],
        prompts: &[String],
        batch_size: usize,
    ) -> Result<(), AnyError> {
        check_images(images)?;
        let start = Instant::now();
        let blip2 = load_blip2(self.model)?;
        let load = start.elapsed();
        let config = self.generation.apply(blip2.generation_config());
        if self.output.stream {
            return stream(&blip2, &config, &images[0], prompts.first());
        }
        let prompt_of = |i: usize| match prompts.len() {
            0 => None,
            1 => Some(prompts[0].as_str()),
            _ => Some(prompts[i].as_str()),
        };
        let mut printer = Printer::new(self.model, self.output);
        let mut total = Timings::default();
        for (b, batch) in images.chunks(batch_size).enumerate() {
            let first = b * batch_size;
            let decoded = load_images(batch)?;
            let batch_prompts = match prompts.len() {
                0 | 1 => prompts,
                _ => &prompts[first..first + batch.len()],
            };
            let (out, timings) = blip2.generate_timed(&decoded, batch_prompts, &config)?;
            total.encode += timings.encode;
            total.prefill += timings.prefill;
            total.decode += timings.decode;
            total.steps += timings.steps;
            for (k, gens) in out.iter().enumerate() {
                for g in gens {
                    printer.print(&batch[k], prompt_of(first + k), None, g)?;
                }
            }
        }
        let timings = self.generation.timings.then(|| timings_json(load, &total));
        printer.finish(self.model, &config, timings)
    }

    /// Several questions about one image: one load, one encode, an answer per question.
    fn ask_many(
        &self,
        image: &str,
        questions: &[String],
        prompts: &[String],
    ) -> Result<(), AnyError> {
        check_images(&[image.to_owned()])?;
        let blip2 = load_blip2(self.model)?;
        let config = self.generation.apply(blip2.generation_config());
        let embeddings = blip2.encode_images(&[read_image(image)?])?;
        let mut printer = Printer::new(self.model, self.output);
        for (question, prompt) in questions.iter().zip(prompts) {
            let out = blip2.generate_from_embeddings(&embeddings, &[prompt.as_str()], &config)?;
            for g in out.iter().flatten() {
                printer.print(image, Some(prompt), Some(question), g)?;
            }
        }
        printer.finish(self.model, &config, None)
    }
}

/// `--stream`: the text of one image and prompt, written and flushed piece by piece, then a
/// newline. A closed stdout stops generation.
fn stream(
    blip2: &Blip2,
    config: &GenerationConfig,
    image: &str,
    prompt: Option<&String>,
) -> Result<(), AnyError> {
    use std::io::Write as _;
    let decoded = read_image(image)?;
    let mut stdout = std::io::stdout().lock();
    let mut failed = None;
    blip2.generate_stream(
        &decoded,
        prompt.map(String::as_str),
        config,
        &mut |piece| match stdout
            .write_all(piece.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        },
    )?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    writeln!(stdout)?;
    Ok(())
}

/// The `"timings"` object of `--timings`, in seconds, summed over the batches. `tokens` counts
/// the prefill's token and one per decoding step (of the longest row, in each batch).
fn timings_json(load: Duration, t: &Timings) -> Value {
    json!({
        "load_s": load.as_secs_f64(),
        "encode_s": t.encode.as_secs_f64(),
        "prefill_s": t.prefill.as_secs_f64(),
        "decode_s": t.decode.as_secs_f64(),
        "decode_s_per_token": t.decode_per_step().map(|d| d.as_secs_f64()),
        "tokens": t.steps + 1,
    })
}

fn print_json(value: &Value) -> Result<(), AnyError> {
    Ok(out!("{value}")?)
}
