//! Bakes the locations of libtorch (an rpath) and of the ONNX Runtime library into the `poac` binary, so that
//! `target/release/poac` runs without the user exporting anything after `shells/setup.sh`; compiles the c10d
//! shim (src/dist/shim.cpp) against the libtorch headers torch-sys builds against.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=ORT_DYLIB_PATH");
    if let Ok(ort) = std::env::var("ORT_DYLIB_PATH") {
        println!("cargo:rustc-env=POAC_ORT_DYLIB_DEFAULT={ort}");
    }
    // torch-sys (links = "tch") exports the library folder of the libtorch it found, however it found it.
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report its libtorch folder"));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    build_c10d_shim(&lib);
}

/// The shim needs gloo's headers (ProcessGroupGloo.hpp includes them; the torch wheel does not ship them; only
/// declarations are used, the code is libtorch's): `POAC_GLOO_INCLUDE`, the folder shells/setup.sh unpacks
/// Debian's libgloo-dev into, or a system-wide install.
fn gloo_include() -> PathBuf {
    println!("cargo:rerun-if-env-changed=POAC_GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=POAC_CACHE");
    let cache = std::env::var_os("POAC_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/poac")));
    let candidates = std::env::var_os("POAC_GLOO_INCLUDE")
        .map(PathBuf::from)
        .into_iter()
        .chain(cache.map(|c| c.join("gloo/include")))
        .chain([PathBuf::from("/usr/include")]);
    let searched: Vec<PathBuf> = candidates.collect();
    match searched.iter().find(|dir| dir.join("gloo/context.h").is_file()) {
        Some(dir) => dir.clone(),
        None => {
            eprintln!("gloo headers not found in {searched:?}: run shells/setup.sh, or set POAC_GLOO_INCLUDE to a folder holding gloo/context.h");
            std::process::exit(1);
        }
    }
}

fn build_c10d_shim(lib: &Path) {
    let libtorch = lib.parent().expect("libtorch's lib folder has a parent");
    println!("cargo:rerun-if-changed=src/dist/shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("src/dist/shim.cpp")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .include(gloo_include())
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .define("USE_C10D_GLOO", None)
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false);
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        // ProcessGroupNCCL lives in libtorch_cuda and includes nccl.h and the CUDA runtime headers.
        println!("cargo:rerun-if-env-changed=POAC_NCCL_INCLUDE");
        println!("cargo:rerun-if-env-changed=CUDA_HOME");
        let cuda = std::env::var("CUDA_HOME").unwrap_or_else(|_| "/usr/local/cuda".into());
        build.include(Path::new(&cuda).join("include")).define("USE_C10D_NCCL", None).define("POAC_NCCL", None);
        if let Ok(nccl) = std::env::var("POAC_NCCL_INCLUDE") {
            build.include(nccl);
        }
        println!("cargo:rustc-link-lib=torch_cuda");
    }
    build.compile("poac_c10d");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=torch_cpu");
    println!("cargo:rustc-link-lib=c10");
}
