//! An opened checkpoint: its folder, parsed files, memory-mapped weights and image processor.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use blip2_core::config::{TextConfig, VisionConfig};
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
    pub fn summary(&self) -> CheckpointSummary {
        CheckpointSummary(self.info())
    }

    /// What the checkpoint holds, as data (`blip2 inspect --json` prints it). Loads the
    /// tokenizer to report on it; converts no weights.
    pub fn info(&self) -> CheckpointInfo {
        let c = self.dir.config();
        let retrieval = c.is_retrieval();
        // A retrieval checkpoint's text_config is transformers' unused default.
        let language = (!retrieval).then(|| LanguageInfo::of(&c.text_config));
        let (tokenizer_vocab, tokenizer_error) = match self.dir.tokenizer() {
            Ok(t) => (Some(t.get_vocab_size(true)), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let q = &c.qformer_config;
        let p = self.processor.config();
        CheckpointInfo {
            path: self.dir.path().to_owned(),
            architectures: c.architectures.clone(),
            kind: if retrieval {
                CheckpointKind::Retrieval
            } else {
                CheckpointKind::Generation
            },
            vision: VisionInfo::of(&c.vision_config),
            qformer: QFormerInfo {
                hidden_size: q.hidden_size,
                layers: q.num_hidden_layers,
                heads: q.num_attention_heads,
                cross_attention_frequency: q.cross_attention_frequency,
                queries: c.num_query_tokens,
            },
            language,
            image_token: c.image_token_index.map(|id| ImageTokenInfo {
                id,
                count: self.dir.num_image_tokens(),
            }),
            images: ImagesInfo {
                size: [p.size.height, p.size.width],
                resample: format!("{:?}", p.resample),
                mean: p.image_mean,
                std: p.image_std,
            },
            tokenizer_vocab,
            tokenizer_error,
            weights: self.weights_info(),
        }
    }

    /// How many tensors and parameters the weight files hold, by stored dtype.
    fn weights_info(&self) -> WeightsInfo {
        let keys = self.weights.keys();
        let mut parameters = 0usize;
        let mut stored = BTreeMap::<String, usize>::new();
        for key in &keys {
            parameters += self
                .weights
                .shape(key)
                .map_or(0, |s| s.iter().product::<usize>());
            if let Some(d) = self.weights.stored_dtype(key) {
                *stored.entry(d).or_default() += 1;
            }
        }
        WeightsInfo {
            tensors: keys.len(),
            parameters,
            stored,
        }
    }
}

impl VisionInfo {
    fn of(v: &VisionConfig) -> Self {
        let (ih, iw) = v.image_hw();
        let (ph, pw) = v.patch_hw();
        VisionInfo {
            hidden_size: v.hidden_size,
            layers: v.num_hidden_layers,
            heads: v.num_attention_heads,
            intermediate_size: v.intermediate_size,
            image_size: [ih, iw],
            patch_size: [ph, pw],
            tokens: v.num_positions(),
        }
    }
}

impl LanguageInfo {
    fn of(text: &TextConfig) -> Self {
        let decoder_only = |model, hidden_size, layers, heads, vocab_size| LanguageInfo {
            model,
            hidden_size,
            layers,
            decoder_layers: None,
            heads,
            vocab_size,
            eos_token_ids: text.eos_token_ids(),
            feed_forward: None,
        };
        match text {
            TextConfig::Opt(t) => decoder_only(
                LanguageKind::Opt,
                t.hidden_size,
                t.num_hidden_layers,
                t.num_attention_heads,
                t.vocab_size,
            ),
            TextConfig::Llama(t) => decoder_only(
                LanguageKind::Llama,
                t.hidden_size,
                t.num_hidden_layers,
                t.num_attention_heads,
                t.vocab_size,
            ),
            TextConfig::T5(t) => LanguageInfo {
                model: LanguageKind::T5,
                hidden_size: t.d_model,
                layers: t.num_layers,
                decoder_layers: Some(t.decoder_layers()),
                heads: t.num_heads,
                vocab_size: t.vocab_size,
                eos_token_ids: t.eos_token_ids(),
                feed_forward: Some(t.feed_forward_proj.clone()),
            },
        }
    }
}

/// What a checkpoint holds ([`Checkpoint::info`]); serializes to `blip2 inspect --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CheckpointInfo {
    /// The model folder.
    pub path: PathBuf,
    /// `architectures` of config.json.
    pub architectures: Vec<String>,
    /// What the checkpoint is for.
    pub kind: CheckpointKind,
    /// The vision encoder.
    pub vision: VisionInfo,
    /// The Q-Former.
    pub qformer: QFormerInfo,
    /// The language model; `None` for a retrieval checkpoint, which has none.
    pub language: Option<LanguageInfo>,
    /// The `<image>` token the processor repeats, if the checkpoint has one.
    pub image_token: Option<ImageTokenInfo>,
    /// How images are preprocessed.
    pub images: ImagesInfo,
    /// The tokenizer's vocabulary size, when `tokenizer.json` loads.
    pub tokenizer_vocab: Option<usize>,
    /// Why the tokenizer does not load (the model cannot run without it).
    pub tokenizer_error: Option<String>,
    /// The stored tensors.
    pub weights: WeightsInfo,
}

/// What a checkpoint is for (serialized in lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// Captions and questions ([`crate::Blip2`]).
    Generation,
    /// Image–text matching and embeddings ([`crate::Blip2Retrieval`]).
    Retrieval,
}

