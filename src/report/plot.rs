//! PNG plots with plotters, drawn into an RGB buffer and encoded by the `image` crate. Text needs a TrueType
//! font: `$POAC_FONT`, DejaVu Sans from the set-up cache (`shells/setup.sh` puts it there), or a system copy.

use super::inputs::{EvalPoint, Series, TrainPoint};
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Pixels of every plot.
const SIZE: (u32, u32) = (1000, 620);

/// What drawing on a bitmap returns.
type PlotResult<'a> = std::result::Result<(), Box<dyn std::error::Error + 'a>>;

/// Series colours, in order (distinguishable, and printable in grey).
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];

/// The colour of the `i`-th series or curve.
pub fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

/// The cost an accuracy plot puts on its (logarithmic) x axis.
#[derive(Clone, Copy, Debug)]
pub enum CostAxis {
    /// Backbone parameters, in millions.
    Params,
    /// FLOPs per image, in billions.
    Gflops,
}

impl CostAxis {
    /// `accuracy_vs_{stem}.png`.
    pub fn file_stem(self) -> &'static str {
        match self {
            CostAxis::Params => "params",
            CostAxis::Gflops => "gflops",
        }
    }

    fn caption(self) -> &'static str {
        match self {
            CostAxis::Params => "parameters (M, log scale)",
            CostAxis::Gflops => "GFLOPs per image (log scale)",
        }
    }

    fn value(self, point: &EvalPoint) -> Option<f64> {
        match self {
            CostAxis::Params => point.params.map(|p| p as f64 / 1e6),
            CostAxis::Gflops => point.flops.map(|f| f as f64 / 1e9),
        }
    }
}

/// The pre-training loss and its terms against the iteration.
pub fn losses(points: &[TrainPoint], path: &Path) -> Result<()> {
    type Term = fn(&TrainPoint) -> f64;
    let terms: [(&str, Term); 4] = [
        ("total", |p| p.loss),
        ("intact student", |p| p.intact),
        ("elastic student", |p| p.elastic),
        ("intact → elastic", |p| p.intact_to_elastic),
    ];
    let values = || points.iter().flat_map(|p| terms.iter().map(move |(_, term)| term(p))).filter(|v| v.is_finite());
    let (low, high) = padded(values().fold(f64::INFINITY, f64::min), values().fold(f64::NEG_INFINITY, f64::max));
    if !low.is_finite() {
        bail!("no finite loss to plot");
    }
    let last = points.last().map_or(1, |p| p.iteration.max(1)) as f64;
    render(path, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption("POA pre-training losses", ("sans-serif", 26))
            .margin(18)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..last, low..high)?;
        chart
            .configure_mesh()
            .x_desc("iteration")
            .y_desc("loss")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 16))
            .draw()?;
        for (i, (name, term)) in terms.iter().enumerate() {
            let style = colour(i).stroke_width(2);
            let line = points.iter().map(|p| (p.iteration as f64, term(p))).filter(|(_, v)| v.is_finite());
            chart.draw_series(LineSeries::new(line, style))?.label(*name).legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], style));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}

/// Top-1 of every series against the sub-networks' cost; the first series' points are named.
pub fn accuracy(series: &[Series], axis: CostAxis, path: &Path) -> Result<()> {
    let lines: Vec<(String, Vec<(f64, f64, String)>)> = series
        .iter()
        .map(|s| {
            let points = s.per_subnet().into_iter().filter_map(|p| Some((axis.value(p)?, 100.0 * p.top1, format!("w{}-d{}", p.width, p.depth))));
            (s.label(), points.collect())
        })
        .collect();
    let all = || lines.iter().flat_map(|(_, points)| points);
    if all().next().is_none() {
        bail!("no evaluated sub-network has its {} recorded", axis.file_stem());
    }
    let (x_min, x_max) = (all().map(|p| p.0).fold(f64::INFINITY, f64::min), all().map(|p| p.0).fold(0.0, f64::max));
    let (y_low, y_high) = padded(all().map(|p| p.1).fold(f64::INFINITY, f64::min), all().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max));
    let labels: Vec<&str> = lines.iter().map(|(label, _)| label.as_str()).collect();
    render(path, |root| {
        let (plot, key) = root.split_vertically(SIZE.1 - legend_height(labels.len()));
        legend_below(&key, &labels)?;
        let mut chart = ChartBuilder::on(&plot)
            .caption(format!("top-1 against {}", axis.caption().split(" (").next().unwrap_or_default()), ("sans-serif", 26))
            .margin(18)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d((x_min / 1.4..x_max * 1.4).log_scale(), (y_low - 1.0).max(0.0)..(y_high + 1.0).min(100.0))?;
        chart
            .configure_mesh()
            .x_desc(axis.caption())
            .y_desc("top-1 (%)")
            .x_label_formatter(&|x| tick(*x))
            .label_style(("sans-serif", 16))
            .draw()?;
        for (i, (_, points)) in lines.iter().enumerate() {
            let c = colour(i);
            chart.draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1)), c.stroke_width(2)))?;
            chart.draw_series(points.iter().map(|p| Circle::new((p.0, p.1), 5, c.filled())))?;
            if i == 0 {
                let font = ("sans-serif", 15).into_font();
                let names = points.iter().map(|p| EmptyElement::at((p.0, p.1)) + Text::new(p.2.clone(), (8, -20), font.clone()));
                chart.draw_series(names)?;
            }
        }
        Ok(())
    })
}

