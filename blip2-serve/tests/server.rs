//! The server on loopback, on the tiny fixtures: every endpoint, every error status, readiness,
//! metrics, batching under load, and hostile clients. Each test starts its own server on an
//! ephemeral port and stops it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use blip2::preprocess::{load_image, ImageLimits};
use blip2::{Blip2, Blip2Retrieval};
use blip2_serve::{Loaded, RunningServer, ServeConfig};
use serde_json::{json, Value};

use blip2_test_support::fixtures;

fn image_path(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

fn data_url(name: &str) -> String {
    let bytes = std::fs::read(image_path(name)).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

const IMAGES: [&str; 4] = [
    "rgb_96x64.png",
    "noise_61x47.png",
    "grey_70x50.png",
    "rgba_64x64.png",
];

fn config() -> ServeConfig {
    let mut c = ServeConfig::new("tiny");
    c.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    c
}

fn start(config: ServeConfig, fixture: &str) -> RunningServer {
    let dir = fixtures().join(fixture);
    let server = blip2_serve::spawn(config, move || {
        if dir.ends_with("tiny-itm") {
            Ok(Loaded::Retrieval(Blip2Retrieval::from_pretrained(&dir)?))
        } else {
            Ok(Loaded::Generation(Blip2::from_pretrained(&dir)?))
        }
    })
    .unwrap();
    wait_ready(server.addr());
    server
}

fn wait_ready(addr: SocketAddr) {
    let start = Instant::now();
    while get(addr, "/ready").0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(60), "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 exchange on a fresh connection: the status and the body (de-chunked).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) and close before a large body is all sent: read the answer
    // anyway.
    let _ = stream.write_all(body);
    read_response(stream)
}

fn read_response(stream: TcpStream) -> (u16, String) {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut chunked = false;
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        match k.to_ascii_lowercase().as_str() {
            "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
            "content-length" => length = v.trim().parse::<usize>().ok(),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        reader.read_exact(&mut body).unwrap();
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    (status, String::from_utf8(body).unwrap())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path, &[], &[])
}

fn post_json(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, value)
}

fn chat(image: &str, question: &str) -> Value {
    let mut content = vec![json!({ "type": "image_url", "image_url": { "url": data_url(image) } })];
    if !question.is_empty() {
        content.push(json!({ "type": "text", "text": question }));
    }
    json!({ "model": "tiny", "messages": [{ "role": "user", "content": content }], "max_tokens": 12 })
}

fn answer(response: &Value) -> String {
    response["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content in {response}"))
        .to_owned()
}

fn library_model() -> Blip2 {
    Blip2::from_pretrained(fixtures().join("tiny-opt")).unwrap()
}

fn library_text(model: &Blip2, image: &str, question: &str) -> String {
    let img = load_image(image_path(image), ImageLimits::default()).unwrap();
    let config = blip2::GenerationConfig {
        max_new_tokens: Some(12),
        ..model.generation_config().clone()
    };
    let prompts: Vec<String> = if question.is_empty() {
        Vec::new()
    } else {
        vec![model.question_prompt(question)]
    };
    model.generate(&[img], &prompts, &config).unwrap()[0][0]
        .text
        .clone()
}