/// Which language model a checkpoint has (serialized in lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LanguageKind {
    /// OPT.
    Opt,
    /// Flan-T5.
    T5,
    /// LLaMA / Vicuna.
    Llama,
}

/// The vision encoder's sizes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct VisionInfo {
    /// Width.
    pub hidden_size: usize,
    /// Layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Input height and width in pixels.
    pub image_size: [usize; 2],
    /// Patch height and width.
    pub patch_size: [usize; 2],
    /// Tokens (patches and the class token).
    pub tokens: usize,
}

/// The Q-Former's sizes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct QFormerInfo {
    /// Width.
    pub hidden_size: usize,
    /// Layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// A cross-attention layer every this many layers.
    pub cross_attention_frequency: usize,
    /// Learned queries.
    pub queries: usize,
}

/// The language model's sizes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LanguageInfo {
    /// Which language model.
    pub model: LanguageKind,
    /// Width.
    pub hidden_size: usize,
    /// Layers (T5: encoder layers).
    pub layers: usize,
    /// T5's decoder layers.
    pub decoder_layers: Option<usize>,
    /// Attention heads.
    pub heads: usize,
    /// Vocabulary.
    pub vocab_size: usize,
    /// Tokens that end generation.
    pub eos_token_ids: Vec<u32>,
    /// T5's `feed_forward_proj`.
    pub feed_forward: Option<String>,
}

/// The `<image>` token.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ImageTokenInfo {
    /// Its id.
    pub id: u32,
    /// How many the processor puts before the text.
    pub count: usize,
}

/// Image preprocessing.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ImagesInfo {
    /// Resized to this height and width.
    pub size: [usize; 2],
    /// The resampling filter.
    pub resample: String,
    /// Per-channel mean.
    pub mean: [f64; 3],
    /// Per-channel standard deviation.
    pub std: [f64; 3],
}

/// The stored tensors.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct WeightsInfo {
    /// How many.
    pub tensors: usize,
    /// Their elements, in all.
    pub parameters: usize,
    /// Tensors per stored dtype.
    pub stored: BTreeMap<String, usize>,
}

/// Displays what a checkpoint holds: architecture sizes, image processing, tokenizer, weights.
pub struct CheckpointSummary(CheckpointInfo);

impl fmt::Display for CheckpointSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.0;
        let v = &i.vision;
        let q = &i.qformer;
        writeln!(f, "checkpoint   {}", i.path.display())?;
        if !i.architectures.is_empty() {
            let kind = match i.kind {
                CheckpointKind::Generation => "generation",
                CheckpointKind::Retrieval => "retrieval",
            };
            writeln!(f, "architecture {} ({kind})", i.architectures.join(", "))?;
        }
        let ([ih, iw], [ph, pw]) = (v.image_size, v.patch_size);
        writeln!(
            f,
            "vision       ViT {} wide, {} layers, {} heads, ffn {}, {ih}x{iw} px in {ph}x{pw} patches ({} tokens)",
            v.hidden_size, v.layers, v.heads, v.intermediate_size, v.tokens
        )?;
        writeln!(
            f,
            "q-former     {} wide, {} layers, {} heads, cross-attention every {}, {} queries",
            q.hidden_size, q.layers, q.heads, q.cross_attention_frequency, q.queries
        )?;
        match &i.language {
            None => writeln!(f, "language     none (retrieval: ITM and ITC heads)")?,
            Some(l) if l.model == LanguageKind::T5 => writeln!(
                f,
                "language     T5 {} wide, {}+{} layers, {} heads, vocabulary {}, feed-forward {:?}",
                l.hidden_size,
                l.layers,
                l.decoder_layers.unwrap_or(l.layers),
                l.heads,
                l.vocab_size,
                l.feed_forward.as_deref().unwrap_or_default()
            )?,
            Some(l) if l.model == LanguageKind::Llama => writeln!(
                f,
                "language     LLaMA {} wide, {} layers, {} heads, vocabulary {}, eos {:?}",
                l.hidden_size, l.layers, l.heads, l.vocab_size, l.eos_token_ids
            )?,
            Some(l) => writeln!(
                f,
                "language     OPT {} wide, {} layers, {} heads, vocabulary {}, eos {:?}",
                l.hidden_size, l.layers, l.heads, l.vocab_size, l.eos_token_ids
            )?,
        }
        match &i.image_token {
            Some(t) => writeln!(f, "image tokens {} x id {}", t.count, t.id)?,
            None if i.language.is_none() => {}
            None => writeln!(
                f,
                "image tokens none (queries prepended to the text embeddings)"
            )?,
        }
        let p = &i.images;
        writeln!(
            f,
            "images       resize to {}x{} ({}), mean {:?}, std {:?}",
            p.size[0], p.size[1], p.resample, p.mean, p.std
        )?;
        match (&i.tokenizer_vocab, &i.tokenizer_error) {
            (Some(n), _) => writeln!(f, "tokenizer    tokenizer.json, vocabulary {n}")?,
            (None, e) => writeln!(
                f,
                "tokenizer    MISSING: {} (the model cannot run without it)",
                e.as_deref().unwrap_or("not found")
            )?,
        }
        let w = &i.weights;
        write!(
            f,
            "weights      {} tensors, {} parameters, stored as",
            w.tensors, w.parameters
        )?;
        for (dtype, n) in &w.stored {
            write!(f, " {dtype} ({n})")?;
        }
        Ok(())
    }
}
