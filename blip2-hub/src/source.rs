//! Finding a model: a local folder, or a hub id in the Hugging Face cache.

use std::path::{Path, PathBuf};

use blip2_core::error::{Error, Result};

/// Where the Hugging Face cache lives, in the order `huggingface_hub` checks:
/// `$HF_HUB_CACHE`, `$HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`.
pub fn hf_cache_dir() -> Option<PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = env("HF_HUB_CACHE").or_else(|| env("HUGGINGFACE_HUB_CACHE")) {
        return Some(PathBuf::from(dir));
    }
    if let Some(home) = env("HF_HOME") {
        return Some(PathBuf::from(home).join("hub"));
    }
    let home = env("HOME").or_else(|| env("USERPROFILE"))?;
    Some(
        PathBuf::from(home)
            .join(".cache")
            .join("huggingface")
            .join("hub"),
    )
}

/// Whether `s` has the shape of a hub id (`org/name`, no other separators).
pub fn is_hub_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// Finds the snapshot folder of `repo_id` at `revision` in an HF cache folder:
/// `models--{org}--{name}/refs/{revision}` names a commit, whose files are in
/// `snapshots/{commit}/`. A revision that is itself a commit hash is looked up directly.
pub fn find_in_cache(cache: &Path, repo_id: &str, revision: &str) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let commit = std::fs::read_to_string(repo.join("refs").join(revision))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| revision.to_owned());
    if commit.is_empty() || commit.contains(['/', '\\']) || commit.starts_with('.') {
        return None;
    }
    let snapshot = repo.join("snapshots").join(commit);
    snapshot.join("config.json").is_file().then_some(snapshot)
}

/// Resolves what a user asked for to a local model folder, without touching the network.
///
/// `model` is a path to a folder holding `config.json`, or a hub id (`Salesforce/blip2-opt-2.7b`)
/// that must already be in the HF cache (see [`hf_cache_dir`]); `revision` is a branch, tag or
/// commit (`"main"` when `None`). A missing model is [`Error::ModelNotFound`], listing where it
/// looked and how to get it.
pub fn resolve_local(model: &str, revision: Option<&str>) -> Result<PathBuf> {
    let revision = revision.unwrap_or("main");
    let path = Path::new(model);
    let mut searched = vec![path.to_owned()];
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(path.to_owned());
        }
        return Err(Error::ModelNotFound {
            model: model.to_owned(),
            searched,
            hint: "the folder exists but has no config.json".to_owned(),
        });
    }
    if is_hub_id(model) {
        if let Some(cache) = hf_cache_dir() {
            if let Some(dir) = find_in_cache(&cache, model, revision) {
                return Ok(dir);
            }
            searched.push(cache.join(format!("models--{}", model.replace('/', "--"))));
        }
    }
    Err(Error::ModelNotFound {
        model: model.to_owned(),
        searched,
        hint: if is_hub_id(model) {
            format!(
                "Download it first, e.g. `huggingface-cli download {model}`, or build blip2 \
                 with the `download` feature to fetch it, or pass a local folder"
            )
        } else {
            "Pass a folder with config.json and the weights, or a hub id such as \
             Salesforce/blip2-opt-2.7b"
                .to_owned()
        },
    })
}