#[test]
fn chat_completions_answer_as_the_library_does() {
    let server = start(config(), "tiny-opt");
    let addr = server.addr();
    let model = library_model();
    for (image, question) in [("rgb_96x64.png", ""), ("noise_61x47.png", "what is it?")] {
        let (status, response) = post_json(addr, "/v1/chat/completions", &chat(image, question));
        assert_eq!(status, 200, "{response}");
        assert_eq!(answer(&response), library_text(&model, image, question));
        assert_eq!(response["object"], "chat.completion");
        let usage = &response["usage"];
        let prompt = if question.is_empty() {
            String::new()
        } else {
            model.question_prompt(question)
        };
        assert_eq!(usage["prompt_tokens"], model.input_tokens(&prompt).unwrap());
        assert!(usage["completion_tokens"].as_u64().unwrap() >= 1);
        let reason = response["choices"][0]["finish_reason"].as_str().unwrap();
        assert!(reason == "stop" || reason == "length", "{reason}");
    }
    // A stop string cuts the text before it.
    let full = library_text(&model, "rgb_96x64.png", "");
    let stop: String = full.chars().skip(3).take(2).collect();
    assert_eq!(stop.chars().count(), 2, "{full:?} is too short");
    let mut body = chat("rgb_96x64.png", "");
    body["stop"] = json!(["never in the text", stop]);
    let (_, response) = post_json(addr, "/v1/chat/completions", &body);
    assert_eq!(answer(&response), full[..full.find(&stop).unwrap()]);
    assert_eq!(response["choices"][0]["finish_reason"], "stop");
    // n sequences by beam search.
    let mut body = chat("rgb_96x64.png", "");
    body["n"] = json!(2);
    body["num_beams"] = json!(3);
    let (status, response) = post_json(addr, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["choices"].as_array().unwrap().len(), 2);
    let (status, models) = get(addr, "/v1/models");
    assert_eq!(status, 200);
    assert!(models.contains("\"tiny\""), "{models}");
    server.stop().unwrap();
}

/// The `data:` payloads of a server-sent event stream.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The `data:` payloads of a streamed chat completion (status 200 asserted).
fn stream_events(addr: SocketAddr, body: &Value) -> Vec<String> {
    let (status, text) = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    sse_data(&text)
}

#[test]
fn streamed_chunks_concatenate_to_the_whole_answer() {
    let server = start(config(), "tiny-opt");
    let addr = server.addr();
    let model = library_model();
    for (image, question) in [("rgb_96x64.png", ""), ("grey_70x50.png", "what colour?")] {
        let mut body = chat(image, question);
        body["stream"] = json!(true);
        body["stream_options"] = json!({ "include_usage": true });
        let events = stream_events(addr, &body);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let streamed: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(streamed, library_text(&model, image, question));
        assert!(chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"].is_string()));
        assert!(
            chunks.last().unwrap()["usage"]["completion_tokens"]
                .as_u64()
                .unwrap()
                >= 1
        );
    }
    server.stop().unwrap();
}

#[test]
fn caption_endpoint_takes_raw_multipart_and_json() {
    let server = start(config(), "tiny-opt");
    let addr = server.addr();
    let model = library_model();
    let expected = library_text(&model, "rgb_96x64.png", "");
    let png = std::fs::read(image_path("rgb_96x64.png")).unwrap();
    let (status, raw) = request(
        addr,
        "POST",
        "/v1/caption?max_tokens=12",
        &[("Content-Type", "image/png")],
        &png,
    );
    assert_eq!(status, 200, "{raw}");
    let raw: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(raw["text"], expected.as_str());

    let boundary = "XbOuNdArYx";
    let mut form = Vec::new();
    form.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
    );
    form.extend_from_slice(&png);
    form.extend_from_slice(
        format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"max_tokens\"\r\n\r\n12\r\n--{boundary}--\r\n").as_bytes(),
    );
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let (status, multipart) = request(
        addr,
        "POST",
        "/v1/caption",
        &[("Content-Type", content_type.as_str())],
        &form,
    );
    assert_eq!(status, 200, "{multipart}");
    let multipart: Value = serde_json::from_str(&multipart).unwrap();
    assert_eq!(multipart["text"], expected.as_str());

    let body = json!({ "image": data_url("noise_61x47.png"), "question": "what is it?", "max_tokens": 12 });
    let (status, answered) = post_json(addr, "/v1/caption", &body);
    assert_eq!(status, 200, "{answered}");
    assert_eq!(
        answered["text"],
        library_text(&model, "noise_61x47.png", "what is it?").as_str()
    );
    server.stop().unwrap();
}

