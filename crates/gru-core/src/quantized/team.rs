//! The steps of one direction of one layer of a quantized GRU, its hidden units split across a
//! team of threads. Each member computes its units' columns of the input projections and of
//! `W_hh h` at each step, runs their gates and writes their part of the next state; the members
//! meet at a spin barrier after each step (every member reads the whole state). The int8 kind's
//! `W_hh h` quantizes the whole state over its min and max, so each member also leaves the min
//! and max of its part in a slot. A lone member runs the same loop without meeting anyone.
//! Only the fp16 kind's product calls allocate inside the loop (their row lists).

use std::ops::Range;

use super::fp16::{PackedF16, STRIP};
use super::gates::gates;
use super::input::{choose_qparams, quantize_row, row_min_max, InputQuant};
use super::int8::{PackedInt8, Strided, NC};
use crate::cpu::team::{SharedMut, SpinBarrier};
use crate::packing::LengthPlan;

/// Multiply-adds of one step's `W_hh h` below which one thread runs a direction: splitting would
/// cost more at the barrier than it saves.
const SPLIT_WORK: usize = 1 << 17;
/// Fewest multiply-adds of `W_hh h` over a call worth a team (it costs a thread start per
/// call, some tens of microseconds).
const MIN_TEAM_WORK: usize = 1 << 22;
/// Most members, and fewest units each.
const MAX_TEAM: usize = 8;
const MIN_UNITS: usize = 32;
/// Floats of projected inputs in one member's block of steps (int8): the block stays in cache
/// until its steps read it.
const GI_BLOCK: usize = 1 << 17;

/// A layer's input, quantized once for every direction: its valid rows in PyTorch's packed order,
/// the projection's padded row length of bytes each, their sums, and the quantization of them all.
pub(crate) struct QuantizedRows<'a> {
    pub qa: &'a [u8],
    pub sums: &'a [i32],
    pub q: InputQuant,
}

/// A direction's two linears and the layer's input as they read it.
pub(crate) enum Linears<'a> {
    Int8 {
        ih: &'a PackedInt8,
        hh: &'a PackedInt8,
        x: QuantizedRows<'a>,
        reduce_range: bool,
    },
    /// The fp16 kind: f32 inputs, its sums depending on a row's position in the call (so the
    /// whole sequence is projected in one call, and each step's rows all go to every member).
    Float16 {
        ih: &'a PackedF16,
        hh: &'a PackedF16,
        x: &'a [&'a [f32]],
    },
}

impl Linears<'_> {
    /// The columns a member computes to have columns `c` of `3 * hidden`: whole blocks (int8)
    /// or strips (fp16, the columns past the last whole strip always together).
    fn span(&self, c: Range<usize>, n: usize) -> Range<usize> {
        match self {
            Self::Int8 { .. } => {
                let b = PackedInt8::blocks_of(c);
                b.start * NC..(b.end * NC).min(n)
            }
            Self::Float16 { .. } => {
                let last = n / STRIP * STRIP;
                let end = if c.end > last {
                    n
                } else {
                    c.end.div_ceil(STRIP) * STRIP
                };
                c.start / STRIP * STRIP..end
            }
        }
    }

    /// The width at which members' units start: their spans of the first gate never overlap
    /// (those of the others may, where `hidden` is not a multiple: shared columns are computed
    /// twice, each into its member's own rows).
    fn unit(&self) -> usize {
        match self {
            Self::Int8 { .. } => NC,
            Self::Float16 { .. } => STRIP,
        }
    }
}

/// How many members split a direction when `threads` threads are at hand for it.
pub(crate) fn members(hidden: usize, batch: usize, t_len: usize, threads: usize) -> usize {
    let work = batch * 3 * hidden * hidden;
    if threads < 2 || work < SPLIT_WORK || work.saturating_mul(t_len) < MIN_TEAM_WORK {
        return 1;
    }
    threads.min(hidden / MIN_UNITS).clamp(1, MAX_TEAM)
}

/// One direction's linears and what its steps need to know.
pub(crate) struct Direction<'a> {
    pub lin: Linears<'a>,
    /// The layer input's rows of step `t`: `starts[t]..starts[t + 1]` (the running sequences,
    /// longest first: `plan.perm[..plan.active[t]]`).
    pub starts: &'a [usize],
    pub hidden: usize,
    pub reverse: bool,
}

