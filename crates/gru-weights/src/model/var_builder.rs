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
        self.0.load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.info(name).is_some()
    }
}

impl WeightFile {
    /// A `VarBuilder` over every tensor of this file (of a `.pt` training checkpoint: of the
    /// state_dict it holds), converted to `dtype` on `device` as each is asked for.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'_> {
        VarBuilder::from_backend(Box::new(FileBackend(self)), dtype, device.clone())
    }
}
