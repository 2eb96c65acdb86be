//! `blip2 caption` over datasets as pipelines store them: WebDataset tar shards split over three
//! concurrent processes (one killed mid-shard and restarted), a Parquet file with Hugging Face
//! datasets' `{bytes, path}` image column split by rows, and JSON lines with per-row prompts.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::Value;

use blip2_test_support::fixture;

fn image(name: &str) -> Vec<u8> {
    std::fs::read(fixture("images").join(name)).unwrap()
}

const IMAGES: [&str; 4] = [
    "rgb_96x64.png",
    "rgba_64x64.png",
    "grey_70x50.png",
    "palette_48x48.png",
];

/// `blip2 caption` on the tiny OPT model, 5 new tokens.
fn tiny_caption() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_blip2"));
    command.args(["caption", "--model"]);
    command.arg(fixture("tiny-opt"));
    command.args(["--max-new-tokens", "5"]);
    command
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn append(builder: &mut tar::Builder<File>, name: &str, bytes: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, name, bytes).unwrap();
}

/// A WebDataset shard of `good` samples (`{key}.png` + `{key}.json`), plus, when `bad`, a sample
/// whose image is corrupt and one with no image at all.
fn shard(path: &Path, shard: usize, good: usize, bad: bool) -> Vec<String> {
    let mut builder = tar::Builder::new(File::create(path).unwrap());
    let mut keys = Vec::new();
    for k in 0..good {
        let key = format!("{shard:05}{k:04}");
        append(
            &mut builder,
            &format!("{key}.png"),
            &image(IMAGES[k % IMAGES.len()]),
        );
        append(
            &mut builder,
            &format!("{key}.json"),
            format!(r#"{{"url": "https://example.com/{key}.png"}}"#).as_bytes(),
        );
        keys.push(key);
    }
    if bad {
        append(&mut builder, "corrupt.png", b"not a png");
        append(&mut builder, "textonly.txt", b"a caption without an image");
        keys.extend(["corrupt".to_owned(), "textonly".to_owned()]);
    }
    builder.finish().unwrap();
    keys
}

#[test]
fn webdataset_shards_survive_a_kill_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for s in 0..3 {
        let path = dir.path().join(format!("{s:05}.tar"));
        // Shard 1 is long enough (150 batches) that the kill below lands mid-shard even when
        // this test is descheduled for a while after reading the first progress line.
        expected.push(shard(&path, s, if s == 1 { 300 } else { 12 }, s == 0));
    }
    let out = dir.path().join("out");
    let pattern = dir.path().join("{00000..00002}.tar");
    // A Kubernetes Indexed Job of 3 completions: the same command, JOB_COMPLETION_INDEX apart.
    let spawn = |index: usize| {
        tiny_caption()
            .arg("--webdataset")
            .arg(&pattern)
            .arg("--output-dir")
            .arg(&out)
            .args([
                "--shards",
                "3",
                "--batch-size",
                "2",
                "--progress-every",
                "0",
            ])
            .env("JOB_COMPLETION_INDEX", index.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut children: Vec<_> = (0..3).map(spawn).collect();

    // Shard 1 is killed once it has written a batch.
    let mut victim = children.remove(1);
    let mut stderr = BufReader::new(victim.stderr.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("progress:") {
        line.clear();
        assert_ne!(
            stderr.read_line(&mut line).unwrap(),
            0,
            "shard 1 ended early"
        );
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    let partial = out.join("00001.jsonl.partial");
    let written = std::fs::read_to_string(&partial).unwrap().lines().count();
    assert!(
        (1..300).contains(&written),
        "killed mid-shard: {written} lines"
    );
    assert!(!out.join("00001.jsonl").exists());

    for child in children {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let restarted = spawn(1).wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&restarted.stderr);
    assert!(restarted.status.success(), "{log}");
    assert!(
        log.contains(&format!("skipped {written} (already in the output)")),
        "{log}"
    );
    assert!(!partial.exists());

    for (s, keys) in expected.iter().enumerate() {
        let rows = lines(&out.join(format!("{s:05}.jsonl")));
        let mut by_key: HashMap<&str, &Value> = HashMap::new();
        for row in &rows {
            assert!(
                by_key.insert(row["key"].as_str().unwrap(), row).is_none(),
                "{row}"
            );
            assert!(row["source"]
                .as_str()
                .unwrap()
                .ends_with(&format!("{s:05}.tar")));
        }
        assert_eq!(by_key.len(), keys.len(), "shard {s}");
        for key in keys {
            let row = by_key[key.as_str()];
            match key.as_str() {
                "corrupt" => assert!(row["error"].is_string(), "{row}"),
                "textonly" => assert!(
                    row["error"].as_str().unwrap().contains("no image member"),
                    "{row}"
                ),
                _ => {
                    assert_eq!(row["token_ids"].as_array().unwrap().len(), 5, "{row}");
                    assert_eq!(
                        row["json"]["url"],
                        format!("https://example.com/{key}.png").as_str()
                    );
                }
            }
        }
        let stats: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("stats.{s:05}-of-00003.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(stats["shard"]["index"], s);
        assert!(stats["images_per_second"].as_f64().unwrap() > 0.0);
    }
    // The same image gives the same caption wherever it is.
    let first = lines(&out.join("00000.jsonl"));
    let second = lines(&out.join("00001.jsonl"));
    assert_eq!(first[0]["token_ids"], second[0]["token_ids"]);

    // A rerun of a finished shard does nothing (--resume is accepted, and changes nothing).
    let again = tiny_caption()
        .arg("--webdataset")
        .arg(&pattern)
        .arg("--output-dir")
        .arg(&out)
        .args(["--shard", "0/3", "--resume"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(
        log.contains("0 output files completed, 1 already complete"),
        "{log}"
    );
}

/// Writes a Parquet file from a schema and its leaf columns: each a list of values and, for
/// optional leaves, definition levels.
fn write_parquet(path: &Path, schema: &str, columns: Vec<(Vec<ByteArray>, Option<Vec<i16>>)>) {
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let properties = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build(),
    );
    let mut writer =
        SerializedFileWriter::new(File::create(path).unwrap(), schema, properties).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut columns = columns.into_iter();
    while let Some(mut column) = group.next_column().unwrap() {
        let (values, levels) = columns.next().unwrap();
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, levels.as_deref(), None)
            .unwrap();
        column.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn parquet_rows_split_over_shards_with_hugging_face_image_structs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.parquet");
    // Rows 0-4 good, 5 a corrupt image, 6 a null image.
    let mut bytes: Vec<ByteArray> = (0..5).map(|k| image(IMAGES[k % 4]).into()).collect();
    bytes.push(b"not a png".to_vec().into());
    let keys: Vec<ByteArray> = (0..7)
        .map(|k| format!("row{k}").as_bytes().into())
        .collect();
    let urls: Vec<ByteArray> = (0..7)
        .map(|k| format!("https://example.com/{k}").as_bytes().into())
        .collect();
    write_parquet(
        &path,
        "message m {
            optional group image { optional binary bytes; optional binary path (STRING); }
            required binary key (STRING);
            required binary url (STRING);
        }",
        vec![
            (bytes, Some(vec![2, 2, 2, 2, 2, 2, 0])),
            (vec![], Some(vec![1, 1, 1, 1, 1, 1, 0])),
            (keys, None),
            (urls, None),
        ],
    );
    let out = dir.path().join("out");
    for shard in ["0/2", "1/2"] {
        let o = tiny_caption()
            .arg("--parquet")
            .arg(&path)
            .arg("--output-dir")
            .arg(&out)
            .args(["--shard", shard, "--batch-size", "3"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let mut rows = lines(&out.join("train.00000-of-00002.jsonl"));
    assert_eq!(rows.len(), 4, "rows 0, 2, 4, 6");
    rows.extend(lines(&out.join("train.00001-of-00002.jsonl")));
    rows.sort_by_key(|r| r["key"].as_str().unwrap().to_owned());
    assert_eq!(rows.len(), 7);
    for (k, row) in rows.iter().enumerate() {
        assert_eq!(row["key"], format!("row{k}").as_str());
        assert_eq!(
            row["meta"]["url"],
            format!("https://example.com/{k}").as_str()
        );
        match k {
            5 => assert!(row["error"].is_string(), "{row}"),
            6 => assert!(row["error"].as_str().unwrap().contains("null"), "{row}"),
            _ => assert_eq!(row["token_ids"].as_array().unwrap().len(), 5, "{row}"),
        }
    }

    // A plain binary column under another name gives the same captions for the same bytes.
    let plain = dir.path().join("plain.parquet");
    write_parquet(
        &plain,
        "message m { required binary jpg; }",
        vec![(vec![image(IMAGES[0]).into()], None)],
    );
    let o = tiny_caption()
        .arg("--parquet")
        .arg(&plain)
        .args(["--image-field", "jpg"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let row: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(row["key"], "0");
    assert_eq!(row["token_ids"], rows[0]["token_ids"]);
}

/// The `token_ids` `blip2 generate --prompt` gives for one image.
fn generated(image: &Path, prompt: &str) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_blip2"))
        .args([
            "generate",
            "--json",
            "--max-new-tokens",
            "5",
            "--prompt",
            prompt,
            "--model",
        ])
        .arg(fixture("tiny-opt"))
        .arg(image)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    doc["results"][0]["token_ids"].clone()
}

#[test]
fn jsonl_rows_carry_their_own_prompts_and_questions() {
    let dir = tempfile::tempdir().unwrap();
    for name in IMAGES {
        std::fs::copy(fixture("images").join(name), dir.path().join(name)).unwrap();
    }
    let rows = [
        r#"{"image": "rgb_96x64.png", "key": "plain", "source_url": "u1"}"#,
        r#"{"image": "rgba_64x64.png", "question": "what is it?"}"#,
        r#"{"image": "grey_70x50.png", "prompt": "a photo of"}"#,
        r#"{"image": "missing.png"}"#,
        r#"{"image": "palette_48x48.png", "prompt": "a", "question": "b"}"#,
        "not json",
    ];
    let list = dir.path().join("rows.jsonl");
    std::fs::write(&list, rows.join("\n")).unwrap();
    let out = dir.path().join("captions.jsonl");
    let run = |extra: &[&str]| {
        tiny_caption()
            .arg("--jsonl")
            .arg(&list)
            .arg("--output")
            .arg(&out)
            .args(["--prompt", "an image of"])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = lines(&out);
    assert_eq!(got.len(), 6);
    // Row 0 takes the run's --prompt; row 1 its question through the template; row 2 its prompt.
    for (k, prompt) in [
        (0, "an image of"),
        (1, "Question: what is it? Answer:"),
        (2, "a photo of"),
    ] {
        assert_eq!(got[k]["prompt"], prompt);
        let image = dir.path().join(IMAGES[k]);
        assert_eq!(got[k]["token_ids"], generated(&image, prompt), "row {k}");
    }
    assert_eq!(got[0]["key"], "plain");
    assert_eq!(got[0]["meta"]["source_url"], "u1");
    assert_eq!(got[1]["key"], "1");
    assert!(got[3]["error"].as_str().unwrap().contains("missing.png"));
    assert!(got[4]["error"].as_str().unwrap().contains("both"));
    assert!(got[5]["error"]
        .as_str()
        .unwrap()
        .contains("not a JSON object"));
    let stats = dir.path().join("captions.jsonl.stats.json");
    let stats: Value = serde_json::from_str(&std::fs::read_to_string(stats).unwrap()).unwrap();
    assert_eq!(
        (stats["captioned"].as_u64(), stats["failed"].as_u64()),
        (Some(3), Some(3))
    );

    // --resume finds every row already there, errors included.
    let o = run(&["--resume"]);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("captioned 0, failed 0, skipped 6"), "{log}");
}
