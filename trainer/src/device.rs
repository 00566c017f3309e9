//! Where the learner runs: one learner, any burn backend, chosen at run time.
//!
//! | name | backend | feature |
//! |---|---|---|
//! | `cpu` (default) | burn `flex` | always |
//! | `ndarray` | burn `ndarray` (for comparisons) | `ndarray` |
//! | `vulkan`, `vulkan:N` | cubecl on wgpu/Vulkan, SPIR-V kernels, N-th discrete GPU | `vulkan` |
//! | `vulkan:cpu` | a CPU Vulkan driver (Mesa's lavapipe): smoke tests without a GPU; WGSL kernels with `webgpu`, else SPIR-V | `webgpu` or `vulkan` |
//! | `cuda`, `cuda:N` | cubecl CUDA, N-th device | `cuda` (run time: the NVIDIA driver and NVRTC) |
//!
//! The learner code is the same on every device; only where tensors live changes.

use crate::config::ChainPrecision;
use anyhow::{Context, Result, bail, ensure};
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

    /// The device's name, as [`parse`] takes it.
    pub fn name(self) -> String {
        match self {
            DeviceSpec::Cpu => "cpu".into(),
            DeviceSpec::NdArray => "ndarray".into(),
            DeviceSpec::Vulkan(i) => format!("vulkan:{i}"),
            DeviceSpec::VulkanCpu => "vulkan:cpu".into(),
            DeviceSpec::Cuda(i) => format!("cuda:{i}"),
        }
    }

    /// The burn device (plain: autodiff is added by the agent).
    #[allow(deprecated, unreachable_code, unused_variables)]
    pub fn device(self) -> Device {
        match self {
            DeviceSpec::Cpu => Device::flex(),
            DeviceSpec::NdArray => {
                #[cfg(feature = "ndarray")]
                return Device::ndarray();
                unreachable!("parse refuses ndarray without the feature")
            }
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

    /// Checks, before any backend starts, that the device exists, so that a missing driver
    /// or a wrong index is a clear error and not a panic in a backend thread. CUDA: loads
    /// the NVIDIA driver library and asks it how many devices it sees. The other backends
    /// are not checked here.
    pub fn check_present(self) -> Result<()> {
        if let DeviceSpec::Cuda(i) = self {
            let n = cuda_devices().context("device 'cuda'")?;
            ensure!(
                i < n,
                "device 'cuda:{i}': the NVIDIA driver sees {n} CUDA device(s), numbered from 0"
            );
        }
        Ok(())
    }
}

/// The NVIDIA driver's library, as the CUDA runtime looks for it.
const CUDA_DRIVER_LIBRARIES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];

/// How many CUDA devices the NVIDIA driver sees (`cuInit`, `cuDeviceGetCount`), loading the
/// driver library at run time as burn's CUDA backend does. Compiled into every build
/// (plain `dlopen`), so that its errors are tested without the `cuda` feature.
pub fn cuda_devices() -> Result<usize> {
    use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
    type CuInit = unsafe extern "C" fn(c_uint) -> c_int;
    type CuDeviceGetCount = unsafe extern "C" fn(*mut c_int) -> c_int;
    type CuGetErrorString = unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int;
    let mut handle = std::ptr::null_mut();
    let mut why = String::new();
    for name in CUDA_DRIVER_LIBRARIES {
        let c_name = CString::new(name).expect("no NUL in a library name");
        // SAFETY: dlopen with a valid C string; the handle is kept for the process's life
        // (burn's backend loads the same library).
        handle = unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !handle.is_null() {
            break;
        }
        // SAFETY: dlerror returns null or a valid C string, read at once.
        let err = unsafe { libc::dlerror() };
        if !err.is_null() && why.is_empty() {
            why = unsafe { CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned();
        }
    }
    ensure!(
        !handle.is_null(),
        "cannot load the NVIDIA driver library ({}): is an NVIDIA driver installed, and its \
         library on the loader's path (LD_LIBRARY_PATH)? dlopen said: {why}",
        CUDA_DRIVER_LIBRARIES.join(" or ")
    );
    let symbol = |name: &str| -> Result<*mut c_void> {
        let c_name = CString::new(name).expect("no NUL in a symbol name");
        // SAFETY: a valid handle from dlopen and a valid C string.
        let f = unsafe { libc::dlsym(handle, c_name.as_ptr()) };
        ensure!(!f.is_null(), "the NVIDIA driver library has no `{name}`");
        Ok(f)
    };
    // SAFETY: the driver API's signatures (cuda.h): CUresult is a C int.
    let (init, count, error_string) = unsafe {
        (
            std::mem::transmute::<*mut c_void, CuInit>(symbol("cuInit")?),
            std::mem::transmute::<*mut c_void, CuDeviceGetCount>(symbol("cuDeviceGetCount")?),
            std::mem::transmute::<*mut c_void, CuGetErrorString>(symbol("cuGetErrorString")?),
        )
    };
    let describe = |code: c_int| {
        let mut text: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorString writes a static C string or leaves null.
        if unsafe { error_string(code, &mut text) } == 0 && !text.is_null() {
            format!(
                "{} ({code})",
                unsafe { CStr::from_ptr(text) }.to_string_lossy()
            )
        } else {
            format!("CUresult {code}")
        }
    };
    // SAFETY: the driver API's documented calls, with valid pointers.
    let code = unsafe { init(0) };
    ensure!(
        code == 0,
        "the NVIDIA driver failed to start: cuInit: {}",
        describe(code)
    );
    let mut n: c_int = 0;
    let code = unsafe { count(&mut n) };
    ensure!(code == 0, "cuDeviceGetCount: {}", describe(code));
    ensure!(n > 0, "the NVIDIA driver sees no CUDA device");
    Ok(n as usize)
}

/// Whether `config.device` names a GPU this binary can use (a device it cannot parse
/// counts as none: the run refuses it elsewhere).
pub fn configured_gpu(config: &crate::config::Config) -> bool {
    parse(&config.device).is_ok_and(|d| d.is_gpu())
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
        DeviceSpec::NdArray => cfg!(feature = "ndarray"),
        _ => true,
    };
    if !built {
        bail!(
            "device '{name}' needs the trainer built with `--features {}` \
             (this binary has the default CPU backend only)",
            kind.trim_end_matches("-cpu")
        );
    }
    refuse_known_wrong(spec, cfg!(feature = "fusion"))?;
    Ok(spec)
}

