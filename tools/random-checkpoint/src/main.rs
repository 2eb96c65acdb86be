//! `random-checkpoint`: writes a random-weight BLIP-2 checkpoint folder (see the library's docs)
//! and prints what it wrote as one JSON line.
//!
//! ```text
//! random-checkpoint --shape opt-2.7b --out DIR [--dtype f16|f32|bf16] [--seed N] [--shard-mb N]
//! random-checkpoint --config config.json --out DIR ...
//! ```

use std::path::PathBuf;

use blip2_random_checkpoint::{shape_config, write, Options, SHAPES};

const USAGE: &str = "usage: random-checkpoint (--shape NAME | --config FILE) --out DIR \
                     [--dtype f16|f32|bf16] [--seed N] [--shard-mb N]";

fn run() -> Result<String, Box<dyn std::error::Error>> {
    let mut config = None;
    let mut shape = None;
    let mut out = None;
    let mut options = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--shape" => {
                let name = value()?;
                let doc = shape_config(&name).ok_or(format!(
                    "unknown shape {name:?}; known: {}",
                    SHAPES.join(", ")
                ))?;
                config = Some(doc);
                shape = Some(name);
            }
            "--config" => {
                let path = value()?;
                let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
                config = Some(serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?);
            }
            "--out" => out = Some(PathBuf::from(value()?)),
            "--dtype" => options.dtype = value()?.parse()?,
            "--seed" => options.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--shard-mb" => {
                let mb: u64 = value()?.parse().map_err(|e| format!("--shard-mb: {e}"))?;
                options.max_shard_bytes = mb.max(1) * 1_000_000;
            }
            "-h" | "--help" => return Ok(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
        }
    }
    let (Some(config), Some(out)) = (config, out) else {
        return Err(USAGE.into());
    };
    let written = write(&out, config, options)?;
    Ok(serde_json::json!({
        "shape": shape,
        "dir": out,
        "dtype": options.dtype.torch_name(),
        "tensors": written.tensors,
        "parameters": written.parameters,
        "bytes": written.bytes,
        "seconds": written.seconds,
        "gb_per_s": written.bytes as f64 / 1e9 / written.seconds,
    })
    .to_string())
}

fn main() {
    match run() {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
