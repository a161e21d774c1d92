//! Dynamically quantized GRUs (`torch.ao.quantization.quantize_dynamic`): which packed cells of a
//! file form one (`{prefix}._all_weight_values.{k}.param`, `k = layer * D + direction`), its
//! configuration, and its weights read and checked.
//!
//! A state dict does not say whether 2 cells are 2 layers or 1 bidirectional layer: the shapes
//! decide (layer 1's `W_ih` reads `H` or `2H` features); a pickled module or TorchScript archive
//! says so itself (`num_layers`, `bidirectional`), and is believed only where the shapes agree.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use gru_core::{GruConfig, QuantizedGruWeights, QuantizedLinear, WeightScheme};

use crate::error::{Result, WeightsError};
use crate::file::WeightFile;
use crate::formats::container::{join, TensorInfo};
use crate::model::discover::{GruInfo, ModuleKind};
use crate::pickle::quantized::{PackedRnns, QuantizedCell, QuantizedLinearRef, RnnAttrs, Scheme};

const LIST: &str = "_all_weight_values";

/// `(prefix, k)` of a cell path `{prefix}._all_weight_values.{k}.param`.
fn split_cell_path(path: &str) -> Option<(&str, usize)> {
    let rest = path.strip_suffix(".param")?;
    let (head, k) = rest.rsplit_once('.')?;
    let k: usize = k.parse().ok()?;
    let prefix = match head.strip_suffix(LIST)? {
        "" => "",
        p => p.strip_suffix('.')?,
    };
    Some((prefix, k))
}

/// Whether `name` is one of the tensors listed for a quantized cell (the float discovery skips
/// them: a cell's `weight_ih`/`weight_hh` would look like a GRUCell's).
pub(crate) fn is_cell_tensor(packed: &PackedRnns, name: &str) -> bool {
    !packed.cells.is_empty()
        && packed.cells.iter().any(|c| {
            name.strip_prefix(c.path.as_str())
                .is_some_and(|r| r.starts_with('.'))
        })
}

/// The quantized GRUs of a file (as `GruInfo`s with `quantized` set), and the groups of cells
/// that do not form one, with why.
pub(crate) fn discover_quantized(
    packed: &PackedRnns,
    tensors: &[TensorInfo],
) -> (Vec<GruInfo>, Vec<(String, WeightsError)>) {
    let mut groups: BTreeMap<&str, BTreeMap<usize, &QuantizedCell>> = BTreeMap::new();
    for c in &packed.cells {
        if let Some((prefix, k)) = split_cell_path(&c.path) {
            groups.entry(prefix).or_default().insert(k, c);
        }
    }
    let shape = |name: String| {
        tensors
            .iter()
            .find(|t| t.name == name)
            .map(|t| &t.shape[..])
    };
    let (mut found, mut rejected) = (Vec::new(), Vec::new());
    for (prefix, cells) in groups {
        let attrs = packed
            .modules
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, a)| a);
        match infer(prefix, &cells, attrs, &shape) {
            Ok(Some(info)) => found.push(info),
            Ok(None) => {}
            Err(e) => rejected.push((prefix.to_string(), e)),
        }
    }
    (found, rejected)
}

/// Quantized GRUCells: `{prefix}._packed_weight_ih` beside `{prefix}._packed_weight_hh`.
pub(crate) fn discover_quantized_cells(
    packed: &PackedRnns,
    tensors: &[TensorInfo],
) -> (Vec<GruInfo>, Vec<(String, WeightsError)>) {
    let shape = |name: String| {
        tensors
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.shape.clone())
    };
    let (mut found, mut rejected) = (Vec::new(), Vec::new());
    for ih in &packed.linears {
        let Some(prefix) = cell_prefix(&ih.path, "_packed_weight_ih") else {
            continue;
        };
        let hh_path = join(prefix, "_packed_weight_hh");
        let Some(hh) = packed.linears.iter().find(|l| l.path == hh_path) else {
            continue;
        };
        let bad = |reason: String| WeightsError::File {
            path: format!("quantized GRUCell at {prefix:?}").into(),
            reason,
        };
        let dims = |l: &QuantizedLinearRef| match shape(join(&l.path, "weight")).as_deref() {
            Some(&[r, c]) => Ok((r, c)),
            other => Err(bad(format!("`{}.weight` has shape {other:?}", l.path))),
        };
        let info = (|| {
            let ((g, input), (g2, hidden)) = (dims(ih)?, dims(hh)?);
            if g != 3 * hidden || g2 != g || hidden == 0 || input == 0 {
                return Err(bad(format!(
                    "packed weights ({g}, {input}) and ({g2}, {hidden}): a GRUCell's are (3H, I) \
                     and (3H, H)"
                )));
            }
            if ih.bias != hh.bias {
                return Err(bad("one packed linear has a bias, the other not".into()));
            }
            let fp16 = ih.scheme == Scheme::Float16;
            if fp16 != (hh.scheme == Scheme::Float16) {
                return Err(bad("mixes int8 and float16 linears".into()));
            }
            let mut keys = Vec::new();
            for l in [ih, hh] {
                linear_keys(
                    &mut keys,
                    &l.path,
                    "weight",
                    l.bias.then_some("bias"),
                    &l.scheme,
                );
            }
            // PyTorch's quantized GRUCell always quantizes its inputs to 7 bits.
            let kind = kind_label(fp16, [&ih.scheme, &hh.scheme], true);
            Ok(GruInfo {
                prefix: prefix.to_string(),
                state_dict: String::new(),
                kind: ModuleKind::GruCell,
                config: GruConfig::new(input, hidden).with_bias(ih.bias),
                dtype: DType::F32,
                num_parameters: g * (input + hidden) + if ih.bias { 2 * g } else { 0 },
                keys,
                quantized: Some(kind),
            })
        })();
        match info {
            Ok(i) => found.push(i),
            Err(e) => rejected.push((prefix.to_string(), e)),
        }
    }
    (found, rejected)
}