#[test]
fn match_and_embeddings_give_the_library_numbers() {
    let server = start(config(), "tiny-itm");
    let addr = server.addr();
    let model = Blip2Retrieval::from_pretrained(fixtures().join("tiny-itm")).unwrap();
    let images: Vec<_> = IMAGES[..2]
        .iter()
        .map(|n| load_image(image_path(n), ImageLimits::default()).unwrap())
        .collect();
    let texts = ["a red square", "noise"];
    let body = json!({ "images": [data_url(IMAGES[0]), data_url(IMAGES[1])], "texts": texts });
    let (status, scores) = post_json(addr, "/v1/match", &body);
    assert_eq!(status, 200, "{scores}");
    let expected = model.scores(&images, &texts, true).unwrap();
    let close = |ours: &Value, theirs: &[Vec<f32>]| {
        for (row, want) in ours.as_array().unwrap().iter().zip(theirs) {
            for (got, want) in row.as_array().unwrap().iter().zip(want) {
                assert!((got.as_f64().unwrap() as f32 - want).abs() <= 1e-6);
            }
        }
    };
    close(&scores["itc"], &expected.itc);
    close(&scores["itm"], expected.itm.as_ref().unwrap());

    let body = json!({ "input": texts, "images": [data_url(IMAGES[0])], "model": "tiny" });
    let (status, embedded) = post_json(addr, "/v1/embeddings", &body);
    assert_eq!(status, 200, "{embedded}");
    let want = model.text_embeddings(&texts).unwrap();
    let data = embedded["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (d, w) in data.iter().zip(&want) {
        let got: Vec<f32> = serde_json::from_value(d["embedding"].clone()).unwrap();
        assert_eq!(&got, w);
    }
    let image_vectors: Vec<Vec<f32>> =
        serde_json::from_value(embedded["images"][0]["embedding"].clone()).unwrap();
    assert_eq!(
        image_vectors,
        model.image_embeddings(&images[..1]).unwrap()[0]
    );
    // A captioning endpoint on a retrieval server is the client's mistake.
    let (status, _) = post_json(addr, "/v1/chat/completions", &chat(IMAGES[0], ""));
    assert_eq!(status, 400);
    server.stop().unwrap();
}

