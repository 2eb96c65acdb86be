//! `Blip2`: a loaded captioning / question-answering model.

use blip2_core::config::{ModelFamily, TextConfig};
use blip2_core::image::{ImageProcessor, PixelValues};
use blip2_core::{Error, Quantization, Result, WeightDType, Weights};
use blip2_hub::Tokenizer;
use blip2_lm::generation::Prompt;
use blip2_lm::{
    generate, GeneratedSequence, GenerationConfig, LanguageModel, LlamaForCausalLM, OptForCausalLM,
    StopReason, T5ForConditionalGeneration, Timed,
};
use burn::tensor::{Device, Tensor};
use image::DynamicImage;
use std::fmt;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::prompt::{pad_right, InputLayout, SpecialTokens};
use crate::stream::TextStream;
use crate::Blip2Builder;
use crate::{as_strs, Checkpoint, ImageEmbeddings, ImageEncoder};

/// The default question template of [`Blip2::ask`] for BLIP-2, as in the BLIP-2 paper and model
/// cards.
pub const DEFAULT_QUESTION_TEMPLATE: &str = "Question: {} Answer:";

/// The default question template of [`Blip2::ask`] for InstructBLIP: the question is the
/// instruction, as in the InstructBLIP model cards.
pub const INSTRUCTBLIP_QUESTION_TEMPLATE: &str = "{}";

/// The instruction [`Blip2::caption`] gives InstructBLIP (BLIP-2 captions from no prompt at all):
/// the captioning prompt of the InstructBLIP authors' evaluation (LAVIS).
pub const INSTRUCTBLIP_CAPTION_PROMPT: &str = "A short image caption.";

/// No prompts, for [`Blip2::generate`] and its relatives when captioning: the prompt
/// arguments take any `&[impl AsRef<str>]` (`&[&str]`, `&[String]`, `&Vec<String>`), so a bare
/// `&[]` has no element type to infer.
pub const NO_PROMPTS: &[&str] = &[];

/// A loaded BLIP-2 model: image encoder, language model, tokenizer and image processor.
///
/// `Blip2` is `Send + Sync`: one loaded model can serve several threads.
pub struct Blip2 {
    encoder: ImageEncoder,
    language_model: TextModel,
    tokenizer: Tokenizer,
    /// InstructBLIP's Q-Former tokenizer (BERT WordPiece), and the id it pads with.
    qformer_tokenizer: Option<(Tokenizer, u32)>,
    processor: ImageProcessor,
    generation: GenerationConfig,
    layout: InputLayout,
    num_image_tokens: usize,
    question_template: String,
    dtype: WeightDType,
    quantization: Quantization,
}

impl fmt::Debug for Blip2 {
    /// What was loaded, not the weights.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let language_model = match &self.language_model {
            TextModel::Opt(_) => "OPT",
            TextModel::T5(_) => "T5",
            TextModel::Llama(_) => "LLaMA",
        };
        f.debug_struct("Blip2")
            .field("instructblip", &self.qformer_tokenizer.is_some())
            .field("language_model", &language_model)
            .field("dtype", &self.dtype)
            .field("quantization", &self.quantization)
            .field("device", self.encoder.device())
            .field("num_image_tokens", &self.num_image_tokens)
            .field("question_template", &self.question_template)
            .finish_non_exhaustive()
    }
}

/// The language models `Blip2` can drive.
#[derive(Debug)]
#[non_exhaustive]
pub enum TextModel {
    /// OPT (`blip2-opt-2.7b`, `blip2-opt-6.7b`).
    Opt(Box<OptForCausalLM>),
    /// Flan-T5 (`blip2-flan-t5-xl`, `blip2-flan-t5-xxl`, `instructblip-flan-t5-xl`,
    /// `instructblip-flan-t5-xxl`).
    T5(Box<T5ForConditionalGeneration>),
    /// LLaMA / Vicuna (`instructblip-vicuna-7b`, `instructblip-vicuna-13b`).
    Llama(Box<LlamaForCausalLM>),
}

