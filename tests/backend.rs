//! The backend the tests run on is the one asked for: CI runs the facade's tests a second and
//! third time with `BURN_DEVICE=ndarray` and `BURN_DEVICE=wgpu`, and a silent fallback to the
//! default backend would make those runs prove nothing.

use blip2::Device;

#[test]
fn burn_device_selects_the_backend() {
    let Ok(requested) = std::env::var("BURN_DEVICE") else {
        return;
    };
    let running = format!("{:?}", Device::default()).to_lowercase();
    assert!(
        running.contains(&requested.to_lowercase()),
        "BURN_DEVICE={requested}, but the default device is {running}"
    );
}
