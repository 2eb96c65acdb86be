//! Captioning a dataset: images from a folder, a list, JSON lines, WebDataset tar shards or
//! Parquet files, in batches, one JSON line per sample; split into shards the way schedulers
//! run jobs (`--shard`, Kubernetes Indexed Jobs, Slurm arrays) and resumable after a kill.

mod shard;
mod sources;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use blip2::image::DynamicImage;
use blip2::preprocess::{decode_image, load_image, ImageLimits};
use blip2::{Blip2, GenerationConfig};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

use crate::{stop_reason, AnyError};
use shard::Shard;
use sources::{FieldNames, ImageData, Input, InputKind, RowPrompt, Sample, IMAGE_EXTENSIONS};

/// Dataset options of `blip2 caption`.
#[derive(Args, Clone, Default)]
pub struct DatasetArgs {
    /// A file with one image path per line.
    #[arg(long, conflicts_with = "dir")]
    input_list: Option<PathBuf>,
    /// A folder of images (files with image extensions, sorted by path; not recursive).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// JSON-lines files: one object per line with an image path (relative to the file) and
    /// optionally a key, a prompt or a question. Brace patterns (`rows-{0..3}.jsonl`) expand.
    #[arg(long, value_name = "PATTERN")]
    jsonl: Vec<String>,
    /// WebDataset tar shards (`{key}.jpg`, `{key}.json`, … per sample), as paths or brace
    /// patterns (`shards/{00000..00150}.tar`).
    #[arg(long, value_name = "PATTERN")]
    webdataset: Vec<String>,
    /// Parquet files with the image bytes in a column (plain binary, or Hugging Face datasets'
    /// `{bytes, path}` struct); paths or brace patterns.
    #[arg(long, value_name = "PATTERN")]
    parquet: Vec<String>,
    /// The JSONL field or Parquet column holding the image.
    #[arg(long, default_value = "image")]
    image_field: String,
    /// The JSONL field or Parquet column holding the sample's key (else its row number).
    #[arg(long, default_value = "key")]
    key_field: String,
    /// The field, column or WebDataset member (`{key}.prompt` or `{key}.prompt.txt`) holding a
    /// sample's own raw prompt.
    #[arg(long, default_value = "prompt")]
    prompt_field: String,
    /// The field, column or WebDataset member holding a sample's own question (put into the
    /// model's question template).
    #[arg(long, default_value = "question")]
    question_field: String,
    /// A raw prompt for every sample without its own.
    #[arg(long, conflicts_with = "question")]
    prompt: Option<String>,
    /// A question for every sample without its own (through the model's question template).
    #[arg(long)]
    question: Option<String>,
    /// Write JSON lines here instead of stdout. Lines are appended, each in one write, so that
    /// several shards can share one file; an existing file is continued only with --resume.
    #[arg(long, conflicts_with = "output_dir")]
    output: Option<PathBuf>,
    /// Write one JSON-lines file per input shard here (`DIR/00042.jsonl`; per input and
    /// shard, `DIR/00042.00001-of-00004.jsonl`, when rows are split), through a `.partial`
    /// file renamed when complete: a rerun skips finished files and continues a partial one.
    /// Also writes the run's `stats.json`.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Images per batch (also for images listed on the command line).
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// This process's part of the dataset: `--shard I/N` (0-based). Without it the part comes
    /// from JOB_COMPLETION_INDEX (with --shards) or SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT.
    #[arg(long)]
    shard: Option<String>,
    /// How many shards there are, for JOB_COMPLETION_INDEX (a Kubernetes Indexed Job's
    /// completions) or to override SLURM_ARRAY_TASK_COUNT.
    #[arg(long)]
    shards: Option<usize>,
    /// Skip the images already in --output. (An --output-dir run always resumes; the flag is
    /// accepted there too, so one command line serves both.)
    #[arg(long)]
    resume: bool,
    /// Seconds between progress lines on stderr when it is not a terminal (a log file); 0 for
    /// a line after every batch.
    #[arg(long, default_value_t = 30)]
    progress_every: u64,
}

/// Images per batch unless `--batch-size` says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 8;

