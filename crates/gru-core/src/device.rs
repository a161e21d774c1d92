//! Device selection: `cpu`, `cuda[:N]`, `metal[:N]` or `auto`, parsed from a string (the CLI's
//! `--device`) and turned into a candle `Device`. A backend that was not compiled in gives an error
//! that names the cargo feature to enable.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{GruError, Result};

/// Which device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
    /// A Metal GPU by ordinal (`metal` is `metal:0`).
    Metal(usize),
    /// The first GPU that is compiled in and present (CUDA, then Metal), else the CPU.
    Auto,
}

impl FromStr for DeviceSpec {
    type Err = GruError;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let (kind, ordinal) = match lower.split_once(':') {
            Some((kind, n)) => {
                let n = n.parse::<usize>().map_err(|_| GruError::Device {
                    device: s.to_string(),
                    reason: format!("`{n}` is not a device ordinal (expected e.g. cuda:0)"),
                })?;
                (kind, Some(n))
            }
            None => (lower.as_str(), None),
        };
        match (kind, ordinal) {
            ("cpu", None) => Ok(DeviceSpec::Cpu),
            ("auto", None) => Ok(DeviceSpec::Auto),
            ("cuda", n) => Ok(DeviceSpec::Cuda(n.unwrap_or(0))),
            ("metal", n) => Ok(DeviceSpec::Metal(n.unwrap_or(0))),
            _ => Err(GruError::Device {
                device: s.to_string(),
                reason: "unknown device; expected cpu, cuda, cuda:N, metal, metal:N or auto".into(),
            }),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal(n) => write!(f, "metal:{n}"),
            DeviceSpec::Auto => write!(f, "auto"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. Never panics: a backend that is not compiled in, or a GPU that is not
    /// present, is an error that says what to do.
    pub fn device(self) -> Result<Device> {
        self.open_explained().map(|(device, _)| device)
    }

    /// Opens the device; for `Auto` also a one-line note of what was chosen and, when it is the
    /// CPU, why no GPU was (for a CLI to print on stderr).
    pub fn open_explained(self) -> Result<(Device, Option<String>)> {
        match self {
            DeviceSpec::Cpu => Ok((Device::Cpu, None)),
            DeviceSpec::Cuda(n) => open_cuda(n).map(|d| (d, None)),
            DeviceSpec::Metal(n) => open_metal(n).map(|d| (d, None)),
            DeviceSpec::Auto => {
                let mut why = Vec::new();
                for gpu in [DeviceSpec::Cuda(0), DeviceSpec::Metal(0)] {
                    let (compiled, feature) = match gpu {
                        DeviceSpec::Cuda(_) => (cfg!(feature = "cuda"), "cuda"),
                        _ => (cfg!(feature = "metal"), "metal"),
                    };
                    if !compiled {
                        why.push(format!(
                            "no {feature} support compiled in (--features {feature})"
                        ));
                        continue;
                    }
                    match gpu.device() {
                        Ok(dev) => return Ok((dev, Some(format!("--device auto: chose {gpu}")))),
                        Err(e) => why.push(format!("{gpu} unavailable: {e}")),
                    }
                }
                let note = format!("--device auto: chose cpu ({})", why.join("; "));
                Ok((Device::Cpu, Some(note.replace(['\n', '\r'], " "))))
            }
        }
    }
}

/// Parses and opens a device in one call: `gru_core::device("cuda:1")`. `auto` falls back to the
/// CPU without a word; `"auto".parse::<DeviceSpec>()?.open_explained()` also returns what it chose
/// and, for the CPU, why no GPU was (a backend not compiled in, a driver error): log it.
pub fn device(spec: &str) -> Result<Device> {
    spec.parse::<DeviceSpec>()?.device()
}

/// A short name of a device for reports: `cpu`, `cuda:0`, `metal:0`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Refuses a dtype the device cannot compute in, naming both: Apple GPUs have no f64, so candle's
/// Metal backend has no f64 kernels, and a model would otherwise fail deep inside candle.
pub(crate) fn check_dtype_supported(device: &Device, dtype: candle_core::DType) -> Result<()> {
    if device.is_metal() && dtype == candle_core::DType::F64 {
        return Err(GruError::Device {
            device: device_name(device),
            reason: "f64 is not supported on Metal (Apple GPUs have no f64); use f32, or the CPU \
                     for f64"
                .into(),
        });
    }
    Ok(())
}

fn open_cuda(ordinal: usize) -> Result<Device> {
    let name = format!("cuda:{ordinal}");
    if !cfg!(feature = "cuda") {
        return Err(GruError::Device {
            device: name,
            reason: "this build has no CUDA support; rebuild with `--features cuda` (on the \
                     `candle-gru` dependency in your Cargo.toml; it needs nvcc, or the route of \
                     candle-gru's scripts/build-cuda.sh)"
                .into(),
        });
    }
    Device::new_cuda(ordinal).map_err(|e| GruError::Device {
        device: name,
        reason: format!("cannot open: {e}"),
    })
}

fn open_metal(ordinal: usize) -> Result<Device> {
    let name = format!("metal:{ordinal}");
    if !cfg!(feature = "metal") {
        return Err(GruError::Device {
            device: name,
            reason: "this build has no Metal support; rebuild with `--features metal`".into(),
        });
    }
    Device::new_metal(ordinal).map_err(|e| GruError::Device {
        device: name,
        reason: format!("cannot open: {e}"),
    })
}

/// Checks that `t` (argument `name`) has the model's dtype and device, as PyTorch requires.
pub(crate) fn check_dtype_device(
    name: &str,
    t: &candle_core::Tensor,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> Result<()> {
    if t.dtype() != dtype {
        return Err(crate::error::GruError::DType {
            name: name.into(),
            expected: dtype,
            found: t.dtype(),
            hint: " (the model's weights have the expected dtype; PyTorch rejects a mix too)",
        });
    }
    if !t.device().same_device(device) {
        return Err(crate::error::GruError::arg(
            name,
            format!(
                "is on {} but the model is on {}",
                device_name(t.device()),
                device_name(device)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CUDA".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("metal".parse::<DeviceSpec>().unwrap(), DeviceSpec::Metal(0));
        assert_eq!(
            "metal:1".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Metal(1)
        );
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("cpu:1".parse::<DeviceSpec>().is_err());
        for s in ["cpu", "cuda:2", "metal:0", "auto"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn auto_always_opens_a_device_and_names_it() {
        let (dev, note) = DeviceSpec::Auto.open_explained().unwrap();
        let note = note.expect("auto always says what it chose");
        assert!(
            note.contains(&format!("chose {}", device_name(&dev))),
            "{note}"
        );
        if !cfg!(any(feature = "cuda", feature = "metal")) {
            assert!(dev.is_cpu());
        }
    }

    #[cfg(not(any(feature = "cuda", feature = "metal")))]
    #[test]
    fn auto_says_why_it_fell_back_to_the_cpu() {
        let (dev, note) = DeviceSpec::Auto.open_explained().unwrap();
        assert!(dev.is_cpu());
        let note = note.unwrap();
        assert!(note.contains("chose cpu"), "{note}");
        assert!(note.contains("--features cuda"), "{note}");
        assert!(note.contains("--features metal"), "{note}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_names_the_feature() {
        let err = DeviceSpec::Cuda(0).device().unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }

    #[cfg(not(feature = "metal"))]
    #[test]
    fn metal_without_feature_names_the_feature() {
        let err = DeviceSpec::Metal(0).device().unwrap_err().to_string();
        assert!(err.contains("--features metal"), "{err}");
    }
}