impl Direction<'_> {
    /// Runs the direction over the layer's input with `members` threads, writing its output
    /// into `out` and returning its last state `(B, H)`.
    pub fn run(
        &self,
        h0: Option<&[f32]>,
        (t_len, batch): (usize, usize),
        plan: &LengthPlan,
        members: usize,
        out: LayerOut,
    ) -> Vec<f32> {
        let hidden = self.hidden;
        let bh = batch * hidden;
        // The state, double-buffered: members read all of one buffer while writing their units
        // of the other.
        let mut states = vec![0.0f32; 2 * bh];
        if let Some(h0) = h0 {
            states[..bh].copy_from_slice(h0);
            states[bh..].copy_from_slice(h0);
        }
        let unit = self.lin.unit();
        let members = members.clamp(1, (hidden / unit).max(1));
        // Units split at whole blocks or strips.
        let bounds: Vec<usize> = (0..=members)
            .map(|i| {
                if i == members {
                    hidden
                } else {
                    hidden * i / members / unit * unit
                }
            })
            .collect();
        // Min and max of each member's part of the state: `slots[parity * members + id]`, the
        // parity of the step that reads them.
        let mut slots = vec![(0.0f32, 0.0f32); 2 * members];
        let barrier = SpinBarrier::new(members);
        let shared = Shared {
            states: SharedMut(states.as_mut_ptr()),
            out,
            slots: SharedMut(slots.as_mut_ptr()),
        };
        let member = |id: usize| -> usize {
            let _poison = barrier.poison_on_panic();
            let units = bounds[id]..bounds[id + 1];
            let team = Team {
                id,
                members,
                barrier: &barrier,
                shared,
            };
            self.member((t_len, batch), plan, units, &team)
        };
        let cur = if members == 1 {
            member(0)
        } else {
            let member = &member;
            std::thread::scope(|scope| {
                // Held while spawning: a thread that cannot start must not leave those already
                // started waiting at the barrier.
                let _poison = barrier.poison_on_panic();
                for id in 1..members {
                    scope.spawn(move || member(id));
                }
                member(0)
            })
        };
        states.truncate((cur + 1) * bh);
        states.drain(..cur * bh);
        states
    }

    /// One member's loop over every step, on units `units`; returns which state buffer holds
    /// the last state.
    fn member(
        &self,
        (t_len, batch): (usize, usize),
        plan: &LengthPlan,
        units: Range<usize>,
        team: &Team<'_>,
    ) -> usize {
        let hidden = self.hidden;
        let bh = batch * hidden;
        let n = 3 * hidden;
        let w = units.len();
        // This member's columns of each gate, side by side in its rows of projections (a lone
        // member: all of them, in one span).
        let lone = units.len() == hidden;
        let spans: Vec<Range<usize>> = if lone {
            std::iter::once(0..n).collect()
        } else {
            (0..3)
                .map(|k| {
                    self.lin
                        .span(k * hidden + units.start..k * hidden + units.end, n)
                })
                .collect()
        };
        let width = spans.iter().map(|s| s.len()).max().unwrap_or(0);
        let stride = spans.len() * width;
        // Where unit `units.start` of gate k lies in a member's row.
        let at: [usize; 3] = std::array::from_fn(|k| match lone {
            true => k * hidden,
            false => k * width + k * hidden + units.start - spans[k].start,
        });
        // Steps per block of projections: the whole sequence for fp16 (one call, PyTorch's).
        let tb = match self.lin {
            Linears::Int8 { .. } => (GI_BLOCK / (batch * stride).max(1)).clamp(1, t_len.max(1)),
            Linears::Float16 { .. } => t_len.max(1),
        };
        let block_rows = (0..t_len.max(1))
            .step_by(tb)
            .map(|t0| self.starts[(t0 + tb).min(t_len)] - self.starts[t0])
            .max()
            .unwrap_or(0);
        let mut gi = vec![0.0f32; block_rows * stride];
        let mut gh = vec![0.0f32; batch * stride];
        let kh = match self.lin {
            Linears::Int8 { hh, .. } => hh.k_padded(),
            Linears::Float16 { .. } => 0,
        };
        let mut qh = vec![0u8; batch * kh];
        let mut qh_sums = vec![0i32; batch];
        // The fp16 kind's running states, in order (its product takes rows as slices).
        let mut hs: Vec<&[f32]> = Vec::with_capacity(batch);
        let zeros = vec![0.0f32; w];
        let order = |t: usize| &plan.perm[..plan.active[t]];
        let time = |s: usize| if self.reverse { t_len - 1 - s } else { s };
        let Shared { states, out, slots } = team.shared;
        let int8 = matches!(self.lin, Linears::Int8 { .. });
        // SAFETY (every access through the shared pointers below): during a step members read
        // the whole of buffer `cur` and write only their own units of buffer `1 - cur`, of `out`
        // and their own slot of the next step's parity; the barrier at the top of each step
        // orders one step's writes before the next step's reads.
        let state = |buf: usize, b: usize| -> *mut f32 {
            unsafe { states.ptr().add(buf * bh + b * hidden) }
        };
        let leave_min_max = |buf: usize, t: usize, parity: usize| {
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for &b in order(t) {
                let r = unsafe { std::slice::from_raw_parts(state(buf, b).add(units.start), w) };
                let (l, h) = row_min_max(r);
                lo = lo.min(l);
                hi = hi.max(h);
            }
            unsafe { *slots.ptr().add(parity * team.members + team.id) = (lo, hi) };
        };
        if t_len == 0 {
            return 0;
        }
        let mut cur = 0;
        if int8 {
            leave_min_max(cur, time(0), 0);
        }
        let mut prev_m = plan.active[time(0)];
        for s in 0..t_len {
            let t = time(s);
            team.barrier.wait();
            // The block holding step t (steps t0..t0 + tb), projected when first reached (int8:
            // with the quantization of the whole sequence's input, PyTorch's one call).
            let t0 = t / tb * tb;
            let t1 = (t0 + tb).min(t_len);
            if (self.reverse && t + 1 == t1) || (!self.reverse && t == t0) {
                let rows = self.starts[t0]..self.starts[t1];
                self.project(rows, &spans, width, &mut gi);
            }
            let m = plan.active[t];
            // Sequences that just ended keep their last state in both buffers.
            for &b in &plan.perm[m.min(prev_m)..prev_m] {
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        state(cur, b).add(units.start),
                        state(1 - cur, b).add(units.start),
                        w,
                    );
                }
            }
            prev_m = m;
            if m > 0 {
                let h_of = |b: usize| unsafe { std::slice::from_raw_parts(state(cur, b), hidden) };
                match self.lin {
                    Linears::Int8 {
                        hh, reduce_range, ..
                    } => {
                        // The running states quantized together, over the min and max of all
                        // the parts.
                        let parts = unsafe {
                            std::slice::from_raw_parts(
                                slots.ptr().add(s % 2 * team.members),
                                team.members,
                            )
                        };
                        let (lo, hi) = parts
                            .iter()
                            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &(l, h)| {
                                (lo.min(l), hi.max(h))
                            });
                        let q = choose_qparams(lo, hi, reduce_range);
                        let inv = 1.0 / q.scale;
                        for (p, &b) in order(t).iter().enumerate() {
                            let dst = &mut qh[p * kh..(p + 1) * kh];
                            qh_sums[p] = quantize_row(h_of(b), inv, q.zero_point, dst);
                        }
                        let rows = (&qh[..m * kh], &qh_sums[..m], q);
                        int8_spans(hh, rows, &spans, width, &mut gh);
                    }
                    Linears::Float16 { hh, .. } => {
                        hs.clear();
                        hs.extend(order(t).iter().map(|&b| h_of(b)));
                        fp16_spans(hh, &hs, &spans, width, &mut gh);
                    }
                }
                let base = self.starts[t] - self.starts[t0];
                for (p, &b) in order(t).iter().enumerate() {
                    let (h, h_out, o) = unsafe {
                        (
                            std::slice::from_raw_parts(state(cur, b).add(units.start), w),
                            std::slice::from_raw_parts_mut(state(1 - cur, b).add(units.start), w),
                            std::slice::from_raw_parts_mut(
                                out.at((t * batch + b) * out.width + units.start),
                                w,
                            ),
                        )
                    };
                    let gi_row = &gi[(base + p) * stride..][..stride];
                    let gh_row = &gh[p * stride..][..stride];
                    let gate = |row| by_gate(row, &at, w);
                    gates(gate(gi_row), gate(gh_row), &zeros, h, h_out, o);
                }
            }
            cur = 1 - cur;
            if int8 && s + 1 < t_len {
                leave_min_max(cur, time(s + 1), (s + 1) % 2);
            }
        }
        cur
    }

    /// The member's columns (`spans`, side by side `width` apart in each row of `gi`) of the
    /// input projections of the layer input's rows `rows`.
    fn project(&self, rows: Range<usize>, spans: &[Range<usize>], width: usize, gi: &mut [f32]) {
        match &self.lin {
            Linears::Int8 { ih, x, .. } => {
                let kx = ih.k_padded();
                let qa = &x.qa[rows.start * kx..rows.end * kx];
                int8_spans(ih, (qa, &x.sums[rows], x.q), spans, width, gi);
            }
            Linears::Float16 { ih, x, .. } => fp16_spans(ih, &x[rows], spans, width, gi),
        }
    }
}

