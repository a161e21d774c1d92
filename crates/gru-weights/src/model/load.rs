//! Building a `Gru` / `GruCell` from a weight file: choosing the module, converting the dtype,
//! checking values, and reporting what was applied and what was left unused.

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use gru_core::{Gru, GruCell, GruConfig};

use crate::error::{Result, WeightsError};
use crate::file::WeightFile;
use crate::formats::container::TensorInfo;
use crate::model::discover::{discover, Discovery, GruInfo, ModuleKind};
use crate::model::quantized::{discover_quantized, discover_quantized_cells, is_cell_tensor};

/// What a load applied, so that a partial or mistaken load is never silent.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub prefix: String,
    pub kind: ModuleKind,
    /// `input_size`, `hidden_size`, `num_layers`, `bias`, `bidirectional` come from the file.
    /// `batch_first` and `dropout` are not stored in a state_dict: they are the defaults here,
    /// and the caller sets them (`Gru::with_batch_first`); `Display` says so.
    pub config: GruConfig,
    /// dtype in the file.
    pub stored_dtype: DType,
    /// dtype of the built model (differs from `stored_dtype` when a conversion was asked for;
    /// narrowing conversions such as f32 -> f16/bf16 round and are lossy).
    pub dtype: DType,
    /// Full names of the tensors the model was built from.
    pub applied: Vec<String>,
    /// Tensors under the module's prefix that the model did not use (a sign of a wrong prefix or
    /// of a module that is not a plain `nn.GRU`).
    pub unused_under_prefix: Vec<String>,
    /// Number of tensors elsewhere in the file (other modules of the model).
    pub other_tensors: usize,
    /// A `quantize_dynamic` GRU: its kind (`qint8 per-channel`, `float16`, ...).
    pub quantized: Option<String>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        write!(
            f,
            "{} at {:?}: from the file input_size={} hidden_size={}",
            self.kind, self.prefix, c.input_size, c.hidden_size
        )?;
        if self.kind == ModuleKind::Gru {
            write!(
                f,
                " num_layers={} bidirectional={}",
                c.num_layers, c.bidirectional
            )?;
        }
        match &self.quantized {
            Some(q) => write!(f, " bias={} quantized ({q}), computed in f32", c.bias)?,
            None => write!(f, " bias={} dtype={:?}", c.bias, self.stored_dtype)?,
        }
        if self.dtype != self.stored_dtype {
            write!(f, ", converted to {:?}", self.dtype)?;
        }
        if self.kind == ModuleKind::Gru {
            write!(
                f,
                "; not in a state_dict, yours to set: batch_first (Gru::with_batch_first), \
                 dropout (inference ignores it)"
            )?;
        }
        write!(
            f,
            "; {} tensors applied, {} unused under the prefix, {} elsewhere in the file",
            self.applied.len(),
            self.unused_under_prefix.len(),
            self.other_tensors
        )
    }
}

impl WeightFile {
    /// Every GRU and GRUCell in the file, plus candidates that failed validation.
    pub fn discover(&self) -> Discovery {
        let packed = self.packed_rnns();
        let mut d = if packed.cells.is_empty() && packed.linears.is_empty() {
            discover(self.tensors())
        } else {
            // A quantized cell's tensors are not a float GRUCell's.
            let float: Vec<TensorInfo> = self
                .tensors()
                .iter()
                .filter(|t| !is_cell_tensor(packed, &t.name))
                .cloned()
                .collect();
            let mut d = discover(&float);
            let (found, rejected) = discover_quantized(packed, self.tensors());
            d.found.extend(found);
            d.rejected.extend(rejected);
            let (found, rejected) = discover_quantized_cells(packed, self.tensors());
            d.found.extend(found);
            d.rejected.extend(rejected);
            d
        };
        for g in &mut d.found {
            g.state_dict = self.state_dict_of(&g.keys[0]).to_string();
        }
        d
    }

    /// What a "no GRU found" error adds about the file: quantized weights, parts not read.
    fn notes(&self) -> String {
        [self.quantized_note(), self.unread_note()]
            .into_iter()
            .flatten()
            .map(|q| format!("; {q}"))
            .collect()
    }