/// A PNG whose header claims 100000 × 100000 pixels.
fn png_bomb() -> Vec<u8> {
    let mut bomb = std::fs::read(image_path("rgb_20x28.png")).unwrap();
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32fast::hash(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    bomb
}

#[test]
fn bad_requests_get_the_right_status_and_an_openai_error() {
    let mut c = config();
    c.max_body_bytes = 1 << 20;
    c.api_key = Some("sesame".to_owned());
    let server = start(c, "tiny-opt");
    let addr = server.addr();
    let key = ("Authorization", "Bearer sesame");
    let json_type = ("Content-Type", "application/json");
    let send = |body: &[u8], headers: &[(&str, &str)]| {
        request(addr, "POST", "/v1/chat/completions", headers, body)
    };
    let with = |mut body: Value, field: &str, value: Value| {
        body[field] = value;
        body.to_string()
    };
    let bomb = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png_bomb())
    );
    let image = |url: &str| {
        json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": url } }] }] })
            .to_string()
    };
    let mut streamed_beams = chat(IMAGES[0], "");
    streamed_beams["stream"] = json!(true);
    streamed_beams["num_beams"] = json!(2);
    let cases: Vec<(&str, String, u16)> = vec![
        ("not JSON", "{nope".to_owned(), 400),
        (
            "no image",
            json!({ "messages": [{ "role": "user", "content": "hi" }] }).to_string(),
            400,
        ),
        (
            "not an image",
            image("data:image/png;base64,bm90IGFuIGltYWdl"),
            400,
        ),
        (
            "truncated base64",
            image("data:image/png;base64,iVBORw0KGgoAAAANSUhEU"),
            400,
        ),
        ("a pixel bomb", image(&bomb), 400),
        (
            "a remote URL",
            image("http://169.254.169.254/latest/meta-data"),
            400,
        ),
        (
            "an unknown option",
            with(chat(IMAGES[0], ""), "frequency_penalty", json!(1)),
            400,
        ),
        (
            "contradictory options",
            with(chat(IMAGES[0], ""), "n", json!(3)),
            400,
        ),
        (
            "over the token limit",
            with(chat(IMAGES[0], ""), "max_tokens", json!(100_000)),
            400,
        ),
        ("stream with beams", streamed_beams.to_string(), 400),
    ];
    for (what, body, want) in cases {
        let (status, text) = send(body.as_bytes(), &[key, json_type]);
        assert_eq!(status, want, "{what}: {text}");
        let error: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
        assert!(error["error"]["message"].is_string(), "{what}: {text}");
    }
    // Without the key, or with a wrong one.
    let ok_body = chat(IMAGES[0], "").to_string();
    assert_eq!(send(ok_body.as_bytes(), &[json_type]).0, 401);
    assert_eq!(
        send(
            ok_body.as_bytes(),
            &[("Authorization", "Bearer nope"), json_type]
        )
        .0,
        401
    );
    assert_eq!(send(ok_body.as_bytes(), &[key, json_type]).0, 200);
    // 10 MB of JSON against a 1 MiB limit.
    let big = format!(
        "{{\"messages\": [], \"pad\": \"{}\"}}",
        "x".repeat(10 << 20)
    );
    assert_eq!(send(big.as_bytes(), &[key, json_type]).0, 413);
    // Health and metrics need no key; the server still answers.
    assert_eq!(get(addr, "/health").0, 200);
    assert_eq!(send(ok_body.as_bytes(), &[key, json_type]).0, 200);
    server.stop().unwrap();
}

