//! Real folders end to end: a dataset mixing good images with every kind of bad one is indexed with exact
//! skip counts per reason and trains without a panic; images that break after indexing are skipped and
//! counted; unlabelled folders (`folder:PATH`) and ImageFolder layouts without `labels.txt` train, and k-NN
//! refuses them with a clear error where it needs labels. All test images are generated here.

mod common;

use common::{fails, ok, poac, stripes, temp, tiny_config};
use image::{ImageBuffer, Luma, Rgb, Rgba};
use poac::data::image_io::decode;
use std::io::Write;
use std::path::Path;

/// A PNG written chunk by chunk: `IHDR` (`bit_depth`, `color_type`), the `extra` chunks (e.g. `PLTE`), one
/// `IDAT` holding `rows` (each starting with its filter byte) compressed, `IEND`. The image crate cannot
/// write palette PNGs, and a huge declared size must not need huge data.
fn png(width: u32, height: u32, bit_depth: u8, color_type: u8, extra: &[(&[u8; 4], &[u8])], rows: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8; 4], data: &[u8]| {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(kind);
        out.extend(data);
        out.extend(crc.sum().to_be_bytes());
    };
    let header: Vec<u8> = [&width.to_be_bytes()[..], &height.to_be_bytes(), &[bit_depth, color_type, 0, 0, 0]].concat();
    chunk(b"IHDR", &header);
    extra.iter().for_each(|(kind, data)| chunk(kind, data));
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(rows).unwrap();
    chunk(b"IDAT", &zlib.finish().unwrap());
    chunk(b"IEND", &[]);
    out
}

/// A baseline CMYK JPEG (Adobe APP14, transform 0) of 8 × 8 blocks side by side, each one flat colour given as
/// stored C, M, Y, K bytes; the image crate cannot encode CMYK. Quantisation 1 and DC-only blocks: a block of
/// value v has DC coefficient 8·(v − 128); DC differences use 12 four-bit Huffman codes (category s is code s)
/// and every block ends with the one-bit end-of-block code 0.
fn cmyk_jpeg(blocks: &[[u8; 4]]) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8];
    let mut segment = |marker: u8, body: &[u8]| {
        out.extend([0xFF, marker]);
        out.extend(((body.len() + 2) as u16).to_be_bytes());
        out.extend(body);
    };
    segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x00");
    segment(0xDB, &[[0u8].as_slice(), &[1; 64]].concat());
    let width = (8 * blocks.len() as u16).to_be_bytes();
    let components: Vec<u8> = (1..=4).flat_map(|id| [id, 0x11, 0]).collect();
    segment(0xC0, &[&[8, 0, 8, width[0], width[1], 4], components.as_slice()].concat());
    let mut dc_lengths = [0u8; 16];
    dc_lengths[3] = 12;
    segment(0xC4, &[&[0x00], dc_lengths.as_slice(), &(0..12).collect::<Vec<u8>>()].concat());
    let mut ac_lengths = [0u8; 16];
    ac_lengths[0] = 1;
    segment(0xC4, &[&[0x10], ac_lengths.as_slice(), &[0]].concat());
    let scan: Vec<u8> = (1..=4).flat_map(|id| [id, 0x00]).collect();
    segment(0xDA, &[&[4], scan.as_slice(), &[0, 63, 0]].concat());
    let mut bits = Vec::new();
    let mut put = |value: u32, count: u32| (0..count).rev().for_each(|i| bits.push(value >> i & 1 == 1));
    let mut previous = [0i32; 4];
    for block in blocks {
        for (c, &v) in block.iter().enumerate() {
            let dc = 8 * (i32::from(v) - 128);
            let diff = dc - std::mem::replace(&mut previous[c], dc);
            let category = 32 - diff.unsigned_abs().leading_zeros();
            put(category, 4);
            put((if diff >= 0 { diff } else { diff + (1 << category) - 1 }) as u32, category);
            put(0, 1);
        }
    }
    bits.resize(bits.len().div_ceil(8) * 8, true);
    for byte in bits.chunks(8).map(|b| b.iter().fold(0u8, |acc, &bit| acc << 1 | u8::from(bit))) {
        out.push(byte);
        if byte == 0xFF {
            out.push(0);
        }
    }
    out.extend([0xFF, 0xD9]);
    out
}

