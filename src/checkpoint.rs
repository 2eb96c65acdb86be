//! An opened checkpoint: its folder, parsed files, memory-mapped weights and image processor.

use std::fmt;
use std::path::Path;

use blip2_core::config::TextConfig;
use blip2_core::image::ImageProcessor;
use blip2_core::{Result, WeightSource};
use blip2_hub::{resolve_local, ModelDir, SafetensorsWeights};

/// A BLIP-2 checkpoint found locally (a folder, or a hub id already in the HF cache) and opened:
/// configs parsed and validated, weights memory-mapped (nothing converted yet), the image
/// processor built from its settings.
pub struct Checkpoint {
    dir: ModelDir,
    weights: SafetensorsWeights,
    processor: ImageProcessor,
}

impl Checkpoint {
    /// Finds and opens `model` (a folder's path, or a hub id in the HF cache) at `revision`
    /// (default `main`). Without the `download` feature this never touches the network; with
    /// it, a hub id missing from the cache is downloaded into it.
    ///
    /// `model` is anything path-like: `"Salesforce/blip2-opt-2.7b"`, a `String`, a `&Path`. An
    /// existing folder is opened as it is (any path, UTF-8 or not); otherwise it is looked up as
    /// a hub id.
    pub fn open(model: impl AsRef<Path>, revision: Option<&str>) -> Result<Self> {
        let model = model.as_ref();
        let path = match model.to_str() {
            Some(model) => match resolve_local(model, revision) {
                Ok(path) => path,
                #[cfg(feature = "download")]
                Err(blip2_core::Error::ModelNotFound { .. }) if blip2_hub::is_hub_id(model) => {
                    blip2_hub::download(model, revision.unwrap_or("main"))?
                }
                Err(e) => return Err(e),
            },
            // Not UTF-8, so not a hub id: a folder or nothing.
            None => model.to_owned(),
        };
        let dir = ModelDir::open(&path)?;
        let weights = dir.weights()?;
        let processor = ImageProcessor::new(dir.preprocessor().clone())?;
        tracing::debug!(path = %path.display(), tensors = weights.keys().len(), "opened checkpoint");
        Ok(Checkpoint {
            dir,
            weights,
            processor,
        })
    }

    /// The folder and its parsed JSON files.
    pub fn dir(&self) -> &ModelDir {
        &self.dir
    }

    /// The memory-mapped weights.
    pub fn weights(&self) -> &SafetensorsWeights {
        &self.weights
    }

    /// The image processor configured by the checkpoint.
    pub fn image_processor(&self) -> &ImageProcessor {
        &self.processor
    }

    /// Logs a warning naming the stored tensors that loading did not use (extra keys are
    /// ignored, not an error).
    pub(crate) fn warn_unread(&self) {
        let unread = self.weights.unread_keys();
        if !unread.is_empty() {
            tracing::warn!(
                count = unread.len(),
                first = ?&unread[..unread.len().min(5)],
                "tensors in {} were not used",
                self.weights.location()
            );
        }
    }

    /// A human-readable description of the checkpoint (see [`CheckpointSummary`]).
    pub fn summary(&self) -> CheckpointSummary<'_> {
        CheckpointSummary(self)
    }
}

/// Displays what a checkpoint holds: architecture sizes, image processing, weights.
pub struct CheckpointSummary<'a>(&'a Checkpoint);

impl fmt::Display for CheckpointSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ck = self.0;
        let c = ck.dir.config();
        let v = &c.vision_config;
        let q = &c.qformer_config;
        let (ih, iw) = v.image_hw();
        let (ph, pw) = v.patch_hw();
        writeln!(f, "checkpoint   {}", ck.dir.path().display())?;
        if !c.architectures.is_empty() {
            writeln!(f, "architecture {}", c.architectures.join(", "))?;
        }
        writeln!(
            f,
            "vision       ViT {} wide, {} layers, {} heads, ffn {}, {ih}x{iw} px in {ph}x{pw} patches ({} tokens)",
            v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size, v.num_positions()
        )?;
        writeln!(
            f,
            "q-former     {} wide, {} layers, {} heads, cross-attention every {}, {} queries",
            q.hidden_size,
            q.num_hidden_layers,
            q.num_attention_heads,
            q.cross_attention_frequency,
            c.num_query_tokens
        )?;
        match &c.text_config {
            TextConfig::Opt(t) => writeln!(
                f,
                "language     OPT {} wide, {} layers, {} heads, vocabulary {}, eos {:?}",
                t.hidden_size,
                t.num_hidden_layers,
                t.num_attention_heads,
                t.vocab_size,
                t.eos_token_ids()
            )?,
            TextConfig::T5(t) => writeln!(
                f,
                "language     T5 {} wide, {}+{} layers, {} heads, vocabulary {}, feed-forward {:?}",
                t.d_model,
                t.num_layers,
                t.decoder_layers(),
                t.num_heads,
                t.vocab_size,
                t.feed_forward_proj
            )?,
        }
        match c.image_token_index {
            Some(id) => writeln!(f, "image tokens {} x id {id}", ck.dir.num_image_tokens())?,
            None => writeln!(
                f,
                "image tokens none (queries prepended to the text embeddings)"
            )?,
        }
        let p = ck.processor.config();
        writeln!(
            f,
            "images       resize to {}x{} ({:?}), mean {:?}, std {:?}",
            p.size.height, p.size.width, p.resample, p.image_mean, p.image_std
        )?;
        let keys = ck.weights.keys();
        let mut elements = 0usize;
        let mut dtypes = std::collections::BTreeMap::<String, usize>::new();
        for key in &keys {
            elements += ck
                .weights
                .shape(key)
                .map_or(0, |s| s.iter().product::<usize>());
            if let Some(d) = ck.weights.stored_dtype(key) {
                *dtypes.entry(d).or_default() += 1;
            }
        }
        write!(
            f,
            "weights      {} tensors, {} parameters, stored as",
            keys.len(),
            elements
        )?;
        for (dtype, n) in dtypes {
            write!(f, " {dtype} ({n})")?;
        }
        Ok(())
    }
}
