//! The packed parameters of a dynamically quantized GRU (`torch.ao.quantization.quantize_dynamic`)
//! as `torch.save` and TorchScript pickle them. Each layer and direction is one
//! `torch.classes.rnn.CellParamsBase` whose state is
//! `(kind, tensors, doubles, longs, packed)`:
//! - `"quantized_dynamic"` (int8): tensors `[b_ih, b_hh]`, longs `[reduce_range]`, packed
//!   `[W_ih, W_hh]` as `LinearPackedParamsBase` objects whose state is `(qweight, bias)`;
//! - `"quantized_fp16"`: nothing but packed `[W_ih, W_hh]`, each `(weight, bias)` with the weight
//!   unpacked to f32 (values of f16).
//!
//! `torch.save` wraps each state as `(state, "__torch__.torch.classes.<ns>.<Class>")` on a
//! `torch.ScriptObject`; TorchScript gives the state directly to an object of the class
//! `__torch__.torch.classes.<ns> <Class>`, its lists wrapped in `torch.jit._pickle.build_*`.
//! Nothing here is called: the tensors inside are described, as every other tensor is.

use super::tensor::{strided, tensor as tensor_of, TensorRef};
use super::{Id, Pickle, Value};

/// How a packed weight's int8 values map to reals (`scale * (q - zero_point)`), or that it is
/// an f16 weight unpacked to f32.
#[derive(Debug, Clone, PartialEq)]
pub enum Scheme {
    /// `torch.per_tensor_affine` (or `per_tensor_symmetric`).
    PerTensor { scale: f64, zero_point: i64 },
    /// `torch.per_channel_affine`: scales (f64) and zero points (i64) are tensors, one per
    /// index of `axis`.
    PerChannel { axis: i64 },
    /// The fp16 kind: the weight is a float tensor.
    Float16,
}

/// One packed linear: its weight (int8 values, or f32 for fp16), how to read them, its bias.
#[derive(Debug, Clone)]
pub(crate) struct PackedLinear {
    pub weight: TensorRef,
    pub scheme: Scheme,
    /// Per-channel scales and zero points.
    pub channels: Option<(TensorRef, TensorRef)>,
    pub bias: Option<TensorRef>,
}

/// One layer and direction of a dynamically quantized GRU/LSTM.
#[derive(Debug, Clone)]
pub(crate) struct Cell {
    pub fp16: bool,
    /// int8: the input's quantization uses 7 bits (`reduce_range`).
    pub reduce_range: bool,
    pub ih: PackedLinear,
    pub hh: PackedLinear,
    /// The biases as the cell lists them (int8 kind); the fp16 kind keeps them in the packed
    /// linears only.
    pub biases: Option<(TensorRef, TensorRef)>,
}

const CELL: &str = "__torch__.torch.classes.rnn.CellParamsBase";
const LINEAR: &str = "__torch__.torch.classes.quantized.LinearPackedParamsBase";

/// The state of object `id` if it is an instance of the TorchScript class `class`.
fn script_state(p: &Pickle, id: Id, class: &str) -> Option<Id> {
    let Value::Object {
        callable, state, ..
    } = p.get(id)
    else {
        return None;
    };
    let state = (*state)?;
    // TorchScript: the class is the callable.
    if let Some((module, name)) = p.global(*callable) {
        if format!("{module}.{name}") == class {
            return Some(state);
        }
    }
    // torch.save: a ScriptObject whose state is (state, class name).
    match p.seq(state) {
        Some(&[inner, name]) if p.str(name) == Some(class) => Some(inner),
        _ => None,
    }
}

/// A list, unwrapped from TorchScript's `build_tensorlist(list)` and the like and from
/// `restore_type_tag(list, type)`.
fn list(p: &Pickle, id: Id) -> Option<&[Id]> {
    if let Value::Object { callable, args, .. } = p.get(id) {
        let (module, _) = p.global(*callable)?;
        if module != "torch.jit._pickle" {
            return None;
        }
        return list(p, *p.seq(*args)?.first()?);
    }
    p.seq(id)
}

fn tensor(p: &Pickle, id: Id, what: &str) -> Result<TensorRef, String> {
    tensor_of(p, id)?.ok_or_else(|| format!("{what} is {}, not a tensor", p.describe(id)))
}

/// A cell of a quantized RNN, or a packed linear on its own (a quantized `GRUCell`'s
/// `_packed_weight_ih` / `_packed_weight_hh`).
#[derive(Debug, Clone)]
pub(crate) enum Packed {
    Cell(Box<Cell>),
    Linear(Box<PackedLinear>),
}

/// Whether `id` is a `CellParamsBase` or a `LinearPackedParamsBase` (not parsed: `packed`
/// parses it, and says what is wrong with it).
pub(crate) fn is_packed(p: &Pickle, id: Id) -> bool {
    script_state(p, id, CELL).is_some() || script_state(p, id, LINEAR).is_some()
}