impl TextModel {
    /// Loads the language model `text` describes from `weights` (the `language_model.` view).
    fn load(text: &TextConfig, weights: &Weights, device: &Device) -> Result<Self> {
        Ok(match text {
            TextConfig::Opt(c) => {
                TextModel::Opt(Box::new(OptForCausalLM::load(weights, c, device)?))
            }
            TextConfig::Llama(c) => {
                TextModel::Llama(Box::new(LlamaForCausalLM::load(weights, c, device)?))
            }
            // T5 overflows in f16 (transformers keeps its `wo` layers in f32 there); it always
            // runs in f32 here.
            TextConfig::T5(c) => TextModel::T5(Box::new(T5ForConditionalGeneration::load(
                &weights.with_dtype(WeightDType::F32),
                c,
                device,
            )?)),
        })
    }

    /// [`blip2_lm::check_device`] on the model.
    fn check_device(&self) -> Result<()> {
        match self {
            TextModel::Opt(lm) => blip2_lm::check_device(lm.as_ref()),
            TextModel::T5(lm) => blip2_lm::check_device(lm.as_ref()),
            TextModel::Llama(lm) => blip2_lm::check_device(lm.as_ref()),
        }
    }

    /// The token embeddings of `ids` (equal-length rows).
    fn embed_tokens(&self, ids: &[Vec<u32>]) -> Result<Tensor<3>> {
        match self {
            TextModel::Opt(lm) => lm.embed_tokens(ids),
            TextModel::T5(lm) => lm.embed_tokens(ids),
            TextModel::Llama(lm) => lm.embed_tokens(ids),
        }
    }
}

/// One generated text.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The decoded text (special tokens skipped, whitespace trimmed).
    pub text: String,
    /// The generated token ids (not the prompt), with the final EOS when it stopped on one.
    pub token_ids: Vec<u32>,
    /// Why generation stopped.
    pub stop_reason: StopReason,
}

/// Where the time of one [`Blip2::generate_timed`] call went (host wall-clock time).
///
/// On GPU backends queued work is counted where the host next waits for it, so the split between
/// the phases is approximate there; the sum is exact.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Preprocessing and encoding the images (vision model, Q-Former, projection).
    pub encode: Duration,
    /// The language model's pass over the prompt (image queries and text), which yields the first
    /// token.
    pub prefill: Duration,
    /// All decoding steps after the prefill.
    pub decode: Duration,
    /// How many decoding steps ran (each adds one token to every unfinished row or beam).
    pub steps: usize,
}

impl Timings {
    /// Mean time of one decoding step, if any ran.
    pub fn decode_per_step(&self) -> Option<Duration> {
        u32::try_from(self.steps)
            .ok()
            .filter(|&n| n > 0)
            .map(|n| self.decode / n)
    }
}

impl Blip2Builder {
    /// The question template of [`Blip2::ask`] (default [`DEFAULT_QUESTION_TEMPLATE`]); `{}`
    /// marks the question. Loading refuses a template without `{}`.
    pub fn question_template(mut self, template: impl Into<String>) -> Self {
        self.question_template = Some(template.into());
        self
    }

    /// Loads the model.
    pub fn build(self) -> Result<Blip2> {
        if let Some(template) = &self.question_template {
            check_template(template)?;
        }
        let (checkpoint, device) = self.open()?;
        let mut blip2 = Blip2::load_quantized(&checkpoint, &device, self.dtype, self.quantization)?;
        if let Some(template) = self.question_template {
            blip2.question_template = template;
        }
        Ok(blip2)
    }
}

/// An error unless `template` has the `{}` a question goes into.
fn check_template(template: &str) -> Result<()> {
    if template.contains("{}") {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "the question template needs a {{}} placeholder, got {template:?}"
        )))
    }
}

