//! A buffer whose first value sits on a cache-line boundary. A `Vec` from glibc's `malloc` is
//! only 16-byte aligned (a large one starts 16 bytes into a page): rows of 64 bytes then straddle
//! two cache lines, and every other 32-byte load of a weight panel is split in two.

/// Bytes of a cache line.
const LINE: usize = 64;

/// `len` values starting on a cache line (inside a `Vec` of `LINE` bytes more, `start` of them in
/// front).
#[derive(Debug)]
pub(crate) struct Aligned<T> {
    buf: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy + Default> Aligned<T> {
    /// `len` values, all `T::default()`.
    pub fn new(len: usize) -> Self {
        let pad = LINE / std::mem::size_of::<T>().max(1);
        let buf = vec![T::default(); len + pad];
        // `align_offset` may decline (usize::MAX); unaligned is then slower, not wrong.
        let start = match buf.as_ptr().align_offset(LINE) {
            off if off <= pad => off,
            _ => 0,
        };
        Self { buf, start, len }
    }

    /// Grows to at least `len` values (keeping none of the old ones); never shrinks.
    pub fn reserve_zeroed(&mut self, len: usize) {
        if self.len < len {
            *self = Self::new(len);
        }
    }
}

impl<T> std::ops::Deref for Aligned<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl<T> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// A clone is aligned afresh (its allocation has its own offset).
impl<T: Clone> Clone for Aligned<T> {
    fn clone(&self) -> Self {
        let pad = self.buf.len() - self.len;
        let mut buf: Vec<T> = Vec::with_capacity(self.len + pad);
        let start = match buf.as_ptr().align_offset(LINE) {
            off if off <= pad => off,
            _ => 0,
        };
        // Any value does for the padding (`buf` always holds `len + pad >= 1` values).
        let filler = &self.buf[..1];
        (0..start).for_each(|_| buf.extend_from_slice(filler));
        buf.extend_from_slice(self);
        (start..pad).for_each(|_| buf.extend_from_slice(filler));
        Self {
            buf,
            start,
            len: self.len,
        }
    }
}

impl<T: Copy + Default> Default for Aligned<T> {
    fn default() -> Self {
        Self::new(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_cache_line_and_clones_do_too() {
        for len in [0, 1, 17, 100_000] {
            let mut a = Aligned::<f32>::new(len);
            a.fill(1.5);
            assert_eq!(a.len(), len);
            assert!(a.iter().all(|&v| v == 1.5));
            assert_eq!(a.as_ptr() as usize % LINE, 0);
            let b = a.clone();
            assert_eq!(&b[..], &a[..]);
            assert_eq!(b.as_ptr() as usize % LINE, 0);
            let c = b.clone();
            assert_eq!(&c[..], &a[..]);
            assert_eq!(c.as_ptr() as usize % LINE, 0);
        }
        let mut c = Aligned::<f64>::new(3);
        c.reserve_zeroed(10);
        assert_eq!(c.len(), 10);
        assert_eq!(c.as_ptr() as usize % LINE, 0);
    }
}