/// `Ok(Some(..))` when `id` is a `CellParamsBase` or a `LinearPackedParamsBase`, `Err` when it
/// is one that is malformed. Boxed: the recursive walk that finds it keeps its frames small.
pub(crate) fn packed(p: &Pickle, id: Id) -> Result<Option<Packed>, String> {
    if let Some(c) = cell(p, id)? {
        return Ok(Some(Packed::Cell(c)));
    }
    if script_state(p, id, LINEAR).is_some() {
        return Ok(Some(Packed::Linear(Box::new(linear(
            p,
            id,
            "packed linear",
        )?))));
    }
    Ok(None)
}

/// `Ok(Some(..))` when `id` is a `CellParamsBase`, `Err` when it is one that is malformed.
pub(crate) fn cell(p: &Pickle, id: Id) -> Result<Option<Box<Cell>>, String> {
    let Some(state) = script_state(p, id, CELL) else {
        return Ok(None);
    };
    let fields = p.seq(state).ok_or("CellParamsBase state is not a tuple")?;
    let [kind, tensors, _doubles, longs, packed] = fields else {
        return Err(format!(
            "CellParamsBase state of {} fields (5 expected)",
            fields.len()
        ));
    };
    let kind = p.str(*kind).ok_or("CellParamsBase kind is not a string")?;
    let fp16 = match kind {
        "quantized_dynamic" => false,
        "quantized_fp16" => true,
        other => {
            return Err(format!(
                "CellParamsBase of kind {other:?}: only dynamically quantized cells \
                 (quantized_dynamic, quantized_fp16) are read; statically quantized RNNs \
                 (quantized activations) are not supported"
            ))
        }
    };
    let packed = list(p, *packed).ok_or("CellParamsBase packed parameters are not a list")?;
    let [ih, hh] = packed else {
        return Err(format!(
            "CellParamsBase with {} packed linears (2 expected)",
            packed.len()
        ));
    };
    let (ih, hh) = (linear(p, *ih, "W_ih")?, linear(p, *hh, "W_hh")?);
    let tensors = list(p, *tensors).ok_or("CellParamsBase tensors are not a list")?;
    let longs = list(p, *longs).ok_or("CellParamsBase longs are not a list")?;
    let (reduce_range, biases) = if fp16 {
        (false, None)
    } else {
        let rr = match longs {
            [r] => p.int(*r).filter(|r| *r == 0 || *r == 1),
            _ => None,
        }
        .ok_or("quantized_dynamic cell without its reduce_range flag (one 0 or 1)")?;
        let biases = match tensors {
            [b_ih, b_hh] => Some((tensor(p, *b_ih, "b_ih")?, tensor(p, *b_hh, "b_hh")?)),
            [] => None,
            other => {
                return Err(format!(
                    "quantized_dynamic cell with {} bias tensors (2 expected)",
                    other.len()
                ))
            }
        };
        (rr == 1, biases)
    };
    // Boxed: the recursive walk that finds it keeps its frames small.
    Ok(Some(Box::new(Cell {
        fp16,
        reduce_range,
        ih,
        hh,
        biases,
    })))
}

/// A `LinearPackedParamsBase`: `(weight, bias)`.
fn linear(p: &Pickle, id: Id, what: &str) -> Result<PackedLinear, String> {
    let state = script_state(p, id, LINEAR)
        .ok_or_else(|| format!("{what} is {}, not LinearPackedParamsBase", p.describe(id)))?;
    let fields = p
        .seq(state)
        .ok_or_else(|| format!("{what}: packed state is not a tuple"))?;
    let (w, b) = match fields {
        [w, b] => (*w, Some(*b)),
        [w] => (*w, None),
        _ => {
            return Err(format!(
                "{what}: packed state of {} fields (2 expected; a newer layout is not read)",
                fields.len()
            ))
        }
    };
    let bias = match b {
        Some(b) if !matches!(p.get(b), Value::None) => Some(tensor(p, b, &format!("{what} bias"))?),
        _ => None,
    };
    // A quantized weight: _rebuild_qtensor(storage, offset, size, stride, qparams, ...).
    if let Value::Object { callable, args, .. } = p.get(w) {
        if p.global(*callable) == Some(("torch._utils", "_rebuild_qtensor")) {
            return qtensor(p, *args, what, bias);
        }
    }
    let weight = tensor(p, w, what)?;
    Ok(PackedLinear {
        weight,
        scheme: Scheme::Float16,
        channels: None,
        bias,
    })
}