/// An error unless `device`'s backend runs `dtype`.
fn check_dtype(device: &Device, dtype: WeightDType) -> Result<()> {
    if device.supports_dtype(dtype.to_burn()) {
        Ok(())
    } else {
        Err(Error::Unsupported(format!(
            "the backend of device {device:?} cannot run {dtype:?}; use F32"
        )))
    }
}

impl Blip2 {
    /// Loads `model` (a folder, or a hub id in the HF cache) on the default device.
    pub fn from_pretrained(model: impl AsRef<Path>) -> Result<Self> {
        Blip2Builder::new(model).build()
    }

    /// Options for loading `model`.
    pub fn builder(model: impl AsRef<Path>) -> Blip2Builder {
        Blip2Builder::new(model)
    }

    /// Loads an opened checkpoint on `device` (weights converted to f32).
    pub fn load(checkpoint: &Checkpoint, device: &Device) -> Result<Self> {
        Self::load_with_dtype(checkpoint, device, WeightDType::F32)
    }

    /// Loads an opened checkpoint on `device`, running in `dtype` (see [`Blip2Builder::dtype`]
    /// for which parts keep f32). Errors if the device's backend cannot run `dtype`.
    pub fn load_with_dtype(
        checkpoint: &Checkpoint,
        device: &Device,
        dtype: WeightDType,
    ) -> Result<Self> {
        Self::load_quantized(checkpoint, device, dtype, Quantization::None)
    }

    /// As [`Blip2::load_with_dtype`], with the language model's linear layers stored as
    /// `quantization` says (see [`Blip2Builder::quantization`]).
    pub fn load_quantized(
        checkpoint: &Checkpoint,
        device: &Device,
        dtype: WeightDType,
        quantization: Quantization,
    ) -> Result<Self> {
        check_dtype(device, dtype)?;
        let dir = checkpoint.dir();
        let config = dir.config();
        if config.is_retrieval() {
            return Err(Error::Unsupported(
                "this is a retrieval checkpoint (Blip2ForImageTextRetrieval); it cannot generate text"
                    .to_owned(),
            ));
        }
        let encoder = ImageEncoder::load(checkpoint, device, dtype)?;
        // The language model's view: an int8 one runs in f32 around its int8 products.
        let weights = match quantization {
            Quantization::None => Weights::new(checkpoint.weights(), dtype),
            Quantization::Int8 => {
                Weights::new(checkpoint.weights(), WeightDType::F32).with_quantization(quantization)
            }
        };
        let text = &config.text_config;
        let language_model = TextModel::load(text, &weights.pp("language_model"), device)?;
        if !crate::backend::is_cpu(device) {
            language_model.check_device()?;
        }
        checkpoint.warn_unread();
        let generation = GenerationConfig::from_file(
            dir.generation(),
            text.eos_token_ids(),
            text.pad_token_id(),
        );
        let tokenizer = dir.tokenizer()?;
        let tokenizer_pad = dir.pad_token().and_then(|t| tokenizer.token_to_id(t));
        let tokens = SpecialTokens::resolve(
            text,
            dir.generation(),
            &generation,
            tokenizer_pad,
            config.image_token_index,
        );
        let instructblip = config.family == ModelFamily::InstructBlip;
        let qformer_tokenizer = if instructblip {
            let pad = config.qformer_config.pad_token_id.unwrap_or(0);
            Some((dir.qformer_tokenizer()?, pad))
        } else {
            None
        };
        let question_template = if instructblip {
            INSTRUCTBLIP_QUESTION_TEMPLATE
        } else {
            DEFAULT_QUESTION_TEMPLATE
        };
        Ok(Blip2 {
            encoder,
            language_model,
            tokenizer,
            qformer_tokenizer,
            processor: ImageProcessor::new(dir.preprocessor().clone())?,
            generation,
            layout: InputLayout::new(tokens),
            num_image_tokens: dir.num_image_tokens(),
            question_template: question_template.to_owned(),
            dtype,
            quantization,
        })
    }

