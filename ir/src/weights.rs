//! Parameter values: read from a memory-mapped safetensors file, sliced on read (lowering a small sub-network
//! of a large supergraph touches only the bytes it keeps), with the folded constants of a [`WeightView`] applied;
//! and a safetensors writer that streams tensors instead of holding them in memory.

use crate::error::{IrError, Result};
use crate::param::{Fold, Param, WeightView};
use memmap2::{Mmap, MmapOptions};
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where parameter values come from: a weights file, or memory in tests.
pub trait Weights {
    /// The stored shape of tensor `name`.
    fn shape(&self, name: &str) -> Result<Vec<usize>>;

    /// The elements of tensor `name` that `axes` selects (per axis, the stored ranges concatenated; no axes: the
    /// whole tensor), row-major, as f32.
    fn gather(&self, name: &str, axes: &[Vec<Range<usize>>]) -> Result<Vec<f32>>;

    /// The values of `param`: its view of the stored tensor, scaled, with its folds applied.
    fn read(&self, param: &Param) -> Result<Vec<f32>> {
        read_view(self, &param.name, &param.view)
    }
}

/// The values `view` selects from tensor `name`, scaled, with its folds applied in order.
pub fn read_view<W: Weights + ?Sized>(weights: &W, name: &str, view: &WeightView) -> Result<Vec<f32>> {
    let mut values = weights.gather(name, &view.axes)?;
    if view.scale != 1.0 {
        values.iter_mut().for_each(|v| *v *= view.scale);
    }
    if view.folds.is_empty() {
        return Ok(values);
    }
    let shape = match view.sliced_shape() {
        Some(shape) => shape,
        None => weights.shape(name)?,
    };
    for fold in &view.folds {
        apply_fold(weights, fold, name, &shape, &mut values)?;
    }
    Ok(values)
}

fn apply_fold<W: Weights + ?Sized>(weights: &W, fold: &Fold, name: &str, shape: &[usize], values: &mut [f32]) -> Result<()> {
    let bad = |what: String| Err(IrError::Weights(format!("cannot fold into `{name}` {shape:?}: {what}")));
    let axis_len = |axis: usize| shape.get(axis).copied();
    match fold {
        Fold::ScaleRange { axis, range, factor } => match axis_len(*axis) {
            Some(n) if range.end <= n => scale_along(values, shape, *axis, |i| if range.contains(&i) { *factor } else { 1.0 }),
            _ => return bad(format!("axis {axis} has no range {range:?}")),
        },
        Fold::ScaleEach { axis, factors } => match axis_len(*axis) {
            Some(n) if n == factors.len() => scale_along(values, shape, *axis, |i| factors[i]),
            _ => return bad(format!("{} factors along axis {axis}", factors.len())),
        },
        Fold::ScaleByTensor { axis, tensor } => {
            let factors = read_view(weights, &tensor.name, &tensor.view)?;
            match axis_len(*axis) {
                Some(n) if n == factors.len() => scale_along(values, shape, *axis, |i| factors[i]),
                _ => return bad(format!("`{}` has {} values for axis {axis}", tensor.name, factors.len())),
            }
        }
        Fold::AddContraction { tensor, coefficients } => {
            let t = read_view(weights, &tensor.name, &tensor.view)?;
            let t_shape = match tensor.view.sliced_shape() {
                Some(s) => s,
                None => weights.shape(&tensor.name)?,
            };
            if shape.len() != 1 || t_shape.len() < 2 || t_shape[0] != shape[0] || t_shape[1] != coefficients.len() {
                return bad(format!("cannot contract `{}` {t_shape:?} with {} coefficients", tensor.name, coefficients.len()));
            }
            let inner: usize = t_shape[2..].iter().product();
            for (o, rows) in t.chunks_exact(t_shape[1] * inner).enumerate() {
                let sum: f64 = rows
                    .chunks_exact(inner)
                    .zip(coefficients)
                    .map(|(run, &c)| c as f64 * run.iter().map(|&v| v as f64).sum::<f64>())
                    .sum();
                values[o] = (values[o] as f64 + sum) as f32;
            }
        }
    }
    Ok(())
}

