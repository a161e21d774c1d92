//! From a file's tensors to candle models: `discover` finds the GRUs and GRUCells and infers
//! their configuration, `load` builds them (`WeightFile::gru`, `select`), `var_builder` serves a
//! whole model's weights to candle-nn, `save` writes a GRU back with PyTorch's names.

pub(crate) mod discover;
pub(crate) mod load;
pub(crate) mod quantized;
pub(crate) mod save;
pub(crate) mod var_builder;
