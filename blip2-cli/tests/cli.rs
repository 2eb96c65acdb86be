//! The `blip2` binary on the committed tiny fixtures: `--json` output parsed and compared with
//! transformers' goldens, dataset captioning with `--shard` and `--resume` over a folder with a
//! corrupt image, and one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use blip2_test_support::fixtures;

fn fixture(p: &str) -> String {
    fixtures().join(p).display().to_string()
}

fn blip2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blip2"))
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(
        text.trim().lines().count(),
        1,
        "--json prints one document: {text}"
    );
    serde_json::from_str(&text).unwrap()
}

/// The `token_ids` of every result of a generation document, in order.
fn token_ids(doc: &Value) -> Value {
    doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["token_ids"].clone())
        .collect()
}

fn golden_case(fixture_name: &str, name: &str) -> Value {
    let text =
        std::fs::read_to_string(fixtures().join(fixture_name).join("generation.json")).unwrap();
    let meta: Value = serde_json::from_str(&text).unwrap();
    meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone()
}

#[test]
fn caption_json_matches_transformers() {
    let model = fixture("tiny-opt");
    let image = fixture("images/rgb_96x64.png");
    let doc = json(&blip2(&[
        "caption",
        "--model",
        &model,
        "--max-new-tokens",
        "12",
        "--json",
        &image,
    ]));
    assert_eq!(doc["model"], model.as_str());
    let r = &doc["results"][0];
    assert_eq!(r["image"], image.as_str());
    assert!(r["prompt"].is_null());
    assert_eq!(
        r["token_ids"],
        golden_case("tiny-opt", "caption_greedy")["new_tokens"][0]
    );
    assert_eq!(r["stop_reason"], "length");
}

#[test]
fn generate_with_prompt_per_image_and_beams() {
    let case = golden_case("tiny-opt", "batch_padded");
    let images: Vec<String> = case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| fixture(p.as_str().unwrap()))
        .collect();
    let prompts: Vec<&str> = case["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let model = fixture("tiny-opt");
    let mut args = vec![
        "generate",
        "--model",
        &model,
        "--max-new-tokens",
        "8",
        "--json",
    ];
    for p in &prompts {
        args.extend(["--prompt", p]);
    }
    args.extend(images.iter().map(String::as_str));
    let doc = json(&blip2(&args));
    assert_eq!(token_ids(&doc), case["new_tokens"]);
    assert_eq!(doc["results"][1]["prompt"], prompts[1]);

    let beams = golden_case("tiny-opt", "beam3_two_returned");
    let doc = json(&blip2(&[
        "generate",
        "--model",
        &model,
        "--max-new-tokens",
        "8",
        "--num-beams",
        "3",
        "--num-return-sequences",
        "2",
        "--prompt",
        "a photo of",
        "--json",
        &images[0],
    ]));
    assert_eq!(token_ids(&doc), beams["new_tokens"]);
}

#[test]
fn ask_works_with_t5() {
    let case = golden_case("tiny-t5", "vqa_greedy");
    let doc = json(&blip2(&[
        "ask",
        "--model",
        &fixture("tiny-t5"),
        "--question",
        "what is in the picture?",
        "--max-new-tokens",
        "10",
        "--json",
        &fixture("images/rgb_96x64.png"),
    ]));
    assert_eq!(doc["results"][0]["token_ids"], case["new_tokens"][0]);
}