impl DatasetArgs {
    /// Mistakes in these options alone, reported before any model is loaded.
    pub fn check_usage(&self) -> Result<(), AnyError> {
        if self.batch_size == 0 {
            return Err("--batch-size must be at least 1".into());
        }
        if self.shard.is_some() || self.shards.is_some() {
            if !self.has_source() {
                return Err(
                    "--shard splits a dataset: give --dir, --input-list, --jsonl, \
                            --webdataset or --parquet"
                        .into(),
                );
            }
            if let Some(shard) = &self.shard {
                shard::parse_shard(shard)?;
            }
        }
        if self.resume && self.output.is_none() && self.output_dir.is_none() {
            return Err("--resume continues an --output file (or an --output-dir)".into());
        }
        if (self.prompt.is_some() || self.question.is_some()) && !self.has_source() {
            return Err(
                "--prompt and --question apply to a dataset (--dir, --jsonl, …); for \
                        images on the command line use `blip2 generate` or `blip2 ask`"
                    .into(),
            );
        }
        Ok(())
    }

    fn has_source(&self) -> bool {
        self.input_list.is_some()
            || self.dir.is_some()
            || !self.jsonl.is_empty()
            || !self.webdataset.is_empty()
            || !self.parquet.is_empty()
    }

    /// Whether the dataset options are in use.
    pub fn is_dataset_mode(&self) -> bool {
        self.has_source() || self.output.is_some() || self.output_dir.is_some()
    }

    fn field_names(&self) -> FieldNames {
        FieldNames {
            image: self.image_field.clone(),
            key: self.key_field.clone(),
            prompt: self.prompt_field.clone(),
            question: self.question_field.clone(),
        }
    }
}

fn list_images(args: &DatasetArgs, extra: &[String]) -> Result<Vec<String>, AnyError> {
    let mut images: Vec<String> = extra.to_vec();
    if let Some(list) = &args.input_list {
        let file = File::open(list).map_err(|e| format!("cannot read {}: {e}", list.display()))?;
        for line in BufReader::new(file).lines() {
            let line = line?;
            let line = line.trim();
            if !line.is_empty() {
                images.push(line.to_owned());
            }
        }
    }
    if let Some(dir) = &args.dir {
        let mut found = Vec::new();
        for entry in
            std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        {
            let path = entry?.path();
            let is_image = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            if path.is_file() && is_image {
                found.push(path.display().to_string());
            }
        }
        found.sort();
        images.extend(found);
    }
    Ok(images)
}

/// The input files named by `--jsonl`, `--webdataset` and `--parquet`, patterns expanded, in
/// the order given; each must exist.
fn input_files(args: &DatasetArgs) -> Result<Vec<Input>, AnyError> {
    let mut inputs = Vec::new();
    type Kind = fn(PathBuf) -> InputKind;
    let kinds: [(&[String], Kind); 3] = [
        (&args.jsonl, InputKind::Jsonl),
        (&args.webdataset, InputKind::WebDataset),
        (&args.parquet, InputKind::Parquet),
    ];
    for (patterns, kind) in kinds {
        for pattern in patterns {
            for path in shard::expand_braces(pattern)? {
                std::fs::metadata(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
                inputs.push(Input::file(kind, &path));
            }
        }
    }
    Ok(inputs)
}

/// Cuts an unfinished last line (a run killed mid-write) so that appending starts on a new line.
fn drop_partial_line(output: &Path) -> Result<(), AnyError> {
    let Ok(bytes) = std::fs::read(output) else {
        return Ok(());
    };
    if bytes.last().is_some_and(|&b| b != b'\n') {
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        OpenOptions::new()
            .write(true)
            .open(output)?
            .set_len(keep as u64)?;
    }
    Ok(())
}

/// What identifies a path across runs: its canonical form (so `ds/a.jpg` and `./ds/a.jpg` are
/// one image), or the path as written when it cannot be resolved (a file gone since).
fn canonical(path: &str) -> String {
    std::fs::canonicalize(path).map_or_else(|_| path.to_owned(), |p| p.display().to_string())
}

/// What identifies a sample (or its output line) across runs: its source file and key, or its
/// image path. The source's canonical form is remembered, since every sample of a shard (and
/// every line of its output) names the same file: one `canonicalize` per shard, not per sample.
#[derive(Default)]
struct Identities {
    source: Option<(String, String)>,
}

impl Identities {
    fn of(&mut self, line: &Map<String, Value>) -> Option<String> {
        let text = |k: &str| line.get(k).and_then(Value::as_str);
        match (text("source"), text("key")) {
            (Some(source), Some(key)) => {
                if self.source.as_ref().is_none_or(|(raw, _)| raw != source) {
                    self.source = Some((source.to_owned(), canonical(source)));
                }
                let (_, resolved) = self.source.as_ref().expect("set above");
                Some(format!("{resolved}\n{key}"))
            }
            _ => text("image").map(canonical),
        }
    }
}

fn already_done(output: &Path) -> Result<HashSet<String>, AnyError> {
    let mut done = HashSet::new();
    let Ok(file) = File::open(output) else {
        return Ok(done);
    };
    let mut identities = Identities::default();
    for line in BufReader::new(file).lines() {
        let line = line?;
        // A line cut short by an interrupted run is not done.
        if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&line) {
            done.extend(identities.of(&fields));
        }
    }
    Ok(done)
}

