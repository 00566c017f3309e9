//! Where the learner runs: one learner, any burn backend, chosen at run time.
//!
//! | name | backend | feature |
//! |---|---|---|
//! | `cpu` (default) | burn `flex` | always |
//! | `ndarray` | burn `ndarray` (for comparisons) | always |
//! | `vulkan`, `vulkan:N` | cubecl on wgpu/Vulkan, SPIR-V kernels, N-th discrete GPU | `vulkan` |
//! | `vulkan:cpu` | a CPU Vulkan driver (Mesa's lavapipe): smoke tests without a GPU; WGSL kernels with `webgpu`, else SPIR-V | `webgpu` or `vulkan` |
//! | `cuda`, `cuda:N` | cubecl CUDA, N-th device | `cuda` (run time: the NVIDIA driver and NVRTC) |
//!
//! The learner code is the same on every device; only where tensors live changes.

use anyhow::{Result, bail};
use burn::tensor::Device;

/// A parsed, validated device name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    NdArray,
    Vulkan(usize),
    /// A software (CPU) Vulkan adapter.
    VulkanCpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// True for the GPU backends.
    pub fn is_gpu(self) -> bool {
        matches!(
            self,
            DeviceSpec::Vulkan(_) | DeviceSpec::VulkanCpu | DeviceSpec::Cuda(_)
        )
    }

    /// The burn device (plain: autodiff is added by the agent).
    #[allow(deprecated, unreachable_code, unused_variables)]
    pub fn device(self) -> Device {
        match self {
            DeviceSpec::Cpu => Device::flex(),
            DeviceSpec::NdArray => Device::ndarray(),
            DeviceSpec::Vulkan(i) => {
                #[cfg(feature = "vulkan")]
                return Device::vulkan(burn::tensor::DeviceKind::DiscreteGpu(i));
                unreachable!("parse refuses vulkan without the feature")
            }
            DeviceSpec::VulkanCpu => {
                #[cfg(feature = "webgpu")]
                return Device::webgpu(burn::tensor::DeviceKind::Cpu);
                #[cfg(feature = "vulkan")]
                return Device::vulkan(burn::tensor::DeviceKind::Cpu);
                unreachable!("parse refuses vulkan without the feature")
            }
            DeviceSpec::Cuda(i) => {
                #[cfg(feature = "cuda")]
                return Device::cuda(i);
                unreachable!("parse refuses cuda without the feature")
            }
        }
    }
}

/// Parses `cpu`, `ndarray`, `vulkan[:N]` or `cuda[:N]`, refusing a GPU backend this
/// binary was built without.
pub fn parse(name: &str) -> Result<DeviceSpec> {
    let (kind, index) = match name.split_once(':') {
        Some(("vulkan", "cpu")) => ("vulkan-cpu", None),
        Some((k, i)) => {
            let Ok(i) = i.parse::<usize>() else {
                bail!("device '{name}': the index after ':' must be a number");
            };
            (k, Some(i))
        }
        None => (name, None),
    };
    let spec = match (kind, index) {
        ("cpu" | "flex", None) => DeviceSpec::Cpu,
        ("ndarray", None) => DeviceSpec::NdArray,
        ("vulkan", i) => DeviceSpec::Vulkan(i.unwrap_or(0)),
        ("vulkan-cpu", None) => DeviceSpec::VulkanCpu,
        ("cuda", i) => DeviceSpec::Cuda(i.unwrap_or(0)),
        ("cpu" | "flex" | "ndarray", Some(_)) => bail!("device '{name}' takes no index"),
        _ => bail!(
            "unknown device '{name}': expected cpu, ndarray, vulkan[:N], vulkan:cpu or cuda[:N]"
        ),
    };
    // Not `matches!`: which arms are true depends on the features.
    #[allow(clippy::match_like_matches_macro)]
    let built = match spec {
        DeviceSpec::Vulkan(_) => cfg!(feature = "vulkan"),
        DeviceSpec::VulkanCpu => cfg!(any(feature = "vulkan", feature = "webgpu")),
        DeviceSpec::Cuda(_) => cfg!(feature = "cuda"),
        _ => true,
    };
    if !built {
        bail!(
            "device '{name}' needs the trainer built with `--features {}` \
             (this binary has the CPU backends only)",
            kind.trim_end_matches("-cpu")
        );
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_are_explained() {
        assert_eq!(parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(parse("ndarray").unwrap(), DeviceSpec::NdArray);
        let e = parse("tpu").unwrap_err().to_string();
        assert!(e.contains("unknown device 'tpu'"), "{e}");
        let e = parse("vulkan:x").unwrap_err().to_string();
        assert!(e.contains("must be a number"), "{e}");
        let e = parse("cpu:1").unwrap_err().to_string();
        assert!(e.contains("takes no index"), "{e}");
        if cfg!(feature = "cuda") {
            assert_eq!(parse("cuda:1").unwrap(), DeviceSpec::Cuda(1));
        } else {
            let e = parse("cuda:1").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
        if cfg!(feature = "vulkan") {
            assert_eq!(parse("vulkan").unwrap(), DeviceSpec::Vulkan(0));
        } else {
            let e = parse("vulkan").unwrap_err().to_string();
            assert!(e.contains("--features vulkan"), "{e}");
        }
        if cfg!(any(feature = "vulkan", feature = "webgpu")) {
            assert_eq!(parse("vulkan:cpu").unwrap(), DeviceSpec::VulkanCpu);
        } else {
            let e = parse("vulkan:cpu").unwrap_err().to_string();
            assert!(e.contains("--features vulkan"), "{e}");
        }
    }
}