/// Files that decode after conversion to RGB, with the RGB (0–255) of their first and last pixel.
fn convertible() -> Vec<(&'static str, Vec<u8>, [[f32; 3]; 2])> {
    // Tests run in parallel threads of one process: every encoding gets a file of its own.
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let encoded = |save: &dyn Fn(&Path)| {
        let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("poac-encode-{}-{n}.png", std::process::id()));
        save(&path);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        bytes
    };
    let rgb16 = encoded(&|p| ImageBuffer::from_fn(8, 8, |x, _| Rgb([x as u16 * 8000, 65535, 0u16])).save(p).unwrap());
    let gray = encoded(&|p| ImageBuffer::from_fn(8, 8, |x, _| Luma([x as u8 * 30])).save(p).unwrap());
    let rgba = encoded(&|p| ImageBuffer::from_fn(8, 8, |x, _| Rgba([x as u8 * 30, 10, 20, 0u8])).save(p).unwrap());
    let palette_rows = [[0u8, 0, 1, 2, 3], [0, 3, 2, 1, 2]].concat();
    let palette = png(4, 2, 8, 3, &[(b"PLTE", &[255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])], &palette_rows);
    vec![
        // Stored CMYK is inverted (Adobe): R = C·K / 255, and so on.
        ("cmyk.JPEG", cmyk_jpeg(&[[255, 128, 0, 255], [0, 255, 255, 128]]), [[255.0, 128.0, 0.0], [0.0, 128.0, 128.0]]),
        ("rgb16.png", rgb16, [[0.0, 255.0, 0.0], [255.0 * 56000.0 / 65535.0, 255.0, 0.0]]),
        ("gray.png", gray, [[0.0; 3], [210.0; 3]]),
        ("rgba.png", rgba, [[0.0, 10.0, 20.0], [210.0, 10.0, 20.0]]),
        ("palette.png", palette, [[255.0, 0.0, 0.0], [0.0, 0.0, 255.0]]),
    ]
}

/// A 10000 × 10000 RGB PNG by its header; its data is one row's worth, so only the size check can refuse it.
fn huge_png() -> Vec<u8> {
    png(10_000, 10_000, 8, 2, &[], &[0; 4])
}