#[test]
fn ready_waits_for_the_model_and_metrics_parse() {
    let (release, wait) = mpsc::channel::<()>();
    let dir = fixtures().join("tiny-opt");
    let server = blip2_serve::spawn(config(), move || {
        wait.recv().ok();
        Ok(Loaded::Generation(Blip2::from_pretrained(&dir)?))
    })
    .unwrap();
    let addr = server.addr();
    assert_eq!(get(addr, "/health").0, 200);
    assert_eq!(get(addr, "/ready").0, 503);
    let (status, _) = post_json(addr, "/v1/chat/completions", &chat(IMAGES[0], ""));
    assert_eq!(status, 503);
    release.send(()).unwrap();
    wait_ready(addr);
    let (status, _) = post_json(addr, "/v1/chat/completions", &chat(IMAGES[0], ""));
    assert_eq!(status, 200);
    let (status, metrics) = get(addr, "/metrics");
    assert_eq!(status, 200);
    // Prometheus' text format: comments, or `name{labels} value`.
    let mut samples = 0;
    for line in metrics.lines().filter(|l| !l.is_empty()) {
        if line.starts_with('#') {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(value.parse::<f64>().is_ok(), "{line}");
        assert!(name.starts_with("blip2_"), "{line}");
        samples += 1;
    }
    assert!(samples > 0);
    assert!(
        metrics
            .contains("blip2_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("status=\"503\""), "{metrics}");
    assert!(
        metrics.contains("blip2_latency_seconds_bucket{"),
        "{metrics}"
    );
    server.stop().unwrap();
}

#[test]
fn a_failed_load_stops_the_server_with_its_error() {
    let server = blip2_serve::spawn(config(), || {
        Ok(Loaded::Generation(Blip2::from_pretrained(
            fixtures().join("no-such-model"),
        )?))
    })
    .unwrap();
    let err = server.wait().unwrap_err();
    assert!(err.to_string().contains("no-such-model"), "{err}");
}

#[test]
fn a_slow_client_times_out_and_the_server_keeps_serving() {
    let mut c = config();
    c.body_timeout = Duration::from_millis(500);
    let server = start(c, "tiny-opt");
    let addr = server.addr();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"mess").as_bytes(),
    )
    .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let (status, _) = read_response(slow);
    assert_eq!(status, 408);
    assert!(started.elapsed() < Duration::from_secs(10));
    let (status, _) = post_json(addr, "/v1/chat/completions", &chat(IMAGES[0], ""));
    assert_eq!(status, 200);
    server.stop().unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn concurrent_clients_get_the_sequential_answers() {
    let server = start(config(), "tiny-opt");
    let addr = server.addr();
    let jobs: Vec<(&str, &str)> = (0..64)
        .map(|i| {
            (
                IMAGES[i % IMAGES.len()],
                if i % 2 == 0 { "" } else { "what is it?" },
            )
        })
        .collect();
    let run = |job: &(&str, &str)| {
        let t = Instant::now();
        let (status, response) = post_json(addr, "/v1/chat/completions", &chat(job.0, job.1));
        assert_eq!(status, 200, "{response}");
        (answer(&response), t.elapsed())
    };
    let sequential_start = Instant::now();
    let sequential: Vec<(String, Duration)> = jobs.iter().map(run).collect();
    let sequential_time = sequential_start.elapsed();

    let concurrent_start = Instant::now();
    let mut concurrent: Vec<Option<(String, Duration)>> = vec![None; jobs.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|client| {
                let jobs = &jobs;
                let run = &run;
                scope.spawn(move || {
                    (client..jobs.len())
                        .step_by(16)
                        .map(|i| (i, run(&jobs[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().unwrap() {
                concurrent[i] = Some(r);
            }
        }
    });
    let concurrent_time = concurrent_start.elapsed();
    let concurrent: Vec<(String, Duration)> = concurrent.into_iter().map(Option::unwrap).collect();
    for (i, ((a, _), (b, _))) in sequential.iter().zip(&concurrent).enumerate() {
        assert_eq!(a, b, "request {i} ({:?})", jobs[i]);
    }
    let mut latencies: Vec<Duration> = concurrent.iter().map(|(_, d)| *d).collect();
    latencies.sort();
    println!(
        "64 requests: sequential {:.2} s ({:.1} req/s); 16 clients {:.2} s ({:.1} req/s), p50 {:.0} ms, p99 {:.0} ms",
        sequential_time.as_secs_f64(),
        64.0 / sequential_time.as_secs_f64(),
        concurrent_time.as_secs_f64(),
        64.0 / concurrent_time.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
    let (_, metrics) = get(addr, "/metrics");
    let batched = metrics
        .lines()
        .find(|l| l.starts_with("blip2_batch_size_sum"))
        .expect("batch size metric");
    println!("{batched}");
    server.stop().unwrap();
}

#[test]
fn a_full_queue_answers_429_and_the_server_stays_healthy() {
    let mut c = config();
    c.queue = 4;
    c.max_batch_size = 1;
    let server = start(c, "tiny-opt");
    let addr = server.addr();
    // Slow requests (4 beams, 30 tokens each), so that 24 sent at once overflow the queue.
    let mut body = chat(IMAGES[0], "");
    body["max_tokens"] = json!(30);
    body["min_tokens"] = json!(30);
    body["num_beams"] = json!(4);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..24)
            .map(|_| scope.spawn(|| post_json(addr, "/v1/chat/completions", &body).0))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    println!("queue 4, 24 at once: {ok} answered, {refused} refused");
    assert_eq!(ok + refused, statuses.len(), "{statuses:?}");
    assert!(refused > 0, "{statuses:?}");
    assert!(ok >= 4, "{statuses:?}");
    assert_eq!(get(addr, "/health").0, 200);
    assert_eq!(
        post_json(addr, "/v1/chat/completions", &chat(IMAGES[0], "")).0,
        200
    );
    server.stop().unwrap();
}

/// A plain HTTP server on loopback for the remote-image test: `/image.png` (a fixture),
/// `/moved` (a redirect to it), `/large` (more bytes than the limit), anything else 404. Serves
/// until the test's process ends.
#[cfg(feature = "remote-images")]
fn image_host(image: &str, large: usize) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let png = std::fs::read(image_path(image)).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            // The rest of the head.
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {}
            let (status, extra, body) = match path.as_str() {
                "/image.png" => (
                    "200 OK",
                    "Content-Type: image/png\r\n".to_owned(),
                    png.clone(),
                ),
                "/moved" => (
                    "302 Found",
                    format!("Location: http://{addr}/image.png\r\n"),
                    Vec::new(),
                ),
                "/large" => ("200 OK", String::new(), vec![0u8; large]),
                _ => ("404 Not Found", String::new(), b"no such image".to_vec()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    addr
}

/// With `allow_remote_images`, an http `image_url` is fetched (redirects followed) and answered
/// as the same image sent inline; a missing image is a 400 and one past the body limit a 413.
#[cfg(feature = "remote-images")]
#[test]
fn remote_images_are_fetched_when_allowed() {
    let mut config = config();
    config.allow_remote_images = true;
    config.max_body_bytes = 64 << 10;
    let host = image_host(IMAGES[0], 100 << 10);
    let server = start(config, "tiny-opt");
    let addr = server.addr();
    let want = library_text(&library_model(), IMAGES[0], "");
    let remote = |path: &str| {
        let mut body = chat(IMAGES[0], "");
        body["messages"][0]["content"][0]["image_url"]["url"] =
            json!(format!("http://{host}{path}"));
        post_json(addr, "/v1/chat/completions", &body)
    };
    for path in ["/image.png", "/moved"] {
        let (status, response) = remote(path);
        assert_eq!(status, 200, "{path}: {response}");
        assert_eq!(answer(&response), want, "{path}");
    }
    let (status, response) = remote("/missing.png");
    assert_eq!(status, 400, "{response}");
    assert!(response.to_string().contains("404"), "{response}");
    let (status, response) = remote("/large");
    assert_eq!(status, 413, "{response}");
    server.stop().unwrap();
}

/// A counter of the server's `/metrics`.
fn counter(addr: SocketAddr, name: &str) -> u64 {
    let (_, metrics) = get(addr, "/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// The server's count of generated tokens.
fn generated_tokens(addr: SocketAddr) -> u64 {
    counter(addr, "blip2_generated_tokens_total")
}

/// The image-cache counters: (hits, misses).
fn image_cache(addr: SocketAddr) -> (u64, u64) {
    (
        counter(addr, "blip2_image_cache_hits_total"),
        counter(addr, "blip2_image_cache_misses_total"),
    )
}

/// A question about an image sent before reuses its encoding, alone, streamed and batched with
/// an image not seen before (the batch then concatenates a cached encoding with a fresh one),
/// and every answer is still the library's.
#[test]
fn a_second_question_about_an_image_reuses_its_encoding() {
    let mut c = config();
    // Long enough for the two concurrent requests below to meet in one batch.
    c.max_wait = Duration::from_millis(1000);
    let server = start(c, "tiny-opt");
    let addr = server.addr();
    let model = library_model();
    let (image, other) = (IMAGES[0], IMAGES[1]);

    let (status, first) = post_json(addr, "/v1/chat/completions", &chat(image, ""));
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["timings"]["image_cached"], json!(false), "{first}");
    assert_eq!(image_cache(addr), (0, 1));

    let (_, again) = post_json(addr, "/v1/chat/completions", &chat(image, "what is it?"));
    assert_eq!(again["timings"]["image_cached"], json!(true), "{again}");
    assert_eq!(again["timings"]["encode_ms"], json!(0.0), "{again}");
    assert_eq!(answer(&again), library_text(&model, image, "what is it?"));
    assert_eq!(image_cache(addr), (1, 1));

    let mut streamed = chat(image, "and now?");
    streamed["stream"] = json!(true);
    let events = stream_events(addr, &streamed);
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["timings"]["image_cached"], json!(true), "{last}");
    assert_eq!(image_cache(addr), (2, 1));

    let answers: Vec<(Value, String)> = std::thread::scope(|scope| {
        let jobs: Vec<_> = [(image, "is it red?"), (other, "is it red?")]
            .map(|(img, q)| {
                scope.spawn(move || post_json(addr, "/v1/chat/completions", &chat(img, q)))
            })
            .into_iter()
            .collect();
        jobs.into_iter()
            .zip([image, other])
            .map(|(job, img)| {
                let (status, response) = job.join().unwrap();
                assert_eq!(status, 200, "{response}");
                (response, library_text(&model, img, "is it red?"))
            })
            .collect()
    });
    for (response, want) in &answers {
        assert_eq!(&answer(response), want, "{response}");
    }
    let cached: Vec<&Value> = answers
        .iter()
        .map(|(r, _)| &r["timings"]["image_cached"])
        .collect();
    assert_eq!(cached, [&json!(true), &json!(false)]);
    assert_eq!(image_cache(addr), (3, 2));
    // Four generate calls for five requests: the last two were one batch.
    assert_eq!(counter(addr, "blip2_batch_size_count"), 4);
    server.stop().unwrap();
}

/// With a cache of 0 every request encodes its image.
#[test]
fn an_image_cache_of_zero_encodes_every_time() {
    let mut c = config();
    c.image_cache = 0;
    let server = start(c, "tiny-opt");
    let addr = server.addr();
    for _ in 0..2 {
        let (_, response) = post_json(addr, "/v1/chat/completions", &chat(IMAGES[0], ""));
        assert_eq!(
            response["timings"]["image_cached"],
            json!(false),
            "{response}"
        );
    }
    assert_eq!(image_cache(addr), (0, 2));
    server.stop().unwrap();
}

/// `/v1/info` says what is loaded and the limits; the page is served only when asked, with a
/// policy that keeps it on this origin, and without the API key (its API calls need it).
#[test]
fn info_and_the_page() {
    let mut c = config();
    c.ui = true;
    c.api_key = Some("sesame".to_owned());
    c.max_body_bytes = 123_456;
    let server = start(c, "tiny-opt");
    let addr = server.addr();
    let (status, _) = get(addr, "/v1/info");
    assert_eq!(status, 401);
    let (status, body) = request(
        addr,
        "GET",
        "/v1/info",
        &[("Authorization", "Bearer sesame")],
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();
    let model = library_model();
    let defaults = model.generation_config();
    assert_eq!(info["model"], json!("tiny"));
    assert_eq!(info["kind"], json!("generation"));
    assert_eq!(info["family"], json!("blip-2"));
    assert_eq!(info["language_model"], json!("opt"));
    assert_eq!(info["backend"], json!("flex"));
    assert_eq!(info["dtype"], json!("f32"));
    assert_eq!(info["limits"]["max_body_bytes"], json!(123_456));
    assert_eq!(info["defaults"]["num_beams"], json!(defaults.num_beams));
    assert_eq!(info["defaults"]["do_sample"], json!(defaults.do_sample));

    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let (status, head) = head_of(addr, path);
        assert_eq!(status, 200, "{path}");
        assert!(
            head.contains(&format!("content-type: {kind}")),
            "{path}: {head}"
        );
        assert!(
            head.contains("content-security-policy: default-src 'none'"),
            "{head}"
        );
    }
    server.stop().unwrap();

    let server = start(config(), "tiny-opt");
    assert_eq!(get(server.addr(), "/").0, 404, "no page unless asked");
    server.stop().unwrap();
}

/// The status and the lowercased response head of a GET.
fn head_of(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head)
}

/// A client that goes away in the middle of a stream stops its generation: of the 20000 tokens
/// it asked for (EOS suppressed) far fewer are generated, the model thread is free again within
/// the next request's read timeout, and the server keeps serving.
#[test]
fn a_client_that_disconnects_mid_stream_stops_its_generation() {
    const ASKED: u64 = 20_000;
    let mut c = config();
    c.limits.max_new_tokens = ASKED as usize;
    // T5's relative positions have no length limit.
    let server = start(c, "tiny-t5");
    let addr = server.addr();
    let before = generated_tokens(addr);
    let mut body = chat(IMAGES[0], "");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(ASKED);
    body["min_tokens"] = json!(ASKED);
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Read until the first piece of content has arrived, then hang up.
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !line.contains(r#""content":""#) || line.contains(r#""content":"""#) {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
    }
    drop(reader);
    // Queued behind the stream on the one model thread: answered once it has stopped.
    let (status, response) = post_json(addr, "/v1/chat/completions", &chat(IMAGES[0], ""));
    assert_eq!(status, 200, "{response}");
    let caption = response["usage"]["completion_tokens"].as_u64().unwrap();
    let streamed = generated_tokens(addr) - before - caption;
    assert!(
        streamed < ASKED / 4,
        "{streamed} of {ASKED} tokens generated after the client left"
    );
    println!("the stream stopped after {streamed} of {ASKED} tokens");
    server.stop().unwrap();
}

/// An InstructBLIP checkpoint behind the same endpoints: a chat turn without text is the
/// library's `caption` (the captioning instruction), one with text its `ask` (the question as
/// the instruction), batched or streamed, and `usage` counts the prompt actually used.
#[test]
fn instructblip_answers_as_the_library_does() {
    let fixture = "tiny-instructblip-llama";
    let server = start(config(), fixture);
    let addr = server.addr();
    let model = Blip2::from_pretrained(fixtures().join(fixture)).unwrap();
    assert!(model.is_instructblip());
    let img = load_image(image_path("rgb_96x64.png"), ImageLimits::default()).unwrap();
    let config = blip2::GenerationConfig {
        max_new_tokens: Some(12),
        ..model.generation_config().clone()
    };
    for question in ["", "What is in the picture?"] {
        let prompt = if question.is_empty() {
            blip2::INSTRUCTBLIP_CAPTION_PROMPT.to_owned()
        } else {
            question.to_owned()
        };
        let expected = model
            .generate(std::slice::from_ref(&img), &[prompt.as_str()], &config)
            .unwrap()[0][0]
            .text
            .clone();
        let (status, response) = post_json(
            addr,
            "/v1/chat/completions",
            &chat("rgb_96x64.png", question),
        );
        assert_eq!(status, 200, "{response}");
        assert_eq!(answer(&response), expected, "{question:?}");
        assert_eq!(
            response["usage"]["prompt_tokens"],
            model.input_tokens(&prompt).unwrap()
        );
        let mut body = chat("rgb_96x64.png", question);
        body["stream"] = json!(true);
        let streamed: String = stream_events(addr, &body)
            .iter()
            .filter(|d| *d != "[DONE]")
            .filter_map(|d| {
                let v: Value = serde_json::from_str(d).unwrap();
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(streamed, expected, "streamed {question:?}");
    }
    let body = json!({ "image": data_url("rgb_96x64.png"), "max_tokens": 12 });
    let (status, captioned) = post_json(addr, "/v1/caption", &body);
    assert_eq!(status, 200, "{captioned}");
    let expected = model
        .generate(std::slice::from_ref(&img), blip2::NO_PROMPTS, &config)
        .unwrap()[0][0]
        .text
        .clone();
    assert_eq!(captioned["text"], expected.as_str());
    server.stop().unwrap();
}
