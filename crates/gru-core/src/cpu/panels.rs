//! The weights of one direction in the layout the matmul microkernel reads, packed once when the
//! model is built (never per call or per step).
//!
//! Hidden units are taken in groups of [`NR`]. For each group the three gates' columns of
//! `W^T` (r, z, n of those units) are three panels, and each panel is `k` rows of `NR`
//! contiguous values (zero past the last unit). A step's products then come out grouped the same
//! way, `[r | z | n]` per group of units, and a thread that owns a range of groups reads a
//! contiguous range of panels: no per-call copy of a thread's columns.

use super::aligned::Aligned;
use crate::activation::Real;

/// Units per group: the columns of one panel (two AVX2 vectors or one AVX-512 vector of f32).
pub(crate) const NR: usize = 16;

/// Values per group in a grouped row (`[r | z | n]` of `NR` units each).
pub(crate) const GROUP: usize = 3 * NR;

/// Groups of units of a layer with `hidden` units.
pub(crate) fn groups(hidden: usize) -> usize {
    hidden.div_ceil(NR)
}

/// A `(k, 3H)` matrix `W^T` as gate panels: `3 * groups(H)` panels of `k x NR`.
#[derive(Debug, Clone)]
pub(crate) struct GatePanels<T> {
    pub k: usize,
    /// On a cache line: a panel's row of `NR` f32 is one line.
    pub data: Aligned<T>,
}

impl<T: Real> GatePanels<T> {
    /// Packs `W^T` from PyTorch's `W` `(3H, k)` row-major (gates r, z, n stacked).
    pub fn pack(w: &[T], hidden: usize, k: usize) -> Self {
        assert_eq!(w.len(), 3 * hidden * k);
        let panels = 3 * groups(hidden);
        let mut data = Aligned::new(panels * k * NR);
        for g in 0..groups(hidden) {
            let units = NR.min(hidden - g * NR);
            for gate in 0..3 {
                let panel = &mut data[(3 * g + gate) * k * NR..(3 * g + gate + 1) * k * NR];
                for j in 0..units {
                    let row = &w[(gate * hidden + g * NR + j) * k..][..k];
                    for (kk, &v) in row.iter().enumerate() {
                        panel[kk * NR + j] = v;
                    }
                }
            }
        }
        Self { k, data }
    }

    /// The panels of groups `g0..g1`, contiguous.
    pub fn groups(&self, g0: usize, g1: usize) -> &[T] {
        &self.data[3 * g0 * self.k * NR..3 * g1 * self.k * NR]
    }
}

/// One direction's weights for the CPU kernel.
#[derive(Debug, Clone)]
pub(crate) struct DirPack<T> {
    /// `W_ih^T` `(in, 3H)` as panels.
    pub w_ih: GatePanels<T>,
    /// `W_hh^T` `(H, 3H)` as panels.
    pub w_hh: GatePanels<T>,
    /// `b_ih + [b_hr, b_hz, 0]`, grouped like a product row (`groups(H) * GROUP`, zero padded).
    pub bias: Vec<T>,
    /// `b_hn` `(H)`: the part of `bias_hh` that PyTorch applies inside the reset gate.
    pub b_hn: Vec<T>,
    /// The weights of an f32 model computed in f64 ("wide steps", see `layer::WIDE_MAX_HIDDEN`):
    /// each step's state and output are rounded to f32, so that a step starts from the state an
    /// f32 model carries (between streamed chunks too) and the next layer reads f32 values.
    pub narrow: bool,
}

impl<T: Real> DirPack<T> {
    /// From PyTorch's parameters of one direction: `w_ih` `(3H, in)`, `w_hh` `(3H, H)`, biases
    /// `(3H)` each, all row-major.
    pub fn new(
        w_ih: &[T],
        w_hh: &[T],
        biases: Option<(&[T], &[T])>,
        hidden: usize,
        input: usize,
    ) -> Self {
        let mut bias = vec![T::zero(); groups(hidden) * GROUP];
        let mut b_hn = vec![T::zero(); hidden];
        if let Some((b_ih, b_hh)) = biases {
            assert!(b_ih.len() == 3 * hidden && b_hh.len() == 3 * hidden);
            for gate in 0..3 {
                for u in 0..hidden {
                    let folded = if gate < 2 {
                        b_ih[gate * hidden + u] + b_hh[gate * hidden + u]
                    } else {
                        b_ih[gate * hidden + u]
                    };
                    bias[grouped(u, gate)] = folded;
                }
            }
            b_hn.copy_from_slice(&b_hh[2 * hidden..]);
        }
        Self {
            w_ih: GatePanels::pack(w_ih, hidden, input),
            w_hh: GatePanels::pack(w_hh, hidden, hidden),
            bias,
            b_hn,
            narrow: false,
        }
    }
}

/// Position of unit `u`'s value of `gate` (0 = r, 1 = z, 2 = n) in a grouped row.
pub(crate) fn grouped(u: usize, gate: usize) -> usize {
    (u / NR) * GROUP + gate * NR + u % NR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_hold_w_transposed_grouped_by_units() {
        let (hidden, k) = (20, 3);
        let w: Vec<f64> = (0..3 * hidden * k).map(|i| i as f64).collect();
        let p = GatePanels::pack(&w, hidden, k);
        assert_eq!(p.data.len(), 3 * groups(hidden) * k * NR);
        for gate in 0..3 {
            for u in 0..hidden {
                for kk in 0..k {
                    let panel = 3 * (u / NR) + gate;
                    let got = p.data[(panel * k + kk) * NR + u % NR];
                    assert_eq!(got, w[(gate * hidden + u) * k + kk]);
                }
            }
        }
        // Padding past the last unit is zero.
        let last = 3 * (groups(hidden) - 1) + 2;
        assert_eq!(p.data[(last * k) * NR + hidden % NR], 0.0);
        assert_eq!(grouped(17, 2), GROUP + 2 * NR + 1);
    }
}
