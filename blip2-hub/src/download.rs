//! Fetching a model from the Hugging Face hub into the HF cache (feature `download`).

use std::path::PathBuf;

use blip2_core::error::{Error, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};

use crate::safetensors::{INDEX_FILE, SINGLE_FILE};

/// Files fetched when present; only `config.json` and the weights are required.
const OPTIONAL_FILES: &[&str] = &[
    "tokenizer.json",
    "preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
];

/// Downloads `repo_id` at `revision` into the HF cache (with progress bars on stderr) and
/// returns the snapshot folder. Only the files this crate reads are fetched: `config.json`, the
/// safetensors weights (every shard the index names), the tokenizer and the processor and
/// generation settings; never pickled weights.
pub fn download(repo_id: &str, revision: &str) -> Result<PathBuf> {
    let err = |reason: String| Error::Download {
        model: repo_id.to_owned(),
        reason,
    };
    let mut builder = ApiBuilder::new().with_progress(true);
    if let Some(cache) = crate::hf_cache_dir() {
        builder = builder.with_cache_dir(cache);
    }
    let api = builder.build().map_err(|e| err(e.to_string()))?;
    let repo = api.repo(Repo::with_revision(
        repo_id.to_owned(),
        RepoType::Model,
        revision.to_owned(),
    ));
    let config = repo.get("config.json").map_err(|e| err(e.to_string()))?;
    let dir = config
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| err("unexpected cache layout".to_owned()))?;
    match repo.get(INDEX_FILE) {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let index: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| Error::Json {
                    path: index.clone(),
                    source,
                })?;
            let mut shards: Vec<&str> = index["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            shards.sort_unstable();
            shards.dedup();
            for shard in shards {
                repo.get(shard).map_err(|e| err(format!("{shard}: {e}")))?;
            }
        }
        Err(_) => {
            repo.get(SINGLE_FILE)
                .map_err(|e| err(format!("no {INDEX_FILE} nor {SINGLE_FILE}: {e}")))?;
        }
    }
    for file in OPTIONAL_FILES {
        if let Err(e) = repo.get(file) {
            tracing::debug!(file, error = %e, "optional file not fetched");
        }
    }
    Ok(dir)
}