/// Multiplies every element by `factor(i)`, `i` its index along `axis` of row-major `shape`.
fn scale_along(values: &mut [f32], shape: &[usize], axis: usize, factor: impl Fn(usize) -> f32) {
    let stride: usize = shape[axis + 1..].iter().product();
    for (k, run) in values.chunks_mut(stride.max(1)).enumerate() {
        let f = factor(k % shape[axis]);
        if f != 1.0 {
            run.iter_mut().for_each(|v| *v *= f);
        }
    }
}

/// One tensor of a weights file: its key, element type and shape.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorEntry {
    /// Key in the file.
    pub name: String,
    /// Element type as stored.
    pub dtype: Dtype,
    /// Stored shape.
    pub shape: Vec<usize>,
}

/// A safetensors file of f32 (or f16 / bf16, widened on read) tensors. Only the header is read on open; each
/// read maps just the bytes of one tensor and unmaps them afterwards, so the process holds at most one source
/// tensor at a time, however large the file.
#[derive(Debug)]
pub struct WeightFile {
    file: File,
    path: PathBuf,
    data_start: u64,
    metadata: Metadata,
}

impl WeightFile {
    /// Opens the file and reads its header; fails with a readable message if it is missing or not safetensors.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| IrError::Weights(format!("cannot open {}: {e}", path.display())))?;
        let (header_len, metadata) = {
            // SAFETY: read-only mapping; poac writes weights by rename, never in place. Only the header is read.
            let mmap = unsafe { Mmap::map(&file) }
                .map_err(|e| IrError::Weights(format!("cannot map {}: {e}", path.display())))?;
            SafeTensors::read_metadata(&mmap)
                .map_err(|e| IrError::Weights(format!("{} is not a safetensors file: {e}", path.display())))?
        };
        Ok(WeightFile { file, path: path.to_path_buf(), data_start: 8 + header_len as u64, metadata })
    }

    /// Every tensor in the file, in storage order.
    pub fn entries(&self) -> Vec<TensorEntry> {
        self.metadata
            .offset_keys()
            .into_iter()
            .map(|name| {
                let info = self.metadata.info(&name).expect("listed by the metadata");
                TensorEntry { dtype: info.dtype, shape: info.shape.clone(), name }
            })
            .collect()
    }

    fn info(&self, name: &str) -> Result<&safetensors::tensor::TensorInfo> {
        self.metadata
            .info(name)
            .ok_or_else(|| IrError::Weights(format!("no tensor `{name}` in {}", self.path.display())))
    }
}

impl Weights for WeightFile {
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.info(name)?.shape.clone())
    }

    fn gather(&self, name: &str, axes: &[Vec<Range<usize>>]) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(IrError::Weights(format!("`{name}` is {:?}; poac reads f32, f16 and bf16", info.dtype)));
        }
        let stored = &info.shape;
        let whole: Vec<Vec<Range<usize>>>;
        let axes = if axes.is_empty() {
            whole = stored.iter().map(|&n| vec![0..n]).collect();
            &whole
        } else {
            axes
        };
        let fits = axes.len() == stored.len()
            && axes.iter().zip(stored).all(|(ranges, &n)| ranges.iter().all(|r| r.start <= r.end && r.end <= n));
        if !fits {
            return Err(IrError::Weights(format!(
                "`{name}` is stored as {stored:?}, which does not hold the requested slice {axes:?}"
            )));
        }
        let count: usize = axes.iter().map(|r| r.iter().map(|r| r.len()).sum::<usize>()).product();
        let mut out = Vec::with_capacity(count);
        let (start, end) = info.data_offsets;
        if count == 0 || end == start {
            return Ok(out);
        }
        // SAFETY: read-only mapping of one tensor's bytes, dropped (unmapped) before returning.
        let bytes = unsafe { MmapOptions::new().offset(self.data_start + start as u64).len(end - start).map(&self.file) }
            .map_err(|e| IrError::Weights(format!("cannot map `{name}` of {}: {e}", self.path.display())))?;
        match info.dtype {
            Dtype::F32 => gather(&bytes, 4, stored, axes, 0, 0, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]), &mut out),
            Dtype::F16 => gather(&bytes, 2, stored, axes, 0, 0, |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32(), &mut out),
            _ => gather(&bytes, 2, stored, axes, 0, 0, |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32(), &mut out),
        }
        Ok(out)
    }
}

