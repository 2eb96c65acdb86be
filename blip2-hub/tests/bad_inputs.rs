//! Every way a checkpoint folder can be broken gives the specific typed error, naming the key
//! and the file; none panics.

use std::path::Path;

use blip2_core::{Error, WeightDType, WeightSource};
use blip2_hub::{load_tokenizer, resolve_local, ModelDir, SafetensorsWeights};

use blip2_test_support::fixture;

/// A copy of a fixture folder that a test may break.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

/// A valid safetensors file with the given (name, dtype, shape, bytes) tensors.
fn write_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    file.extend_from_slice(&data);
    std::fs::write(path, file).unwrap();
}

fn single_key() -> &'static str {
    "vision_model.embeddings.class_embedding"
}

#[test]
fn missing_tensor_names_key_and_folder() {
    let weights = SafetensorsWeights::from_dir(fixture("tiny-itm")).unwrap();
    match weights.read("vision_model.no_such.weight", &[1], WeightDType::F32) {
        Err(Error::MissingTensor { key, location }) => {
            assert_eq!(key, "vision_model.no_such.weight");
            assert!(location.contains("tiny-itm"), "{location}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_shape_names_key_file_and_shapes() {
    let weights = SafetensorsWeights::from_dir(fixture("tiny-opt")).unwrap();
    match weights.read(single_key(), &[1, 1, 33], WeightDType::F32) {
        Err(e @ Error::ShapeMismatch { .. }) => {
            let Error::ShapeMismatch {
                key,
                file,
                expected,
                found,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(key, single_key());
            assert!(file.ends_with(".safetensors"), "{file}");
            assert_eq!(
                (expected.clone(), found.clone()),
                (vec![1, 1, 33], vec![1, 1, 32])
            );
            let msg = e.to_string();
            assert!(
                msg.contains(single_key()) && msg.contains("[1, 1, 33]"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn non_float_dtype_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    write_safetensors(
        &path,
        &[("ids", "I32", vec![2], vec![1, 0, 0, 0, 2, 0, 0, 0])],
    );
    let weights = SafetensorsWeights::from_file(&path).unwrap();
    match weights.read("ids", &[2], WeightDType::F32) {
        Err(Error::UnsupportedDType { key, dtype, .. }) => {
            assert_eq!(key, "ids");
            assert_eq!(dtype, "I32");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncated_and_corrupt_files() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("tiny-itm/model.safetensors")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() - 100].to_vec()),
        ("header only", good[..4096].to_vec()),
        ("too short", vec![1, 2, 3]),
        ("header length beyond the file", {
            let mut b = good.clone();
            b[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
            b
        }),
        ("garbage header", {
            let mut b = 16u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"not json at all!");
            b
        }),
    ];
    for (what, bytes) in cases {
        let path = tmp.path().join("model.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        match SafetensorsWeights::from_dir(tmp.path()) {
            Err(Error::CorruptWeights { path: p, reason }) => {
                assert_eq!(p, path, "{what}");
                assert!(!reason.is_empty());
            }
            Err(other) => panic!("{what}: {other}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }

    // Offsets overlapping, and a shape that does not match the byte length.
    let path = tmp.path().join("model.safetensors");
    write_safetensors(
        &path,
        &[
            ("a", "F32", vec![2], vec![0; 8]),
            ("b", "F32", vec![1], vec![0; 4]),
        ],
    );
    let mut bytes = std::fs::read(&path).unwrap();
    let text = String::from_utf8_lossy(&bytes).replace("[8,12]", "[4,12]");
    bytes = text.into_bytes();
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        SafetensorsWeights::from_file(&path),
        Err(Error::CorruptWeights { .. })
    ));
    write_safetensors(&path, &[("a", "F32", vec![3], vec![0; 8])]);
    assert!(matches!(
        SafetensorsWeights::from_file(&path),
        Err(Error::CorruptWeights { .. })
    ));
}

fn rewrite_index(dir: &Path, edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(index["weight_map"].as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string(&index).unwrap()).unwrap();
}

#[test]
fn index_naming_a_missing_shard() {
    let tmp = copy_fixture("tiny-opt");
    std::fs::remove_file(tmp.path().join("model-00002-of-00004.safetensors")).unwrap();
    match SafetensorsWeights::from_dir(tmp.path()) {
        Err(Error::MissingShard { shard, index }) => {
            assert_eq!(shard, "model-00002-of-00004.safetensors");
            assert!(index.ends_with("model.safetensors.index.json"));
        }
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn index_escaping_the_folder_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let outside_file = outside.path().join("evil.safetensors");
    write_safetensors(&outside_file, &[(single_key(), "F32", vec![1], vec![0; 4])]);
    let abs = outside_file.display().to_string();
    for shard in [
        "../evil.safetensors",
        "sub/../../evil.safetensors",
        abs.as_str(),
        "",
    ] {
        let tmp = copy_fixture("tiny-opt");
        rewrite_index(tmp.path(), |map| {
            map.insert(single_key().to_owned(), shard.into());
        });
        match SafetensorsWeights::from_dir(tmp.path()) {
            Err(Error::UnsafeShardPath { shard: s, .. }) => assert_eq!(s, shard),
            other => panic!("{shard:?}: {:?}", other.err()),
        }
    }

    // A symlink inside the folder pointing outside it.
    #[cfg(unix)]
    {
        let tmp = copy_fixture("tiny-opt");
        std::os::unix::fs::symlink(&outside_file, tmp.path().join("link.safetensors")).unwrap();
        rewrite_index(tmp.path(), |map| {
            map.insert(single_key().to_owned(), "link.safetensors".into());
        });
        assert!(matches!(
            SafetensorsWeights::from_dir(tmp.path()),
            Err(Error::UnsafeShardPath { .. })
        ));
    }
}

#[test]
fn index_key_absent_from_its_shard() {
    let tmp = copy_fixture("tiny-opt");
    rewrite_index(tmp.path(), |map| {
        map.insert(
            "language_model.ghost.weight".into(),
            "model-00001-of-00004.safetensors".into(),
        );
    });
    match SafetensorsWeights::from_dir(tmp.path()) {
        Err(Error::CorruptWeights { reason, .. }) => {
            assert!(reason.contains("language_model.ghost.weight"), "{reason}");
            assert!(
                reason.contains("model-00001-of-00004.safetensors"),
                "{reason}"
            );
        }
        other => panic!("{:?}", other.err()),
    }
    let tmp = copy_fixture("tiny-opt");
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        "{\"weight_map\": 3}",
    )
    .unwrap();
    assert!(matches!(
        SafetensorsWeights::from_dir(tmp.path()),
        Err(Error::Json { .. })
    ));
}

#[test]
fn pickle_only_and_empty_folders() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        SafetensorsWeights::from_dir(tmp.path()),
        Err(Error::NoWeights { .. })
    ));
    std::fs::write(tmp.path().join("pytorch_model.bin"), b"PK\x03\x04 pickled").unwrap();
    match SafetensorsWeights::from_dir(tmp.path()) {
        Err(e @ Error::PickleOnly { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("pytorch_model.bin") && msg.contains("safetensors"),
                "{msg}"
            );
        }
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn broken_tokenizer_and_configs() {
    let tmp = copy_fixture("tiny-itm");
    let dir = ModelDir::open(tmp.path()).unwrap();
    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    assert!(matches!(dir.tokenizer(), Err(Error::Tokenizer { .. })));
    std::fs::write(tmp.path().join("tokenizer.json"), "{\"model\": 1}").unwrap();
    match load_tokenizer(tmp.path().join("tokenizer.json")) {
        Err(Error::Tokenizer { path, .. }) => assert!(path.ends_with("tokenizer.json")),
        other => panic!("{:?}", other.err()),
    }

    std::fs::write(tmp.path().join("preprocessor_config.json"), "{\"size\": 5").unwrap();
    match ModelDir::open(tmp.path()) {
        Err(Error::Json { path, .. }) => assert!(path.ends_with("preprocessor_config.json")),
        other => panic!("{:?}", other.err()),
    }
    std::fs::remove_file(tmp.path().join("preprocessor_config.json")).unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        "{\"text_config\": {\"model_type\": \"gpt2\"}}",
    )
    .unwrap();
    assert!(matches!(
        ModelDir::open(tmp.path()),
        Err(Error::UnsupportedModelType { .. })
    ));
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    assert!(matches!(ModelDir::open(tmp.path()), Err(Error::Io { .. })));
}

#[test]
fn model_not_found_says_where_it_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-model-here");
    match resolve_local(missing.to_str().unwrap(), None) {
        Err(e @ Error::ModelNotFound { .. }) => {
            let Error::ModelNotFound { searched, .. } = &e else {
                unreachable!()
            };
            assert_eq!(searched[0], missing);
            assert!(e.to_string().contains("no-model-here"));
        }
        other => panic!("{other:?}"),
    }
    // A folder without config.json.
    assert!(matches!(
        resolve_local(tmp.path().to_str().unwrap(), None),
        Err(Error::ModelNotFound { .. })
    ));
    // A fixture folder resolves to itself.
    let dir = fixture("tiny-opt");
    assert_eq!(resolve_local(dir.to_str().unwrap(), None).unwrap(), dir);
}

#[test]
fn duplicate_keys_are_refused() {
    // Two header entries named "a": whichever one a JSON reader keeps, the other's bytes are
    // left unaccounted for, and the file must not load.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0; 8]);
    std::fs::write(&path, file).unwrap();
    match SafetensorsWeights::from_file(&path) {
        Err(Error::CorruptWeights { path: p, .. }) => assert_eq!(p, path),
        Err(other) => panic!("unexpected error {other}"),
        Ok(w) => panic!("accepted, keys {:?}", w.keys()),
    }
}

#[test]
fn unread_keys_are_the_extra_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    write_safetensors(
        &path,
        &[
            ("used", "F32", vec![2], vec![0; 8]),
            ("extra", "F16", vec![1], vec![0; 2]),
        ],
    );
    let weights = SafetensorsWeights::from_file(&path).unwrap();
    assert_eq!(weights.unread_keys(), ["extra", "used"]);
    weights.read("used", &[2], WeightDType::F32).unwrap();
    // A failed read (wrong shape) does not count as a use.
    assert!(weights.read("extra", &[3], WeightDType::F32).is_err());
    assert_eq!(weights.unread_keys(), ["extra"]);
}