    /// Picks the module of `kind` at `prefix`, or the only one when `prefix` is `None`.
    pub fn select(&self, kind: ModuleKind, prefix: Option<&str>) -> Result<GruInfo> {
        let d = self.discover();
        let list = |d: &Discovery| -> String {
            let mut v: Vec<String> = d
                .found
                .iter()
                .map(|g| format!("`{}` ({})", g.prefix, g.kind))
                .collect();
            v.extend(
                d.rejected
                    .iter()
                    .map(|(p, e)| format!("{p:?} (invalid: {e})")),
            );
            if v.is_empty() {
                "none".into()
            } else {
                v.join(", ")
            }
        };
        let prefix = prefix.map(|p| p.trim_end_matches('.'));
        if let Some(p) = prefix {
            // The full path (`model_state_dict.encoder.rnn`) or the path inside a state dict
            // (`encoder.rnn`), also under a `DataParallel` or `torch.compile` wrapper; both
            // matching different modules is refused, never guessed. A leading `.` names the
            // path from the file's root alone (`.rnn`: the top-level one).
            let root_only = p.strip_prefix('.');
            let inside = |g: &&GruInfo| {
                let rel = g.relative_prefix();
                [rel, rel.strip_prefix("module.").unwrap_or(rel)]
                    .into_iter()
                    .chain(rel.strip_prefix("_orig_mod."))
                    .any(|r| r == p)
            };
            let hits: Vec<&GruInfo> = d
                .found
                .iter()
                .filter(|g| g.kind == kind)
                .filter(|g| match root_only {
                    Some(full) => g.prefix == full,
                    None => g.prefix == p || inside(g),
                })
                .collect();
            match hits.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {}
                many => {
                    return Err(WeightsError::Select(format!(
                        "{}: {} {kind}s at {p:?}; name one by its full path: {}",
                        self.path().display(),
                        many.len(),
                        many.iter()
                            .map(|g| if g.prefix == p {
                                format!("`.{}` (from the file's root)", g.prefix)
                            } else {
                                format!("`{}`", g.prefix)
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
            let rejected = d.rejected.iter().position(|(rp, _)| {
                rp == p
                    || self
                        .state_dicts()
                        .iter()
                        .any(|k| !k.is_empty() && *rp == format!("{k}.{p}"))
            });
            if let Some(pos) = rejected {
                let mut d = d;
                return Err(d.rejected.swap_remove(pos).1);
            }
            return Err(WeightsError::Select(format!(
                "{}: no {kind} at prefix {p:?}; the file holds: {}{}",
                self.path().display(),
                list(&d),
                self.notes()
            )));
        }
        let matching: Vec<&GruInfo> = d.found.iter().filter(|g| g.kind == kind).collect();
        match matching.as_slice() {
            [one] => Ok((*one).clone()),
            [] => {
                if let Some(pos) = d.rejected.iter().position(|_| true) {
                    if d.found.is_empty() {
                        let mut d = d;
                        return Err(d.rejected.swap_remove(pos).1);
                    }
                }
                if let [only] = self.tensors() {
                    if only.name.is_empty() {
                        return Err(WeightsError::Select(format!(
                            "{}: no {kind} found: the file is one bare tensor \
                             (`torch.save(tensor, path)`), not a state dict or model",
                            self.path().display()
                        )));
                    }
                }
                Err(WeightsError::Select(format!(
                    "{}: no {kind} found; the file holds: {}{}",
                    self.path().display(),
                    list(&d),
                    self.notes()
                )))
            }
            many => Err(WeightsError::Select(format!(
                "{}: {} {kind}s found, choose one with a prefix: {}",
                self.path().display(),
                many.len(),
                many.iter()
                    .map(|g| format!("`{}`", g.prefix))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Loads the module's tensors as a `VarBuilder` at its prefix, in `dtype` (default: stored).
    fn module_var_builder(
        &self,
        info: &GruInfo,
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<(VarBuilder<'static>, LoadReport)> {
        if let Some(kind) = &info.quantized {
            return Err(WeightsError::Select(format!(
                "the GRU at {:?} is quantized ({kind}): its packed weights ({}, ...) have no \
                 float VarBuilder; build it with WeightFile::gru",
                info.prefix,
                info.keys.first().map_or("", String::as_str)
            )));
        }
        let dtype = dtype.unwrap_or(info.dtype);
        let mut tensors = HashMap::with_capacity(info.keys.len());
        for key in &info.keys {
            let t = self.load(key, device)?;
            check_finite(key, &t, None)?;
            let converted = t.to_dtype(dtype)?;
            if dtype != t.dtype() {
                // A value beyond the new type's range (1e5 in f16, 1e300 in f32) becomes Inf.
                check_finite(key, &converted, Some(dtype))?;
            }
            tensors.insert(key.clone(), converted);
        }
        let (unused_under_prefix, other_tensors) = self.usage(info);
        let report = LoadReport {
            prefix: info.prefix.clone(),
            kind: info.kind,
            config: info.config,
            stored_dtype: info.dtype,
            dtype,
            applied: info.keys.clone(),
            other_tensors,
            unused_under_prefix,
            quantized: None,
        };
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        let vb = if info.prefix.is_empty() {
            vb
        } else {
            vb.pp(&info.prefix)
        };
        Ok((vb, report))
    }

    /// Builds the `nn.GRU` at `prefix` (or the only one), in `dtype` (default: as stored).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let x = candle_core::Tensor::zeros((5, 1, 8), candle_core::DType::F32, &candle_core::Device::Cpu)?;
    /// let file = gru_weights::WeightFile::open("checkpoint.safetensors")?;
    /// let (gru, _report) = file.gru(Some("encoder.rnn"), None, &candle_core::Device::Cpu)?;
    /// let (output, h_n) = gru.forward(&x, None)?;
    /// # Ok(()) }
    /// ```
    pub fn gru(
        &self,
        prefix: Option<&str>,
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<(Gru, LoadReport)> {
        let info = self.select(ModuleKind::Gru, prefix)?;
        if let Some(kind) = &info.quantized {
            return self.quantized_gru(&info, kind, dtype, device);
        }
        let (vb, report) = self.module_var_builder(&info, dtype, device)?;
        Ok((Gru::new(info.config, vb)?, report))
    }

    /// A `quantize_dynamic` GRU: built from its packed weights, f32 on the CPU.
    fn quantized_gru(
        &self,
        info: &GruInfo,
        kind: &str,
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<(Gru, LoadReport)> {
        self.check_quantized_target(info, kind, dtype, device)?;
        let weights = self.quantized_weights(info)?;
        let gru = Gru::from_quantized(info.config, weights)?;
        Ok((gru, self.quantized_report(info, kind)))
    }

    /// A quantized module computes in f32 on the CPU: anything else asked for is refused.
    fn check_quantized_target(
        &self,
        info: &GruInfo,
        kind: &str,
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<()> {
        let refuse = |what: &str| {
            Err(WeightsError::Select(format!(
                "the {} at {:?} is quantized ({kind}): {what}",
                info.kind, info.prefix
            )))
        };
        if dtype.is_some_and(|d| d != DType::F32) {
            return refuse("it computes in f32, as PyTorch's quantized kernels do; ask for f32");
        }
        if !device.is_cpu() {
            return refuse("it runs on the CPU (PyTorch's quantized kernels are CPU kernels)");
        }
        Ok(())
    }

    /// What a load of `info` leaves: the tensors directly under its prefix it does not use,
    /// and how many stored tensors belong elsewhere.
    fn usage(&self, info: &GruInfo) -> (Vec<String>, usize) {
        let prefix_dot = if info.prefix.is_empty() {
            String::new()
        } else {
            format!("{}.", info.prefix)
        };
        // The stored tensors a computed weight (weight norm, spectral norm) was made from are
        // used too.
        let sources: HashSet<&str> = info.keys.iter().flat_map(|k| self.sources_of(k)).collect();
        let keys: HashSet<&str> = info.keys.iter().map(String::as_str).collect();
        let unused_under_prefix: Vec<String> = self
            .tensors()
            .iter()
            .filter(|t| t.name.starts_with(&prefix_dot) && !keys.contains(t.name.as_str()))
            .filter(|t| !sources.contains(t.name.as_str()))
            .filter(|t| info.prefix.is_empty() || !t.name[prefix_dot.len()..].contains('.'))
            .map(|t| t.name.clone())
            .collect();
        let unused: HashSet<&str> = unused_under_prefix.iter().map(String::as_str).collect();
        // Stored tensors only: a computed weight elsewhere is not counted beside its sources.
        let other_tensors = self
            .tensors()
            .iter()
            .map(|t| t.name.as_str())
            .filter(|n| !keys.contains(n) && !sources.contains(n) && !unused.contains(n))
            .filter(|n| self.computed_from(n).is_none() && self.shared_with(n).is_none())
            .count();
        (unused_under_prefix, other_tensors)
    }

    fn quantized_report(&self, info: &GruInfo, kind: &str) -> LoadReport {
        let (unused_under_prefix, other_tensors) = self.usage(info);
        LoadReport {
            prefix: info.prefix.clone(),
            kind: info.kind,
            config: info.config,
            stored_dtype: DType::F32,
            dtype: DType::F32,
            applied: info.keys.clone(),
            unused_under_prefix,
            other_tensors,
            quantized: Some(kind.to_string()),
        }
    }

    /// Builds the `nn.GRUCell` at `prefix` (or the only one).
    pub fn gru_cell(
        &self,
        prefix: Option<&str>,
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<(GruCell, LoadReport)> {
        let info = self.select(ModuleKind::GruCell, prefix)?;
        if let Some(kind) = &info.quantized {
            self.check_quantized_target(&info, kind, dtype, device)?;
            let (ih, hh) = self.quantized_cell_linears(&info)?;
            let cell = GruCell::from_quantized(ih, hh)?;
            return Ok((cell, self.quantized_report(&info, kind)));
        }
        let (vb, report) = self.module_var_builder(&info, dtype, device)?;
        Ok((GruCell::from_config(info.config, vb)?, report))
    }
}

/// Weights holding NaN or Inf are a broken export, or (`converted_to`) values beyond the range
/// of the dtype asked for: refuse them by name.
fn check_finite(name: &str, t: &Tensor, converted_to: Option<DType>) -> Result<()> {
    match gru_core::first_non_finite(t)? {
        None => Ok(()),
        Some(i) => Err(WeightsError::Tensor {
            name: name.to_string(),
            reason: match converted_to {
                None => format!("holds a non-finite value at flat index {i}"),
                Some(d) => format!(
                    "its value at flat index {i} is beyond the range of {} (Inf after conversion)",
                    d.as_str()
                ),
            },
        }),
    }
}

/// Opens `path` and builds its GRU: `load_gru("model.safetensors", Some("encoder.rnn"), &dev)`.
pub fn load_gru(
    path: impl AsRef<std::path::Path>,
    prefix: Option<&str>,
    device: &Device,
) -> Result<(Gru, LoadReport)> {
    WeightFile::open(path)?.gru(prefix, None, device)
}
