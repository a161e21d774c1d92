//! Files in and out, below every format: opening only regular files (`regular`), `.npy` arrays
//! (`npy`), outputs written atomically (`write`).

pub(crate) mod npy;
pub(crate) mod regular;
pub(crate) mod write;