fn qtensor(
    p: &Pickle,
    args: Id,
    what: &str,
    bias: Option<TensorRef>,
) -> Result<PackedLinear, String> {
    let args = p.seq(args).unwrap_or(&[]);
    if args.len() < 5 {
        return Err(format!(
            "{what}: _rebuild_qtensor with {} arguments",
            args.len()
        ));
    }
    let mut weight =
        strided(p, args[0], args[1], args[2], args[3]).map_err(|e| format!("{what}: {e}"))?;
    // Signed int8 values, read as their bytes (candle has no i8); quint8 weights are not
    // what quantize_dynamic makes.
    let class = match p.get(args[0]) {
        Value::Persistent(pid) => p
            .seq(*pid)
            .and_then(|t| t.get(1))
            .and_then(|&c| p.global(c)),
        _ => None,
    };
    if class.map(|(_, n)| n) != Some("QInt8Storage") {
        return Err(format!(
            "{what}: a quantized weight stored as {}, not torch.QInt8Storage",
            class.map_or("something else".to_string(), |(m, n)| format!("{m}.{n}"))
        ));
    }
    weight.storage.dtype = Some(candle_core::DType::U8);
    let q = p
        .seq(args[4])
        .ok_or_else(|| format!("{what}: quantizer parameters are not a tuple"))?;
    let scheme_name = q
        .first()
        .and_then(|&s| p.global(s))
        .map(|(_, n)| n)
        .ok_or_else(|| format!("{what}: quantization scheme is not a torch global"))?;
    let (scheme, channels) = match (scheme_name, q) {
        ("per_tensor_affine" | "per_tensor_symmetric", [_, scale, zp]) => {
            let scale = p
                .float(*scale)
                .ok_or_else(|| format!("{what}: scale is not a number"))?;
            let zero_point = p
                .int(*zp)
                .ok_or_else(|| format!("{what}: zero point is not an integer"))?;
            (Scheme::PerTensor { scale, zero_point }, None)
        }
        ("per_channel_affine" | "per_channel_symmetric", [_, scales, zps, axis]) => {
            let axis = p
                .int(*axis)
                .ok_or_else(|| format!("{what}: channel axis is not an integer"))?;
            let s = tensor(p, *scales, &format!("{what} scales"))?;
            let z = tensor(p, *zps, &format!("{what} zero points"))?;
            (Scheme::PerChannel { axis }, Some((s, z)))
        }
        (other, _) => {
            return Err(format!(
                "{what}: quantization scheme {other} with {} parameters is not read",
                q.len()
            ))
        }
    };
    Ok(PackedLinear {
        weight,
        scheme,
        channels,
        bias,
    })
}

/// What a pickled RNN module says of itself (TorchScript attributes, a Python module's
/// `__dict__`): what a state dict alone cannot tell.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RnnAttrs {
    pub mode: Option<String>,
    pub input_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub num_layers: Option<usize>,
    pub bidirectional: Option<bool>,
    pub batch_first: Option<bool>,
}

/// The attributes of an object that look like an RNN module's (`num_layers` and
/// `bidirectional` present), else `None`.
pub(crate) fn rnn_attrs(p: &Pickle, attrs: &[(impl AsRef<str>, Id)]) -> Option<RnnAttrs> {
    let field = |n: &str| attrs.iter().find(|(k, _)| k.as_ref() == n).map(|&(_, v)| v);
    let int = |n: &str| {
        field(n)
            .and_then(|v| p.int(v))
            .and_then(|v| usize::try_from(v).ok())
    };
    let flag = |n: &str| {
        field(n).and_then(|v| match p.get(v) {
            Value::Bool(b) => Some(*b),
            Value::Int(i) => Some(*i != 0),
            _ => None,
        })
    };
    let a = RnnAttrs {
        mode: field("mode").and_then(|v| p.str(v)).map(str::to_string),
        input_size: int("input_size"),
        hidden_size: int("hidden_size"),
        num_layers: int("num_layers"),
        bidirectional: flag("bidirectional"),
        batch_first: flag("batch_first"),
    };
    (a.num_layers.is_some() && a.bidirectional.is_some()).then_some(a)
}

/// A layer and direction of a dynamically quantized RNN: its tensors are listed under `path`
/// (see `torch::Walk::emit_cell`).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedCell {
    /// `rnn._all_weight_values.0.param`.
    pub path: String,
    /// Weights stored as f16 values (`dtype=torch.float16`), else int8.
    pub fp16: bool,
    /// int8: inputs are quantized to 7 bits (PyTorch's `reduce_range`).
    pub reduce_range: bool,
    pub ih: Scheme,
    pub hh: Scheme,
    /// Both linears add a bias.
    pub bias: bool,
}

/// A packed linear on its own (a quantized `GRUCell`'s `_packed_weight_ih`): its tensors are
/// listed under `path` (`weight`, `bias`, per-channel `weight.scales` / `.zero_points`).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLinearRef {
    pub path: String,
    pub scheme: Scheme,
    pub bias: bool,
}

/// What a pickle holds of dynamically quantized RNNs.
#[derive(Debug, Clone, Default)]
pub struct PackedRnns {
    pub cells: Vec<QuantizedCell>,
    pub linears: Vec<QuantizedLinearRef>,
    /// Pickled objects that describe themselves as RNNs (`num_layers`, `bidirectional`), by path.
    pub modules: Vec<(String, RnnAttrs)>,
}
