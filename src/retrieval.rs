//! `Blip2Retrieval`: image–text matching (ITM), contrastive similarity (ITC) and embeddings, with
//! the `Blip2ForImageTextRetrieval` checkpoint (`Salesforce/blip2-itm-vit-g`).

use std::fmt;
use std::path::Path;

use blip2_core::image::ImageProcessor;
use blip2_core::{Error, Quantization, Result, WeightDType, Weights};
use blip2_hub::Tokenizer;
use blip2_qformer::RetrievalHeads;
use burn::tensor::{Device, Tensor};
use image::DynamicImage;

use crate::{as_strs, Blip2RetrievalBuilder, Checkpoint, ImageEncoder};

/// A loaded retrieval model.
///
/// Scores, as transformers' `Blip2ForImageTextRetrieval` computes them:
///
/// - **ITC similarity** ([`Blip2Retrieval::similarity`]): the cosine between the L2-normalised
///   projected text `[CLS]` feature and each of the image's L2-normalised projected query
///   features, maximised over the queries. A cosine in [-1, 1], not a probability; no temperature.
/// - **ITM probability** ([`Blip2Retrieval::match_probability`]): the Q-Former reads image and
///   text together; `itm_head` over the query outputs, averaged over the queries, gives two
///   logits; the probability is the softmax of the "match" logit. Slower (one joint pass per pair)
///   and more accurate.
pub struct Blip2Retrieval {
    encoder: ImageEncoder,
    heads: RetrievalHeads,
    tokenizer: Tokenizer,
    processor: ImageProcessor,
    pad_token: u32,
}

/// Texts tokenized for the Q-Former: equal-length rows of ids and their padding flags.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedTexts {
    /// `[CLS] … [SEP]` ids, right-padded.
    pub ids: Vec<Vec<u32>>,
    /// `padding[row][pos]`: true at padding.
    pub padding: Vec<Vec<bool>>,
}

/// Image–text pairs the ITM pass reads at once (each holds the image's vision features: 257 ×
/// 1408 floats, 1.4 MB, for the real model), bounding memory for many images and texts.
pub const ITM_PAIRS_PER_PASS: usize = 32;

/// ITC similarity and ITM probability of every image with every text ([`Blip2Retrieval::scores`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// ITC similarity, `[images][texts]`.
    pub itc: Vec<Vec<f32>>,
    /// ITM probability, `[images][texts]`; `None` when not asked for.
    pub itm: Option<Vec<Vec<f32>>>,
}

/// One text ranked for an image by [`Blip2Retrieval::rank`].
#[derive(Debug, Clone, PartialEq)]
pub struct RankedText {
    /// Index of the text in the input.
    pub index: usize,
    /// ITC similarity (cosine).
    pub itc: f32,
    /// ITM "match" logit.
    pub itm_logit: f32,
    /// `itm_logit + itc`, the score BLIP-2's retrieval ranks by.
    pub score: f32,
}

impl fmt::Debug for Blip2Retrieval {
    /// What was loaded, not the weights.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blip2Retrieval")
            .field("device", self.encoder.device())
            .field(
                "num_query_tokens",
                &self.encoder.qformer().num_query_tokens(),
            )
            .field("max_text_positions", &self.heads.embeddings.max_positions())
            .finish_non_exhaustive()
    }
}

impl Blip2RetrievalBuilder {
    /// Loads the model.
    pub fn build(self) -> Result<Blip2Retrieval> {
        if self.dtype != WeightDType::F32 {
            return Err(Error::Unsupported(format!(
                "image-text matching and embeddings run in f32 only (asked for {})",
                self.dtype
            )));
        }
        if self.quantization != Quantization::None {
            return Err(Error::Unsupported(
                "quantization applies to a language model, which a retrieval checkpoint does not have"
                    .to_owned(),
            ));
        }
        let (checkpoint, device) = self.open()?;
        Blip2Retrieval::load(&checkpoint, &device)
    }
}

impl Blip2Retrieval {
    /// Loads a retrieval checkpoint (a folder, or a hub id in the HF cache) on the default device.
    pub fn from_pretrained(model: impl AsRef<Path>) -> Result<Self> {
        Blip2RetrievalBuilder::new(model).build()
    }

