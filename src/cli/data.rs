//! `poac data`: import Fashion-MNIST, index a dataset.

use crate::data::index::Layout;
use crate::data::{fashion_mnist, DatasetIndex};
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Convert Fashion-MNIST's IDX files to the ImageNet layout (train/<class>/*.JPEG, val/, labels.txt) and index it.
    FashionMnist {
        /// Output dataset root.
        #[arg(long)]
        out: PathBuf,
        /// Folder with the four *-ubyte.gz files (default: the set-up cache, then /usr/share/datasets/fashion-mnist).
        #[arg(long)]
        source: Option<PathBuf>,
    },
    /// Check every image of a dataset once, report what is skipped and why, and write ROOT/extra/index.json.
    Index {
        /// Dataset root (ImageNet or ImageFolder layout), or folder:PATH for a folder of unlabelled images.
        root: PathBuf,
    },
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::FashionMnist { out, source } => {
            let source = source.or_else(fashion_mnist::default_source).context(
                "Fashion-MNIST's IDX files were not found: run shells/setup.sh, or pass --source DIR with train-images-idx3-ubyte.gz and the others",
            )?;
            if !fashion_mnist::import(&source, &out)? {
                eprintln!("{} already holds the imported dataset", out.display());
            }
            report(&DatasetIndex::open(&out)?);
        }
        DataCommand::Index { root } => {
            let index = DatasetIndex::build(&root)?;
            index.write()?;
            report(&index);
        }
    }
    Ok(())
}

/// What an index holds: the layout, classes and images, then the skipped files by reason, with examples.
fn report(index: &DatasetIndex) {
    let layout = match index.layout {
        Layout::ImageNet => "ImageNet layout",
        Layout::ImageFolder => "ImageFolder layout (classes from folder names)",
        Layout::Unlabelled => "unlabelled folder",
    };
    println!(
        "{}: {layout}, {} classes, {} train + {} val images, {} skipped",
        index.root().display(),
        index.classes.len(),
        index.train.len(),
        index.val.len(),
        index.skipped.len()
    );
    for (reason, count) in index.skip_counts() {
        println!("  {count} {reason}");
    }
    for skipped in index.skipped.iter().take(10) {
        println!("  skipped {}: {}: {}", skipped.path, skipped.reason, skipped.detail);
    }
}