/// One input, or the rows of one input that this shard takes, with its output file in
/// `--output-dir` mode.
struct Unit {
    input: Input,
    rows: Shard,
    name: String,
}

/// Where results go.
enum Sink {
    /// One stream: stdout or `--output` (appended), with what it already holds (`--resume`).
    Stream {
        out: Box<dyn Write>,
        done: HashSet<String>,
    },
    /// One file per unit in `--output-dir`.
    Dir(PathBuf),
}

/// A dataset run whose inputs and output have been checked, ready for a model: built before the
/// model loads, so that a wrong folder, list, pattern, shard or output costs nothing.
pub struct DatasetRun {
    units: Vec<Unit>,
    sink: Sink,
    shard: Shard,
    stats: Option<PathBuf>,
    names: FieldNames,
    prompt: Option<(bool, String)>,
    batch_size: usize,
    progress_every: Duration,
    images_known: Option<usize>,
}

impl DatasetRun {
    /// Lists the dataset described by `args` (plus `extra` images), takes this shard, drops what
    /// the output already holds (`--resume`) and opens the output.
    pub fn prepare(args: &DatasetArgs, extra: &[String]) -> Result<Self, AnyError> {
        args.check_usage()?;
        let shard = shard::resolve(args.shard.as_deref(), args.shards, |v| {
            std::env::var(v).ok()
        })?;
        let (units, images_known) = units(args, extra, shard)?;
        let (sink, stats) = open_sink(args, &units, shard)?;
        let prompt = match (&args.prompt, &args.question) {
            (Some(p), _) => Some((false, p.clone())),
            (None, Some(q)) => Some((true, q.clone())),
            (None, None) => None,
        };
        Ok(Self {
            units,
            sink,
            shard,
            stats,
            names: args.field_names(),
            prompt,
            batch_size: args.batch_size,
            progress_every: Duration::from_secs(args.progress_every),
            images_known,
        })
    }
}

/// This shard's units of the dataset `args` (plus `extra` images) describe, and how many images
/// they hold when that is known before reading (the listed images are all there is).
fn units(
    args: &DatasetArgs,
    extra: &[String],
    shard: Shard,
) -> Result<(Vec<Unit>, Option<usize>), AnyError> {
    let files = input_files(args)?;
    let mut units = Vec::new();
    let mut images_known = None;
    if args.input_list.is_some() || args.dir.is_some() || !extra.is_empty() {
        // A list of image paths is split by image, as it always was.
        let images: Vec<String> = list_images(args, extra)?
            .into_iter()
            .enumerate()
            .filter(|(k, _)| shard.takes(*k))
            .map(|(_, p)| p)
            .collect();
        if images.is_empty() && files.is_empty() {
            return Err("the dataset (this shard of it) lists no images".into());
        }
        let name = args
            .dir
            .as_deref()
            .or(args.input_list.as_deref())
            .and_then(Path::file_stem)
            .map_or("images".to_owned(), |s| s.to_string_lossy().into_owned());
        images_known = Some(images.len());
        let name = format!("{name}{}", dotted(&shard.suffix()));
        units.push(Unit {
            input: Input {
                kind: InputKind::Files(images),
                name: name.clone(),
            },
            rows: Shard::ALL,
            name,
        });
    }
    // Several shard files are split by file, so each process reads only its own; fewer
    // files than shards (or a folder beside them) are split by row.
    let by_file = units.is_empty() && files.len() >= shard.count;
    for (k, input) in files.into_iter().enumerate() {
        if by_file && !shard.takes(k) {
            continue;
        }
        let rows = if by_file { Shard::ALL } else { shard };
        let name = format!("{}{}", input.name, dotted(&rows.suffix()));
        units.push(Unit { input, rows, name });
    }
    if units.len() > 1 {
        images_known = None;
    }
    Ok((units, images_known))
}