    /// Options for loading `model` (device, revision).
    pub fn builder(model: impl AsRef<Path>) -> Blip2RetrievalBuilder {
        Blip2RetrievalBuilder::new(model)
    }

    /// Loads an opened retrieval checkpoint on `device` (weights converted to f32).
    pub fn load(checkpoint: &Checkpoint, device: &Device) -> Result<Self> {
        let dir = checkpoint.dir();
        let config = dir.config();
        let weights = Weights::new(checkpoint.weights(), WeightDType::F32);
        if !config.qformer_config.use_qformer_text_input || !weights.contains("itm_head.weight") {
            return Err(Error::Unsupported(format!(
                "{} is not a retrieval checkpoint (Blip2ForImageTextRetrieval, e.g. \
                 Salesforce/blip2-itm-vit-g): it has no ITM/ITC heads",
                dir.path().display()
            )));
        }
        let tokenizer = dir.tokenizer()?;
        let pad_token = config.qformer_config.pad_token_id.unwrap_or(0);
        checkpoint.warn_unread();
        Ok(Blip2Retrieval {
            encoder: ImageEncoder::from_weights(config, &weights, device)?,
            heads: RetrievalHeads::load(&weights, config, device)?,
            tokenizer,
            processor: ImageProcessor::new(dir.preprocessor().clone())?,
            pad_token,
        })
    }

    /// The image processor.
    pub fn image_processor(&self) -> &ImageProcessor {
        &self.processor
    }

    /// Tokenizes texts as BERT does (`[CLS] text [SEP]`) and right-pads them; returns the ids and
    /// the padding flags. A text longer than the Q-Former's position table (512 in the real
    /// model) keeps its first tokens and its final `[SEP]`; transformers would fail on it instead.
    /// An empty text is an error.
    pub fn tokenize(&self, texts: &[impl AsRef<str>]) -> Result<TokenizedTexts> {
        let texts = as_strs(texts);
        if texts.is_empty() {
            return Err(Error::InvalidInput("no texts".to_owned()));
        }
        let max = self.heads.embeddings.max_positions();
        let mut rows = Vec::with_capacity(texts.len());
        for text in &texts {
            if text.trim().is_empty() {
                return Err(Error::InvalidInput(
                    "an empty text cannot be matched".to_owned(),
                ));
            }
            let encoding = self
                .tokenizer
                .encode(*text, true)
                .map_err(|e| Error::Tokenization(format!("cannot tokenize {text:?}: {e}")))?;
            let mut ids = encoding.get_ids().to_vec();
            if ids.len() > max {
                let last = *ids.last().expect("longer than max");
                ids.truncate(max - 1);
                ids.push(last);
                tracing::warn!(max, "text truncated to the Q-Former's position table");
            }
            rows.push(ids);
        }
        let (ids, padding) = crate::prompt::pad_right(rows, self.pad_token);
        Ok(TokenizedTexts { ids, padding })
    }

    /// Vision features and Q-Former query outputs of preprocessed images.
    fn encode(&self, images: &[DynamicImage]) -> Result<(Tensor<3>, Tensor<3>)> {
        if images.is_empty() {
            return Err(Error::InvalidInput("no images".to_owned()));
        }
        let pixels = self.processor.preprocess_batch(images)?;
        let vision = self
            .encoder
            .vision()
            .forward(self.encoder.pixel_tensor(&pixels))?
            .last_hidden_state;
        let queries = self.encoder.qformer().forward_queries(vision.clone())?;
        Ok((vision, queries))
    }

    fn image_features(&self, images: &[DynamicImage]) -> Result<Tensor<3>> {
        let (_, queries) = self.encode(images)?;
        Ok(self.heads.image_features(queries))
    }

    fn text_features(&self, texts: &[impl AsRef<str>]) -> Result<Tensor<2>> {
        self.text_features_of(&self.tokenize(texts)?)
    }

    fn text_features_of(&self, texts: &TokenizedTexts) -> Result<Tensor<2>> {
        let embeds = self.heads.embeddings.forward(&texts.ids)?;
        let out = self
            .encoder
            .qformer()
            .forward_text(embeds, &texts.padding)?;
        Ok(self.heads.text_features(out))
    }

