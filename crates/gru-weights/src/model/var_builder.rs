//! A candle `VarBuilder` over every tensor of a `WeightFile`, loaded lazily by name, so that a whole
//! model (embedding, GRU, head) builds from one checkpoint in any format `WeightFile` reads, with
//! candle-nn's own constructors: `candle_nn::embedding(.., vb.pp("embed"))`,
//! `Gru::new(cfg, vb.pp("rnn"))`, `candle_nn::linear(.., vb.pp("head"))`.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::file::WeightFile;

struct FileBackend<'a>(&'a WeightFile);

impl SimpleBackend for FileBackend<'_> {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &shape {
            candle_core::bail!(
                "`{name}`: expected shape {:?}, found {:?} in {}",
                shape.dims(),
                t.dims(),
                self.0.path().display()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if self.0.info(name).is_none() {
            if let Some(cell) = quantized_owner(self.0, name) {
                candle_core::bail!(
                    "`{name}`: the GRU there is quantized (quantize_dynamic): its weights are \
                     packed ({cell}.weight_ih, ...), not float tensors a VarBuilder serves; build \
                     it with WeightFile::gru, which runs it as PyTorch does"
                );
            }
        }
        self.0.load(name, dev)?.to_dtype(dtype)
    }

    /// Also the float names of a quantized GRU's weights, so that asking for one gets the
    /// reason it cannot be served (from `get_unchecked`), not "missing".
    fn contains_tensor(&self, name: &str) -> bool {
        self.0.info(name).is_some() || quantized_owner(self.0, name).is_some()
    }
}

/// The first packed cell of a quantized RNN at the module that would own `name`
/// (`rnn.weight_ih_l0` -> `rnn._all_weight_values.0.param`).
fn quantized_owner(file: &WeightFile, name: &str) -> Option<String> {
    let (module, _) = name.rsplit_once('.').unwrap_or(("", name));
    let list = if module.is_empty() {
        "_all_weight_values.".to_string()
    } else {
        format!("{module}._all_weight_values.")
    };
    file.packed_rnns()
        .cells
        .iter()
        .find(|c| c.path.starts_with(&list))
        .map(|c| c.path.clone())
}

impl WeightFile {
    /// A `VarBuilder` over every tensor of this file (of a `.pt` training checkpoint: of the
    /// state_dict it holds), converted to `dtype` on `device` as each is asked for.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'_> {
        VarBuilder::from_backend(Box::new(FileBackend(self)), dtype, device.clone())
    }
}
