//! Bakes the locations of libtorch (an rpath) and of the ONNX Runtime library into the `poac` binary, so that
//! `target/release/poac` runs without the user exporting anything after `shells/setup.sh`.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=ORT_DYLIB_PATH");
    if let Ok(ort) = std::env::var("ORT_DYLIB_PATH") {
        println!("cargo:rustc-env=POAC_ORT_DYLIB_DEFAULT={ort}");
    }
}
