//! Loading one direction's parameters from a `VarBuilder` under PyTorch's names, with each shape
//! checked and a missing tensor named in full (`encoder.rnn.weight_hh_l1_reverse`).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::error::{GruError, Result};

/// One direction's parameters as PyTorch stores them (dtype of the `VarBuilder`).
#[derive(Debug, Clone)]
pub(crate) struct DirectionParams {
    /// `(3H, in)`, gates r|z|n.
    pub w_ih: Tensor,
    /// `(3H, H)`.
    pub w_hh: Tensor,
    /// `(3H)` each, present together or not at all.
    pub b_ih: Option<Tensor>,
    pub b_hh: Option<Tensor>,
}

/// PyTorch's names of one direction's four tensors: with [`ParamShapes`], the one schema that
/// `Gru::new` / `GruCell::new` and the weight discovery of `gru-weights` share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamNames {
    pub w_ih: String,
    pub w_hh: String,
    pub b_ih: String,
    pub b_hh: String,
}

/// PyTorch's shapes of one direction's tensors for `input` features and `hidden` units:
/// `weight_ih` `(3H, input)`, `weight_hh` `(3H, H)`, `bias_ih` and `bias_hh` `(3H)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamShapes {
    pub w_ih: [usize; 2],
    pub w_hh: [usize; 2],
    pub bias: [usize; 1],
}

impl ParamShapes {
    pub fn new(input: usize, hidden: usize) -> Self {
        let g = 3 * hidden;
        Self {
            w_ih: [g, input],
            w_hh: [g, hidden],
            bias: [g],
        }
    }
}

impl ParamNames {
    /// `nn.GRU` names of layer `layer`, direction `dir` (1 = `_reverse`).
    pub fn gru(layer: usize, dir: usize) -> Self {
        let sfx = if dir == 1 { "_reverse" } else { "" };
        Self {
            w_ih: format!("weight_ih_l{layer}{sfx}"),
            w_hh: format!("weight_hh_l{layer}{sfx}"),
            b_ih: format!("bias_ih_l{layer}{sfx}"),
            b_hh: format!("bias_hh_l{layer}{sfx}"),
        }
    }

    /// `nn.GRUCell` names.
    pub fn cell() -> Self {
        Self {
            w_ih: "weight_ih".into(),
            w_hh: "weight_hh".into(),
            b_ih: "bias_ih".into(),
            b_hh: "bias_hh".into(),
        }
    }
}

fn full_name(vb: &VarBuilder, name: &str) -> String {
    let prefix = vb.prefix();
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Gets `name` with exactly `shape` through candle's checked getter, so that every `VarBuilder`
/// source works: a file, a `VarMap` (a missing variable is created as PyTorch's
/// `reset_parameters` does, U(-1/sqrt(H), 1/sqrt(H))), zeros, tensors. A failure is an error
/// naming the tensor: missing, or its actual shape.
pub(crate) fn get_checked(
    vb: &VarBuilder,
    name: &str,
    shape: &[usize],
    hidden: usize,
) -> Result<Tensor> {
    let k = 1.0 / (hidden as f64).sqrt();
    let init = candle_nn::Init::Uniform { lo: -k, up: k };
    match vb.get_with_hints(shape, name, init) {
        Ok(t) if t.dims() == shape => Ok(t),
        Ok(t) => Err(GruError::shape(full_name(vb, name), shape, t.dims())),
        Err(e) => {
            let full = full_name(vb, name);
            if !vb.contains_tensor(name) {
                return Err(GruError::arg(full, "is missing from the weights"));
            }
            match vb.get_unchecked(name) {
                Ok(t) if t.dims() != shape => Err(GruError::shape(full, shape, t.dims())),
                _ => Err(GruError::arg(full, format!("cannot be read: {e}"))),
            }
        }
    }
}

impl DirectionParams {
    /// Loads and checks one direction: `weight_ih` `(3H, input)`, `weight_hh` `(3H, H)`, and with
    /// `bias` both `bias_ih` and `bias_hh` `(3H)`.
    pub fn load(
        vb: &VarBuilder,
        names: &ParamNames,
        input: usize,
        hidden: usize,
        bias: bool,
    ) -> Result<Self> {
        let shapes = ParamShapes::new(input, hidden);
        let w_ih = get_checked(vb, &names.w_ih, &shapes.w_ih, hidden)?;
        let w_hh = get_checked(vb, &names.w_hh, &shapes.w_hh, hidden)?;
        let (b_ih, b_hh) = if bias {
            (
                Some(get_checked(vb, &names.b_ih, &shapes.bias, hidden)?),
                Some(get_checked(vb, &names.b_hh, &shapes.bias, hidden)?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            w_ih,
            w_hh,
            b_ih,
            b_hh,
        })
    }

    /// Whether any tensor is a candle `Var` (trainable, changeable in place).
    pub fn is_variable(&self) -> bool {
        [
            Some(&self.w_ih),
            Some(&self.w_hh),
            self.b_ih.as_ref(),
            self.b_hh.as_ref(),
        ]
        .into_iter()
        .flatten()
        .any(Tensor::is_variable)
    }

    /// The tensors under their PyTorch names, for saving.
    pub fn named(&self, names: &ParamNames) -> Vec<(String, Tensor)> {
        let mut v = vec![
            (names.w_ih.clone(), self.w_ih.clone()),
            (names.w_hh.clone(), self.w_hh.clone()),
        ];
        if let (Some(bi), Some(bh)) = (&self.b_ih, &self.b_hh) {
            v.push((names.b_ih.clone(), bi.clone()));
            v.push((names.b_hh.clone(), bh.clone()));
        }
        v
    }
}
