//! Finding the GRUs and GRUCells in a state_dict from tensor names and shapes alone, inferring
//! their configuration, and checking every tensor of each against it.

use std::collections::{BTreeMap, HashMap};

use candle_core::DType;
use gru_core::{GruConfig, ParamNames, ParamShapes};

use crate::error::{Result, WeightsError};
use crate::formats::container::{join, TensorInfo};

/// What kind of module a prefix holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// `nn.GRU`: `weight_ih_l{k}[_reverse]`, ...
    Gru,
    /// `nn.GRUCell`: `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`.
    GruCell,
}

impl std::fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModuleKind::Gru => "GRU",
            ModuleKind::GruCell => "GRUCell",
        })
    }
}

/// A GRU or GRUCell found in a file, with the configuration its shapes imply.
#[derive(Debug, Clone)]
pub struct GruInfo {
    /// Module path (`encoder.rnn`), empty for a GRU at the root of the file. In a checkpoint
    /// holding several state dicts it starts with the key path of its state dict
    /// (`model_state_dict.encoder.rnn`).
    pub prefix: String,
    /// Key path of the state dict holding it (`model_state_dict`), empty at the top level; set
    /// by `WeightFile::discover`.
    pub state_dict: String,
    pub kind: ModuleKind,
    /// Inferred: input_size, hidden_size, num_layers, bias, bidirectional. `batch_first` and
    /// `dropout` are not stored in a state_dict and stay at their defaults.
    pub config: GruConfig,
    /// dtype of the stored weights.
    pub dtype: DType,
    pub num_parameters: usize,
    /// Full names of the tensors it is built from.
    pub keys: Vec<String>,
    /// A GRU quantized with `quantize_dynamic`: its kind (`qint8 per-channel`, `float16`, ...).
    pub quantized: Option<String>,
}

impl GruInfo {
    /// The module path inside its state dict (`encoder.rnn`).
    pub fn relative_prefix(&self) -> &str {
        relative(&self.prefix, &self.state_dict)
    }
}

/// `prefix` without the leading key path `state_dict`.
pub(crate) fn relative<'a>(prefix: &'a str, state_dict: &str) -> &'a str {
    if state_dict.is_empty() {
        return prefix;
    }
    match prefix.strip_prefix(state_dict) {
        Some("") => "",
        Some(rest) => rest.strip_prefix('.').unwrap_or(prefix),
        None => prefix,
    }
}

/// Everything `discover` saw: valid modules, and candidates rejected with the reason.
#[derive(Debug, Default)]
pub struct Discovery {
    pub found: Vec<GruInfo>,
    pub rejected: Vec<(String, WeightsError)>,
}

/// Splits `weight_ih_l3_reverse` into `("weight_ih", 3, true)`.
fn parse_gru_param(name: &str) -> Option<(&str, usize, bool)> {
    let (stem, reverse) = match name.strip_suffix("_reverse") {
        Some(s) => (s, true),
        None => (name, false),
    };
    let (kind, layer) = stem.rsplit_once("_l")?;
    if !matches!(kind, "weight_ih" | "weight_hh" | "bias_ih" | "bias_hh") {
        return None;
    }
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((kind, layer.parse().ok()?, reverse))
}

/// Splits a full name into (module prefix, parameter name).
fn split_name(name: &str) -> (&str, &str) {
    match name.rsplit_once('.') {
        Some((p, n)) => (p, n),
        None => ("", name),
    }
}

