//! ONNX Runtime backend (`ort`, loading `libonnxruntime.so` dynamically).

use super::Runtime;
use anyhow::{anyhow, Context, Result};
use ort::session::Session;
use ort::value::Tensor;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime library: `$ORT_DYLIB_PATH`, else the one `shells/setup.sh` installed when poac was built.
fn library() -> Result<PathBuf> {
    let path = std::env::var("ORT_DYLIB_PATH").ok().or(option_env!("POAC_ORT_DYLIB_DEFAULT").map(String::from));
    let path = path.context("no ONNX Runtime library: run shells/setup.sh, or set ORT_DYLIB_PATH to libonnxruntime.so")?;
    let path = PathBuf::from(path);
    if !path.exists() {
        anyhow::bail!("the ONNX Runtime library {} does not exist: run shells/setup.sh, or set ORT_DYLIB_PATH", path.display());
    }
    Ok(path)
}

fn environment() -> Result<&'static ort::environment::Environment> {
    static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let lib = library().map_err(|e| format!("{e:#}"))?;
        let builder = ort::init_from(&lib).map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?;
        builder.with_name("poac").build().map_err(|e| format!("cannot start ONNX Runtime: {e}"))
    })
    .as_ref()
    .map_err(|e| anyhow!("{e}"))
}

/// A model loaded in ONNX Runtime.
pub struct OrtRuntime {
    session: Session,
}

impl OrtRuntime {
    /// Loads the model.
    pub fn open(model: &Path) -> Result<Self> {
        let env = environment()?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut builder = Session::builder(env).map_err(|e| anyhow!("ort: {e}"))?;
        builder = builder.with_intra_threads(threads).map_err(|e| anyhow!("ort: {e}"))?;
        let session = builder.commit_from_file(model).map_err(|e| anyhow!("ort cannot load {}: {e}", model.display()))?;
        Ok(OrtRuntime { session })
    }
}

impl Runtime for OrtRuntime {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn run(&mut self, images: &[f32], shape: [usize; 4]) -> Result<(Vec<usize>, Vec<f32>)> {
        let input = Tensor::from_array((shape, images.to_vec())).map_err(|e| anyhow!("ort: {e}"))?;
        let outputs = self.session.run(ort::inputs![input]).map_err(|e| anyhow!("ort run: {e}"))?;
        let (shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(|e| anyhow!("ort output: {e}"))?;
        Ok((shape.iter().map(|&d| d as usize).collect(), data.to_vec()))
    }
}
