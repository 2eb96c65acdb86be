//! What batching buys: N caption requests sent one after another, then the same N at once, to
//! a server on loopback; prints the wall times and their ratio as JSON.
//!
//!     cargo bench -p blip2-serve --bench batching -- target/bench-models/bench-small [N] [ROUNDS]
//!
//! (`tools/bench/make_models.py --only bench-small` makes that checkpoint.) Each round runs
//! sequentially then concurrently; the figures are the medians over the rounds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine as _;
use blip2::Blip2;
use blip2_serve::{Loaded, ServeConfig};
use serde_json::{json, Value};

fn post(addr: SocketAddr, path: &str, body: &str) -> Value {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(model) = args.first().cloned() else {
        eprintln!("usage: batching MODEL_DIR [N=8] [ROUNDS=3]");
        std::process::exit(2);
    };
    let n: usize = args.get(1).map_or(8, |s| s.parse().unwrap());
    let rounds: usize = args.get(2).map_or(3, |s| s.parse().unwrap());
    let mut config = ServeConfig::new("bench");
    config.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.max_batch_size = n;
    let dir = model.clone();
    let server = blip2_serve::spawn(config, move || {
        Ok(Loaded::Generation(Blip2::from_pretrained(&dir)?))
    })
    .unwrap();
    let addr = server.addr();
    let start = Instant::now();
    loop {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "never ready: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images");
    let images = [
        "rgb_96x64.png",
        "noise_61x47.png",
        "grey_70x50.png",
        "rgba_64x64.png",
    ];
    let bodies: Vec<String> = (0..n)
        .map(|i| {
            let bytes = std::fs::read(root.join(images[i % images.len()])).unwrap();
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            json!({ "image": b64, "max_tokens": 20, "min_tokens": 20 }).to_string()
        })
        .collect();
    let (mut sequential, mut concurrent) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let one_by_one: Vec<Value> = bodies
            .iter()
            .map(|b| post(addr, "/v1/caption", b))
            .collect();
        sequential.push(t.elapsed());
        let t = Instant::now();
        let at_once: Vec<Value> = std::thread::scope(|scope| {
            let handles: Vec<_> = bodies
                .iter()
                .map(|b| scope.spawn(move || post(addr, "/v1/caption", b)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        concurrent.push(t.elapsed());
        for (a, b) in one_by_one.iter().zip(&at_once) {
            assert_eq!(a["text"], b["text"], "batched output differs");
        }
    }
    let (s, c) = (median(sequential), median(concurrent));
    println!(
        "{}",
        json!({
            "model": model,
            "requests": n,
            "rounds": rounds,
            "new_tokens": 20,
            "sequential_s": s.as_secs_f64(),
            "concurrent_s": c.as_secs_f64(),
            "ratio": c.as_secs_f64() / s.as_secs_f64(),
        })
    );
    server.stop().unwrap();
}