/// Columns `spans` of an int8 linear of the quantized rows `qa` (their sums, their
/// quantization), side by side `width` apart in each row of `y`.
fn int8_spans(
    p: &PackedInt8,
    (qa, sums, q): (&[u8], &[i32], InputQuant),
    spans: &[Range<usize>],
    width: usize,
    y: &mut [f32],
) {
    for (k, span) in spans.iter().enumerate() {
        let mut rows = Strided {
            data: y,
            rows: sums.len(),
            stride: spans.len() * width,
            offset: k * width,
        };
        p.run_blocks(qa, sums, q, &mut rows, PackedInt8::blocks_of(span.clone()));
    }
}

/// Columns `spans` of an fp16 linear of the rows `x`, as `int8_spans` lays them out.
fn fp16_spans(p: &PackedF16, x: &[&[f32]], spans: &[Range<usize>], width: usize, y: &mut [f32]) {
    for (k, span) in spans.iter().enumerate() {
        let mut rows: Vec<&mut [f32]> = y
            .chunks_mut(spans.len() * width)
            .take(x.len())
            .map(|r| &mut r[k * width..k * width + span.len()])
            .collect();
        p.run_cols(x, &mut rows, span.clone());
    }
}

/// A member's `w` values of each gate in one of its rows (from `at[k]`).
fn by_gate<'a>(row: &'a [f32], at: &[usize; 3], w: usize) -> [&'a [f32]; 3] {
    std::array::from_fn(|k| &row[at[k]..at[k] + w])
}