/// Opens the run's output (`--output-dir`, `--output` or stdout; what `--resume` finds done is
/// skipped) and names its stats file.
fn open_sink(
    args: &DatasetArgs,
    units: &[Unit],
    shard: Shard,
) -> Result<(Sink, Option<PathBuf>), AnyError> {
    let stats_name = format!("stats{}.json", dotted(&shard.suffix()));
    match (&args.output, &args.output_dir) {
        (_, Some(dir)) => {
            let mut seen = HashSet::new();
            for unit in units {
                if !seen.insert(unit.name.clone()) {
                    return Err(format!(
                        "two inputs would both write {}.jsonl in {}: give inputs with \
                         distinct file names",
                        unit.name,
                        dir.display()
                    )
                    .into());
                }
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot write {}: {e}", dir.display()))?;
            Ok((Sink::Dir(dir.clone()), Some(dir.join(stats_name))))
        }
        (Some(path), None) => {
            let mut done = HashSet::new();
            if args.resume {
                drop_partial_line(path)?;
                done = already_done(path)?;
            } else if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
                return Err(format!(
                    "{} already holds results: pass --resume to continue it, or remove it",
                    path.display()
                )
                .into());
            }
            // O_APPEND and one write per line: processes sharing the file never interleave.
            let out = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            let stats = path.with_file_name(format!(
                "{}.{stats_name}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ));
            let out: Box<dyn Write> = Box::new(out);
            Ok((Sink::Stream { out, done }, Some(stats)))
        }
        (None, None) => {
            let out: Box<dyn Write> = Box::new(std::io::stdout());
            let done = HashSet::new();
            Ok((Sink::Stream { out, done }, None))
        }
    }
}

fn dotted(suffix: &str) -> String {
    if suffix.is_empty() {
        String::new()
    } else {
        format!(".{suffix}")
    }
}

/// What a run did, for the summary, the progress lines and stats.json.
#[derive(Default)]
struct Counts {
    captioned: usize,
    failed: usize,
    skipped: usize,
    files_done: usize,
    files_skipped: usize,
}

/// A progress bar on a terminal; on a log file, a line every `every`.
struct Progress {
    bar: ProgressBar,
    log: bool,
    every: Duration,
    start: Instant,
    last: Instant,
}

impl Progress {
    fn new(total: Option<usize>, every: Duration) -> Self {
        let bar = match total {
            Some(n) => ProgressBar::new(n as u64).with_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} images, {per_sec}, ETA {eta}")
                    .expect("valid template"),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {pos} images, {per_sec}")
                    .expect("valid template"),
            ),
        };
        let now = Instant::now();
        Progress {
            bar,
            log: !std::io::stderr().is_terminal(),
            every,
            start: now,
            last: now,
        }
    }

    fn batch(&mut self, images: usize, counts: &Counts, unit: &str) {
        self.bar.inc(images as u64);
        if self.log && self.last.elapsed() >= self.every {
            self.last = Instant::now();
            let done = counts.captioned + counts.failed;
            let seconds = self.start.elapsed().as_secs_f64();
            eprintln!(
                "progress: {done} images ({} failed, {} skipped) in {seconds:.1} s, {:.2} \
                 images/s; reading {unit}",
                counts.failed,
                counts.skipped,
                done as f64 / seconds.max(1e-9)
            );
        }
    }
}

/// What the reading thread hands over.
enum Item {
    /// A sample already in the output.
    Skipped,
    /// A sample and its decoded image, or why there is none.
    Sample(Sample, Result<DynamicImage, String>),
}

