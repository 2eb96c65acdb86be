//! The `blip2` command.
//!
//! Today it inspects checkpoints and preprocesses images; captioning, questions, matching and
//! embeddings arrive with the models (see the repository's issues).

use std::process::ExitCode;

use blip2::preprocess::{load_image, ImageLimits};
use blip2::Checkpoint;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "blip2",
    version,
    about = "BLIP-2 on burn: image captioning, questions and retrieval"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a checkpoint holds and how its image processor sees the given images.
    Inspect {
        /// A model folder, or a hub id already in the Hugging Face cache.
        #[arg(long, default_value = "Salesforce/blip2-opt-2.7b")]
        model: String,
        /// Branch, tag or commit of a hub id.
        #[arg(long)]
        revision: Option<String>,
        /// Images to preprocess.
        images: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> blip2::Result<()> {
    match cli.command {
        Command::Inspect {
            model,
            revision,
            images,
        } => {
            let checkpoint = Checkpoint::open(&model, revision.as_deref())?;
            println!("{}", checkpoint.summary());
            for path in images {
                let image = load_image(&path, ImageLimits::default())?;
                let pixels = checkpoint.image_processor().preprocess(&image)?;
                println!(
                    "image        {path}: {}x{} -> pixel_values {:?}",
                    image.width(),
                    image.height(),
                    pixels.shape()
                );
            }
            Ok(())
        }
    }
}
