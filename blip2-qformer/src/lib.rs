//! The BLIP-2 Q-Former (transformers' `Blip2QFormerModel`) on burn: learned queries that read the
//! image through cross-attention.
//!
//! Modules follow transformers' names: [`attention`] (`Blip2QFormerMultiHeadAttention`,
//! `Blip2QFormerSelfOutput`, `Blip2QFormerAttention`), [`layer`] (`Blip2QFormerLayer` with the
//! query and text feed-forward blocks), [`model`] (`Blip2QFormerModel`, with `query_tokens`),
//! [`embeddings`] (`Blip2TextEmbeddings`) and [`retrieval`] (the ITM and ITC heads of
//! `Blip2ForImageTextRetrieval`).
//! The language projection lives in the `blip2` facade, which wires vision → Q-Former →
//! projection.
#![warn(missing_docs)]

pub mod attention;
pub mod embeddings;
pub mod layer;
pub mod model;
pub mod retrieval;

pub use embeddings::Blip2TextEmbeddings;
pub use model::Blip2QFormerModel;
pub use retrieval::RetrievalHeads;
