//! Per-frame latency of a streaming model as a library user builds it: Linear -> 2-layer GRU ->
//! GRUCell -> Linear, one frame per call at batch 1, the GRU's state carried by `forward_chunk`
//! and the cell's by hand. Prints the median microseconds per frame, of the whole model and of
//! the GRU's `forward_chunk` alone, and the environment it ran in: run it with and without
//! `RAYON_NUM_THREADS` to see what candle's thread count costs (its matmuls, in the `Linear`
//! layers, count the cores again on every call when the variable is unset).
//!
//!     cargo run --release --example stream_latency [-- --frames 2000 --rounds 5 --json]

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_gru::core::{GruCell, GruState};
use candle_gru::{Gru, GruConfig};
use candle_nn::{Linear, VarBuilder};

const IN: usize = 40;
const HID: usize = 96;
const OUT: usize = 8;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| -> anyhow::Result<usize> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(args
                .get(i + 1)
                .map(|v| v.parse())
                .transpose()?
                .unwrap_or(default)),
            None => Ok(default),
        }
    };
    let (frames, rounds) = (arg("--frames", 2000)?, arg("--rounds", 5)?.max(1));
    let dev = Device::Cpu;
    // Seeded weights at PyTorch's init scale (the numbers do not matter for timing).
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut t = |shape: &[usize], fan_in: usize| -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let s = 1.0 / (fan_in as f32).sqrt();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                ((seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * s
            })
            .collect();
        Tensor::from_vec(v, shape, &dev)
    };
    let mut w: HashMap<String, Tensor> = HashMap::new();
    w.insert("inp.weight".into(), t(&[64, IN], IN)?);
    w.insert("inp.bias".into(), t(&[64], IN)?);
    for l in 0..2 {
        let k = if l == 0 { 64 } else { HID };
        w.insert(format!("rnn.weight_ih_l{l}"), t(&[3 * HID, k], HID)?);
        w.insert(format!("rnn.weight_hh_l{l}"), t(&[3 * HID, HID], HID)?);
        w.insert(format!("rnn.bias_ih_l{l}"), t(&[3 * HID], HID)?);
        w.insert(format!("rnn.bias_hh_l{l}"), t(&[3 * HID], HID)?);
    }
    w.insert("cell.weight_ih".into(), t(&[3 * HID, HID], HID)?);
    w.insert("cell.weight_hh".into(), t(&[3 * HID, HID], HID)?);
    w.insert("cell.bias_ih".into(), t(&[3 * HID], HID)?);
    w.insert("cell.bias_hh".into(), t(&[3 * HID], HID)?);
    w.insert("out.weight".into(), t(&[OUT, HID], HID)?);
    w.insert("out.bias".into(), t(&[OUT], HID)?);
    let vb = VarBuilder::from_tensors(w, DType::F32, &dev);
    let inp = candle_nn::linear(IN, 64, vb.pp("inp"))?;
    let cfg = GruConfig {
        input_size: 64,
        hidden_size: HID,
        num_layers: 2,
        ..GruConfig::default()
    };
    let rnn = Gru::new(cfg, vb.pp("rnn"))?;
    let cell = GruCell::from_config(GruConfig::new(HID, HID), vb.pp("cell"))?;
    let out: Linear = candle_nn::linear(HID, OUT, vb.pp("out"))?;
    let x = t(&[frames, 1, 1, IN], 1)?;

    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut model_us, mut gru_us) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let mut state = GruState::new();
        let mut hc = Tensor::zeros((1, HID), DType::F32, &dev)?;
        let (mut model, mut gru) = (Vec::with_capacity(frames), Vec::with_capacity(frames));
        for f in 0..frames {
            let frame = x.get(f)?; // (1, 1, IN): one step, batch 1
            let t0 = Instant::now();
            let z = inp.forward(&frame)?;
            let t1 = Instant::now();
            let y = rnn.forward_chunk(&z, &mut state)?;
            gru.push(t1.elapsed().as_secs_f64() * 1e6);
            hc = cell.forward(&y.squeeze(0)?, Some(&hc))?;
            let logits = out.forward(&hc)?;
            std::hint::black_box(logits.to_vec2::<f32>()?);
            model.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        model_us.push(median(model));
        gru_us.push(median(gru));
    }
    let (model_us, gru_us) = (median(model_us), median(gru_us));
    let env = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    if args.iter().any(|a| a == "--json") {
        println!(
            "{{\"impl\": \"stream_model\", \"frame_us\": {model_us:.3}, \"gru_frame_us\": {gru_us:.3}, \"rayon_num_threads\": \"{env}\", \"cpu_level\": \"{}\", \"threads\": {}}}",
            candle_gru::core::cpu_level(),
            candle_gru::core::cpu_threads()
        );
    } else {
        println!(
            "Linear -> 2-layer GRU -> GRUCell -> Linear, batch 1, {frames} frames x {rounds} rounds: median {model_us:.2} us per frame, of which the GRU's forward_chunk {gru_us:.2} us (RAYON_NUM_THREADS {env}, level {})",
            candle_gru::core::cpu_level()
        );
    }
    Ok(())
}
