//! criterion benches: one GRU step (GRUCell), the full forward on the CPU-speed grid's small and
//! long-ish shapes, and candle-nn's GRU as the baseline where it can run (one layer, one
//! direction). `cargo bench -p gru-core`; the full grid against PyTorch is scripts/bench_compare.sh.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use criterion::{criterion_group, criterion_main, Criterion};
use gru_core::{Gru, GruCell, GruConfig, Kernel};

fn weights(c: &GruConfig, dev: &Device, cell: bool) -> HashMap<String, Tensor> {
    let g = c.gate_size();
    let k = 1.0 / (c.hidden_size as f64).sqrt();
    let mut m = HashMap::new();
    let mut add = |name: String, shape: &[usize]| {
        m.insert(
            name,
            Tensor::rand(-k, k, shape, dev)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
        );
    };
    if cell {
        add("weight_ih".into(), &[g, c.input_size]);
        add("weight_hh".into(), &[g, c.hidden_size]);
        add("bias_ih".into(), &[g]);
        add("bias_hh".into(), &[g]);
        return m;
    }
    for l in 0..c.num_layers {
        for sfx in if c.bidirectional {
            vec!["", "_reverse"]
        } else {
            vec![""]
        } {
            add(format!("weight_ih_l{l}{sfx}"), &[g, c.layer_input_size(l)]);
            add(format!("weight_hh_l{l}{sfx}"), &[g, c.hidden_size]);
            add(format!("bias_ih_l{l}{sfx}"), &[g]);
            add(format!("bias_hh_l{l}{sfx}"), &[g]);
        }
    }
    m
}

fn timed(dev: &Device, iters: u64, mut f: impl FnMut() -> Tensor) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let t = f();
        dev.synchronize().unwrap();
        std::hint::black_box(t);
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let name = gru_core::device_name(&dev);
    let shapes = [
        ("small", GruConfig::new(16, 32), 50, 1),
        ("mid_uni", GruConfig::new(64, 128), 200, 8),
    ];
    for (label, cfg, t, b) in shapes {
        let vb = VarBuilder::from_tensors(weights(&cfg, &dev, false), DType::F32, &dev);
        let gru = Gru::new(cfg, vb).unwrap();
        let ops = gru.clone().with_kernel(Kernel::CandleOps);
        let x = Tensor::randn(0f32, 1.0, (t, b, cfg.input_size), &dev).unwrap();
        c.bench_function(&format!("{name}_forward_{label}"), |bn| {
            bn.iter_custom(|n| timed(&dev, n, || gru.forward(&x, None).unwrap().0))
        });
        c.bench_function(&format!("{name}_forward_ops_{label}"), |bn| {
            bn.iter_custom(|n| timed(&dev, n, || ops.forward(&x, None).unwrap().0))
        });
        let vb = VarBuilder::from_tensors(weights(&cfg, &dev, false), DType::F32, &dev);
        let base =
            candle_nn::rnn::gru(cfg.input_size, cfg.hidden_size, Default::default(), vb).unwrap();
        let xb = x.transpose(0, 1).unwrap().contiguous().unwrap();
        c.bench_function(&format!("{name}_candle_nn_{label}"), |bn| {
            use candle_nn::rnn::RNN;
            bn.iter_custom(|n| {
                timed(&dev, n, || {
                    let s = base.seq(&xb).unwrap();
                    base.states_to_tensor(&s).unwrap()
                })
            })
        });
    }
    // One step: the recurrent matmul and the fused gate update, through GRUCell.
    let cfg = GruConfig::new(256, 256);
    let vb = VarBuilder::from_tensors(weights(&cfg, &dev, true), DType::F32, &dev);
    let cell = GruCell::from_config(GruConfig::new(256, 256), vb).unwrap();
    let x = Tensor::randn(0f32, 1.0, (32, 256), &dev).unwrap();
    let h = Tensor::randn(0f32, 1.0, (32, 256), &dev).unwrap();
    c.bench_function(&format!("{name}_step_b32_h256"), |bn| {
        bn.iter_custom(|n| timed(&dev, n, || cell.forward(&x, Some(&h)).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
