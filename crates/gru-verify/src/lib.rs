//! Parity against PyTorch: reference cases exported by `scripts/export_reference.py`, run
//! through candle-gru and compared element-wise to a tolerance, with a report per case that says
//! where a failing case departs; a case carrying its exact answer (f64) also passes when ours is
//! at least as close to it as PyTorch's own f32 (`exact`).

mod case;
mod error;
mod exact;
mod tolerance;

pub use case::{find_cases, run_case, Case, CaseKind, CaseReport, RunOptions};
pub use error::{Result, VerifyError};
pub use exact::{Exact, ExactVerdict};
pub use tolerance::{compare, distance, Comparison, Tolerance};
