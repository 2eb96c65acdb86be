//! The pipeline benchmark: load, image encoding, prefill, decoding and batch throughput of one
//! checkpoint folder, printed as one JSON document with the same keys as
//! `tools/bench/bench_transformers.py`, so `tools/bench/compare.py` can set them side by side.
//!
//! ```text
//! python tools/bench/make_models.py --out target/bench-models        # random weights, real shapes
//! cargo bench --bench pipeline -- target/bench-models/bench-small > target/bench-results/rust-bench-small.json
//! ```
//!
//! Options: `--image PATH` (default the fixture `rgb_96x64.png`), `--tokens N` (new tokens per
//! caption, exactly: min = max; default 20), `--batches 1,4,8`, `--repeat N` (default 5; medians),
//! `--backend NAME`, `--dtype f32|f16|bf16|int8` (default f32; int8: f32 with the language model's
//! linear layers in int8), `--encode-only` (time image encoding alone and stop: the loop to run
//! under `perf record` for a per-op profile, see docs/performance.md). Run it on an otherwise
//! idle machine.

use std::time::{Duration, Instant};

use blip2::preprocess::{load_image, ImageLimits};
use blip2::{Blip2, GenerationConfig, Quantization, Timings, WeightDType, NO_PROMPTS};
use serde_json::json;

struct Args {
    model: String,
    image: String,
    tokens: usize,
    batches: Vec<usize>,
    repeat: usize,
    backend: Option<String>,
    dtype: WeightDType,
    quantization: Quantization,
    encode_only: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        model: String::new(),
        image: concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/images/rgb_96x64.png"
        )
        .into(),
        tokens: 20,
        batches: vec![1, 4, 8],
        repeat: 5,
        backend: None,
        dtype: WeightDType::F32,
        quantization: Quantization::None,
        encode_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {} // passed by `cargo bench`
            "--encode-only" => args.encode_only = true,
            "--image" => args.image = value()?,
            "--tokens" => args.tokens = value()?.parse().map_err(|e| format!("--tokens: {e}"))?,
            "--repeat" => args.repeat = value()?.parse().map_err(|e| format!("--repeat: {e}"))?,
            "--backend" => args.backend = Some(value()?),
            "--dtype" => match value()?.as_str() {
                "int8" => args.quantization = Quantization::Int8,
                other => args.dtype = other.parse().map_err(|e| format!("--dtype: {e}"))?,
            },
            "--batches" => {
                args.batches = value()?
                    .split(',')
                    .map(|b| b.parse().map_err(|e| format!("--batches: {e}")))
                    .collect::<Result<_, _>>()?
            }
            other if other.starts_with("--") => return Err(format!("unknown option {other}")),
            other => args.model = other.to_owned(),
        }
    }
    if args.model.is_empty() {
        return Err(
            "usage: cargo bench --bench pipeline -- MODEL_DIR [--tokens N] \
                    [--batches 1,4,8] [--repeat N] [--image PATH] [--backend NAME] [--dtype f32|f16|bf16|int8] \
                    [--encode-only]"
                .into(),
        );
    }
    if args.tokens < 2 || args.repeat == 0 {
        return Err("--tokens must be at least 2 and --repeat at least 1".into());
    }
    Ok(args)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Reports one figure on stderr as soon as it is measured (`measured NAME SECONDS`), so a run
/// stopped by a time limit still leaves what it had measured (scripts/gpu-check.sh keeps it).
fn progress(name: &str, seconds: f64) {
    eprintln!("measured {name} {seconds:.6}");
}

/// Peak resident set size of this process, from /proc (Linux only).
fn peak_rss_gib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

/// Reads every weight file once, so that `load_s` measures a load from the page cache (what a
/// second run of a program sees), not the disk; the Python harness does the same.
fn warm_page_cache(dir: &str) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            std::io::copy(&mut std::fs::File::open(path)?, &mut std::io::sink())?;
        }
    }
    Ok(())
}

fn run(args: &Args) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    warm_page_cache(&args.model)?;
    let device = match &args.backend {
        Some(name) => blip2::backend::device(name)?,
        None => blip2::Device::default(),
    };
    let start = Instant::now();
    let model = Blip2::builder(&args.model)
        .device(device)
        .dtype(args.dtype)
        .quantization(args.quantization)
        .build()?;
    let load_s = start.elapsed().as_secs_f64();
    progress("load_s", load_s);

    let image = load_image(&args.image, ImageLimits::default())?;
    let mut config: GenerationConfig = model.generation_config().clone();
    config.max_new_tokens = Some(args.tokens);
    config.min_new_tokens = Some(args.tokens);
    config.num_beams = 1;
    config.do_sample = false;

    let pixels = model.image_processor().preprocess(&image)?;
    let time = |f: &mut dyn FnMut() -> Result<(), blip2::Error>| -> Result<f64, blip2::Error> {
        f()?; // warm-up
        let mut times = Vec::with_capacity(args.repeat);
        for _ in 0..args.repeat {
            let start = Instant::now();
            f()?;
            times.push(start.elapsed().as_secs_f64());
        }
        Ok(median(times))
    };
    let encode_s = time(&mut || model.encode_pixels(&pixels).map(drop))?;
    progress("encode_s", encode_s);
    if args.encode_only {
        return Ok(
            json!({ "model": args.model, "dtype": args.dtype.to_string(), "encode_s": encode_s }),
        );
    }

    let images = std::slice::from_ref(&image);
    let mut phases: Vec<Timings> = Vec::new();
    let caption_s = time(&mut || {
        let (out, timings) = model.generate_timed(images, NO_PROMPTS, &config)?;
        assert_eq!(
            out[0][0].token_ids.len(),
            args.tokens,
            "min = max new tokens"
        );
        phases.push(timings);
        Ok(())
    })?;
    let prefill_s = median(phases.iter().map(|t| t.prefill.as_secs_f64()).collect());
    let decode_s_per_token = median(
        phases
            .iter()
            .filter_map(Timings::decode_per_step)
            .map(|d: Duration| d.as_secs_f64())
            .collect(),
    );
    progress("prefill_s", prefill_s);
    progress("decode_s_per_token", decode_s_per_token);

    let mut batch = serde_json::Map::new();
    for &b in &args.batches {
        let many = vec![image.clone(); b];
        let seconds = time(&mut || model.generate(&many, NO_PROMPTS, &config).map(drop))?;
        progress(&format!("batch_{b}_s"), seconds);
        batch.insert(
            b.to_string(),
            json!({ "seconds": seconds, "images_per_s": b as f64 / seconds }),
        );
    }
    Ok(json!({
        "implementation": "blip2 (Rust, burn)",
        "backend": blip2::backend::available_backends(),
        "dtype": match args.quantization {
            Quantization::None => args.dtype.to_string(),
            q => q.to_string(),
        },
        "model": args.model,
        "threads": std::thread::available_parallelism().map(usize::from).ok(),
        "tokens": args.tokens,
        "load_s": load_s,
        "encode_s": encode_s,
        "caption_s": caption_s,
        "prefill_s": prefill_s,
        "decode_s_per_token": decode_s_per_token,
        "batch": batch,
        "peak_rss_gib": peak_rss_gib(),
        // Decoding reads every language-model weight once per token: weight bytes divided
        // by this is the floor of the time per token.
        "read_bandwidth_gb_s": blip2_kernels::read_bandwidth_gb_s(5),
    }))
}

fn main() {
    let outcome = parse_args().map_err(Into::into).and_then(|args| run(&args));
    match outcome {
        Ok(doc) => println!("{doc:#}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
