//! `gru inspect`: every GRU / GRUCell in a weight file.

use std::path::PathBuf;

use gru_weights::WeightFile;

#[derive(clap::Args)]
pub struct Args {
    /// A safetensors file, a torch.save checkpoint (zip or legacy, any extension), a
    /// TorchScript archive, a torch.export archive, a torch.distributed.checkpoint folder, or a
    /// Hugging Face sharded checkpoint (its *.index.json, or the save_pretrained folder).
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also list every tensor of the file (name, dtype, shape), not only the GRUs.
    #[arg(long)]
    all: bool,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let file = WeightFile::open(&a.file)?;
    let d = file.discover();
    let n_computed = computed(&file, file.tensors().iter().map(|t| &t.name)).len();
    let n_shared = file
        .tensors()
        .iter()
        .filter(|t| file.shared_with(&t.name).is_some())
        .count();
    if a.json {
        let found: Vec<_> = d
            .found
            .iter()
            .map(|g| {
                serde_json::json!({
                    "prefix": g.prefix,
                    "state_dict": g.state_dict,
                    "kind": g.kind.to_string(),
                    "input_size": g.config.input_size,
                    "hidden_size": g.config.hidden_size,
                    "num_layers": g.config.num_layers,
                    "bidirectional": g.config.bidirectional,
                    "bias": g.config.bias,
                    "dtype": format!("{:?}", g.dtype).to_lowercase(),
                    "parameters": g.num_parameters,
                    "computed": computed(&file, &g.keys),
                })
            })
            .collect();
        let rejected: Vec<_> = d
            .rejected
            .iter()
            .map(|(p, e)| serde_json::json!({"prefix": p, "error": e.to_string()}))
            .collect();
        let all: Vec<_> = file
            .tensors()
            .iter()
            .map(|t| {
                let mut v = serde_json::json!({
                    "name": t.name,
                    "dtype": crate::dtype_name(t.dtype),
                    "shape": t.shape,
                });
                if let Some(how) = file.computed_from(&t.name) {
                    v["computed_from"] = how.into();
                }
                if let Some(kept) = file.shared_with(&t.name) {
                    v["shared_with"] = kept.into();
                }
                v
            })
            .collect();
        let mut v = serde_json::json!({
                "file": a.file.display().to_string(),
                "format": file.format().to_string(),
                "files": file.files(),
                "state_dicts": file.state_dicts(),
                "tensors": file.tensors().len() - n_computed - n_shared,
                "computed_weights": n_computed,
                "shared_names": n_shared,
                "quantized": file.quantized_note(),
                "unread": file.unread_note(),
                "modules": found,
                "invalid": rejected,
        });
        if a.all {
            v["all_tensors"] = serde_json::Value::Array(all);
        }
        println!("{v}");
        return Ok(());
    }
    let sds = state_dicts_shown(file.state_dicts());
    let sds = &sds[..];
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    // ", and N things": nothing for none.
    let and = |n: usize, what: &str| match n {
        0 => String::new(),
        n => format!(", and {n} {what}"),
    };
    let files = file.files().len();
    println!(
        "{}: {}{}, {} tensors in {} state dict{}{}{}",
        a.file.display(),
        file.format(),
        if files > 1 {
            format!(" of {files} files")
        } else {
            String::new()
        },
        file.tensors().len() - n_computed - n_shared,
        sds.len(),
        plural(sds.len()),
        and(
            n_computed,
            &format!(
                "weight{} computed from weight norm or spectral norm",
                plural(n_computed)
            )
        ),
        and(
            n_shared,
            &format!(
                "name{} of a tensor stored under another (tied weights)",
                plural(n_shared)
            )
        ),
    );
    if sds.len() > 1 || sds.iter().any(|k| !k.is_empty()) {
        let names = crate::listed(sds, |k| {
            if k.is_empty() {
                "(top level)".into()
            } else if let Some(n) = k.strip_prefix(OPTIMIZER) {
                n.to_string()
            } else {
                format!("{k:?}")
            }
        });
        println!("state dicts at key paths: {names}");
    }
    if d.found.is_empty() {
        println!("no GRU or GRUCell found");
        if let Some(q) = file.quantized_note() {
            println!("note: {q}");
        }
    }
    if let Some(u) = file.unread_note() {
        println!("note: {u}");
    }
    for g in &d.found {
        let c = &g.config;
        println!(
            "{:<8} prefix={:<24} input_size={} hidden_size={} num_layers={} bidirectional={} bias={} dtype={} parameters={}{}",
            g.kind.to_string(),
            if g.prefix.is_empty() { "(root)".to_string() } else { format!("{:?}", g.prefix).trim_matches('"').to_string() },
            c.input_size,
            c.hidden_size,
            c.num_layers,
            c.bidirectional,
            c.bias,
            match &g.quantized {
                Some(q) => format!("quantized ({q})"),
                None => format!("{:?}", g.dtype).to_lowercase(),
            },
            g.num_parameters,
            if g.state_dict.is_empty() {
                String::new()
            } else {
                format!(" (state dict {:?}, inside it {:?})", g.state_dict, g.relative_prefix())
            }
        );
        for (name, how) in computed(&file, &g.keys) {
            println!("         {} = {}", name.escape_debug(), how.escape_debug());
        }
    }
    for (p, e) in &d.rejected {
        println!(
            "skipped  prefix={p:?} (not a valid GRU): {}",
            crate::one_line(&e.to_string())
        );
    }
    if a.all {
        println!("tensors:");
        for t in file.tensors() {
            println!(
                "  {:<40} {:<5} {:?}{}",
                format!("{:?}", t.name).trim_matches('"'),
                crate::dtype_name(t.dtype),
                t.shape,
                file.computed_from(&t.name)
                    .map(|how| format!("  (computed: {how})"))
                    .or_else(|| file
                        .shared_with(&t.name)
                        .map(|kept| format!("  (stored as `{kept}`)")))
                    .unwrap_or_default()
            );
        }
    } else if file.tensors().len() > d.found.iter().map(|g| g.keys.len()).sum::<usize>() {
        println!("(--all lists every tensor)");
    }
    Ok(())
}