#[test]
fn match_and_embed() {
    let model = fixture("tiny-itm");
    let images = [
        fixture("images/palette_48x48.png"),
        fixture("images/rgb_96x64.png"),
    ];
    let doc = json(&blip2(&[
        "match",
        "--model",
        &model,
        "--text",
        "a photo of a cat",
        "--text",
        "a red car",
        "--json",
        &images[0],
        &images[1],
    ]));
    assert_eq!(doc["itm"].as_array().unwrap().len(), 2);
    assert_eq!(doc["itc"][0].as_array().unwrap().len(), 2);
    let p = doc["itm"][0][0].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p));
    let doc = json(&blip2(&[
        "embed", "--model", &model, "--text", "a cat", &images[0],
    ]));
    assert_eq!(doc["images"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(doc["texts"][0]["embedding"].as_array().unwrap().len(), 16);
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `blip2 caption --dir data --output out` on the tiny OPT model, 4 new tokens, plus `extra`.
fn caption_dir(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let model = fixture("tiny-opt");
    let (data, out) = (data.display().to_string(), out.display().to_string());
    let mut args = vec![
        "caption",
        "--model",
        &model,
        "--dir",
        &data,
        "--output",
        &out,
        "--max-new-tokens",
        "4",
    ];
    args.extend_from_slice(extra);
    blip2(&args)
}

#[test]
fn dataset_with_shards_resume_and_a_corrupt_image() {
    let dir = tempfile::tempdir().unwrap();
    let data = image_folder(dir.path(), 1);
    std::fs::write(data.join("broken.png"), b"not a png").unwrap();
    std::fs::write(data.join("notes.txt"), b"ignored").unwrap();

    // Two shards cover the five images exactly once.
    let mut seen = Vec::new();
    for shard in ["0/2", "1/2"] {
        let out = dir.path().join(format!("shard{}.jsonl", &shard[..1]));
        let o = caption_dir(&data, &out, &["--shard", shard, "--batch-size", "2"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        seen.extend(read_lines(&out));
    }
    assert_eq!(seen.len(), 5);
    let broken: Vec<&Value> = seen.iter().filter(|l| l.get("error").is_some()).collect();
    assert_eq!(broken.len(), 1);
    assert!(broken[0]["image"].as_str().unwrap().ends_with("broken.png"));
    assert!(seen
        .iter()
        .filter(|l| l.get("text").is_some())
        .all(|l| l["token_ids"].as_array().unwrap().len() == 4));

    // Resume: an interrupted run (two lines written) is completed without redoing them.
    let out = dir.path().join("all.jsonl");
    let all = caption_dir(&data, &out, &[]);
    assert!(all.status.success());
    let full = read_lines(&out);
    assert_eq!(full.len(), 5);
    let text = std::fs::read_to_string(&out).unwrap();
    let first_two: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&out, format!("{first_two}{{\"image\": \"cut sh")).unwrap();
    let resumed = caption_dir(&data, &out, &["--resume"]);
    assert!(resumed.status.success());
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    let mut images: Vec<&str> = lines.iter().map(|l| l["image"].as_str().unwrap()).collect();
    images.sort();
    images.dedup();
    assert_eq!(images.len(), 5);
    // Same captions as the uninterrupted run.
    for l in &lines {
        let same = full.iter().find(|f| f["image"] == l["image"]).unwrap();
        assert_eq!(same, l);
    }
}

#[test]
fn caption_in_f16() {
    // Ids in f16 are checked against transformers in tests/half_precision.rs; here only that the
    // option reaches the model.
    let doc = json(&blip2(&[
        "caption",
        "--model",
        &fixture("tiny-opt"),
        "--dtype",
        "f16",
        "--max-new-tokens",
        "5",
        "--json",
        &fixture("images/rgb_96x64.png"),
    ]));
    assert_eq!(doc["results"][0]["token_ids"].as_array().unwrap().len(), 5);
}

#[test]
fn errors_are_one_line() {
    let image = fixture("images/rgb_96x64.png");
    for args in [
        vec!["caption", "--model", "/no/such/model", image.as_str()],
        vec![
            "caption",
            "--model",
            &fixture("tiny-opt"),
            "/no/such/image.png",
        ],
        vec![
            "match",
            "--model",
            &fixture("tiny-opt"),
            "--text",
            "a cat",
            image.as_str(),
        ],
        vec![
            "caption",
            "--model",
            &fixture("tiny-opt"),
            "--backend",
            "nope",
            image.as_str(),
        ],
        vec![
            "caption",
            "--model",
            &fixture("tiny-opt"),
            "--top-p",
            "2",
            "--do-sample",
            image.as_str(),
        ],
        vec![
            "caption",
            "--model",
            &fixture("tiny-opt"),
            "--dir",
            "/tmp",
            "--shard",
            "3/2",
        ],
        vec![
            "match",
            "--model",
            &fixture("tiny-itm"),
            "--dtype",
            "f16",
            "--text",
            "a cat",
            image.as_str(),
        ],
    ] {
        let out = blip2(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(!err.contains("panicked"));
    }
}

#[test]
fn timings_report_every_phase() {
    let model = fixture("tiny-opt");
    let image = fixture("images/rgb_96x64.png");
    let args = [
        "caption",
        "--model",
        &model,
        &image,
        "--json",
        "--timings",
        "--min-new-tokens",
        "6",
        "--max-new-tokens",
        "6",
    ];
    let doc = json(&blip2(&args));
    let t = &doc["timings"];
    for key in [
        "load_s",
        "encode_s",
        "prefill_s",
        "decode_s",
        "decode_s_per_token",
    ] {
        let v = t[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {t}"));
        assert!(v > 0.0 && v < 60.0, "{key} = {v}");
    }
    assert_eq!(t["tokens"], 6);
    assert_eq!(doc["results"][0]["token_ids"].as_array().unwrap().len(), 6);
    let per_token = t["decode_s_per_token"].as_f64().unwrap();
    let decode = t["decode_s"].as_f64().unwrap();
    // five steps after the prefill; durations are whole nanoseconds
    assert!((per_token * 5.0 - decode).abs() < 1e-8, "{t}");

    // Without --timings the document has no timings.
    let plain = json(&blip2(&args[..5]));
    assert!(plain.get("timings").is_none());
}

/// `blip2` with an empty Hugging Face cache, so that a hub id is looked up and not found.
fn blip2_no_cache(args: &[&str]) -> Output {
    let cache = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_blip2"))
        .args(args)
        .env("HF_HOME", cache.path())
        .env("HF_HUB_CACHE", cache.path().join("hub"))
        .output()
        .unwrap()
}

#[test]
fn match_and_embed_default_to_the_retrieval_checkpoint() {
    let image = fixture("images/rgb_96x64.png");
    for args in [
        ["match", "--text", "a dog", image.as_str()],
        ["embed", "--text", "a dog", image.as_str()],
    ] {
        let out = blip2_no_cache(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("Salesforce/blip2-itm-vit-g"),
            "{args:?}: {stderr}"
        );
    }
    let out = blip2_no_cache(&["caption", &image]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Salesforce/blip2-opt-2.7b"), "{stderr}");
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_blip2"))
        .args([
            "embed",
            "--model",
            &fixture("tiny-itm"),
            "--text",
            "a dog",
            &fixture("images/rgb_96x64.png"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before anything is written, as `| head -c 0` would.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn sampling_takes_a_fresh_seed_unless_one_is_given() {
    let model = fixture("tiny-opt");
    let image = fixture("images/rgb_96x64.png");
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "caption",
            "--model",
            &model,
            "--max-new-tokens",
            "12",
            "--do-sample",
            "--json",
        ];
        args.extend(extra);
        args.push(&image);
        json(&blip2(&args))
    };
    let first = sample(&[]);
    let second = sample(&[]);
    let seed = first["seed"].as_u64().expect("the seed used is reported");
    assert_ne!(first["seed"], second["seed"]);
    let again = sample(&["--seed", &seed.to_string()]);
    assert_eq!(again["seed"], seed);
    assert_eq!(token_ids(&again), token_ids(&first));

    // Sampling flags without --do-sample change nothing, and say so.
    let out = blip2(&[
        "caption",
        "--model",
        &model,
        "--max-new-tokens",
        "4",
        "--temperature",
        "0.5",
        &image,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: --temperature only applies with --do-sample"),
        "{stderr}"
    );
}

#[test]
fn images_on_the_command_line_run_in_batches() {
    let model = fixture("tiny-opt");
    let images: Vec<String> = ["rgb_96x64.png", "rgb_20x28.png", "noise_61x47.png"]
        .iter()
        .map(|name| fixture(&format!("images/{name}")))
        .collect();
    let caption = |extra: &[&str]| {
        let mut args = vec!["caption", "--model", &model, "--max-new-tokens", "6"];
        args.extend(extra);
        args.extend(images.iter().map(String::as_str));
        blip2(&args)
    };
    // One image per batch gives what one batch of three gives, in input order.
    let one = caption(&["--batch-size", "1"]);
    let all = caption(&[]);
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    assert_eq!(one.stdout, all.stdout);
    let text = String::from_utf8(one.stdout).unwrap();
    let listed: Vec<&str> = text
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(listed, images);
    let doc = json(&caption(&["--batch-size", "2", "--json"]));
    assert_eq!(doc["results"].as_array().unwrap().len(), 3);

    for (args, message) in [
        (vec!["--batch-size", "0"], "--batch-size must be at least 1"),
        (vec!["--shard", "0/2"], "--shard splits a dataset"),
    ] {
        let out = caption(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// A folder holding `copies` copies of each of four fixture images.
fn image_folder(root: &Path, copies: usize) -> PathBuf {
    let data = root.join("images");
    std::fs::create_dir(&data).unwrap();
    for name in [
        "rgb_96x64.png",
        "rgba_64x64.png",
        "grey_70x50.png",
        "palette_48x48.png",
    ] {
        for k in 0..copies {
            let to = data.join(format!("{k:02}-{name}"));
            std::fs::copy(fixtures().join("images").join(name), to).unwrap();
        }
    }
    data
}

/// `blip2 caption --model tiny-opt --max-new-tokens N`, for further arguments.
fn tiny_caption(new_tokens: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_blip2"));
    command.args([
        "caption",
        "--model",
        &fixture("tiny-opt"),
        "--max-new-tokens",
        new_tokens,
    ]);
    command
}

#[test]
fn shards_can_share_one_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = image_folder(dir.path(), 10);
    let out = dir.path().join("captions.jsonl");
    // As in the README: four processes at once, one shard each, one file.
    let children: Vec<_> = (0..4)
        .map(|i| {
            tiny_caption("3")
                .args([
                    "--batch-size",
                    "1",
                    "--shard",
                    &format!("{i}/4"),
                    "--resume",
                ])
                .arg("--dir")
                .arg(&data)
                .arg("--output")
                .arg(&out)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success());
    }
    let lines = read_lines(&out);
    assert_eq!(lines.len(), 40);
    let mut images: Vec<&str> = lines.iter().map(|l| l["image"].as_str().unwrap()).collect();
    images.sort();
    images.dedup();
    assert_eq!(images.len(), 40);

    // Without --resume an existing output is refused before the model loads, not overwritten.
    let again = caption_dir(&data, &out, &[]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("pass --resume"), "{stderr}");
    assert_eq!(read_lines(&out).len(), 40);
}

#[test]
fn resume_recognises_an_image_under_another_spelling_of_its_path() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(dir.path(), 1);
    let run = |data: &str| {
        tiny_caption("3")
            .current_dir(dir.path())
            .args(["--dir", data, "--output", "out.jsonl", "--resume"])
            .output()
            .unwrap()
    };
    assert!(run("images").status.success());
    let again = run("./images/");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(
        stderr.contains("captioned 0, failed 0, skipped 4"),
        "{stderr}"
    );
    assert_eq!(read_lines(&dir.path().join("out.jsonl")).len(), 4);
}

#[test]
fn dataset_runs_report_what_they_did() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = caption_dir(&empty, &dir.path().join("a.jsonl"), &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no images"));

    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("x.png"), b"not a png").unwrap();
    let o = caption_dir(&broken, &dir.path().join("b.jsonl"), &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("captioned 0, failed 1, skipped 0"),
        "{stderr}"
    );

    // Every sequence of --num-return-sequences is written.
    let data = image_folder(dir.path(), 1);
    let out = dir.path().join("c.jsonl");
    let o = caption_dir(
        &data,
        &out,
        &["--num-beams", "2", "--num-return-sequences", "2"],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("captioned 4, failed 0, skipped 0"),
        "{stderr}"
    );
    for line in read_lines(&out) {
        let sequences = line["sequences"].as_array().unwrap();
        assert_eq!(sequences.len(), 2, "{line}");
        assert_eq!(sequences[0]["token_ids"], line["token_ids"]);
    }
}

#[test]
fn cheap_mistakes_are_reported_before_the_model_loads() {
    // The model does not exist either: the error must be about the first thing checked.
    let dir = tempfile::tempdir().unwrap();
    let missing_model = dir.path().join("no-model").display().to_string();
    let missing_dir = dir.path().join("no-images").display().to_string();
    let out_in_missing_folder = dir
        .path()
        .join("no/such/folder/out.jsonl")
        .display()
        .to_string();
    let data = image_folder(dir.path(), 1).display().to_string();
    let missing_tar = dir.path().join("no-shard.tar").display().to_string();
    for (args, message) in [
        (vec!["caption", "nope.png"], "cannot read nope.png"),
        (
            vec!["ask", "--question", "what?", "nope.png"],
            "cannot read nope.png",
        ),
        (vec!["caption", "--dir", &missing_dir], "cannot read"),
        (
            vec!["caption", "--dir", &data, "--shard", "4/4"],
            "--shard takes I/N",
        ),
        (
            vec![
                "caption",
                "--dir",
                &data,
                "--output",
                &out_in_missing_folder,
            ],
            "cannot write",
        ),
        (
            vec![
                "caption",
                "--min-new-tokens",
                "5",
                "--max-new-tokens",
                "2",
                &data,
            ],
            "--min-new-tokens 5 is more than --max-new-tokens 2",
        ),
        (
            vec!["caption", "--top-p", "1.5", &data],
            "--top-p must be in",
        ),
        (vec!["caption", "--num-beams", "0", &data], "at least 1"),
        (
            vec!["caption", "--do-sample", "--num-beams", "2", &data],
            "beam sampling",
        ),
        (
            vec![
                "caption",
                "--num-return-sequences",
                "3",
                "--num-beams",
                "2",
                &data,
            ],
            "--num-return-sequences 3 needs",
        ),
        (
            vec!["caption", "--stream", "--num-beams", "3", &data],
            "--stream writes one sequence",
        ),
        (
            vec![
                "ask",
                "--question",
                "what?",
                "--question-template",
                "Q:",
                &data,
            ],
            "--question-template needs a {}",
        ),
        (vec!["caption", "-", "-"], "give - once"),
        (vec!["caption", "--webdataset", &missing_tar], "cannot read"),
        (
            vec!["caption", "--webdataset", "shards/{3..1}.tar"],
            "is not a range",
        ),
        (
            vec!["caption", "--dir", &data, "--shards", "3"],
            "--shards N needs JOB_COMPLETION_INDEX",
        ),
        (vec!["caption", "--resume", &data], "--resume continues"),
        (
            vec!["caption", "--prompt", "a photo of", &data],
            "--prompt and --question apply to a dataset",
        ),
    ] {
        let mut full = args.clone();
        full.extend(["--model", &missing_model]);
        let out = blip2(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

#[test]
fn library_warnings_reach_stderr_unless_quiet() {
    // A text longer than the Q-Former's positions is truncated, with a warning.
    let long = "a dog ".repeat(400);
    let args = |quiet: bool| {
        let mut a = vec![
            "match".to_owned(),
            "--model".to_owned(),
            fixture("tiny-itm"),
            "--text".to_owned(),
            long.clone(),
            fixture("images/rgb_96x64.png"),
        ];
        if quiet {
            a.push("-q".to_owned());
        }
        a
    };
    let run = |a: Vec<String>| {
        Command::new(env!("CARGO_BIN_EXE_blip2"))
            .args(a)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let loud = run(args(false));
    let stderr = String::from_utf8_lossy(&loud.stderr);
    assert!(loud.status.success(), "{stderr}");
    assert!(
        stderr.contains("WARN") && stderr.contains("truncated"),
        "{stderr}"
    );
    let quiet = run(args(true));
    assert!(quiet.status.success());
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("truncated"));
}

/// The `--json` document of a tiny-OPT caption of `image` with `extra` flags.
fn tiny_json(command: &[&str], extra: &[&str]) -> Value {
    let model = fixture("tiny-opt");
    let mut args = command.to_vec();
    args.extend(["--model", &model, "--json"]);
    args.extend(extra);
    json(&blip2(&args))
}

#[test]
fn stream_writes_the_text_that_json_reports() {
    let model = fixture("tiny-opt");
    for image in ["images/rgb_96x64.png", "images/palette_48x48.png"] {
        let image = fixture(image);
        for prompt in [None, Some("a photo of")] {
            let command: Vec<&str> = match prompt {
                None => vec!["caption"],
                Some(p) => vec!["generate", "--prompt", p],
            };
            let flags = ["--max-new-tokens", "30", image.as_str()];
            let doc = tiny_json(&command, &flags);
            let text = doc["results"][0]["text"].as_str().unwrap().to_owned();
            let mut args = command.clone();
            args.extend(["--model", &model, "--stream"]);
            args.extend(flags);
            let out = blip2(&args);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{text}\n"));
        }
    }
}

#[test]
fn several_questions_in_one_run_answer_as_each_asked_alone() {
    let image = fixture("images/rgb_96x64.png");
    let questions = ["what is this?", "what colour is it?", "where?"];
    let mut flags = vec!["--max-new-tokens", "6"];
    for q in &questions {
        flags.extend(["--question", q]);
    }
    flags.push(&image);
    let doc = tiny_json(&["ask"], &flags);
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), questions.len());
    for (q, r) in questions.iter().zip(results) {
        let alone = tiny_json(
            &["ask"],
            &["--max-new-tokens", "6", "--question", q, &image],
        );
        assert_eq!(r["question"], *q);
        assert_eq!(r["prompt"], format!("Question: {q} Answer:"));
        assert_eq!(r["token_ids"], alone["results"][0]["token_ids"], "{q}");
    }
    // As text: the question between the image and the answer.
    let model = fixture("tiny-opt");
    let mut args = vec!["ask", "--model", &model];
    args.extend(&flags);
    let out = blip2(&args);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), questions.len(), "{text}");
    for ((line, q), r) in lines.iter().zip(questions).zip(results) {
        assert_eq!(
            *line,
            format!("{image}\t{q}\t{}", r["text"].as_str().unwrap())
        );
    }
}

#[test]
fn templates_shape_the_prompts() {
    let image = fixture("images/rgb_96x64.png");
    let doc = tiny_json(
        &["ask"],
        &[
            "--max-new-tokens",
            "4",
            "--question",
            "what?",
            "--question-template",
            "Q: {} Short answer:",
            &image,
        ],
    );
    assert_eq!(doc["results"][0]["prompt"], "Q: what? Short answer:");
    let doc = tiny_json(
        &["generate"],
        &[
            "--max-new-tokens",
            "4",
            "--prompt",
            "a dog",
            "--prompt-template",
            "a photo of {}, with",
            &image,
        ],
    );
    let direct = tiny_json(
        &["generate"],
        &[
            "--max-new-tokens",
            "4",
            "--prompt",
            "a photo of a dog, with",
            &image,
        ],
    );
    assert_eq!(doc["results"][0]["prompt"], "a photo of a dog, with");
    assert_eq!(
        doc["results"][0]["token_ids"],
        direct["results"][0]["token_ids"]
    );
}

#[test]
fn text_only_prints_the_texts_alone() {
    let images = [
        fixture("images/rgb_96x64.png"),
        fixture("images/palette_48x48.png"),
    ];
    let doc = tiny_json(
        &["caption"],
        &["--max-new-tokens", "5", &images[0], &images[1]],
    );
    let out = tiny_caption("5")
        .args(["--text-only", &images[0], &images[1]])
        .output()
        .unwrap();
    assert!(out.status.success());
    let expected: String = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}\n", r["text"].as_str().unwrap()))
        .collect();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
}

#[test]
fn an_image_can_come_from_stdin() {
    use std::io::Write as _;
    let path = fixture("images/rgb_96x64.png");
    let from_file = tiny_json(&["caption"], &["--max-new-tokens", "6", &path]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_blip2"))
        .args(["caption", "--model", &fixture("tiny-opt"), "--json"])
        .args(["--max-new-tokens", "6", "--dtype", "fp32", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let doc = json(&child.wait_with_output().unwrap());
    assert_eq!(doc["results"][0]["image"], "-");
    assert_eq!(
        doc["results"][0]["token_ids"],
        from_file["results"][0]["token_ids"]
    );
}

#[test]
fn inspect_tells_what_the_checkpoint_is() {
    let itm = fixture("tiny-itm");
    let out = blip2(&["inspect", "--model", &itm]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("language     none (retrieval"), "{text}");
    assert!(!text.contains("OPT"), "{text}");
    assert!(text.contains("tokenizer    tokenizer.json"), "{text}");
    let doc = json(&blip2(&["inspect", "--model", &itm, "--json"]));
    assert_eq!(doc["kind"], "retrieval");
    assert!(doc["language"].is_null());
    assert!(doc["tokenizer_vocab"].as_u64().unwrap() > 0);

    let image = fixture("images/rgb_96x64.png");
    let doc = json(&blip2(&[
        "inspect",
        "--model",
        &fixture("tiny-opt"),
        "--json",
        &image,
    ]));
    assert_eq!(doc["kind"], "generation");
    assert_eq!(doc["language"]["model"], "opt");
    assert_eq!(doc["images_seen"][0]["width"], 96);
    assert_eq!(doc["images_seen"][0]["pixel_values"][0], 1);

    // A folder without tokenizer.json is not called fine.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("tiny-itm")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "tokenizer.json" {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let folder = dir.path().display().to_string();
    let out = blip2(&["inspect", "--model", &folder]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("tokenizer    MISSING"), "{text}");
    let doc = json(&blip2(&["inspect", "--model", &folder, "--json"]));
    assert!(doc["tokenizer_vocab"].is_null());
    assert!(doc["tokenizer_error"]
        .as_str()
        .unwrap()
        .contains("tokenizer.json"));
}

/// One `Connection: close` HTTP exchange: the status and the body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

#[test]
fn serve_answers_like_caption_and_stops_cleanly_on_sigterm() {
    use base64::Engine as _;
    use std::io::BufRead;
    use std::process::Stdio;
    let model = fixture("tiny-opt");
    let image = fixture("images/rgb_96x64.png");
    let mut child = Command::new(env!("CARGO_BIN_EXE_blip2"))
        .args(["serve", "--model", &model, "--port", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    assert!(
        line.contains(&format!("the web page is at http://{addr}/")),
        "loopback serves the page: {line:?}"
    );
    let start = std::time::Instant::now();
    while http(&addr, "GET", "/ready", "").0 != 200 {
        assert!(start.elapsed().as_secs() < 60, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (status, page) = http(&addr, "GET", "/", "");
    assert_eq!(status, 200);
    assert!(page.contains("<title>BLIP-2</title>"), "{page}");
    let png = std::fs::read(&image).unwrap();
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    );
    let body = serde_json::json!({
        "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": url } }] }],
        "max_tokens": 8,
    });
    let (status, response) = http(&addr, "POST", "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200, "{response}");
    let response: Value = serde_json::from_str(&response).unwrap();
    let caption = json(&blip2(&[
        "caption",
        "--model",
        &model,
        "--max-new-tokens",
        "8",
        "--json",
        &image,
    ]));
    assert_eq!(
        response["choices"][0]["message"]["content"],
        caption["results"][0]["text"]
    );
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn serve_takes_ui_or_no_ui_not_both() {
    let out = Command::new(env!("CARGO_BIN_EXE_blip2"))
        .args(["serve", "--model", &fixture("tiny-opt"), "--ui", "--no-ui"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--no-ui"), "{stderr}");
}
