//! `.npy` files (`numpy.save`), read with every size checked against the file before anything
//! is allocated: a 16-byte header may declare any shape.

use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, WeightsError};

/// Largest header numpy writes is a few hundred bytes; version 2 allows 4 GiB.
const MAX_HEADER: usize = 1 << 20;

/// The candle dtype and element size of a numpy `descr` (`<f4`); `Err` says why it is refused.
fn dtype_of(descr: &str) -> std::result::Result<(DType, usize), String> {
    // Split after the first byte only if it is a whole character (an attacker's descr may not be
    // ASCII).
    let (order, code) = descr.split_at_checked(1).unwrap_or(("", descr));
    match order {
        "<" | "|" => {}
        ">" => {
            return Err(format!(
                "dtype {descr:?} is big-endian; save it little-endian (arr.astype({:?}))",
                format!("<{code}")
            ))
        }
        "=" => {
            if cfg!(target_endian = "big") {
                return Err(format!("dtype {descr:?} is native big-endian"));
            }
        }
        _ => return Err(format!("dtype {descr:?} is not a numpy dtype string")),
    }
    Ok(match code {
        "f2" => (DType::F16, 2),
        "f4" => (DType::F32, 4),
        "f8" => (DType::F64, 8),
        "i8" => (DType::I64, 8),
        "i4" => (DType::I32, 4),
        "i2" => (DType::I16, 2),
        "u1" | "b1" => (DType::U8, 1),
        "u4" => (DType::U32, 4),
        _ => {
            return Err(format!(
                "dtype {descr:?} is not supported (float16/32/64, int16/32/64, uint8/32, bool)"
            ))
        }
    })
}

/// The value of `'key': ` in numpy's header dict, up to the next top-level comma or brace.
fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0i32;
    let end = rest
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                _ => {}
            }
            depth < 0 || (depth == 0 && (c == ',' || c == '}'))
        })
        .map(|(i, c)| if c == ')' { i + 1 } else { i })
        .unwrap_or(rest.len());
    Some(rest[..end].trim())
}

fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.trim_end_matches('L').parse::<usize>().ok())
        .collect()
}

/// Reads a `.npy` file onto the CPU. The file must be a regular file; its header's shape and
/// dtype must account for exactly the bytes that follow.
pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let bad = |reason: String| WeightsError::file(path, reason);
    let mut file = crate::io::regular::open_regular(path)?;
    let len = file
        .metadata()
        .map_err(|e| WeightsError::io(path, "stat", e))?
        .len();
    let read_err = |e| WeightsError::io(path, "read", e);
    let mut head = [0u8; 10];
    file.read_exact(&mut head)
        .map_err(|_| bad("not a .npy file (shorter than its 10-byte preamble)".into()))?;
    if &head[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let (header_len, prefix) = match head[6] {
        1 => (u16::from_le_bytes([head[8], head[9]]) as usize, 10),
        2 | 3 => {
            let mut more = [0u8; 2];
            file.read_exact(&mut more).map_err(read_err)?;
            (
                u32::from_le_bytes([head[8], head[9], more[0], more[1]]) as usize,
                12,
            )
        }
        v => return Err(bad(format!(".npy format version {v} is not supported"))),
    };
    if header_len > MAX_HEADER || (prefix + header_len) as u64 > len {
        return Err(bad(format!(
            ".npy header of {header_len} bytes does not fit the {len}-byte file"
        )));
    }
    let mut header = vec![0u8; header_len];
    file.read_exact(&mut header).map_err(read_err)?;
    let header = std::str::from_utf8(&header).map_err(|_| bad(".npy header is not text".into()))?;
    let descr = field(header, "descr")
        .and_then(|d| d.strip_prefix('\'')?.strip_suffix('\''))
        .ok_or_else(|| bad(format!(".npy header has no dtype: {header:?}")))?;
    let (dtype, es) = dtype_of(descr).map_err(bad)?;
    let fortran = match field(header, "fortran_order") {
        Some("True") => true,
        Some("False") | None => false,
        Some(v) => return Err(bad(format!(".npy fortran_order {v:?}"))),
    };
    let shape = field(header, "shape")
        .and_then(parse_shape)
        .ok_or_else(|| bad(format!(".npy header has no readable shape: {header:?}")))?;
    let data_len = len - (prefix + header_len) as u64;
    let need = shape
        .iter()
        .try_fold(es as u64, |a, &d| a.checked_mul(d as u64))
        .ok_or_else(|| bad(format!(".npy shape {shape:?} overflows")))?;
    if need != data_len {
        return Err(bad(format!(
            ".npy shape {shape:?} of {descr} needs {need} bytes, the file holds {data_len}"
        )));
    }
    let mut data = vec![0u8; need as usize];
    file.read_exact(&mut data).map_err(read_err)?;
    if fortran && shape.len() > 1 {
        let rev: Vec<usize> = shape.iter().rev().copied().collect();
        let perm: Vec<usize> = (0..shape.len()).rev().collect();
        let t = Tensor::from_raw_buffer(&data, dtype, &rev, &Device::Cpu)?;
        return Ok(t.permute(perm)?.contiguous()?);
    }
    Ok(Tensor::from_raw_buffer(&data, dtype, &shape, &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn read(bytes: &[u8]) -> Result<Tensor> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        std::fs::write(&p, bytes).unwrap();
        read_npy(&p)
    }

    #[test]
    fn reads_shapes_and_dtypes() {
        let data: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = read(&npy("<f4", "(2, 3)", &data)).unwrap();
        assert_eq!(t.dims(), &[2, 3]);
        assert_eq!(t.to_vec2::<f32>().unwrap()[1], vec![4., 5., 6.]);
        let t = read(&npy("<f4", "(6,)", &data)).unwrap();
        assert_eq!(t.dims(), &[6]);
        let t = read(&npy("|u1", "()", &[7])).unwrap();
        assert_eq!(t.dims(), &[] as &[usize]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: std::env::var("GRU_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64),
            ..Default::default()
        })]

        /// Random edits and truncations of a real .npy never panic nor over-allocate.
        #[test]
        fn edited_files_never_panic(
            edits in proptest::collection::vec((0usize..200, proptest::prelude::any::<u8>()), 0..8),
            cut in proptest::option::of(0usize..200),
        ) {
            let mut b = npy("<f4", "(2, 3)", &[0u8; 24]);
            for (i, v) in edits {
                let i = i % b.len();
                b[i] = v;
            }
            if let Some(c) = cut {
                b.truncate(c.min(b.len()));
            }
            let _ = read(&b);
        }
    }

    #[test]
    fn lying_headers_are_refused_before_allocating() {
        let e = read(&npy("<f4", "(1099511627776,)", &[0; 4])).unwrap_err();
        assert!(e.to_string().contains("needs 4398046511104 bytes"), "{e}");
        // A product that wraps to 0 in 64 bits.
        let e = read(&npy("<f4", "(4294967296, 4294967296)", &[])).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        let e = read(&npy(">f4", "(1,)", &[0; 4])).unwrap_err();
        assert!(e.to_string().contains("big-endian"), "{e}");
        let e = read(b"\x93NUMPY\x01\x00\xff\xff").unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }
}
