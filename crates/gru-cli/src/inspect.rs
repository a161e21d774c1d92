//! `gru inspect`: every GRU / GRUCell in a weight file.

use std::path::PathBuf;

use gru_weights::WeightFile;

#[derive(clap::Args)]
pub struct Args {
    /// A .safetensors file or a PyTorch .pt/.pth zip checkpoint.
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let file = WeightFile::open(&a.file)?;
    let d = file.discover();
    if a.json {
        let found: Vec<_> = d
            .found
            .iter()
            .map(|g| {
                serde_json::json!({
                    "prefix": g.prefix,
                    "kind": g.kind.to_string(),
                    "input_size": g.config.input_size,
                    "hidden_size": g.config.hidden_size,
                    "num_layers": g.config.num_layers,
                    "bidirectional": g.config.bidirectional,
                    "bias": g.config.bias,
                    "dtype": format!("{:?}", g.dtype).to_lowercase(),
                    "parameters": g.num_parameters,
                })
            })
            .collect();
        let rejected: Vec<_> = d
            .rejected
            .iter()
            .map(|(p, e)| serde_json::json!({"prefix": p, "error": e.to_string()}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "file": a.file.display().to_string(),
                "tensors": file.tensors().len(),
                "modules": found,
                "invalid": rejected,
            })
        );
        return Ok(());
    }
    println!("{}: {} tensors", a.file.display(), file.tensors().len());
    if let Some(k) = file.state_dict_key() {
        println!("state_dict found under checkpoint key `{k}`");
    }
    if d.found.is_empty() {
        println!("no GRU or GRUCell found");
    }
    for g in &d.found {
        let c = &g.config;
        println!(
            "{:<8} prefix={:<24} input_size={} hidden_size={} num_layers={} bidirectional={} bias={} dtype={} parameters={}",
            g.kind.to_string(),
            if g.prefix.is_empty() { "(root)".to_string() } else { g.prefix.clone() },
            c.input_size,
            c.hidden_size,
            c.num_layers,
            c.bidirectional,
            c.bias,
            format!("{:?}", g.dtype).to_lowercase(),
            g.num_parameters
        );
    }
    for (p, e) in &d.rejected {
        println!("skipped  prefix={p} (not a valid GRU): {e}");
    }
    Ok(())
}
