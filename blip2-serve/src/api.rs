//! Request bodies: OpenAI's chat-completion schema, this server's own endpoints, and how their
//! options become a [`GenerationConfig`].

use base64::Engine as _;
use blip2::GenerationConfig;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Server-side bounds on what one request may ask for.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Most new tokens per sequence.
    pub max_new_tokens: usize,
    /// Most beams.
    pub max_beams: usize,
    /// Most sequences per request (`n`).
    pub max_n: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_new_tokens: 256,
            max_beams: 8,
            max_n: 8,
        }
    }
}

/// Generation options a request may give; any left out keep the checkpoint's defaults
/// (`generation_config.json`), as vLLM does, rather than OpenAI's (which samples by default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationOptions {
    /// New tokens at most (OpenAI's older name).
    pub max_tokens: Option<usize>,
    /// New tokens at most.
    pub max_completion_tokens: Option<usize>,
    /// 0 for greedy search; above 0 samples at that temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling; below 1 samples.
    pub top_p: Option<f32>,
    /// Top-k sampling (extension).
    pub top_k: Option<usize>,
    /// Sequences to return.
    pub n: Option<usize>,
    /// The sampling seed (random when sampling without one).
    pub seed: Option<u64>,
    /// Beam search width (extension).
    pub num_beams: Option<usize>,
    /// transformers' repetition penalty (extension).
    pub repetition_penalty: Option<f32>,
    /// New tokens at least (extension).
    pub min_tokens: Option<usize>,
    /// No n-gram of this size twice (extension).
    pub no_repeat_ngram_size: Option<usize>,
}

impl GenerationOptions {
    /// The checkpoint's `defaults` with these options applied, validated and within `limits`.
    pub fn apply(
        &self,
        defaults: &GenerationConfig,
        limits: &RequestLimits,
    ) -> Result<GenerationConfig, ApiError> {
        let mut c = defaults.clone();
        if let (Some(a), Some(b)) = (self.max_tokens, self.max_completion_tokens) {
            if a != b {
                return Err(ApiError::bad_request(
                    "max_tokens and max_completion_tokens disagree",
                ));
            }
        }
        if let Some(max) = self.max_completion_tokens.or(self.max_tokens) {
            c.max_new_tokens = Some(max);
            c.max_length = None;
        }
        let new_tokens = c
            .max_new_tokens
            .unwrap_or(blip2::lm::DEFAULT_MAX_NEW_TOKENS);
        within("max_tokens", new_tokens, limits.max_new_tokens)?;
        match self.temperature {
            Some(0.0) => c.do_sample = false,
            Some(t) => {
                c.do_sample = true;
                c.temperature = t;
            }
            None => {}
        }
        if let Some(p) = self.top_p {
            c.top_p = p;
            if p < 1.0 && self.temperature != Some(0.0) {
                c.do_sample = true;
            }
        }
        if let Some(k) = self.top_k {
            c.top_k = k;
        }
        if let Some(n) = self.n {
            c.num_return_sequences = within("n", n, limits.max_n)?;
        }
        if let Some(beams) = self.num_beams {
            c.num_beams = within("num_beams", beams, limits.max_beams)?;
        }
        if let Some(p) = self.repetition_penalty {
            c.repetition_penalty = p;
        }
        if let Some(m) = self.min_tokens {
            c.min_new_tokens = Some(m);
            c.min_length = None;
        }
        if let Some(n) = self.no_repeat_ngram_size {
            c.no_repeat_ngram_size = n;
        }
        c.seed = match self.seed {
            Some(seed) => seed,
            None if c.do_sample => blip2::lm::fresh_seed(),
            None => c.seed,
        };
        c.validate()?;
        Ok(c)
    }
}

/// `value`, or a 400 when it is over this server's `limit` for `name`.
fn within(name: &str, value: usize, limit: usize) -> Result<usize, ApiError> {
    if value > limit {
        return Err(ApiError::bad_request(format!(
            "{name} = {value} is over this server's limit of {limit}"
        )));
    }
    Ok(value)
}

/// Parses a JSON body.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

/// Splits a JSON object into the endpoint's own fields (`T`, from `own` keys) and generation
/// options (everything else, where an unknown key is an error).
pub fn split_options<T: DeserializeOwned>(
    body: Value,
    own: &[&str],
) -> Result<(T, GenerationOptions), ApiError> {
    let Value::Object(mut all) = body else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let mut mine = Map::new();
    for key in own {
        if let Some(v) = all.remove(*key) {
            mine.insert((*key).to_owned(), v);
        }
    }
    let fields = serde_json::from_value(Value::Object(mine))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let options = serde_json::from_value(Value::Object(all))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((fields, options))
}

/// Option values given as text (a query string, multipart fields) as JSON: numbers and booleans
/// parsed, anything else a string.
pub fn text_fields_to_json(fields: impl IntoIterator<Item = (String, String)>) -> Value {
    let map = fields
        .into_iter()
        .map(|(k, v)| {
            let value = match serde_json::from_str::<Value>(&v) {
                Ok(n @ (Value::Number(_) | Value::Bool(_))) => n,
                _ => Value::String(v),
            };
            (k, value)
        })
        .collect();
    Value::Object(map)
}

/// The fields of a chat completion that are not generation options.
#[derive(Debug, Deserialize)]
pub struct ChatFields {
    /// Ignored: the server has one model.
    #[allow(dead_code)]
    pub model: Option<String>,
    /// The conversation; the last user turn holds the question, one turn the image.
    pub messages: Vec<Message>,
    /// Server-sent events instead of one body.
    #[serde(default)]
    pub stream: bool,
    /// `{"include_usage": true}` adds a last chunk with the token counts.
    pub stream_options: Option<StreamOptions>,
    /// Strings that end the text (not included).
    pub stop: Option<Stop>,
    /// Ignored (OpenAI's end-user id).
    #[allow(dead_code)]
    pub user: Option<String>,
}