/// The listed names of one packed linear under `path`: its weight, bias and per-channel
/// parameters.
fn linear_keys(keys: &mut Vec<String>, path: &str, weight: &str, bias: Option<&str>, s: &Scheme) {
    keys.push(join(path, weight));
    if let Some(b) = bias {
        keys.push(join(path, b));
    }
    if matches!(s, Scheme::PerChannel { .. }) {
        keys.push(join(path, &format!("{weight}.scales")));
        keys.push(join(path, &format!("{weight}.zero_points")));
    }
}

/// `float16`, or `qint8 per-tensor|per-channel[, reduce_range]`, as `gru inspect` shows it.
fn kind_label<'a>(fp16: bool, schemes: impl IntoIterator<Item = &'a Scheme>, rr: bool) -> String {
    if fp16 {
        return "float16".to_string();
    }
    let per_channel = schemes
        .into_iter()
        .any(|s| matches!(s, Scheme::PerChannel { .. }));
    format!(
        "qint8 {}{}",
        if per_channel {
            "per-channel"
        } else {
            "per-tensor"
        },
        if rr { ", reduce_range" } else { "" }
    )
}

/// `prefix` of `{prefix}.{name}` (or `""` for `name` itself).
fn cell_prefix<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    if path == name {
        return Some("");
    }
    path.strip_suffix(name)?.strip_suffix('.')
}

