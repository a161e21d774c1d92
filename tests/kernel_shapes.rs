//! The CPU kernel against the candle-ops recurrence over edge shapes, with the machine's thread
//! count (`tests/threads.rs` runs the same sweep with 3 and 4 threads).

#[path = "common/kernel_shapes.rs"]
mod kernel_shapes;

#[test]
fn kernel_matches_candle_ops_on_every_shape() {
    kernel_shapes::kernel_matches_candle_ops_on_every_shape();
}