    /// The precision the model was loaded in (see [`Blip2Builder::dtype`]).
    pub fn dtype(&self) -> WeightDType {
        self.dtype
    }

    /// How the language model's linear layers store their weights (see
    /// [`Blip2Builder::quantization`]).
    pub fn quantization(&self) -> Quantization {
        self.quantization
    }

    /// How prompts become the language model's input rows, and the special tokens that uses.
    pub fn input_layout(&self) -> &InputLayout {
        &self.layout
    }

    /// The checkpoint's default generation settings (start from these to override some).
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }

    /// Replaces the question template of [`Blip2::ask`]; `{}` marks the question.
    /// On a model shared between threads, set it when loading instead
    /// ([`Blip2Builder::question_template`]).
    pub fn set_question_template(&mut self, template: impl Into<String>) -> Result<()> {
        let template = template.into();
        check_template(&template)?;
        self.question_template = template;
        Ok(())
    }

    /// The image encoder.
    pub fn image_encoder(&self) -> &ImageEncoder {
        &self.encoder
    }

    /// The language model.
    pub fn language_model(&self) -> &TextModel {
        &self.language_model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The image processor.
    pub fn image_processor(&self) -> &ImageProcessor {
        &self.processor
    }

    /// Preprocesses and encodes images once, to generate from them many times.
    pub fn encode_images(&self, images: &[DynamicImage]) -> Result<ImageEmbeddings> {
        let pixels = self.processor.preprocess_batch(images)?;
        self.encode_pixels(&pixels)
    }

    /// Encodes preprocessed images.
    pub fn encode_pixels(&self, pixels: &PixelValues) -> Result<ImageEmbeddings> {
        self.encoder.encode(pixels)
    }

    /// A caption for one image, with the checkpoint's generation settings: from no prompt for
    /// BLIP-2, from [`INSTRUCTBLIP_CAPTION_PROMPT`] for InstructBLIP.
    pub fn caption(&self, image: &DynamicImage) -> Result<String> {
        let out = self.generate(std::slice::from_ref(image), NO_PROMPTS, &self.generation)?;
        Ok(first_text(out))
    }

    /// The prompt a caption is generated from (what an empty prompt list means): none for
    /// BLIP-2, [`INSTRUCTBLIP_CAPTION_PROMPT`] for InstructBLIP.
    pub fn caption_prompt(&self) -> &'static str {
        if self.is_instructblip() {
            INSTRUCTBLIP_CAPTION_PROMPT
        } else {
            ""
        }
    }

    /// Whether this is an InstructBLIP model (its Q-Former reads the prompt too).
    pub fn is_instructblip(&self) -> bool {
        self.qformer_tokenizer.is_some()
    }

    /// InstructBLIP's Q-Former tokenizer; `None` for BLIP-2.
    pub fn qformer_tokenizer(&self) -> Option<&Tokenizer> {
        self.qformer_tokenizer.as_ref().map(|(t, _)| t)
    }

    /// The answer to `question` about one image (formatted with the question template:
    /// `"Question: {} Answer:"` by default for BLIP-2, the question itself for InstructBLIP).
    pub fn ask(&self, image: &DynamicImage, question: &str) -> Result<String> {
        let prompt = self.question_prompt(question);
        let out = self.generate(
            std::slice::from_ref(image),
            &[prompt.as_str()],
            &self.generation,
        )?;
        Ok(first_text(out))
    }

    /// The prompt [`Blip2::ask`] gives the language model for `question`: the question template
    /// with the question in its `{}`.
    pub fn question_prompt(&self, question: &str) -> String {
        self.question_template.replacen("{}", question, 1)
    }

    /// How many positions the language model's input takes for one image and `prompt`: one per
    /// query token, then the prompt's tokens with BOS (OPT) or EOS (T5) — what OpenAI's
    /// `usage.prompt_tokens` counts.
    pub fn input_tokens(&self, prompt: &str) -> Result<usize> {
        Ok(self.encoder.qformer().num_query_tokens() + self.prompt_row(prompt)?.len())
    }

    /// Generates from raw prompts: `prompts` is empty (captioning: no prompt for BLIP-2,
    /// [`INSTRUCTBLIP_CAPTION_PROMPT`] for InstructBLIP), one prompt for every image, or one per
    /// image. Returns `config.num_return_sequences` generations per image.
    pub fn generate(
        &self,
        images: &[DynamicImage],
        prompts: &[impl AsRef<str>],
        config: &GenerationConfig,
    ) -> Result<Vec<Vec<Generation>>> {
        if images.is_empty() {
            return Err(Error::InvalidInput("no images".to_owned()));
        }
        let embeddings = self.encode_images(images)?;
        self.generate_from_embeddings(&embeddings, prompts, config)
    }

    /// Like [`Blip2::generate`], from images encoded before.
    pub fn generate_from_embeddings(
        &self,
        embeddings: &ImageEmbeddings,
        prompts: &[impl AsRef<str>],
        config: &GenerationConfig,
    ) -> Result<Vec<Vec<Generation>>> {
        self.run(
            embeddings,
            &as_strs(prompts),
            config,
            &mut |_| ControlFlow::Continue(()),
            None,
        )
    }

    /// Like [`Blip2::generate`], also reporting where the time went.
    pub fn generate_timed(
        &self,
        images: &[DynamicImage],
        prompts: &[impl AsRef<str>],
        config: &GenerationConfig,
    ) -> Result<(Vec<Vec<Generation>>, Timings)> {
        if images.is_empty() {
            return Err(Error::InvalidInput("no images".to_owned()));
        }
        let start = Instant::now();
        let embeddings = self.encode_images(images)?;
        let encode = start.elapsed();
        let (out, timings) = self.generate_from_embeddings_timed(&embeddings, prompts, config)?;
        Ok((out, Timings { encode, ..timings }))
    }

    /// Like [`Blip2::generate_from_embeddings`], also reporting where the time went
    /// ([`Timings::encode`] is zero: the images were encoded before).
    pub fn generate_from_embeddings_timed(
        &self,
        embeddings: &ImageEmbeddings,
        prompts: &[impl AsRef<str>],
        config: &GenerationConfig,
    ) -> Result<(Vec<Vec<Generation>>, Timings)> {
        let mut timings = Timings::default();
        let out = self.run(
            embeddings,
            &as_strs(prompts),
            config,
            &mut |_| ControlFlow::Continue(()),
            Some(&mut timings),
        )?;
        Ok((out, timings))
    }

    /// Generates for one image and prompt (`None` to caption), calling `on_text` with each new
    /// piece of decoded text as tokens are produced. Greedy search or sampling only.
    ///
    /// The pieces, concatenated, are exactly the returned [`Generation::text`]: a piece is
    /// emitted only once its characters are complete (byte-level BPE splits multi-byte
    /// characters over several tokens). Return [`ControlFlow::Break`] from `on_text` to stop
    /// generating (say, when a client has gone away); the result then has
    /// [`StopReason::Stopped`] and the text streamed so far.
    pub fn generate_stream(
        &self,
        image: &DynamicImage,
        prompt: Option<&str>,
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        check_streamable(config)?;
        let embeddings = self.encode_images(std::slice::from_ref(image))?;
        self.generate_stream_from_embeddings(&embeddings, prompt, config, on_text)
    }

    /// Like [`Blip2::generate_stream`], from one image encoded before (`embeddings` of one
    /// image: see [`ImageEmbeddings::image`]).
    pub fn generate_stream_from_embeddings(
        &self,
        embeddings: &ImageEmbeddings,
        prompt: Option<&str>,
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        check_streamable(config)?;
        if embeddings.len() != 1 {
            return Err(Error::InvalidInput(format!(
                "streaming generates for one image; these embeddings hold {}",
                embeddings.len()
            )));
        }
        let prompts: Vec<&str> = prompt.into_iter().collect();
        let decode = |ids: &[u32]| self.tokenizer.decode(ids, true).unwrap_or_default();
        let mut stream = TextStream::default();
        let mut on_step = |chosen: &[Option<u32>]| match chosen.first() {
            Some(Some(token)) => match stream.push(*token, decode) {
                Some(piece) => on_text(&piece),
                None => ControlFlow::Continue(()),
            },
            _ => ControlFlow::Continue(()),
        };
        let out = self.run(embeddings, &prompts, config, &mut on_step, None)?;
        let generation = out
            .into_iter()
            .next()
            .and_then(|v| v.into_iter().next())
            .ok_or_else(|| Error::InvalidInput("nothing generated".to_owned()))?;
        if generation.stop_reason != StopReason::Stopped {
            if let Some(rest) = stream.finish(decode) {
                // Generation is over: the caller can no longer stop it.
                let _ = on_text(&rest);
            }
        }
        Ok(generation)
    }

    fn run(
        &self,
        embeddings: &ImageEmbeddings,
        prompts: &[&str],
        config: &GenerationConfig,
        on_step: &mut dyn FnMut(&[Option<u32>]) -> ControlFlow<()>,
        timings: Option<&mut Timings>,
    ) -> Result<Vec<Vec<Generation>>> {
        let prompt = self.prompt(embeddings, prompts)?;
        let sequences = match &self.language_model {
            TextModel::Opt(lm) => generate_with(lm.as_ref(), prompt, config, on_step, timings)?,
            TextModel::T5(lm) => generate_with(lm.as_ref(), prompt, config, on_step, timings)?,
            TextModel::Llama(lm) => generate_with(lm.as_ref(), prompt, config, on_step, timings)?,
        };
        sequences
            .into_iter()
            .map(|seqs| seqs.into_iter().map(|s| self.decode(s)).collect())
            .collect()
    }

    /// One prompt's token ids, unpadded: BOS first for OPT and LLaMA, EOS last for T5.
    fn prompt_row(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Tokenization(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(self.layout.row(encoding.get_ids()))
    }

    fn decode(&self, s: GeneratedSequence) -> Result<Generation> {
        let text = self
            .tokenizer
            .decode(&s.tokens, true)
            .map_err(|e| Error::Tokenization(format!("cannot decode tokens: {e}")))?;
        Ok(Generation {
            text: text.trim().to_owned(),
            token_ids: s.tokens,
            stop_reason: s.stop_reason,
        })
    }

    /// The language model's input for `prompts` about the encoded images, built as transformers'
    /// `Blip2Processor` + `generate` build it: the rows are laid out by [`Blip2::input_layout`]
    /// (OPT and LLaMA: BOS first, left padding; T5: EOS last, right padding), after
    /// `num_query_tokens` image tokens whose embeddings are the projected queries. For InstructBLIP, the queries are computed here: each prompt is also
    /// tokenized by the Q-Former's tokenizer (`[CLS] … [SEP]`, right-padded) and read by the
    /// Q-Former with its image ([`Blip2::instruction_rows`]); LLaMA rows are laid out as OPT's.
    pub fn prompt(
        &self,
        embeddings: &ImageEmbeddings,
        prompts: &[impl AsRef<str>],
    ) -> Result<Prompt> {
        let prompts = as_strs(prompts);
        let n = embeddings.len();
        let texts: Vec<&str> = match prompts.len() {
            0 => vec![self.caption_prompt(); n],
            1 => vec![prompts[0]; n],
            k if k == n => prompts,
            k => {
                return Err(Error::InvalidInput(format!(
                    "{k} prompts for {n} images: give none, one, or one per image"
                )))
            }
        };
        let instructed;
        let projected = if self.is_instructblip() {
            let rows = self.instruction_rows(&texts)?;
            instructed = self
                .encoder
                .instruct(embeddings, &rows.ids, &rows.padding())?
                .1;
            &instructed
        } else {
            embeddings.projected().ok_or_else(|| {
                Error::InvalidInput("these embeddings have no language projection".to_owned())
            })?
        };
        let rows = texts
            .iter()
            .map(|text| self.prompt_row(text))
            .collect::<Result<Vec<_>>>()?;
        let queries = projected.dims()[1];
        debug_assert!(self.layout.tokens().image.is_none() || queries == self.num_image_tokens);
        let rows = self.layout.batch(rows, queries);
        let text_embeds = self.language_model.embed_tokens(&rows.text_ids)?;
        // The projection runs in the vision side's precision, the language model maybe in another.
        let projected = projected.clone().cast(text_embeds.dtype());
        let embeds = Tensor::cat(vec![projected, text_embeds], 1);
        Ok(Prompt {
            embeds,
            attention_mask: rows.attention_mask,
            input_ids: rows.input_ids,
            processor_ids: rows.processor_ids,
        })
    }
}