/// Finds every GRU and GRUCell in `tensors`.
pub fn discover(tensors: &[TensorInfo]) -> Discovery {
    let index = Index::new(tensors);
    let by_name = &index.by_name;
    // prefix -> parameter names under it that look like GRU / GRUCell parameters.
    let mut gru_params: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut cell_prefixes: Vec<&str> = Vec::new();
    for t in tensors {
        let (prefix, param) = split_name(&t.name);
        if parse_gru_param(param).is_some() {
            gru_params.entry(prefix).or_default().push(param);
        } else if param == "weight_hh" {
            cell_prefixes.push(prefix);
        } else if param == "weight_ih" && !by_name.contains_key(join(prefix, "weight_hh").as_str())
        {
            // A GRUCell whose weight_hh is stored reparametrized in a way not computed: a
            // candidate, so that the error says why it is missing.
            if index.stored_for.contains_key(&join(prefix, "weight_hh")) {
                cell_prefixes.push(prefix);
            }
        }
    }
    let mut out = Discovery::default();
    for (prefix, params) in gru_params {
        match check_gru(prefix, &params, &index) {
            Ok(info) => out.found.push(info),
            Err(e) => out.rejected.push((prefix.to_string(), e)),
        }
    }
    for prefix in cell_prefixes {
        match check_cell(prefix, &index) {
            Ok(info) => out.found.push(info),
            Err(e) => out.rejected.push((prefix.to_string(), e)),
        }
    }
    out.found.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    out
}

/// The file's tensors by name, and for each weight stored reparametrized (any
/// `{m}.parametrizations.{w}.*`, `{m}.{w}_orig`), the first of its stored tensors and how many.
struct Index<'a> {
    by_name: HashMap<&'a str, &'a TensorInfo>,
    stored_for: HashMap<String, (&'a str, usize)>,
}

impl<'a> Index<'a> {
    fn new(tensors: &'a [TensorInfo]) -> Self {
        let mut stored_for: HashMap<String, (&'a str, usize)> = HashMap::new();
        for t in tensors {
            let name = t.name.as_str();
            let plain = match name.split_once("parametrizations.") {
                Some((m, rest)) if m.is_empty() || m.ends_with('.') => {
                    let w = rest.split('.').next().unwrap_or(rest);
                    join(m.trim_end_matches('.'), w)
                }
                _ => match name.strip_suffix("_orig") {
                    Some(p) => p.to_string(),
                    None => continue,
                },
            };
            let e = stored_for.entry(plain).or_insert((name, 0));
            e.0 = e.0.min(name);
            e.1 += 1;
        }
        Index {
            by_name: tensors.iter().map(|t| (t.name.as_str(), t)).collect(),
            stored_for,
        }
    }
}

struct Checker<'a> {
    prefix: &'a str,
    index: &'a Index<'a>,
    keys: Vec<String>,
    params: usize,
}