/// Refuses a backend and build measured to give wrong results, rather than train on it:
/// burn 0.22.0-pre.3's kernel fusion on CUDA. On an H200 (2026-12-04) one update's critic
/// values came out up to half off the CPU's, and rows gathered from the device replay
/// shifted by one row; every operation alone agreed, and without fusion both tests pass
/// (BENCHMARKS.md, "CUDA on an H200").
fn refuse_known_wrong(spec: DeviceSpec, fusion: bool) -> Result<()> {
    if matches!(spec, DeviceSpec::Cuda(_)) && fusion {
        bail!(
            "device 'cuda' in a build with burn's kernel fusion (the trainer's `fusion` \
             feature) trains on wrong values (burn 0.22.0-pre.3, measured on an H200): \
             build with `--features cuda` alone"
        );
    }
    Ok(())
}

/// `compute.chain_precision` other than f32 trains on `cpu` (burn's flex) and `cuda`
/// only: burn's wgpu runtimes have no bf16, f16 has not been run there, and ndarray is
/// for comparisons. Checked by `train`, `finetune` and `bench`; evaluating and exporting
/// such a run (all f32) works on any device.
pub fn check_chain_precision(spec: DeviceSpec, precision: ChainPrecision) -> Result<()> {
    ensure!(
        precision == ChainPrecision::F32 || matches!(spec, DeviceSpec::Cpu | DeviceSpec::Cuda(_)),
        "compute.chain_precision = \"{}\" runs on the cpu and cuda devices only, not {}",
        precision.name(),
        spec.name()
    );
    Ok(())
}

/// [`check_chain_precision`] for a config's device and precision.
pub fn check_trains_on(config: &crate::config::Config) -> Result<()> {
    check_chain_precision(parse(&config.device)?, config.compute.chain_precision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_chains_run_on_cpu_and_cuda_only() {
        for p in [ChainPrecision::F16, ChainPrecision::Bf16] {
            check_chain_precision(DeviceSpec::Cpu, p).unwrap();
            check_chain_precision(DeviceSpec::Cuda(1), p).unwrap();
            for spec in [
                DeviceSpec::Vulkan(0),
                DeviceSpec::VulkanCpu,
                DeviceSpec::NdArray,
            ] {
                let e = check_chain_precision(spec, p).unwrap_err().to_string();
                assert!(
                    e.contains(&format!("chain_precision = \"{}\"", p.name()))
                        && e.contains(&spec.name()),
                    "{e}"
                );
            }
        }
        check_chain_precision(DeviceSpec::VulkanCpu, ChainPrecision::F32).unwrap();
    }

    #[test]
    fn cuda_with_fusion_is_refused() {
        let e = refuse_known_wrong(DeviceSpec::Cuda(1), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("build with `--features cuda` alone"), "{e}");
        refuse_known_wrong(DeviceSpec::Cuda(0), false).unwrap();
        refuse_known_wrong(DeviceSpec::Vulkan(0), true).unwrap();
        refuse_known_wrong(DeviceSpec::Cpu, true).unwrap();
    }

    #[test]
    fn names_parse_and_bad_ones_are_explained() {
        assert_eq!(parse("cpu").unwrap(), DeviceSpec::Cpu);
        if cfg!(feature = "ndarray") {
            assert_eq!(parse("ndarray").unwrap(), DeviceSpec::NdArray);
        } else {
            let e = parse("ndarray").unwrap_err().to_string();
            assert!(e.contains("--features ndarray"), "{e}");
        }
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

    /// Without an NVIDIA driver (CI, most laptops) asking for a CUDA device is a clear
    /// error naming the library; with one, the count is what the driver says and an index
    /// past it is refused.
    #[test]
    fn a_missing_cuda_driver_or_device_is_named() {
        match cuda_devices() {
            Err(e) => {
                let e = format!("{e:#}");
                assert!(e.contains("libcuda.so.1"), "{e}");
                let e = format!("{:#}", DeviceSpec::Cuda(0).check_present().unwrap_err());
                assert!(
                    e.contains("device 'cuda'") && e.contains("NVIDIA driver"),
                    "{e}"
                );
            }
            Ok(n) => {
                assert!(n > 0);
                DeviceSpec::Cuda(n - 1).check_present().unwrap();
                let e = DeviceSpec::Cuda(n).check_present().unwrap_err().to_string();
                assert!(e.contains(&format!("cuda:{n}")), "{e}");
            }
        }
        DeviceSpec::Cpu.check_present().unwrap();
    }
}
