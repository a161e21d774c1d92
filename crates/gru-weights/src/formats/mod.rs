//! One reader per container, each implementing [`container::Container`]: `safetensors`,
//! `torch` (`torch.save` zip and legacy, TorchScript, `torch.export`), `dcp`
//! (`torch.distributed.checkpoint`), `dcp_safetensors` (its safetensors files, read as chunks),
//! `sharded` (a Hugging Face index and its shards, or a folder of distributed safetensors files).
//! `single` tells one file's format from its bytes; `open` what a path stands for; `folder`
//! which file a folder stands for.

pub(crate) mod container;
pub(crate) mod dcp;
pub(crate) mod dcp_safetensors;
pub(crate) mod folder;
pub(crate) mod open;
pub(crate) mod safetensors;
pub(crate) mod sharded;
pub(crate) mod single;
pub(crate) mod torch;