/// Where a direction writes its output: the layer's `(T, B, width)` output (zero past each
/// length), its `H` values of each row from column `offset` (bidirectional layers: both
/// directions at once, side by side as PyTorch lays them).
#[derive(Clone, Copy)]
pub(crate) struct LayerOut {
    pub ptr: SharedMut<f32>,
    pub width: usize,
    pub offset: usize,
}

impl LayerOut {
    /// # Safety
    /// `i + offset` lies in the layer's output.
    unsafe fn at(&self, i: usize) -> *mut f32 {
        unsafe { self.ptr.ptr().add(i + self.offset) }
    }
}

/// What the members share: the state buffers, the output and the min/max slots.
#[derive(Clone, Copy)]
struct Shared {
    states: SharedMut<f32>,
    out: LayerOut,
    slots: SharedMut<(f32, f32)>,
}

/// One member's place in its team.
struct Team<'a> {
    id: usize,
    members: usize,
    barrier: &'a SpinBarrier,
    shared: Shared,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantized::input::min_max;
    use crate::quantized::WeightScheme;

    /// A team of any size gives the lone member's numbers bit for bit, for both kinds: every
    /// unit's products and gates are the same operations wherever its column lands, the int8
    /// state's quantization sees the same min and max, and the fp16 rows keep their positions.
    /// Sizes leave partial blocks and strips; lengths vary, some cases have every sequence
    /// shorter than T, some no h0.
    #[test]
    fn teams_give_the_lone_member_s_numbers() {
        let mut rng = crate::quantized::test_rng::XorShift::new(0x9e37_79b9_7f4a_7c15u64);
        let mut next = move || rng.next_u64();
        for (input, hidden, lengths, t_len, with_h0) in [
            (7, 44, vec![20, 7, 13, 1, 20], 20, true),
            (16, 64, vec![18, 18, 18], 18, false),
            (5, 72, vec![3, 25, 25, 9, 14, 25, 2, 11, 25], 25, true),
            (9, 50, vec![6, 11, 2, 11], 15, false),
        ] {
            let batch = lengths.len();
            let plan = LengthPlan::new(&lengths, batch, t_len).unwrap();
            let g = 3 * hidden;
            let mut weights = |k: usize| -> (Vec<i8>, Vec<f32>) {
                let w = (0..g * k).map(|_| next() as i8).collect();
                let bias = (0..g).map(|j| (j % 11) as f32 * 0.05 - 0.25).collect();
                (w, bias)
            };
            let (wi, wh) = (weights(input), weights(hidden));
            let int8 = |(w, bias): &(Vec<i8>, Vec<f32>), k: usize| {
                let scheme = WeightScheme::PerChannel {
                    scales: (0..g).map(|j| 0.002 + (j % 7) as f32 * 1e-4).collect(),
                    zero_points: vec![0; g],
                };
                PackedInt8::new(w, g, k, &scheme, Some(bias))
            };
            let fp16 = |(w, bias): &(Vec<i8>, Vec<f32>), k: usize| {
                let w: Vec<f32> = w.iter().map(|&v| v as f32 / 256.0).collect();
                PackedF16::new(&w, g, k, Some(bias))
            };
            let (ih8, hh8) = (int8(&wi, input), int8(&wh, hidden));
            let (ih16, hh16) = (fp16(&wi, input), fp16(&wh, hidden));
            let x: Vec<f32> = (0..t_len * batch * input)
                .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let h0: Vec<f32> = (0..batch * hidden)
                .map(|_| (next() % 2001) as f32 / 2000.0 - 0.5)
                .collect();
            let h0 = with_h0.then_some(&h0[..]);
            // The valid rows in packed order, quantized over all of them.
            let mut starts = vec![0];
            let mut xs = Vec::new();
            for t in 0..t_len {
                for &b in &plan.perm[..plan.active[t]] {
                    xs.push(&x[(t * batch + b) * input..][..input]);
                }
                starts.push(xs.len());
            }
            let (lo, hi) = min_max(xs.iter().copied());
            let q = choose_qparams(lo, hi, true);
            let kp = ih8.k_padded();
            let mut qa = vec![0u8; xs.len() * kp];
            let sums: Vec<i32> = xs
                .iter()
                .zip(qa.chunks_mut(kp))
                .map(|(r, dst)| quantize_row(r, 1.0 / q.scale, q.zero_point, dst))
                .collect();
            for kind in ["int8", "fp16"] {
                for reverse in [false, true] {
                    let lin = || match kind {
                        "int8" => Linears::Int8 {
                            ih: &ih8,
                            hh: &hh8,
                            x: QuantizedRows {
                                qa: &qa,
                                sums: &sums,
                                q,
                            },
                            reduce_range: true,
                        },
                        _ => Linears::Float16 {
                            ih: &ih16,
                            hh: &hh16,
                            x: &xs,
                        },
                    };
                    let run = |members: usize| {
                        let dir = Direction {
                            lin: lin(),
                            starts: &starts,
                            hidden,
                            reverse,
                        };
                        let mut out = vec![0.0f32; t_len * batch * hidden];
                        let h = dir.run(
                            h0,
                            (t_len, batch),
                            &plan,
                            members,
                            LayerOut {
                                ptr: SharedMut(out.as_mut_ptr()),
                                width: hidden,
                                offset: 0,
                            },
                        );
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        (bits(&out), bits(&h))
                    };
                    let alone = run(1);
                    assert!(
                        alone.0.iter().any(|&b| b != 0),
                        "the output is not all zero"
                    );
                    for members in [2, 3, 4] {
                        assert!(
                            run(members) == alone,
                            "{kind}: {members} members, hidden {hidden}, reverse {reverse}"
                        );
                    }
                }
            }
        }
    }
}
