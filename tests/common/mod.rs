//! What the end-to-end tests share: running the `poac` binary (never a panic), temporary folders, the tiny
//! config, and small class-dependent images.
#![allow(dead_code)]

use image::{Rgb, RgbImage};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const POAC: &str = env!("CARGO_BIN_EXE_poac");

/// `tests/data/tiny.yaml`: an elastic ViT that trains in seconds.
pub fn tiny_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny.yaml")
}

/// Runs `script` with the cache venv's Python (numpy, onnx, Pillow: shells/setup.sh installs them) and `args`;
/// fails the test if it fails. Returns stdout.
pub fn python(script: &str, args: &[&str]) -> String {
    let python = option_env!("POAC_PYTHON").map(PathBuf::from).unwrap_or_else(|| "python3".into());
    let out = Command::new(python).args(["-c", script]).args(args).output().expect("run python (shells/setup.sh installs it)");
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs poac; fails the test if it panicked.
pub fn poac(args: &[&str]) -> Output {
    let out = Command::new(POAC).args(args).output().expect("run poac");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "poac {args:?} panicked:\n{stderr}");
    out
}

/// Runs poac expecting success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = poac(args);
    assert!(out.status.success(), "poac {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs poac expecting failure; returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = poac(args);
    assert!(!out.status.success(), "poac {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh, empty temporary folder for one test.
pub fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("poac-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Image `i` of class `class`: `side`-pixel stripes at a class-dependent angle (horizontal, vertical, diagonal).
pub fn stripes(class: usize, i: u32, side: u32) -> RgbImage {
    RgbImage::from_fn(side, side, |x, y| {
        let t = match class % 3 {
            0 => y,
            1 => x,
            _ => x + y,
        };
        let v = if (t + i) % 6 < 3 { 230 } else { 25 };
        Rgb([v, v / 2 + (i as u8) * 3, 255 - v])
    })
}

/// A labelled dataset at `root`: three classes of 16 px stripes, 16 training and 4 validation images each.
pub fn stripes_dataset(root: &Path) {
    for (split, count) in [("train", 16), ("val", 4)] {
        for class in 0..3 {
            let dir = root.join(split).join(format!("c{class}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                stripes(class, i, 16).save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
    std::fs::write(root.join("labels.txt"), "c0,zero\nc1,one\nc2,two\n").unwrap();
}
