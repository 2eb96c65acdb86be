//! Finding a hub id in a Hugging Face cache. One test in its own binary, because it sets
//! `HF_HUB_CACHE`, which is process-wide.

use blip2_core::Error;
use blip2_hub::{find_in_cache, hf_cache_dir, is_hub_id, resolve_local};

#[test]
fn hub_ids_resolve_through_the_cache() {
    assert!(is_hub_id("Salesforce/blip2-opt-2.7b"));
    assert!(!is_hub_id("Salesforce"));
    assert!(!is_hub_id("a/b/c"));
    assert!(!is_hub_id("../x"));
    assert!(!is_hub_id("/abs/path"));

    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--Salesforce--blip2-opt-2.7b");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), format!("{commit}\n")).unwrap();
    std::fs::write(snapshot.join("config.json"), "{}").unwrap();

    assert_eq!(
        find_in_cache(cache.path(), "Salesforce/blip2-opt-2.7b", "main"),
        Some(snapshot.clone())
    );
    // A commit hash works as a revision; an unknown branch does not.
    assert_eq!(
        find_in_cache(cache.path(), "Salesforce/blip2-opt-2.7b", commit),
        Some(snapshot.clone())
    );
    assert_eq!(
        find_in_cache(cache.path(), "Salesforce/blip2-opt-2.7b", "dev"),
        None
    );
    assert_eq!(
        find_in_cache(cache.path(), "Salesforce/blip2-flan-t5-xl", "main"),
        None
    );

    // SAFETY: this binary has a single test, so no other thread reads the environment.
    unsafe { std::env::set_var("HF_HUB_CACHE", cache.path()) };
    assert_eq!(hf_cache_dir().as_deref(), Some(cache.path()));
    assert_eq!(
        resolve_local("Salesforce/blip2-opt-2.7b", None).unwrap(),
        snapshot
    );
    match resolve_local("Salesforce/blip2-flan-t5-xl", Some("main")) {
        Err(e @ Error::ModelNotFound { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("models--Salesforce--blip2-flan-t5-xl"),
                "{msg}"
            );
            assert!(msg.contains("download"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}