/// The config of the cells at `prefix`; `None` for another RNN (an LSTM's gates are 4H).
fn infer<'a>(
    prefix: &str,
    cells: &BTreeMap<usize, &QuantizedCell>,
    attrs: Option<&RnnAttrs>,
    shape: &dyn Fn(String) -> Option<&'a [usize]>,
) -> Result<Option<GruInfo>> {
    let bad = |reason: String| WeightsError::File {
        path: format!("quantized GRU at {prefix:?}").into(),
        reason,
    };
    if attrs
        .and_then(|a| a.mode.as_deref())
        .is_some_and(|m| m != "GRU")
    {
        return Ok(None);
    }
    let n = cells.len();
    if cells.keys().copied().ne(0..n) {
        return Err(bad(format!(
            "its packed cells are numbered {:?}, not 0..{n}",
            cells.keys().collect::<Vec<_>>()
        )));
    }
    let dims = |k: usize, w: &str| -> Result<(usize, usize)> {
        let name = join(&cells[&k].path, w);
        match shape(name.clone()) {
            Some(&[rows, cols]) => Ok((rows, cols)),
            Some(s) => Err(bad(format!("`{name}` has shape {s:?}, not 2-D"))),
            None => Err(bad(format!("`{name}` is not listed"))),
        }
    };
    let (g, hidden) = dims(0, "weight_hh")?;
    if g == 4 * hidden {
        return Ok(None); // an LSTM
    }
    if g != 3 * hidden || hidden == 0 {
        return Err(bad(format!(
            "weight_hh of cell 0 is ({g}, {hidden}): a GRU's is (3H, H)"
        )));
    }
    let input = dims(0, "weight_ih")?.1;
    // Which (layers, directions) the shapes allow.
    let fits = |d: usize| -> bool {
        n.is_multiple_of(d)
            && (0..n).all(|k| {
                let want = if k < d { input } else { d * hidden };
                dims(k, "weight_ih").is_ok_and(|s| s == (g, want))
                    && dims(k, "weight_hh").is_ok_and(|s| s == (g, hidden))
            })
    };
    let options: Vec<usize> = [1, 2].into_iter().filter(|&d| fits(d)).collect();
    let d = match (attrs.and_then(|a| a.bidirectional), options.as_slice()) {
        (Some(bi), opts) if opts.contains(&(1 + bi as usize)) => 1 + bi as usize,
        (Some(bi), _) => {
            return Err(bad(format!(
                "the module says bidirectional={bi}, its {n} cells' shapes say otherwise"
            )))
        }
        (None, [one]) => *one,
        (None, []) => {
            return Err(bad(format!(
                "the shapes of its {n} cells fit no GRU (input {input}, hidden {hidden})"
            )))
        }
        (None, _) => {
            return Err(bad(format!(
                "{n} cells with input_size = hidden_size = {hidden} are either {n} layers or \
                 {} bidirectional layers, and a state dict does not say which: save the whole \
                 model (torch.save(model)) or a TorchScript archive instead",
                n / 2
            )))
        }
    };
    if let Some(l) = attrs.and_then(|a| a.num_layers) {
        if l * d != n {
            return Err(bad(format!(
                "the module says num_layers={l}, it has {n} cells"
            )));
        }
    }
    let first = cells[&0];
    if let Some(c) = cells.values().find(|c| c.fp16 != first.fp16) {
        return Err(bad(format!("`{}` mixes int8 and float16 cells", c.path)));
    }
    if let Some(c) = cells
        .values()
        .find(|c| c.reduce_range != first.reduce_range)
    {
        return Err(bad(format!(
            "`{}`: reduce_range differs between cells",
            c.path
        )));
    }
    let bias = first.bias;
    if let Some(c) = cells.values().find(|c| c.bias != bias) {
        return Err(bad(format!(
            "`{}`: some cells have biases, some not",
            c.path
        )));
    }
    let config = GruConfig {
        input_size: input,
        hidden_size: hidden,
        num_layers: n / d,
        bias,
        bidirectional: d == 2,
        batch_first: attrs.and_then(|a| a.batch_first).unwrap_or(false),
        ..GruConfig::default()
    };
    config.validate().map_err(|e| bad(e.to_string()))?;
    let mut keys = Vec::new();
    for c in cells.values() {
        for (w, scheme) in [("ih", &c.ih), ("hh", &c.hh)] {
            let bias_name = format!("bias_{w}");
            let b = bias.then_some(bias_name.as_str());
            linear_keys(&mut keys, &c.path, &format!("weight_{w}"), b, scheme);
        }
    }
    let schemes = cells.values().flat_map(|c| [&c.ih, &c.hh]);
    let kind = kind_label(first.fp16, schemes, first.reduce_range);
    let num_parameters = (0..config.num_layers)
        .map(|k| {
            config.num_directions()
                * (g * config.layer_input_size(k) + g * hidden + if bias { 2 * g } else { 0 })
        })
        .sum();
    Ok(Some(GruInfo {
        prefix: prefix.to_string(),
        state_dict: String::new(),
        kind: ModuleKind::Gru,
        config,
        dtype: DType::F32,
        num_parameters,
        keys,
        quantized: Some(kind),
    }))
}

impl WeightFile {
    /// The two packed linears of the quantized GRUCell `info` (found by `discover`).
    pub(crate) fn quantized_cell_linears(
        &self,
        info: &GruInfo,
    ) -> Result<(QuantizedLinear, QuantizedLinear)> {
        let packed = self.packed_rnns();
        let get = |which: &str| -> Result<QuantizedLinear> {
            let path = join(&info.prefix, which);
            let l = packed
                .linears
                .iter()
                .find(|l| l.path == path)
                .ok_or_else(|| WeightsError::Select(format!("packed linear {path:?} missing")))?;
            let bias = join(&path, "bias");
            self.packed_linear_at(
                &join(&path, "weight"),
                l.bias.then_some(bias.as_str()),
                &l.scheme,
            )
        };
        Ok((get("_packed_weight_ih")?, get("_packed_weight_hh")?))
    }

