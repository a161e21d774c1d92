//! `GruConfig`: the constructor arguments of PyTorch's `nn.GRU`, validated as PyTorch does.

use crate::error::{GruError, Result};

/// Hyper-parameters of a GRU, with the meaning of PyTorch's `nn.GRU` arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GruConfig {
    /// Number of features of the input `x` (the last dimension of the input tensor).
    pub input_size: usize,
    /// Number of features of the hidden state `h` (`H`).
    pub hidden_size: usize,
    /// Number of stacked GRU layers; layer `k > 0` reads the output of layer `k - 1`.
    pub num_layers: usize,
    /// Whether the layers use `bias_ih_l{k}` and `bias_hh_l{k}`.
    pub bias: bool,
    /// Whether input and output are `(batch, seq, feature)` instead of `(seq, batch, feature)`.
    /// As in PyTorch, it never applies to `h0` and `h_n`.
    pub batch_first: bool,
    /// Whether each layer also runs a reverse-time direction (`_reverse` weights).
    pub bidirectional: bool,
    /// Dropout between layers during training. Accepted for compatibility and ignored: this crate
    /// runs inference only, where PyTorch (in `eval()` mode) applies no dropout either.
    pub dropout: f32,
}

/// PyTorch's repr: `GRU(64, 128, num_layers=2, batch_first=True, bidirectional=True)`.
impl std::fmt::Display for GruConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GRU({}, {}", self.input_size, self.hidden_size)?;
        if self.num_layers != 1 {
            write!(f, ", num_layers={}", self.num_layers)?;
        }
        if !self.bias {
            write!(f, ", bias=False")?;
        }
        if self.batch_first {
            write!(f, ", batch_first=True")?;
        }
        if self.dropout != 0.0 {
            write!(f, ", dropout={}", self.dropout)?;
        }
        if self.bidirectional {
            write!(f, ", bidirectional=True")?;
        }
        write!(f, ")")
    }
}

impl Default for GruConfig {
    fn default() -> Self {
        Self {
            input_size: 1,
            hidden_size: 1,
            num_layers: 1,
            bias: true,
            batch_first: false,
            bidirectional: false,
            dropout: 0.0,
        }
    }
}

impl GruConfig {
    /// `nn.GRU(input_size, hidden_size)` with PyTorch's defaults for the rest.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        Self {
            input_size,
            hidden_size,
            ..Self::default()
        }
    }

    pub fn with_num_layers(mut self, num_layers: usize) -> Self {
        self.num_layers = num_layers;
        self
    }

    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    pub fn with_batch_first(mut self, batch_first: bool) -> Self {
        self.batch_first = batch_first;
        self
    }

    pub fn with_bidirectional(mut self, bidirectional: bool) -> Self {
        self.bidirectional = bidirectional;
        self
    }

    /// Number of directions `D`: 2 when bidirectional, else 1.
    pub fn num_directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// Rows of every weight and bias: the three gates r|z|n stacked, `3 * hidden_size`.
    pub fn gate_size(&self) -> usize {
        3 * self.hidden_size
    }

    /// Input features of layer `k`: `input_size` for layer 0, `D * hidden_size` after.
    pub fn layer_input_size(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.num_directions() * self.hidden_size
        }
    }

    /// Checks the values PyTorch's `RNNBase.__init__` checks, with the same limits.
    pub fn validate(&self) -> Result<()> {
        if self.hidden_size == 0 {
            return Err(GruError::Config {
                field: "hidden_size",
                reason: "must be greater than zero".into(),
            });
        }
        if self.num_layers == 0 {
            return Err(GruError::Config {
                field: "num_layers",
                reason: "must be greater than zero".into(),
            });
        }
        if self.input_size == 0 {
            return Err(GruError::Config {
                field: "input_size",
                reason: "must be greater than zero".into(),
            });
        }
        if !(0.0..=1.0).contains(&self.dropout) || self.dropout.is_nan() {
            return Err(GruError::Config {
                field: "dropout",
                reason: format!("should be a number in range [0, 1], got {}", self.dropout),
            });
        }
        let too_big = match (
            self.hidden_size.checked_mul(3),
            self.hidden_size.checked_mul(self.num_directions()),
        ) {
            (Some(gate), Some(wide)) => gate.checked_mul(wide.max(self.input_size)).is_none(),
            _ => true,
        };
        if too_big {
            return Err(GruError::Config {
                field: "hidden_size",
                reason: "is too large: the weight sizes overflow usize".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_pytorch_rejects() {
        assert!(GruConfig::new(4, 0).validate().is_err());
        assert!(GruConfig::new(4, 3).with_num_layers(0).validate().is_err());
        let mut c = GruConfig::new(4, 3);
        c.dropout = 1.5;
        assert!(matches!(
            c.validate(),
            Err(GruError::Config {
                field: "dropout",
                ..
            })
        ));
        assert!(GruConfig::new(4, 3).validate().is_ok());
    }

    #[test]
    fn layer_sizes() {
        let c = GruConfig::new(5, 7)
            .with_num_layers(3)
            .with_bidirectional(true);
        assert_eq!(c.layer_input_size(0), 5);
        assert_eq!(c.layer_input_size(2), 14);
        assert_eq!(c.gate_size(), 21);
    }

    #[test]
    fn displays_as_pytorch_repr() {
        let c = GruConfig::new(64, 128)
            .with_num_layers(2)
            .with_batch_first(true)
            .with_bidirectional(true);
        assert_eq!(
            c.to_string(),
            "GRU(64, 128, num_layers=2, batch_first=True, bidirectional=True)"
        );
        assert_eq!(
            GruConfig::new(3, 4).with_bias(false).to_string(),
            "GRU(3, 4, bias=False)"
        );
    }
}