/// Captions a prepared dataset run, writing one JSON line per sample as batches finish:
/// `{"image" | "source", "key", "prompt"?, "text", "token_ids", "stop_reason"}` (plus
/// `"sequences"` when there are several, and the sample's `json`/`meta`), or the same with
/// `"error"` for a sample whose image could not be read; then a summary on stderr and the
/// run's stats file.
pub fn caption_dataset(
    blip2: &Blip2,
    config: &GenerationConfig,
    run: DatasetRun,
) -> Result<(), AnyError> {
    let DatasetRun {
        units,
        mut sink,
        shard,
        stats,
        names,
        prompt,
        batch_size,
        progress_every,
        images_known,
    } = run;
    let mut counts = Counts::default();
    let mut progress = Progress::new(images_known, progress_every);
    let job = Job {
        blip2,
        config,
        prompt: prompt.map(|(question, text)| match question {
            true => RowPrompt::Question(text),
            false => RowPrompt::Raw(text),
        }),
        names: &names,
        batch_size,
    };
    for unit in &units {
        match &mut sink {
            Sink::Stream { out, done } => {
                job.run_unit(unit, out, done, &mut counts, &mut progress)?;
            }
            Sink::Dir(dir) => job.run_file(dir, unit, &mut counts, &mut progress)?,
        }
    }
    progress.bar.finish_and_clear();
    let seconds = progress.start.elapsed().as_secs_f64();
    let Counts {
        captioned,
        failed,
        skipped,
        files_done,
        files_skipped,
    } = counts;
    eprintln!("captioned {captioned}, failed {failed}, skipped {skipped} (already in the output)");
    if matches!(sink, Sink::Dir(_)) {
        eprintln!("{files_done} output files completed, {files_skipped} already complete");
    }
    if let Some(path) = stats {
        let doc = json!({
            "shard": { "index": shard.index, "count": shard.count },
            "inputs": units.iter().map(|u| u.name.clone()).collect::<Vec<_>>(),
            "captioned": captioned,
            "failed": failed,
            "skipped": skipped,
            "files_completed": files_done,
            "files_already_complete": files_skipped,
            "seconds": seconds,
            "images_per_second": (captioned + failed) as f64 / seconds.max(1e-9),
        });
        std::fs::write(&path, format!("{doc:#}\n"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if captioned == 0 && failed > 0 {
        return Err("no image was captioned".into());
    }
    Ok(())
}

/// What every unit of a run shares.
struct Job<'a> {
    blip2: &'a Blip2,
    config: &'a GenerationConfig,
    prompt: Option<RowPrompt>,
    names: &'a FieldNames,
    batch_size: usize,
}

impl Job<'_> {
    /// One unit into its own file of `dir`: written as `NAME.jsonl.partial` (locked, resumed
    /// from what it holds), renamed to `NAME.jsonl` once complete; a complete one is skipped.
    fn run_file(
        &self,
        dir: &Path,
        unit: &Unit,
        counts: &mut Counts,
        progress: &mut Progress,
    ) -> Result<(), AnyError> {
        let finished = dir.join(format!("{}.jsonl", unit.name));
        if finished.exists() {
            counts.files_skipped += 1;
            return Ok(());
        }
        let partial = dir.join(format!("{}.jsonl.partial", unit.name));
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
            .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        if out.try_lock().is_err() {
            return Err(format!(
                "{} is being written by another process (two processes on one shard?)",
                partial.display()
            )
            .into());
        }
        drop_partial_line(&partial)?;
        let done = already_done(&partial)?;
        self.run_unit(unit, &mut out, &done, counts, progress)?;
        out.sync_all()?;
        std::fs::rename(&partial, &finished)?;
        counts.files_done += 1;
        Ok(())
    }

    /// Reads one unit on a second thread (listing, reading and decoding overlap the model),
    /// at most two batches ahead, and captions it batch by batch into `out`.
    fn run_unit(
        &self,
        unit: &Unit,
        out: &mut dyn Write,
        done: &HashSet<String>,
        counts: &mut Counts,
        progress: &mut Progress,
    ) -> Result<(), AnyError> {
        let (tx, rx) = sync_channel::<Item>(2 * self.batch_size);
        let names = self.names;
        std::thread::scope(|scope| -> Result<(), AnyError> {
            let reader = scope.spawn(move || -> Result<(), String> {
                let mut identities = Identities::default();
                sources::read(&unit.input, names, &mut |row, sample| {
                    if !unit.rows.takes(row) {
                        return true;
                    }
                    if !done.is_empty()
                        && identities
                            .of(&sample.line)
                            .is_some_and(|i| done.contains(&i))
                    {
                        return tx.send(Item::Skipped).is_ok();
                    }
                    let limits = ImageLimits::default();
                    let decoded = match &sample.image {
                        Ok(ImageData::Path(p)) => load_image(p, limits).map_err(|e| e.to_string()),
                        Ok(ImageData::Bytes(b)) => {
                            decode_image(b, limits).map_err(|e| e.to_string())
                        }
                        Err(e) => Err(e.clone()),
                    };
                    tx.send(Item::Sample(sample, decoded)).is_ok()
                })
                .map_err(|e| e.to_string())
            });
            let mut batch = Vec::with_capacity(self.batch_size);
            let mut result = Ok(());
            for item in rx.iter() {
                match item {
                    Item::Skipped => counts.skipped += 1,
                    Item::Sample(sample, image) => batch.push((sample, image)),
                }
                if batch.len() == self.batch_size {
                    result = self.write_batch(std::mem::take(&mut batch), out, counts);
                    if result.is_err() {
                        break;
                    }
                    progress.batch(self.batch_size, counts, &unit.input.name);
                }
            }
            if result.is_ok() && !batch.is_empty() {
                let n = batch.len();
                result = self.write_batch(batch, out, counts);
                progress.batch(n, counts, &unit.input.name);
            }
            // Dropping the receiver (when the loop broke early) stops the reader.
            drop(rx);
            let read = reader.join().map_err(|_| "the reading thread panicked")?;
            result?;
            read.map_err(AnyError::from)
        })
    }

    /// The prompt of one sample (its own, the run's, or the caption prompt), and whether it is
    /// written into the output line.
    fn prompt_of(&self, own: Option<&RowPrompt>) -> (String, bool) {
        match own.or(self.prompt.as_ref()) {
            Some(RowPrompt::Raw(p)) => (p.clone(), true),
            Some(RowPrompt::Question(q)) => (self.blip2.question_prompt(q), true),
            None => (self.blip2.caption_prompt().to_owned(), false),
        }
    }

    fn write_batch(
        &self,
        batch: Vec<(Sample, Result<DynamicImage, String>)>,
        out: &mut dyn Write,
        counts: &mut Counts,
    ) -> Result<(), AnyError> {
        let mut lines = Vec::with_capacity(batch.len());
        let (mut images, mut prompts, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        for (k, (sample, image)) in batch.into_iter().enumerate() {
            let mut line = sample.line;
            let (prompt, shown) = self.prompt_of(sample.prompt.as_ref());
            if shown {
                line.insert("prompt".into(), prompt.clone().into());
            }
            match image {
                Ok(image) => {
                    images.push(image);
                    prompts.push(prompt);
                    slots.push(k);
                }
                Err(e) => {
                    counts.failed += 1;
                    line.insert("error".into(), e.into());
                }
            }
            lines.push(line);
        }
        if !images.is_empty() {
            let generations = self.blip2.generate(&images, &prompts, self.config)?;
            for (slot, gens) in slots.into_iter().zip(generations) {
                counts.captioned += 1;
                let sequence = |g: &blip2::Generation| {
                    json!({
                        "text": g.text,
                        "token_ids": g.token_ids,
                        "stop_reason": stop_reason(g.stop_reason),
                    })
                };
                let line = &mut lines[slot];
                if let Value::Object(first) = sequence(&gens[0]) {
                    line.extend(first);
                }
                if gens.len() > 1 {
                    line.insert("sequences".into(), gens.iter().map(sequence).collect());
                }
            }
        }
        for line in lines {
            out.write_all(format!("{}\n", Value::Object(line)).as_bytes())?;
        }
        out.flush()?;
        Ok(())
    }
}