/// The weights among `names` that the file stores reparametrized, with what each is computed
/// from.
fn computed<S: AsRef<str>>(
    file: &WeightFile,
    names: impl IntoIterator<Item = S>,
) -> Vec<(String, String)> {
    names
        .into_iter()
        .filter_map(|n| {
            let n = n.as_ref();
            file.computed_from(n).map(|how| (n.to_string(), how))
        })
        .collect()
}

/// Marks an entry of [`state_dicts_shown`] that stands for an optimizer's per-parameter states.
const OPTIMIZER: &str = "\u{0}optimizer:";

/// The state dicts as `inspect` counts them: an optimizer's per-parameter states
/// (`optimizer.state.0`, `optimizer.state.1`, ...: a dict of `exp_avg`, `exp_avg_sq`, `step` per
/// parameter) are one entry, not one state dict each.
fn state_dicts_shown(all: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut optimizers: Vec<(String, usize)> = Vec::new();
    for k in all {
        let per_param = k
            .rsplit_once('.')
            .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|(head, _)| (head == "state" || head.ends_with(".state")).then_some(head));
        match per_param {
            Some(head) => match optimizers.iter_mut().find(|(h, _)| h == head) {
                Some((_, n)) => *n += 1,
                None => optimizers.push((head.to_string(), 1)),
            },
            None => out.push(k.clone()),
        }
    }
    out.extend(
        optimizers.into_iter().map(|(head, n)| {
            format!("{OPTIMIZER}{head:?} (an optimizer's state of {n} parameters)")
        }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_optimizers_per_parameter_states_count_once() {
        let all: Vec<String> = [
            "model",
            "optimizer.state.0",
            "optimizer.state.1",
            "optimizer.state.12",
            "state.3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let shown = state_dicts_shown(&all);
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(shown[1].contains("\"optimizer.state\" (an optimizer's state of 3 parameters)"));
    }
}