    /// ITC image embeddings: for each image, one L2-normalised vector per query
    /// (`[images][queries][dim]`; 32 × 256 for the real model). For a vector index, store all
    /// of an image's vectors and score a text by the best one, as [`Blip2Retrieval::similarity`].
    pub fn image_embeddings(&self, images: &[DynamicImage]) -> Result<Vec<Vec<Vec<f32>>>> {
        let features = self.image_features(images)?;
        let [n, q, d] = features.dims();
        let flat = to_vec(features)?;
        Ok((0..n)
            .map(|i| {
                (0..q)
                    .map(|j| flat[(i * q + j) * d..(i * q + j + 1) * d].to_vec())
                    .collect()
            })
            .collect())
    }

    /// ITC text embeddings: one L2-normalised vector per text (`[texts][dim]`).
    pub fn text_embeddings(&self, texts: &[impl AsRef<str>]) -> Result<Vec<Vec<f32>>> {
        let features = self.text_features(texts)?;
        let [n, d] = features.dims();
        let flat = to_vec(features)?;
        Ok((0..n).map(|i| flat[i * d..(i + 1) * d].to_vec()).collect())
    }

    /// ITC similarity of every image with every text, `[images][texts]`: the cosine, maximised
    /// over the image's queries.
    pub fn similarity(
        &self,
        images: &[DynamicImage],
        texts: &[impl AsRef<str>],
    ) -> Result<Vec<Vec<f32>>> {
        Ok(self.scores(images, texts, false)?.itc)
    }

    /// ITC similarity, and with `with_itm` the ITM probability, of every image with every text,
    /// each image encoded once. ITM runs in passes of at most [`ITM_PAIRS_PER_PASS`] pairs, so
    /// memory stays bounded however many images and texts there are.
    pub fn scores(
        &self,
        images: &[DynamicImage],
        texts: &[impl AsRef<str>],
        with_itm: bool,
    ) -> Result<Scores> {
        let (vision, queries) = self.encode(images)?;
        let tokenized = self.tokenize(texts)?;
        let itc = self.itc(queries, &tokenized)?;
        let itm = if with_itm {
            let logits = self.itm_logits_of(&vision, &tokenized)?;
            Some(match_rows(&logits, texts.len()))
        } else {
            None
        };
        Ok(Scores { itc, itm })
    }

    /// ITC similarity `[images][texts]` of the images' Q-Former query outputs with the texts.
    fn itc(&self, queries: Tensor<3>, texts: &TokenizedTexts) -> Result<Vec<Vec<f32>>> {
        let image = self.heads.image_features(queries);
        let text = self.text_features_of(texts)?;
        let [n, q, d] = image.dims();
        let t = text.dims()[0];
        // [n * q, d] x [d, t] -> [n, q, t] -> max over queries.
        let sims = image
            .reshape([n * q, d])
            .matmul(text.transpose())
            .reshape([n, q, t])
            .max_dim(1)
            .reshape([n, t]);
        rows(sims)
    }