/// Legend rows under an accuracy plot: two entries per row.
const LEGEND_COLUMNS: usize = 2;
/// Pixels per legend row.
const LEGEND_ROW: u32 = 24;

/// Height of the strip [`legend_below`] needs for `entries` series.
fn legend_height(entries: usize) -> u32 {
    entries.div_ceil(LEGEND_COLUMNS) as u32 * LEGEND_ROW + 16
}

/// The series labels in a strip of their own under the chart, so that they never hide a point (an accuracy plot
/// has points in every corner).
fn legend_below<'a>(area: &DrawingArea<BitMapBackend<'a>, Shift>, labels: &[&str]) -> PlotResult<'a> {
    let column_width = (SIZE.0 as i32 - 160) / LEGEND_COLUMNS as i32;
    for (i, label) in labels.iter().enumerate() {
        let x = 80 + (i % LEGEND_COLUMNS) as i32 * column_width;
        let y = 4 + (i / LEGEND_COLUMNS) as i32 * LEGEND_ROW as i32;
        let c = colour(i);
        area.draw(&PathElement::new([(x, y + 10), (x + 24, y + 10)], c.stroke_width(2)))?;
        area.draw(&Circle::new((x + 12, y + 10), 5, c.filled()))?;
        area.draw(&Text::new(label.to_string(), (x + 34, y), ("sans-serif", 16).into_font()))?;
    }
    Ok(())
}

/// The series labels in a framed box at `position`.
fn legend<'a, CT: CoordTranslate>(chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>, position: SeriesLabelPosition) -> PlotResult<'a> {
    chart
        .configure_series_labels()
        .position(position).label_font(("sans-serif", 16)).background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
    Ok(())
}

/// A tick label with at most three decimals and no trailing zeros: `0.03`, `0.3`, `1.5`, `200`.
fn tick(x: f64) -> String {
    let text = format!("{x:.3}");
    let short = text.trim_end_matches('0').trim_end_matches('.');
    if short.is_empty() { "0".into() } else { short.to_string() }
}

/// `[low, high]` widened by 5 % of the span (or by 1 when flat).
fn padded(low: f64, high: f64) -> (f64, f64) {
    let pad = if high > low { 0.05 * (high - low) } else { 1.0 };
    (low - pad, high + pad)
}

/// Draws on a white canvas and writes it as PNG.
fn render(path: &Path, draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, Shift>) -> PlotResult<'_>) -> Result<()> {
    register_font()?;
    let (width, height) = SIZE;
    let mut pixels = vec![0u8; 3 * width as usize * height as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))?;
        draw(root.clone()).map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))?;
        root.present().map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))?;
    }
    let image = image::RgbImage::from_raw(width, height, pixels).context("the plot buffer has the wrong size")?;
    image.save(path).with_context(|| format!("cannot write {}", path.display()))
}

/// Makes a TrueType font plotters' "sans-serif" (once per process).
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let path = font_path().ok_or_else(|| {
                "no TrueType font for the plots: run shells/setup.sh (it caches DejaVu Sans) or set POAC_FONT to a .ttf file"
                    .to_string()
            })?;
            let bytes = std::fs::read(&path).map_err(|e| format!("cannot read the font {}: {e}", path.display()))?;
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a TrueType font", path.display()))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The first font that exists: `$POAC_FONT`, the set-up cache's DejaVu Sans, common system locations.
fn font_path() -> Option<PathBuf> {
    const SYSTEM: [&str; 5] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];
    let cache = std::env::var_os("POAC_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/poac")))
        .map(|cache| cache.join("fonts/DejaVuSans.ttf"));
    std::env::var_os("POAC_FONT").map(PathBuf::from).into_iter().chain(cache).chain(SYSTEM.iter().map(PathBuf::from)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_short() {
        let ticks: Vec<String> = [0.03, 0.30000000000000004, 1.5, 200.0, 0.0126, 0.0].into_iter().map(tick).collect();
        assert_eq!(ticks, ["0.03", "0.3", "1.5", "200", "0.013", "0"]);
    }

    #[test]
    fn padding_widens_by_five_percent_or_one() {
        assert_eq!(padded(10.0, 30.0), (9.0, 31.0));
        assert_eq!(padded(5.0, 5.0), (4.0, 6.0));
    }
}
