//! Read-only access to a safetensors weights file, memory-mapped, with slicing on read: lowering a small
//! sub-network of a large supergraph touches only the bytes it keeps.

use crate::error::{IrError, Result};
use crate::param::Param;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::fs::File;
use std::ops::Range;
use std::path::Path;

/// Where parameter values come from: a weights file, or memory in tests.
pub trait Weights {
    /// The values of `param` (its view of the stored tensor), row-major.
    fn read(&self, param: &Param) -> Result<Vec<f32>>;
}

/// A memory-mapped safetensors file of f32 tensors.
pub struct WeightFile {
    mmap: Mmap,
}

impl WeightFile {
    /// Maps the file; fails with a readable message if it is missing or not safetensors.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| IrError::Weights(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: the file is opened read-only; poac writes checkpoints by rename, never in place.
        let mmap = unsafe { Mmap::map(&file) }
            .map_err(|e| IrError::Weights(format!("cannot map {}: {e}", path.display())))?;
        SafeTensors::deserialize(&mmap)
            .map_err(|e| IrError::Weights(format!("{} is not a safetensors file: {e}", path.display())))?;
        Ok(WeightFile { mmap })
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.mmap).expect("validated in open")
    }


}

impl Weights for WeightFile {
    /// The values of `param` (its view of the stored tensor: kept ranges per axis, times its scale), row-major.
    fn read(&self, param: &Param) -> Result<Vec<f32>> {
        let tensors = self.tensors();
        let view = tensors
            .tensor(&param.name)
            .map_err(|_| IrError::Weights(format!("no tensor `{}` in the weights", param.name)))?;
        if view.dtype() != Dtype::F32 {
            return Err(IrError::Weights(format!("`{}` is {:?}; poac reads f32", param.name, view.dtype())));
        }
        let stored = view.shape();
        let axes: Vec<Vec<Range<usize>>> = if param.view.axes.is_empty() {
            stored.iter().map(|&n| vec![0..n]).collect()
        } else {
            param.view.axes.clone()
        };
        let fits = axes.len() == stored.len()
            && axes.iter().zip(stored).all(|(ranges, &n)| ranges.iter().all(|r| r.start <= r.end && r.end <= n));
        if !fits {
            return Err(IrError::Weights(format!(
                "`{}` is stored as {:?}, which does not hold the requested slice {:?}",
                param.name, stored, axes
            )));
        }
        let mut out = Vec::with_capacity(axes.iter().map(|r| r.iter().map(|r| r.len()).sum::<usize>()).product());
        gather(view.data(), stored, &axes, 0, 0, &mut out);
        if param.view.scale != 1.0 {
            out.iter_mut().for_each(|v| *v *= param.view.scale);
        }
        Ok(out)
    }
}

/// Appends the elements of the little-endian f32 `bytes` (of row-major `shape`) selected by `axes`, starting at
/// axis `axis` with element offset `base`.
fn gather(bytes: &[u8], shape: &[usize], axes: &[Vec<Range<usize>>], axis: usize, base: usize, out: &mut Vec<f32>) {
    let stride: usize = shape[axis + 1..].iter().product();
    for range in &axes[axis] {
        if axis + 1 == shape.len() {
            let run = &bytes[(base + range.start) * 4..(base + range.end) * 4];
            out.extend(run.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        } else {
            for i in range.clone() {
                gather(bytes, shape, axes, axis + 1, base + i * stride, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::param::{Dim, Init, WeightView};
    use safetensors::tensor::TensorView;

    fn write(path: &Path, name: &str, shape: &[usize], values: &[f32]) {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, shape.to_vec(), &bytes).unwrap();
        safetensors::serialize_to_file([(name, view)], None, path).unwrap();
    }

    #[test]
    fn reads_stacked_slices_with_scale() {
        let dir = std::env::temp_dir().join(format!("poac-ir-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        // A 6×2 "qkv" weight: rows 0..6 hold 0..12.
        write(&path, "qkv", &[6, 2], &(0..12).map(|v| v as f32).collect::<Vec<_>>());
        let file = WeightFile::open(&path).unwrap();
        let param = Param {
            name: "qkv".into(),
            shape: vec![Dim::Fixed(3), Dim::Fixed(1)],
            view: WeightView { axes: vec![vec![0..1, 2..3, 4..5], vec![0..1]], scale: 2.0 },
            init: Init::Constant(0.0),
        };
        // Rows 0, 2, 4, first column: 0, 4, 8 — times 2.
        assert_eq!(file.read(&param).unwrap(), vec![0.0, 8.0, 16.0]);
        let missing = Param { name: "nope".into(), ..param.clone() };
        assert!(file.read(&missing).unwrap_err().to_string().contains("nope"));
        let too_big = Param { view: WeightView { axes: vec![vec![0..7], vec![0..1]], scale: 1.0 }, ..param };
        assert!(file.read(&too_big).is_err());
        assert!(WeightFile::open(&dir.join("missing.safetensors")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
