//! Parity against PyTorch: reference cases exported by `scripts/export_reference.py`, run
//! through candle-gru and compared element-wise to a tolerance, with a report per case that says
//! where a failing case departs.

mod case;
mod error;
mod tolerance;

pub use case::{find_cases, run_case, Case, CaseKind, CaseReport, RunOptions};
pub use error::{Result, VerifyError};
pub use tolerance::{compare, Comparison, Tolerance};