/// Appends the elements (each `element` bytes, decoded by `decode`) of row-major `shape` selected by `axes`,
/// starting at axis `axis` with element offset `base`.
#[allow(clippy::too_many_arguments)]
fn gather<D: Fn(&[u8]) -> f32 + Copy>(
    bytes: &[u8],
    element: usize,
    shape: &[usize],
    axes: &[Vec<Range<usize>>],
    axis: usize,
    base: usize,
    decode: D,
    out: &mut Vec<f32>,
) {
    let stride: usize = shape[axis + 1..].iter().product();
    for range in &axes[axis] {
        if axis + 1 == shape.len() {
            let run = &bytes[(base + range.start) * element..(base + range.end) * element];
            out.extend(run.chunks_exact(element).map(decode));
        } else {
            for i in range.clone() {
                gather(bytes, element, shape, axes, axis + 1, base + i * stride, decode, out);
            }
        }
    }
}

/// Writes a safetensors file of f32 tensors without holding them in memory: the header from `tensors`
/// (key, shape), then `fill(i, out)` writes tensor `i`'s little-endian bytes. A tensor of the wrong byte size
/// is an error.
pub fn write_safetensors(
    out: &mut dyn Write,
    tensors: &[(String, Vec<usize>)],
    mut fill: impl FnMut(usize, &mut dyn Write) -> Result<()>,
) -> Result<()> {
    let io = |e: std::io::Error| IrError::Weights(format!("cannot write safetensors: {e}"));
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut sizes = Vec::with_capacity(tensors.len());
    for (name, shape) in tensors {
        let size = 4 * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size] }),
        );
        offset += size;
        sizes.push(size);
    }
    let mut text = serde_json::to_string(&header).expect("a JSON map serialises");
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    out.write_all(&(text.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(text.as_bytes()).map_err(io)?;
    for (i, (name, _)) in tensors.iter().enumerate() {
        let mut counted = CountingWriter { inner: &mut *out, count: 0 };
        fill(i, &mut counted)?;
        if counted.count != sizes[i] {
            return Err(IrError::Weights(format!("`{name}`: wrote {} bytes, its shape needs {}", counted.count, sizes[i])));
        }
    }
    Ok(())
}

/// A writer that counts the bytes passing through it.
pub struct CountingWriter<'a> {
    /// Where the bytes go.
    pub inner: &'a mut dyn Write,
    /// Bytes written so far.
    pub count: usize,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes f32 values as little-endian bytes, through a small buffer (no copy of the whole tensor).
pub fn write_f32s(out: &mut dyn Write, values: &[f32]) -> std::io::Result<()> {
    const CHUNK: usize = 64 << 10;
    let mut buffer = vec![0u8; 4 * CHUNK.min(values.len())];
    for chunk in values.chunks(CHUNK) {
        let bytes = &mut buffer[..4 * chunk.len()];
        for (dst, v) in bytes.chunks_exact_mut(4).zip(chunk) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        out.write_all(bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::param::{Dim, Init, TensorRef};

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("poac-ir-weights-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes `tensors` (name, shape, values) with the streaming writer and opens the file.
    fn file(dir: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> WeightFile {
        let path = dir.join("w.safetensors");
        let mut out = std::fs::File::create(&path).unwrap();
        let header: Vec<(String, Vec<usize>)> = tensors.iter().map(|(n, s, _)| (n.to_string(), s.clone())).collect();
        write_safetensors(&mut out, &header, |i, w| write_f32s(w, &tensors[i].2).map_err(|e| IrError::Weights(e.to_string())))
            .unwrap();
        WeightFile::open(&path).unwrap()
    }

    fn param(name: &str, view: WeightView) -> Param {
        Param { name: name.into(), shape: vec![Dim::Fixed(1)], view, init: Init::Constant(0.0) }
    }

    #[test]
    fn reads_stacked_slices_with_scale() {
        let dir = temp("slices");
        // A 6×2 "qkv" weight: rows 0..6 hold 0..12.
        let file = file(&dir, &[("qkv", vec![6, 2], (0..12).map(|v| v as f32).collect())]);
        let view = WeightView { axes: vec![vec![0..1, 2..3, 4..5], vec![0..1]], scale: 2.0, folds: vec![] };
        // Rows 0, 2, 4, first column: 0, 4, 8 — times 2.
        assert_eq!(file.read(&param("qkv", view.clone())).unwrap(), vec![0.0, 8.0, 16.0]);
        assert!(file.read(&param("nope", view)).unwrap_err().to_string().contains("nope"));
        let too_big = WeightView { axes: vec![vec![0..7], vec![0..1]], scale: 1.0, folds: vec![] };
        assert!(file.read(&param("qkv", too_big)).is_err());
        assert!(WeightFile::open(&dir.join("missing.safetensors")).is_err());
        std::fs::write(dir.join("junk.safetensors"), b"not a safetensors file").unwrap();
        assert!(WeightFile::open(&dir.join("junk.safetensors")).unwrap_err().to_string().contains("not a safetensors"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn folds_apply_in_order() {
        let dir = temp("folds");
        // w: 2×3 = [[1, 2, 3], [4, 5, 6]]; gamma = [10, 100]; bias = [1, 1].
        let file = file(&dir, &[
            ("w", vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            ("gamma", vec![2], vec![10.0, 100.0]),
            ("bias", vec![2], vec![1.0, 1.0]),
        ]);
        let gamma = TensorRef { name: "gamma".into(), view: WeightView::whole() };
        let view = WeightView {
            axes: vec![vec![0..2], vec![0..3]],
            scale: 2.0,
            folds: vec![
                Fold::ScaleByTensor { axis: 0, tensor: gamma },
                Fold::ScaleRange { axis: 1, range: 1..2, factor: 0.5 },
                Fold::ScaleEach { axis: 1, factors: vec![1.0, 1.0, -1.0] },
            ],
        };
        // 2·[[1,2,3],[4,5,6]] → ×[10,100] by row → column 1 halved → column 2 negated.
        assert_eq!(file.read(&param("w", view.clone())).unwrap(), vec![20.0, 20.0, -60.0, 800.0, 500.0, -1200.0]);
        // bias + Σ_c w[o, c] · coeff[c] with coeff = [1, 0, 2]: 1 + (1 + 6), 1 + (4 + 12).
        let contraction = Fold::AddContraction {
            tensor: TensorRef { name: "w".into(), view: WeightView::whole() },
            coefficients: vec![1.0, 0.0, 2.0],
        };
        let bias = WeightView { axes: vec![vec![0..2]], scale: 1.0, folds: vec![contraction] };
        assert_eq!(file.read(&param("bias", bias)).unwrap(), vec![8.0, 17.0]);
        let wrong = WeightView { folds: vec![Fold::ScaleEach { axis: 0, factors: vec![1.0] }], ..view };
        assert!(file.read(&param("w", wrong)).unwrap_err().to_string().contains("cannot fold"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn half_precision_is_widened_and_the_writer_checks_sizes() {
        let dir = temp("half");
        let path = dir.join("h.safetensors");
        let bf: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
        let f16: Vec<u8> = [0.25f32, 3.0].iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        let views = [
            ("b", safetensors::tensor::TensorView::new(Dtype::BF16, vec![2], &bf).unwrap()),
            ("h", safetensors::tensor::TensorView::new(Dtype::F16, vec![2], &f16).unwrap()),
        ];
        safetensors::serialize_to_file(views, None, &path).unwrap();
        let file = WeightFile::open(&path).unwrap();
        assert_eq!(file.gather("b", &[]).unwrap(), vec![1.5, -2.0]);
        assert_eq!(file.gather("h", &[]).unwrap(), vec![0.25, 3.0]);
        assert_eq!(file.entries().iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["b", "h"]);

        let mut sink = Vec::new();
        let err = write_safetensors(&mut sink, &[("x".into(), vec![3])], |_, w| {
            write_f32s(w, &[1.0]).map_err(|e| IrError::Weights(e.to_string()))
        });
        assert!(err.unwrap_err().to_string().contains("wrote 4 bytes"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
