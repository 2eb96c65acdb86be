//! Captioning a dataset: images from a folder or a list, in batches, one JSON line per image,
//! resumable, and split into shards so that N independent processes cover a dataset.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use blip2::preprocess::{load_image, ImageLimits};
use blip2::{Blip2, GenerationConfig};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::{stop_reason, AnyError};

/// Dataset options of `blip2 caption`.
#[derive(Args, Clone, Default)]
pub struct DatasetArgs {
    /// A file with one image path per line.
    #[arg(long, conflicts_with = "dir")]
    input_list: Option<PathBuf>,
    /// A folder of images (files with image extensions, sorted by path; not recursive).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write JSON lines here instead of stdout. Lines are appended, each in one write, so that
    /// several shards can share one file; an existing file is continued only with --resume.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Images per batch (also for images listed on the command line).
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Take every N-th image starting at I (0-based): `--shard I/N`.
    #[arg(long)]
    shard: Option<String>,
    /// Skip the images already in --output.
    #[arg(long, requires = "output")]
    resume: bool,
}

/// Images per batch unless `--batch-size` says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 8;

impl DatasetArgs {
    /// Mistakes in these options alone, reported before any model is loaded.
    pub fn check_usage(&self) -> Result<(), AnyError> {
        if self.batch_size == 0 {
            return Err("--batch-size must be at least 1".into());
        }
        if let Some(shard) = &self.shard {
            if self.dir.is_none() && self.input_list.is_none() {
                return Err("--shard splits a dataset: give --dir or --input-list".into());
            }
            parse_shard(shard)?;
        }
        Ok(())
    }

    /// Whether the dataset options are in use.
    pub fn is_dataset_mode(&self) -> bool {
        self.input_list.is_some() || self.dir.is_some() || self.output.is_some()
    }
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff"];

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

fn parse_shard(shard: &str) -> Result<(usize, usize), AnyError> {
    let bad = || format!("--shard takes I/N with 0 <= I < N, found {shard:?}");
    let (i, n) = shard.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad().into());
    }
    Ok((i, n))
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

/// What identifies an image across runs: its canonical path (so `ds/a.jpg` and `./ds/a.jpg` are
/// one image), or the path as written when it cannot be resolved (a file gone since).
fn image_key(path: &str) -> String {
    std::fs::canonicalize(path).map_or_else(|_| path.to_owned(), |p| p.display().to_string())
}

fn already_done(output: &Path) -> Result<HashSet<String>, AnyError> {
    let mut done = HashSet::new();
    let Ok(file) = File::open(output) else {
        return Ok(done);
    };
    for line in BufReader::new(file).lines() {
        let line = line?;
        // A line cut short by an interrupted run is not done.
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
            if let Some(image) = value["image"].as_str() {
                done.insert(image_key(image));
            }
        }
    }
    Ok(done)
}

/// A dataset run whose inputs and output have been checked, ready for a model: built before the
/// model loads, so that a wrong folder, list, shard or output costs nothing.
pub struct DatasetRun {
    images: Vec<String>,
    listed: usize,
    skipped: usize,
    batch_size: usize,
    out: Box<dyn Write>,
}

impl DatasetRun {
    /// Lists the dataset described by `args` (plus `extra` images), takes this shard, drops what
    /// the output already holds (`--resume`) and opens the output.
    pub fn prepare(args: &DatasetArgs, extra: &[String]) -> Result<Self, AnyError> {
        args.check_usage()?;
        let mut images = list_images(args, extra)?;
        if let Some(shard) = &args.shard {
            let (i, n) = parse_shard(shard)?;
            images = images
                .into_iter()
                .enumerate()
                .filter(|(k, _)| k % n == i)
                .map(|(_, p)| p)
                .collect();
        }
        let listed = images.len();
        if listed == 0 {
            return Err("the dataset (this shard of it) lists no images".into());
        }
        if args.resume {
            let output = args.output.as_deref().expect("clap requires --output");
            drop_partial_line(output)?;
            let done = already_done(output)?;
            images.retain(|p| !done.contains(&image_key(p)));
        }
        let skipped = listed - images.len();
        let out: Box<dyn Write> = match &args.output {
            Some(path) => {
                if !args.resume && std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
                    return Err(format!(
                        "{} already holds results: pass --resume to continue it, or remove it",
                        path.display()
                    )
                    .into());
                }
                // O_APPEND and one write per line: processes sharing the file never interleave.
                Box::new(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
                )
            }
            None => Box::new(std::io::stdout()),
        };
        Ok(Self {
            images,
            listed,
            skipped,
            batch_size: args.batch_size,
            out,
        })
    }
}

/// Captions a prepared dataset run, writing one JSON line per image as batches finish:
/// `{"image", "text", "token_ids", "stop_reason"}` (plus `"sequences"` when there are several),
/// or `{"image", "error"}` for an image that could not be read; then a summary on stderr.
pub fn caption_dataset(
    blip2: &Blip2,
    config: &GenerationConfig,
    run: DatasetRun,
) -> Result<(), AnyError> {
    let DatasetRun {
        images,
        listed,
        skipped,
        batch_size,
        mut out,
    } = run;
    let (mut captioned, mut failed) = (0, 0);
    let bar = ProgressBar::new(images.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images, {per_sec}, ETA {eta}")
            .expect("valid template"),
    );
    for batch in images.chunks(batch_size) {
        let mut lines: Vec<Option<serde_json::Value>> = vec![None; batch.len()];
        let mut decoded = Vec::new();
        let mut slots = Vec::new();
        for (k, path) in batch.iter().enumerate() {
            match load_image(path, ImageLimits::default()) {
                Ok(image) => {
                    decoded.push(image);
                    slots.push(k);
                }
                Err(e) => {
                    failed += 1;
                    lines[k] = Some(json!({ "image": path, "error": e.to_string() }));
                }
            }
        }
        if !decoded.is_empty() {
            let generations = blip2.generate(&decoded, blip2::NO_PROMPTS, config)?;
            for (slot, gens) in slots.into_iter().zip(generations) {
                captioned += 1;
                let sequence = |g: &blip2::Generation| {
                    json!({
                        "text": g.text,
                        "token_ids": g.token_ids,
                        "stop_reason": stop_reason(g.stop_reason),
                    })
                };
                let mut line = sequence(&gens[0]);
                line["image"] = batch[slot].clone().into();
                if gens.len() > 1 {
                    line["sequences"] = gens.iter().map(sequence).collect();
                }
                lines[slot] = Some(line);
            }
        }
        for line in lines.into_iter().flatten() {
            out.write_all(format!("{line}\n").as_bytes())?;
        }
        out.flush()?;
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    eprintln!("captioned {captioned}, failed {failed}, skipped {skipped} (already in the output)");
    if captioned == 0 && skipped < listed {
        return Err("no image was captioned".into());
    }
    Ok(())
}