/// The keys of [`ChatFields`].
pub const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "stop",
    "user",
];

/// OpenAI's `stream_options`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several (OpenAI allows up to 4).
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings, empty ones left out.
    pub fn strings(&self) -> Vec<String> {
        let all = match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        };
        all.into_iter().filter(|s| !s.is_empty()).collect()
    }
}

/// One chat turn.
#[derive(Debug, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Text, or text and image parts.
    pub content: Content,
}

/// A turn's content.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<Part>),
}

/// One part of a turn's content.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    /// `{"type": "text", "text": …}`
    Text {
        /// The text.
        text: String,
    },
    /// `{"type": "image_url", "image_url": {"url": …}}`
    ImageUrl {
        /// Where the image is.
        image_url: ImageUrl,
    },
}

/// OpenAI's `image_url` object.
#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    /// A `data:` URL (or, with `--allow-remote-images`, http(s)).
    pub url: String,
    /// Ignored: the processor has one size.
    #[allow(dead_code)]
    pub detail: Option<String>,
}

/// The one image and the question of a conversation.
pub struct ChatInput {
    /// The image's URL.
    pub image_url: String,
    /// The last user turn's text, trimmed; empty to caption.
    pub question: String,
}

/// Finds the image (exactly one across the turns) and the question (the last user turn's text).
pub fn chat_input(messages: &[Message]) -> Result<ChatInput, ApiError> {
    let mut urls = Vec::new();
    for m in messages {
        if let Content::Parts(parts) = &m.content {
            for p in parts {
                if let Part::ImageUrl { image_url } = p {
                    urls.push(image_url.url.clone());
                }
            }
        }
    }
    let image_url = match urls.len() {
        1 => urls.pop().expect("one url"),
        0 => return Err(ApiError::bad_request("no image: add an image_url part")),
        n => {
            return Err(ApiError::bad_request(format!(
                "{n} images; this model takes one per request"
            )))
        }
    };
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .ok_or_else(|| ApiError::bad_request("no user message"))?;
    let question = match &last_user.content {
        Content::Text(t) => t.trim().to_owned(),
        Content::Parts(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Part::Text { text } => Some(text.trim()),
                Part::ImageUrl { .. } => None,
            })
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    };
    Ok(ChatInput {
        image_url,
        question,
    })
}

/// Decodes base64 image bytes, with or without a `data:image/…;base64,` prefix.
pub fn decode_base64_image(text: &str) -> Result<Vec<u8>, ApiError> {
    let payload = match text.strip_prefix("data:") {
        Some(rest) => {
            let (meta, data) = rest
                .split_once(',')
                .ok_or_else(|| ApiError::bad_request("a data URL without a comma"))?;
            if !meta.ends_with(";base64") {
                return Err(ApiError::bad_request("only base64 data URLs are supported"));
            }
            data
        }
        None => text,
    };
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| ApiError::bad_request(format!("the image is not valid base64: {e}")))
}

/// Whether `url` names a remote image (http or https).
pub fn is_remote(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> GenerationConfig {
        GenerationConfig::default()
    }

    fn options(json: &str) -> Result<GenerationOptions, ApiError> {
        let v: Value = serde_json::from_str(json).unwrap();
        split_options::<Map<String, Value>>(v, &[]).map(|(_, o)| o)
    }

    #[test]
    fn omitted_options_keep_the_checkpoint_defaults() {
        let c = options("{}")
            .unwrap()
            .apply(&defaults(), &RequestLimits::default())
            .unwrap();
        assert_eq!(c, defaults());
    }

    #[test]
    fn temperature_zero_is_greedy_and_above_zero_samples() {
        let limits = RequestLimits::default();
        let greedy = options(r#"{"temperature": 0}"#).unwrap();
        assert!(!greedy.apply(&defaults(), &limits).unwrap().do_sample);
        let sampled = options(r#"{"temperature": 0.7, "seed": 3}"#).unwrap();
        let c = sampled.apply(&defaults(), &limits).unwrap();
        assert!(c.do_sample);
        assert_eq!((c.temperature, c.seed), (0.7, 3));
    }

    #[test]
    fn limits_and_contradictions_are_bad_requests() {
        let limits = RequestLimits::default();
        for body in [
            r#"{"max_tokens": 100000}"#,
            r#"{"n": 100}"#,
            r#"{"num_beams": 100}"#,
            r#"{"max_tokens": 3, "max_completion_tokens": 4}"#,
            r#"{"n": 2}"#,
            r#"{"top_p": 0}"#,
        ] {
            let err = options(body)
                .unwrap()
                .apply(&defaults(), &limits)
                .unwrap_err();
            assert_eq!(err.status(), 400, "{body}");
        }
        assert!(options(r#"{"frequency_penalty": 1}"#).is_err());
    }

    #[test]
    fn data_urls_and_bare_base64_decode() {
        assert_eq!(
            decode_base64_image("data:image/png;base64,AAEC").unwrap(),
            [0, 1, 2]
        );
        assert_eq!(decode_base64_image("AAEC").unwrap(), [0, 1, 2]);
        assert!(decode_base64_image("data:image/png;base64,AAE").is_err());
        assert!(decode_base64_image("data:image/png,AAEC").is_err());
        assert!(is_remote("HTTPS://example.com/a.png"));
        assert!(!is_remote("data:image/png;base64,AAEC"));
    }
}