    /// The weights of the quantized GRU `info` (found by `discover`), read and checked.
    pub(crate) fn quantized_weights(&self, info: &GruInfo) -> Result<QuantizedGruWeights> {
        let packed = self.packed_rnns();
        let cells: BTreeMap<usize, &QuantizedCell> = packed
            .cells
            .iter()
            .filter_map(|c| {
                split_cell_path(&c.path)
                    .filter(|(p, _)| *p == info.prefix)
                    .map(|(_, k)| (k, c))
            })
            .collect();
        let d = info.config.num_directions();
        let mut layers = Vec::with_capacity(info.config.num_layers);
        for l in 0..info.config.num_layers {
            let mut dirs = Vec::with_capacity(d);
            for dir in 0..d {
                let c = cells.get(&(l * d + dir)).ok_or_else(|| {
                    WeightsError::Select(format!("quantized cell {} missing", l * d + dir))
                })?;
                dirs.push((
                    self.packed_linear(c, "ih", &c.ih)?,
                    self.packed_linear(c, "hh", &c.hh)?,
                ));
            }
            layers.push(dirs);
        }
        let reduce_range = cells.values().next().is_some_and(|c| c.reduce_range);
        let w = QuantizedGruWeights {
            layers,
            reduce_range,
        };
        w.check(&info.config).map_err(|e| WeightsError::File {
            path: self.path().to_path_buf(),
            reason: format!("quantized GRU at {:?}: {e}", info.prefix),
        })?;
        Ok(w)
    }

    fn packed_linear(
        &self,
        c: &QuantizedCell,
        w: &str,
        scheme: &Scheme,
    ) -> Result<QuantizedLinear> {
        let bias = join(&c.path, &format!("bias_{w}"));
        let weight = join(&c.path, &format!("weight_{w}"));
        self.packed_linear_at(&weight, c.bias.then_some(bias.as_str()), scheme)
    }

    /// The packed linear whose weight is listed as `name` (its per-channel parameters beside it
    /// as `{name}.scales` / `.zero_points`) and whose bias as `bias`.
    fn packed_linear_at(
        &self,
        name: &str,
        bias: Option<&str>,
        scheme: &Scheme,
    ) -> Result<QuantizedLinear> {
        let cpu = Device::Cpu;
        let bad = |reason: String| WeightsError::Tensor {
            name: name.to_string(),
            reason,
        };
        let weight = self.load(name, &cpu)?;
        let (out, input) = weight.dims2().map_err(|e| bad(e.to_string()))?;
        let bias = if let Some(b) = bias {
            let b = self.load(b, &cpu)?;
            Some(floats(&b, name)?)
        } else {
            None
        };
        let int8 = |scheme: WeightScheme| -> Result<QuantizedLinear> {
            if weight.dtype() != DType::U8 {
                return Err(bad(format!("int8 weight read as {:?}", weight.dtype())));
            }
            let bytes = weight
                .flatten_all()
                .and_then(|t| t.to_vec1::<u8>())
                .map_err(|e| bad(e.to_string()))?;
            Ok(QuantizedLinear::Int8 {
                weight: bytes.into_iter().map(|b| b as i8).collect(),
                out,
                input,
                scheme,
                bias: bias.clone(),
            })
        };
        match scheme {
            Scheme::Float16 => Ok(QuantizedLinear::Float16 {
                weight: floats(&weight, name)?,
                out,
                input,
                bias,
            }),
            Scheme::PerTensor { scale, zero_point } => int8(WeightScheme::PerTensor {
                scale: *scale as f32,
                zero_point: zero_point_i32(*zero_point).map_err(bad)?,
            }),
            Scheme::PerChannel { axis } => {
                if *axis != 0 {
                    return Err(bad(format!(
                        "per-channel quantization along axis {axis}; PyTorch's packed linears \
                         quantize along axis 0 (output rows)"
                    )));
                }
                let scales = self.load(&format!("{name}.scales"), &cpu)?;
                let zps = self.load(&format!("{name}.zero_points"), &cpu)?;
                let scales = floats(&scales, &format!("{name}.scales"))?;
                let zps: Vec<i64> = zps
                    .to_dtype(DType::I64)
                    .and_then(|t| t.flatten_all()?.to_vec1::<i64>())
                    .map_err(|e| bad(format!("zero points: {e}")))?;
                int8(WeightScheme::PerChannel {
                    scales,
                    zero_points: zps
                        .into_iter()
                        .map(zero_point_i32)
                        .collect::<std::result::Result<_, _>>()
                        .map_err(bad)?,
                })
            }
        }
    }
}

fn zero_point_i32(z: i64) -> std::result::Result<i32, String> {
    if (-128..=127).contains(&z) {
        Ok(z as i32)
    } else {
        Err(format!("zero point {z} is outside int8's -128..=127"))
    }
}

/// A float tensor's values as f32 (per-channel scales are stored in f64; fbgemm keeps f32).
fn floats(t: &Tensor, name: &str) -> Result<Vec<f32>> {
    if !t.dtype().is_float() {
        return Err(WeightsError::Tensor {
            name: name.to_string(),
            reason: format!("{:?} values where floats were expected", t.dtype()),
        });
    }
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .map_err(|e| WeightsError::Tensor {
            name: name.to_string(),
            reason: e.to_string(),
        })
}
