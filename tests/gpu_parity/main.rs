//! The parity tests that scripts/gpu-check.sh runs on a GPU, as one binary: built on a machine
//! with a toolchain and carried to one with a GPU and no network, where five binaries that each
//! link all of burn and its GPU runtime would not fit in what can be carried. Each module is the
//! test file of the same name, unchanged (they also run as their own targets), so a plain
//! `cargo test` does not build this one (`test = false` in Cargo.toml):
//! `cargo test --release -p blip2 --no-default-features --features wgpu --test gpu_parity`.

#[path = "../backend.rs"]
mod backend;
#[path = "../generation.rs"]
mod generation;
#[path = "../generation_t5.rs"]
mod generation_t5;
#[path = "../half_precision.rs"]
mod half_precision;
#[path = "../image_embeddings.rs"]
mod image_embeddings;
#[path = "../instructblip.rs"]
mod instructblip;
#[path = "../retrieval.rs"]
mod retrieval;