    /// ITM logits `[no match, match]` of every image (its vision features, `[images, tokens,
    /// width]`) with every text, image-major: `[images * texts]`. The pairs go through the
    /// Q-Former in passes of at most [`ITM_PAIRS_PER_PASS`].
    fn itm_logits_of(&self, vision: &Tensor<3>, texts: &TokenizedTexts) -> Result<Vec<[f32; 2]>> {
        let [n, tokens, width] = vision.dims();
        let t = texts.ids.len();
        let queries = self.encoder.qformer().num_query_tokens();
        let mut logits = Vec::with_capacity(n * t);
        let pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| (0..t).map(move |j| (i, j))).collect();
        for chunk in pairs.chunks(ITM_PAIRS_PER_PASS) {
            let rows: Vec<Tensor<3>> = chunk
                .iter()
                .map(|&(i, _)| vision.clone().slice(burn::tensor::s![i..i + 1]))
                .collect();
            let image_rows = Tensor::cat(rows, 0);
            debug_assert_eq!(image_rows.dims(), [chunk.len(), tokens, width]);
            let ids: Vec<Vec<u32>> = chunk.iter().map(|&(_, j)| texts.ids[j].clone()).collect();
            let padding: Vec<Vec<bool>> = chunk
                .iter()
                .map(|&(_, j)| texts.padding[j].clone())
                .collect();
            let embeds = self.heads.embeddings.forward(&ids)?;
            let joint = self
                .encoder
                .qformer()
                .forward_joint(image_rows, embeds, &padding)?;
            let flat = to_vec(self.heads.itm_logits(joint, queries))?;
            logits.extend(flat.chunks(2).map(|c| [c[0], c[1]]));
        }
        Ok(logits)
    }

    fn itm_logits(
        &self,
        images: &[DynamicImage],
        texts: &[impl AsRef<str>],
    ) -> Result<Vec<[f32; 2]>> {
        let (vision, _) = self.encode(images)?;
        self.itm_logits_of(&vision, &self.tokenize(texts)?)
    }

    /// ITM logits `[no match, match]` of each image with each text, `[images][texts]`.
    pub fn match_logits(
        &self,
        images: &[DynamicImage],
        texts: &[impl AsRef<str>],
    ) -> Result<Vec<Vec<[f32; 2]>>> {
        let pairs = self.itm_logits(images, texts)?;
        Ok(pairs
            .chunks(texts.len())
            .map(<[[f32; 2]]>::to_vec)
            .collect())
    }

    /// ITM probability that each image matches each text, `[images][texts]`.
    pub fn match_probability(
        &self,
        images: &[DynamicImage],
        texts: &[impl AsRef<str>],
    ) -> Result<Vec<Vec<f32>>> {
        let logits = self.itm_logits(images, texts)?;
        Ok(match_rows(&logits, texts.len()))
    }

    /// For each image, the `k` texts with the highest ITC similarity, re-ranked by
    /// `ITM match logit + ITC similarity` (BLIP-2's retrieval); best first.
    pub fn rank(
        &self,
        images: &[DynamicImage],
        texts: &[impl AsRef<str>],
        k: usize,
    ) -> Result<Vec<Vec<RankedText>>> {
        if k == 0 {
            return Err(Error::InvalidInput("k must be at least 1".to_owned()));
        }
        let (vision, queries) = self.encode(images)?;
        let itc = self.itc(queries, &self.tokenize(texts)?)?;
        let mut out = Vec::with_capacity(images.len());
        for (i, row) in itc.iter().enumerate() {
            let mut order: Vec<usize> = (0..texts.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            order.truncate(k);
            let candidates: Vec<&str> = order.iter().map(|&j| texts[j].as_ref()).collect();
            let image = vision.clone().slice(burn::tensor::s![i..i + 1]);
            let logits = self.itm_logits_of(&image, &self.tokenize(&candidates)?)?;
            let mut ranked: Vec<RankedText> = order
                .iter()
                .zip(&logits)
                .map(|(&j, logit)| RankedText {
                    index: j,
                    itc: row[j],
                    itm_logit: logit[1],
                    score: logit[1] + row[j],
                })
                .collect();
            ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
            out.push(ranked);
        }
        Ok(out)
    }
}

/// `[rows][texts]` match probabilities of image-major ITM logits: the softmax's "match" entry,
/// as transformers computes it (`softmax(logits)[:, 1]`).
fn match_rows(logits: &[[f32; 2]], texts: usize) -> Vec<Vec<f32>> {
    let probability = |[no, yes]: [f32; 2]| {
        let m = no.max(yes);
        let (e_no, e_yes) = ((no - m).exp(), (yes - m).exp());
        e_yes / (e_no + e_yes)
    };
    logits
        .chunks(texts)
        .map(|row| row.iter().map(|&l| probability(l)).collect())
        .collect()
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    blip2_lm::read_back(t)?
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Backend(format!("tensor data: {e:?}")))
}

fn rows(t: Tensor<2>) -> Result<Vec<Vec<f32>>> {
    let [_, cols] = t.dims();
    Ok(to_vec(t)?.chunks(cols).map(<[f32]>::to_vec).collect())
}
