//! Choosing a backend at run time among those compiled in (cargo features `flex`, `ndarray`,
//! `wgpu`, `vulkan`, `cuda`).

use blip2_core::{Error, Result};
use burn::tensor::Device;

/// Names of the backends this build of `blip2` includes, default first.
pub fn available_backends() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "flex") {
        names.push("flex");
    }
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(feature = "vulkan") {
        names.push("vulkan");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    names
}

/// The device of backend `name` (`"flex"`, `"ndarray"`, `"wgpu"`, `"vulkan"`, `"cuda"`: the
/// first GPU of that kind); an error listing the available ones when this build does not include
/// it.
pub fn device(name: &str) -> Result<Device> {
    let device = match name {
        #[cfg(feature = "flex")]
        "flex" => Some(Device::flex()),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        "ndarray" => Some(Device::ndarray()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Some(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "vulkan")]
        "vulkan" => Some(Device::vulkan(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "cuda")]
        "cuda" => Some(Device::cuda(0)),
        _ => None,
    };
    device.ok_or_else(|| {
        Error::Unsupported(format!(
            "backend {name:?} is not compiled in; available: {} (enable others with cargo features)",
            available_backends().join(", ")
        ))
    })
}

/// Whether `device` belongs to a CPU backend (flex, ndarray), which has no buffer-size limit
/// below the host's memory.
pub fn is_cpu(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    if *device == Device::flex() {
        return true;
    }
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)]
    if *device == Device::ndarray() {
        return true;
    }
    let _ = device;
    false
}