impl Checker<'_> {
    fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.index
            .by_name
            .get(join(self.prefix, name).as_str())
            .copied()
    }

    /// The error for a missing `name`, which says so when the file stores it reparametrized in
    /// a way `reparam` does not compute (weight norm and spectral norm it does).
    fn missing(&self, name: &str, why_missing: &str) -> WeightsError {
        let full = join(self.prefix, name);
        let reason = match self.index.stored_for.get(&full) {
            None => format!("is missing: {why_missing}"),
            Some(&(first, count)) => format!(
                "is stored reparametrized (`{first}`{}) by a parametrization this loader cannot \
                 compute: weight_norm and spectral_norm are read, but another one (orthogonal, \
                 a custom one, several chained, or spectral_norm of a 1-D tensor) is not \
                 described by a state dict; save the \
                 model after `torch.nn.utils.parametrize.remove_parametrizations(module, \"{name}\")`",
                if count > 1 {
                    format!(" and {} more", count - 1)
                } else {
                    String::new()
                }
            ),
        };
        WeightsError::Tensor { name: full, reason }
    }

    fn require(&mut self, name: &str, shape: &[usize], why_missing: &str) -> Result<()> {
        let full = join(self.prefix, name);
        let info = self
            .get(name)
            .ok_or_else(|| self.missing(name, why_missing))?;
        if !info.dtype.is_float() {
            return Err(WeightsError::DType {
                name: full,
                found: info.dtype,
            });
        }
        if info.shape != shape {
            return Err(WeightsError::Shape {
                name: full,
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        self.params += info.shape.iter().product::<usize>();
        self.keys.push(full);
        Ok(())
    }
}

/// Reads H from a `weight_hh` tensor that must be `(3H, H)`.
fn hidden_from_weight_hh(full: &str, info: &TensorInfo) -> Result<usize> {
    match info.shape.as_slice() {
        &[rows, h] if h > 0 && rows == 3 * h => Ok(h),
        &[_, 0] => Err(WeightsError::Tensor {
            name: full.to_string(),
            reason: "has no columns: hidden_size 0 (nn.GRU requires hidden_size > 0)".into(),
        }),
        // The same names are nn.LSTM's (4 gates) and nn.RNN's (1): say so, not just "wrong shape".
        &[rows, h] if h > 0 && (rows == 4 * h || rows == h) => Err(WeightsError::Tensor {
            name: full.to_string(),
            reason: format!(
                "has shape [{rows}, {h}], that of an nn.{} ({} x hidden_size rows); a GRU's \
                 weight_hh is [3 x hidden_size, hidden_size] = [{}, {h}]",
                if rows == h {
                    "RNN (or RNNCell)"
                } else {
                    "LSTM (or LSTMCell)"
                },
                rows / h,
                3 * h
            ),
        }),
        &[rows, h] => Err(WeightsError::Shape {
            name: full.to_string(),
            expected: vec![3 * h, h],
            found: vec![rows, h],
        }),
        other => Err(WeightsError::Tensor {
            name: full.to_string(),
            reason: format!("must be 2-D (3H, H), found shape {other:?}"),
        }),
    }
}

fn check_gru(prefix: &str, params: &[&str], index: &Index) -> Result<GruInfo> {
    let mut layers = 0;
    let mut bidirectional = false;
    let mut bias = false;
    for p in params {
        let (kind, layer, reverse) = parse_gru_param(p).expect("filtered");
        layers = layers.max(layer + 1);
        bidirectional |= reverse;
        bias |= kind.starts_with("bias");
    }
    let mut c = Checker {
        prefix,
        index,
        keys: Vec::new(),
        params: 0,
    };
    let whh0 = join(prefix, "weight_hh_l0");
    let whh0_info = c
        .get("weight_hh_l0")
        .ok_or_else(|| c.missing("weight_hh_l0", "a GRU needs layer 0"))?;
    let hidden = hidden_from_weight_hh(&whh0, whh0_info)?;
    let wih0 = c
        .get("weight_ih_l0")
        .ok_or_else(|| c.missing("weight_ih_l0", "a GRU needs layer 0"))?;
    if wih0.shape.len() != 2 {
        return Err(WeightsError::Tensor {
            name: join(prefix, "weight_ih_l0"),
            reason: format!("must be 2-D (3H, input_size), found shape {:?}", wih0.shape),
        });
    }
    let input_size = wih0.shape[1];
    let dtype = wih0.dtype;
    let n_dirs = if bidirectional { 2 } else { 1 };
    for k in 0..layers {
        let in_k = if k == 0 { input_size } else { n_dirs * hidden };
        let shapes = ParamShapes::new(in_k, hidden);
        for d in 0..n_dirs {
            let names = ParamNames::gru(k, d);
            let why = if k > 0 && c.get(&ParamNames::gru(k - 1, d).w_ih).is_some() && d == 0 {
                format!(
                    "the layer numbers have a gap (layers up to {} exist)",
                    layers - 1
                )
            } else if d == 1 {
                "the reverse direction is present for some layers only".to_string()
            } else {
                format!("layers up to {} exist", layers - 1)
            };
            c.require(&names.w_ih, &shapes.w_ih, &why)?;
            c.require(&names.w_hh, &shapes.w_hh, &why)?;
            if bias {
                let (bi, bh) = (&names.b_ih, &names.b_hh);
                let why_bi = format!("`{}` exists without it", join(prefix, bh));
                let why_bh = format!("`{}` exists without it", join(prefix, bi));
                if c.get(bi).is_some() {
                    c.require(bh, &shapes.bias, &why_bh)?;
                    c.require(bi, &shapes.bias, &why_bi)?;
                } else {
                    c.require(bi, &shapes.bias, &why_bi)?;
                    c.require(bh, &shapes.bias, &why_bh)?;
                }
            }
        }
    }
    let config = GruConfig {
        input_size,
        hidden_size: hidden,
        num_layers: layers,
        bias,
        bidirectional,
        ..GruConfig::default()
    };
    config.validate()?;
    Ok(GruInfo {
        prefix: prefix.to_string(),
        state_dict: String::new(),
        kind: ModuleKind::Gru,
        config,
        dtype,
        num_parameters: c.params,
        keys: c.keys,
        quantized: None,
    })
}

fn check_cell(prefix: &str, index: &Index) -> Result<GruInfo> {
    let mut c = Checker {
        prefix,
        index,
        keys: Vec::new(),
        params: 0,
    };
    let whh = join(prefix, "weight_hh");
    let whh_info = c
        .get("weight_hh")
        .ok_or_else(|| c.missing("weight_hh", "a GRUCell needs it"))?;
    let hidden = hidden_from_weight_hh(&whh, whh_info)?;
    let wih = c
        .get("weight_ih")
        .ok_or_else(|| c.missing("weight_ih", &format!("`{whh}` exists without it")))?;
    if wih.shape.len() != 2 {
        return Err(WeightsError::Tensor {
            name: join(prefix, "weight_ih"),
            reason: format!("must be 2-D (3H, input_size), found shape {:?}", wih.shape),
        });
    }
    let input_size = wih.shape[1];
    let dtype = wih.dtype;
    let (names, shapes) = (ParamNames::cell(), ParamShapes::new(input_size, hidden));
    c.require(&names.w_ih, &shapes.w_ih, "")?;
    c.require(&names.w_hh, &shapes.w_hh, "")?;
    let bias = c.get(&names.b_ih).is_some() || c.get(&names.b_hh).is_some();
    if bias {
        let why_bi = format!("`{}` exists without it", join(prefix, &names.b_hh));
        let why_bh = format!("`{}` exists without it", join(prefix, &names.b_ih));
        c.require(&names.b_ih, &shapes.bias, &why_bi)?;
        c.require(&names.b_hh, &shapes.bias, &why_bh)?;
    }
    let config = GruConfig {
        input_size,
        hidden_size: hidden,
        bias,
        ..GruConfig::default()
    };
    config.validate()?;
    Ok(GruInfo {
        prefix: prefix.to_string(),
        state_dict: String::new(),
        kind: ModuleKind::GruCell,
        config,
        dtype,
        num_parameters: c.params,
        keys: c.keys,
        quantized: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::formats::container::f32_info as t;

    fn gru_tensors(prefix: &str, i: usize, h: usize, layers: usize, bi: bool) -> Vec<TensorInfo> {
        let mut v = Vec::new();
        for k in 0..layers {
            for sfx in if bi { vec!["", "_reverse"] } else { vec![""] } {
                let in_k = if k == 0 {
                    i
                } else if bi {
                    2 * h
                } else {
                    h
                };
                v.push(t(
                    &join(prefix, &format!("weight_ih_l{k}{sfx}")),
                    &[3 * h, in_k],
                ));
                v.push(t(
                    &join(prefix, &format!("weight_hh_l{k}{sfx}")),
                    &[3 * h, h],
                ));
                v.push(t(&join(prefix, &format!("bias_ih_l{k}{sfx}")), &[3 * h]));
                v.push(t(&join(prefix, &format!("bias_hh_l{k}{sfx}")), &[3 * h]));
            }
        }
        v
    }

    #[test]
    fn parses_param_names() {
        assert_eq!(
            parse_gru_param("weight_ih_l12_reverse"),
            Some(("weight_ih", 12, true))
        );
        assert_eq!(parse_gru_param("bias_hh_l0"), Some(("bias_hh", 0, false)));
        assert_eq!(parse_gru_param("weight_ih_lx"), None);
        assert_eq!(parse_gru_param("weight_l0"), None);
    }

    #[test]
    fn infers_nested_bidirectional_config() {
        let mut v = gru_tensors("encoder.rnn", 5, 7, 3, true);
        v.push(t("embed.weight", &[10, 5]));
        let d = discover(&v);
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        let g = &d.found[0];
        assert_eq!(g.prefix, "encoder.rnn");
        assert_eq!(
            (
                g.config.input_size,
                g.config.hidden_size,
                g.config.num_layers
            ),
            (5, 7, 3)
        );
        assert!(g.config.bidirectional && g.config.bias);
        assert_eq!(g.keys.len(), 24);
    }

    #[test]
    fn a_hidden_size_of_zero_is_named() {
        let v = vec![t("weight_ih_l0", &[0, 3]), t("weight_hh_l0", &[0, 0])];
        let e = discover(&v).rejected.remove(0).1.to_string();
        assert!(
            e.contains("`weight_hh_l0`: has no columns: hidden_size 0"),
            "{e}"
        );
    }

    #[test]
    fn lstm_is_not_a_gru() {
        let v = vec![
            t("lstm.weight_ih_l0", &[16, 3]),
            t("lstm.weight_hh_l0", &[16, 4]),
        ];
        let d = discover(&v);
        assert!(d.found.is_empty());
        let e = d.rejected[0].1.to_string();
        assert!(
            e.contains("`lstm.weight_hh_l0`: has shape [16, 4], that of an nn.LSTM"),
            "{e}"
        );
    }

    #[test]
    fn each_inconsistency_names_the_tensor() {
        // weight_hh of layer 1 with the wrong hidden size
        let mut v = gru_tensors("", 3, 4, 2, false);
        v.retain(|x| x.name != "weight_hh_l1");
        v.push(t("weight_hh_l1", &[12, 5]));
        let e = discover(&v).rejected.remove(0).1.to_string();
        assert!(
            e.contains("`weight_hh_l1`: expected shape [12, 4], found [12, 5]"),
            "{e}"
        );
        // layer 1 input not D*H
        let mut v = gru_tensors("m", 3, 4, 2, false);
        v.retain(|x| x.name != "m.weight_ih_l1");
        v.push(t("m.weight_ih_l1", &[12, 3]));
        let e = discover(&v).rejected.remove(0).1.to_string();
        assert!(
            e.contains("`m.weight_ih_l1`: expected shape [12, 4]"),
            "{e}"
        );
        // bias length
        let mut v = gru_tensors("", 3, 4, 1, false);
        v.retain(|x| x.name != "bias_ih_l0");
        v.push(t("bias_ih_l0", &[11]));
        let e = discover(&v).rejected.remove(0).1.to_string();
        assert!(e.contains("`bias_ih_l0`: expected shape [12]"), "{e}");
        // unpaired bias
        let mut v = gru_tensors("", 3, 4, 1, false);
        v.retain(|x| x.name != "bias_hh_l0");
        let e = discover(&v).rejected.remove(0).1.to_string();
        assert!(
            e.contains("`bias_hh_l0`: is missing: `bias_ih_l0` exists without it"),
            "{e}"
        );
        // reverse for some layers only
        let mut v = gru_tensors("", 3, 4, 2, true);
        v.retain(|x| !x.name.ends_with("l1_reverse"));
        let e = discover(&v).rejected.remove(0).1.to_string();
        assert!(
            e.contains("weight_ih_l1_reverse") && e.contains("some layers only"),
            "{e}"
        );
        // gap in layer numbers
        let mut v = gru_tensors("", 3, 4, 3, false);
        v.retain(|x| !x.name.contains("_l1"));
        let e = discover(&v).rejected.remove(0).1.to_string();
        assert!(e.contains("weight_ih_l1") && e.contains("gap"), "{e}");
        // integer dtype
        let mut v = gru_tensors("", 3, 4, 1, false);
        v[0].dtype = DType::I64;
        let e = discover(&v).rejected.remove(0).1.to_string();
        assert!(e.contains("not a float type"), "{e}");
    }

    #[test]
    fn finds_cells() {
        let v = vec![
            t("dec.cell.weight_ih", &[15, 2]),
            t("dec.cell.weight_hh", &[15, 5]),
            t("dec.cell.bias_ih", &[15]),
            t("dec.cell.bias_hh", &[15]),
        ];
        let d = discover(&v);
        assert_eq!(d.found[0].kind, ModuleKind::GruCell);
        assert_eq!(d.found[0].config.hidden_size, 5);
    }
}
