//! Fetching a chat message's `image_url` over http(s), for a server started with
//! `allow_remote_images` (feature `remote-images`). Off by default: a server that fetches what its
//! clients name can be pointed at addresses inside its own network.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::StatusCode;

use crate::ApiError;

/// Most redirects followed.
const MAX_REDIRECTS: u32 = 3;

/// The body at `url`: at most `max_bytes` (413 past it), all of it within `timeout` (connection,
/// redirects and body together), a 2xx status (400 otherwise). Blocking: call it off the async
/// threads.
pub fn fetch(url: &str, max_bytes: usize, timeout: Duration) -> Result<Vec<u8>, ApiError> {
    // One agent for the process, so connections to a host are pooled across requests.
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    let agent = AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .max_redirects(MAX_REDIRECTS)
            .build()
            .into()
    });
    let failed = |e: ureq::Error| match e {
        ureq::Error::BodyExceedsLimit(limit) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the image at {url} is larger than {limit} bytes"),
        ),
        other => ApiError::bad_request(format!("fetching the image at {url}: {other}")),
    };
    let mut response = agent
        .get(url)
        .config()
        .timeout_global(Some(timeout))
        .build()
        .call()
        .map_err(failed)?;
    response
        .body_mut()
        .with_config()
        .limit(max_bytes as u64)
        .read_to_vec()
        .map_err(failed)
}