#[test]
fn converted_images_decode_to_rgb() {
    let dir = temp("convert");
    for (name, bytes, [first, last]) in convertible() {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let img = decode(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let plane = img.width * img.height;
        for (c, (f, l)) in first.iter().zip(last).enumerate() {
            let (got_first, got_last) = (img.data[c * plane], img.data[c * plane + plane - 1]);
            assert!((got_first - f / 255.0).abs() < 1e-6 && (got_last - l / 255.0).abs() < 1e-6, "{name} channel {c}: {got_first}, {got_last}");
        }
    }
    let huge = dir.join("huge.png");
    std::fs::write(&huge, huge_png()).unwrap();
    let err = decode(&huge).unwrap_err().to_string();
    assert!(err.contains("too large") && err.contains("10000×10000"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two classes whose 8 training images include every convertible kind, 7 bad files among them (1 empty,
/// 3 corrupt or truncated, 1 unsupported, 1 too large, 1 unreadable), and 2 good validation images a class.
fn bad_dataset(root: &Path) {
    let (c0, c1) = (root.join("train/c0"), root.join("train/c1"));
    for dir in [&c0, &c1, &root.join("val/c0"), &root.join("val/c1")] {
        std::fs::create_dir_all(dir).unwrap();
    }
    stripes(0, 0, 20).save(c0.join("good_0.JPEG")).unwrap();
    stripes(0, 1, 20).save(c0.join("good_1.png")).unwrap();
    stripes(1, 0, 20).save(c1.join("good_2.JPEG")).unwrap();
    for (i, (name, bytes, _)) in convertible().into_iter().enumerate() {
        std::fs::write([&c0, &c1][i % 2].join(name), bytes).unwrap();
    }
    for (class, split) in [(0, "val/c0"), (1, "val/c1")] {
        for i in 0..2 {
            stripes(class, i, 20).save(root.join(split).join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::write(c0.join("empty.JPEG"), b"").unwrap();
    std::fs::write(c0.join("noise.JPEG"), (0..500u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>()).unwrap();
    let jpeg = std::fs::read(c0.join("good_0.JPEG")).unwrap();
    std::fs::write(c1.join("header_only.JPEG"), &jpeg[..100]).unwrap();
    let png = std::fs::read(c0.join("good_1.png")).unwrap();
    std::fs::write(root.join("val/c1/truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(c1.join("animated.png"), b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
    std::fs::write(c0.join("huge.png"), huge_png()).unwrap();
    std::os::unix::fs::symlink(root.join("no-such-file.JPEG"), c1.join("dangling.JPEG")).unwrap();
    std::fs::write(root.join("labels.txt"), "c0,class zero\nc1,class one\n").unwrap();
}

#[test]
fn bad_images_are_skipped_with_exact_counts_and_training_runs() {
    let dir = temp("bad-images");
    let data = dir.join("data");
    bad_dataset(&data);
    let data_s = data.to_str().unwrap();
    let report = ok(&["data", "index", data_s]);
    assert!(report.contains("ImageNet layout, 2 classes, 8 train + 4 val images, 7 skipped"), "{report}");
    for line in ["  1 empty\n", "  3 corrupt or truncated\n", "  1 unsupported\n", "  1 too large\n", "  1 unreadable\n"] {
        assert!(report.contains(line), "missing {line:?} in\n{report}");
    }
    assert!(report.contains("skipped train/c0/huge.png: too large: 10000×10000 px"), "{report}");

    // A file that breaks after indexing is skipped when a batch meets it: batches of 8 from 8 images meet it
    // once an iteration (a loader thread may build, and warn about, batches ahead of those trained on).
    std::fs::write(data.join("train/c0/good_1.png"), b"overwritten").unwrap();
    let run = dir.join("run");
    let (config, run_s) = (tiny_config(), run.to_str().unwrap().to_string());
    let out = poac(&["pretrain", "--config", config.to_str().unwrap(), "--data", data_s, "--output", &run_s, "--max-iters", "2"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("7 image(s) skipped: 1 empty, 3 corrupt or truncated, 1 unsupported, 1 too large, 1 unreadable"), "{stderr}");
    assert!(stderr.contains("warning: skipping train/c0/good_1.png: corrupt or truncated"), "{stderr}");
    assert!(stdout.contains("pretrained 2 iterations") && stdout.contains("2 images skipped"), "{stdout}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let skipped: Vec<u64> = lines.iter().filter_map(|line| line["skipped_images"].as_u64()).collect();
    assert_eq!(skipped, [1, 2], "cumulative skips per iteration");
    let index_skipped = &lines[0]["dataset"]["index_skipped"];
    let expected = serde_json::json!({ "empty": 1, "corrupt": 3, "unsupported": 1, "too_large": 1, "unreadable": 1 });
    assert_eq!(index_skipped, &expected, "skips by reason in metrics.jsonl");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `count` good images of one class under `dir`.
fn images(dir: &Path, class: usize, count: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        stripes(class, i, 16).save(dir.join(format!("{i}.png"))).unwrap();
    }
}

#[test]
fn unlabelled_folders_and_image_folders_train_and_knn_asks_for_labels() {
    let dir = temp("custom-data");
    let config = tiny_config();
    let config_s = config.to_str().unwrap();

    // A plain folder, searched recursively; hidden folders, other files and a link back up are passed over.
    let plain = dir.join("plain");
    images(&plain.join("a"), 0, 4);
    images(&plain.join("a/b"), 1, 4);
    images(&plain.join(".thumbnails"), 2, 3);
    std::fs::write(plain.join("notes.txt"), "not an image").unwrap();
    std::os::unix::fs::symlink(&plain, plain.join("a/b/loop")).unwrap();
    let source = format!("folder:{}", plain.display());
    let report = ok(&["data", "index", &source]);
    assert!(report.contains("unlabelled folder, 0 classes, 8 train + 0 val images, 0 skipped"), "{report}");
    let index = plain.join("extra/index.json");
    let indexed = std::fs::read(&index).unwrap();
    let run = dir.join("run-plain");
    ok(&["pretrain", "--config", config_s, "--data", &source, "--output", run.to_str().unwrap(), "--max-iters", "1"]);
    assert_eq!(std::fs::read(&index).unwrap(), indexed, "the index is reused, not rewritten");

    let model = dir.join("m.onnx");
    let model_s = model.to_str().unwrap();
    ok(&["lower", run.to_str().unwrap(), "-o", model_s]);
    let err = fails(&["eval", "knn", "--model", model_s, "--data", &source]);
    assert!(err.contains("unlabelled images") && err.contains("needs labels"), "{err}");

    // ImageFolder without labels.txt or val/: classes are the folder names.
    let folders = dir.join("folders");
    images(&folders.join("train/dog"), 0, 4);
    images(&folders.join("train/cat/indoor"), 1, 4);
    let folders_s = folders.to_str().unwrap();
    let report = ok(&["data", "index", folders_s]);
    assert!(report.contains("ImageFolder layout (classes from folder names), 2 classes, 8 train + 0 val images, 0 skipped"), "{report}");
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(folders.join("extra/index.json")).unwrap()).unwrap();
    assert_eq!(written["classes"], serde_json::json!([{ "dir": "cat", "name": "cat" }, { "dir": "dog", "name": "dog" }]));
    ok(&["pretrain", "--config", config_s, "--data", folders_s, "--output", dir.join("run-folders").to_str().unwrap(), "--max-iters", "1"]);
    let err = fails(&["eval", "knn", "--model", model_s, "--data", folders_s]);
    assert!(err.contains("no val/ folder"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn folders_without_images_are_errors_naming_them() {
    let dir = temp("empty-folders");
    let index = |root: &Path| fails(&["data", "index", root.to_str().unwrap()]);

    let plain = dir.join("plain");
    std::fs::create_dir_all(plain.join("sub")).unwrap();
    std::fs::write(plain.join("sub/readme.txt"), "no images here").unwrap();
    let err = fails(&["data", "index", &format!("folder:{}", plain.display())]);
    assert!(err.contains(&format!("{} has no images", plain.display())), "{err}");

    let no_train = dir.join("no-train");
    images(&no_train, 0, 2);
    let err = index(&no_train);
    assert!(err.contains("has no train/ folder") && err.contains(&format!("folder:{}", no_train.display())), "{err}");

    let no_classes = dir.join("no-classes");
    images(&no_classes.join("train"), 0, 2);
    let err = index(&no_classes);
    assert!(err.contains(&format!("{} has no class folders", no_classes.join("train").display())), "{err}");

    let empty_class = dir.join("empty-class");
    images(&empty_class.join("train/a"), 0, 2);
    std::fs::create_dir_all(empty_class.join("train/b")).unwrap();
    let err = index(&empty_class);
    assert!(err.contains(&format!("class folder {} has no images", empty_class.join("train/b").display())), "{err}");

    let broken_class = dir.join("broken-class");
    images(&broken_class.join("train/a"), 0, 2);
    std::fs::create_dir_all(broken_class.join("train/b")).unwrap();
    std::fs::write(broken_class.join("train/b/0.png"), b"").unwrap();
    let err = index(&broken_class);
    assert!(err.contains(&format!("class folder {} has no decodable images", broken_class.join("train/b").display())), "{err}");

    let stray_val = dir.join("stray-val");
    images(&stray_val.join("train/a"), 0, 2);
    images(&stray_val.join("val/a"), 0, 1);
    images(&stray_val.join("val/z"), 0, 1);
    let err = index(&stray_val);
    assert!(err.contains(&format!("{} is not a class of train/", stray_val.join("val/z").display())), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