/// InstructBLIP's Q-Former input for a batch of prompts ([`Blip2::instruction_rows`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstructionRows {
    /// Token ids of the Q-Former's tokenizer, one equal-length row per prompt.
    pub ids: Vec<Vec<u32>>,
    /// False at padding.
    pub attention_mask: Vec<Vec<bool>>,
}

impl InstructionRows {
    /// True at padding: the form the Q-Former takes.
    pub fn padding(&self) -> Vec<Vec<bool>> {
        self.attention_mask
            .iter()
            .map(|r| r.iter().map(|k| !k).collect())
            .collect()
    }
}

impl Blip2 {
    /// InstructBLIP's Q-Former input for `prompts` (one per image), as `InstructBlipProcessor`
    /// builds it: each tokenized by the Q-Former's tokenizer with its special tokens, rows
    /// right-padded to the longest. Errors for BLIP-2, which has no Q-Former tokenizer.
    pub fn instruction_rows(&self, prompts: &[impl AsRef<str>]) -> Result<InstructionRows> {
        let (tokenizer, pad) = self.qformer_tokenizer.as_ref().ok_or_else(|| {
            Error::Unsupported("BLIP-2's Q-Former reads no instruction".to_owned())
        })?;
        let rows = prompts
            .iter()
            .map(|p| {
                let text = p.as_ref();
                tokenizer
                    .encode(text, true)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| Error::Tokenization(format!("cannot tokenize {text:?}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let (ids, padding) = pad_right(rows, *pad);
        let attention_mask = padding
            .into_iter()
            .map(|r| r.into_iter().map(|p| !p).collect())
            .collect();
        Ok(InstructionRows {
            ids,
            attention_mask,
        })
    }
}

fn first_text(out: Vec<Vec<Generation>>) -> String {
    out.into_iter()
        .next()
        .and_then(|v| v.into_iter().next())
        .map(|g| g.text)
        .unwrap_or_default()
}

/// [`generate`], noting the prefill and decoding times in `timings` when given.
fn generate_with<M: LanguageModel>(
    lm: &M,
    prompt: Prompt,
    config: &GenerationConfig,
    on_step: &mut dyn FnMut(&[Option<u32>]) -> ControlFlow<()>,
    timings: Option<&mut Timings>,
) -> Result<Vec<Vec<GeneratedSequence>>> {
    let Some(timings) = timings else {
        return generate(lm, prompt, config, on_step);
    };
    let timed = Timed::new(lm);
    let out = generate(&timed, prompt, config, on_step);
    let record = timed.record();
    timings.prefill = record.prefill_time();
    timings.decode = record.decode_time(Instant::now());
    timings.steps = record.steps;
    out
}

/// Streaming emits one sequence's text.
fn check_streamable(config: &GenerationConfig) -> Result<()> {
    if config.num_beams > 1 || config.num_return_sequences > 1 {
        return Err(Error::InvalidInput(
            "streaming needs one sequence (num_beams = 1, num_return_sequences = 1)".to_owned(),
        ));
    }
    Ok(())
}
