//! `simclr plot <run dir>`: the curves of a run, drawn from its metrics.jsonl files. One chart
//! per quantity (training loss and learning rate per step, kNN top-1 and top-1 per epoch), one
//! line per stage, each chart written as PNG and SVG under `<run dir>/plots/`.

use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::{Map, Value};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The font of the PNG text: plotters rasterises text itself and is built without system fonts.
/// DejaVu Sans, under the Bitstream Vera licence (assets/fonts/LICENSE).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The charts: (file name, title, x field, y field). A record contributes a point to a chart
/// when it has the y field: step records carry "loss" and "lr", epoch records "knn_top1"/"top1".
const CHARTS: [(&str, &str, &str, &str); 4] = [
    ("loss", "training loss", "step", "loss"),
    ("lr", "learning rate", "step", "lr"),
    ("knn_top1", "kNN top-1 accuracy", "epoch", "knn_top1"),
    ("top1", "top-1 accuracy", "epoch", "top1"),
];

/// Points per line at most: a longer line is drawn as means over equal windows, which keeps
/// the SVG small and smooths the step-to-step noise of the loss.
const MAX_POINTS: usize = 1000;

const SIZE: (u32, u32) = (900, 540);

/// One stage's values of one quantity, in the order they were logged.
struct Line {
    stage: String,
    /// Index of the stage among all stages of the run, so a stage has one colour in every chart.
    colour: usize,
    points: Vec<(f64, f64)>,
}

struct Chart {
    /// `plots/<file>.png` and `.svg`.
    file: &'static str,
    title: String,
    x: &'static str,
    y: &'static str,
    lines: Vec<Line>,
}

/// Reads every metrics.jsonl of the run (its root and its stage sub-directories) and writes
/// `plots/<quantity>.png` and `.svg` for each quantity that has at least one value.
/// Returns the paths written.
pub fn plot(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut charts: Vec<Chart> = CHARTS
        .iter()
        .map(|&(file, title, x, y)| Chart {
            file,
            title: title.to_string(),
            x,
            y,
            lines: Vec::new(),
        })
        .collect();
    let mut stages: Vec<String> = Vec::new();
    for file in metrics_files(run_dir)? {
        read_metrics(&file, &mut charts, &mut stages)?;
    }
    if charts.iter().all(|c| c.lines.is_empty()) {
        return Err(Error::Data(format!(
            "{}: its metrics.jsonl files hold no step or epoch records",
            run_dir.display()
        )));
    }

    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| {
        Error::Data("assets/fonts/DejaVuSans.ttf: not a font the plotter can read".into())
    })?;
    let out = run_dir.join("plots");
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let mut written = Vec::new();
    for chart in &mut charts {
        if chart.lines.is_empty() {
            continue;
        }
        thin(chart);
        let png = out.join(format!("{}.png", chart.file));
        draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), chart)
            .map_err(|e| Error::io(&png, std::io::Error::other(e.to_string())))?;
        let svg = out.join(format!("{}.svg", chart.file));
        draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), chart)
            .map_err(|e| Error::io(&svg, std::io::Error::other(e.to_string())))?;
        written.extend([png, svg]);
    }
    Ok(written)
}

/// `<run>/metrics.jsonl` (a single-stage run) and `<run>/<stage>/metrics.jsonl` (a pipeline).
fn metrics_files(run_dir: &Path) -> Result<Vec<PathBuf>> {
    if !run_dir.is_dir() {
        return Err(Error::Config(format!(
            "{}: not a directory (expected a run directory holding metrics.jsonl)",
            run_dir.display()
        )));
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(run_dir).map_err(|e| Error::io(run_dir, e))? {
        let path = entry.map_err(|e| Error::io(run_dir, e))?.path();
        if path.join("metrics.jsonl").is_file() {
            files.push(path.join("metrics.jsonl"));
        }
    }
    files.sort();
    let root = run_dir.join("metrics.jsonl");
    if root.is_file() {
        files.insert(0, root);
    }
    if files.is_empty() {
        return Err(Error::Config(format!(
            "{}: no metrics.jsonl in it or in its sub-directories",
            run_dir.display()
        )));
    }
    Ok(files)
}

/// Adds the points of one metrics.jsonl to the charts. Any line that is not a JSON object, or
/// a value of the wrong type, is an error naming the file and line; blank lines are skipped.
fn read_metrics(path: &Path, charts: &mut [Chart], stages: &mut Vec<String>) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let at = format!("{}:{}", path.display(), n + 1);
        let record: Value = serde_json::from_slice(line)
            .map_err(|e| Error::Data(format!("{at}: not valid JSON ({e})")))?;
        let Some(record) = record.as_object() else {
            return Err(Error::Data(format!("{at}: not a JSON object")));
        };
        for chart in charts.iter_mut() {
            let Some(y) = number(record, chart.y, &at)? else {
                continue;
            };
            let x = number(record, chart.x, &at)?.ok_or_else(|| {
                Error::Data(format!("{at}: \"{}\" without a \"{}\"", chart.y, chart.x))
            })?;
            let stage = record
                .get("stage")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Data(format!("{at}: no \"stage\" name")))?;
            let colour = match stages.iter().position(|s| s == stage) {
                Some(i) => i,
                None => {
                    stages.push(stage.to_string());
                    stages.len() - 1
                }
            };
            match chart.lines.iter_mut().find(|l| l.stage == stage) {
                Some(l) => {
                    // A resumed run logs again the steps after its last checkpoint: the
                    // later records replace the earlier ones.
                    while l.points.last().is_some_and(|p| p.0 >= x) {
                        l.points.pop();
                    }
                    l.points.push((x, y));
                }
                None => chart.lines.push(Line {
                    stage: stage.to_string(),
                    colour,
                    points: vec![(x, y)],
                }),
            }
        }
    }
    Ok(())
}

/// The value of `key` as a number; None when absent or null (a quantity not measured that
/// epoch, or a non-finite value, which JSON writes as null).
fn number(record: &Map<String, Value>, key: &str, at: &str) -> Result<Option<f64>> {
    let v = match record.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    match v.as_f64() {
        // Beyond this the axis span overflows f64, and plotters' search for ticks never ends.
        Some(x) if x.abs() <= 1e300 => Ok(Some(x)),
        Some(_) => Err(Error::Data(format!(
            "{at}: \"{key}\" is {v}, too large to plot"
        ))),
        None => Err(Error::Data(format!("{at}: \"{key}\" is {v}, not a number"))),
    }
}

/// Replaces each line's points by means over windows of `k` points, `k` chosen so that the
/// longest line has at most MAX_POINTS; the title says so when `k` > 1.
fn thin(chart: &mut Chart) {
    let longest = chart
        .lines
        .iter()
        .map(|l| l.points.len())
        .max()
        .unwrap_or(0);
    let k = longest.div_ceil(MAX_POINTS).max(1);
    if k == 1 {
        return;
    }
    for line in &mut chart.lines {
        line.points = line
            .points
            .chunks(k)
            .map(|w| {
                let n = w.len() as f64;
                let x = w.iter().map(|p| p.0).sum::<f64>() / n;
                let y = w.iter().map(|p| p.1).sum::<f64>() / n;
                (x, y)
            })
            .collect();
    }
    chart.title = format!("{} (mean over {k} {}s)", chart.title, chart.x);
}

/// The values' range with a 5% margin; a single value gets a margin of its own size.
fn range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let margin = if hi > lo {
        0.05 * (hi - lo)
    } else if lo != 0.0 {
        0.05 * lo.abs()
    } else {
        1.0
    };
    lo - margin..hi + margin
}

/// Draws one chart on any plotters backend (bitmap or SVG) and writes the file. The legend
/// has a strip of its own on the right, so it never hides a curve.
fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    chart: &Chart,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (area, legend) = root.split_horizontally(SIZE.0 - 150);
    let points = || chart.lines.iter().flat_map(|l| l.points.iter());
    let mut plot = ChartBuilder::on(&area)
        .caption(&chart.title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(range(points().map(|p| p.0)), range(points().map(|p| p.1)))?;
    plot.configure_mesh()
        .x_desc(chart.x)
        .y_desc(chart.y)
        // Steps and epochs: "100", not "100.0".
        .x_label_formatter(&|x| format!("{}", (x * 1000.0).round() / 1000.0))
        .draw()?;
    for (i, line) in chart.lines.iter().enumerate() {
        let colour = Palette99::pick(line.colour).stroke_width(2);
        // Markers on short lines, so that a quantity measured once (top-1 after the last
        // epoch) still shows.
        let marker = if line.points.len() <= 50 { 4 } else { 0 };
        plot.draw_series(LineSeries::new(line.points.iter().copied(), colour).point_size(marker))?;
        let y = 60 + 26 * i as i32;
        legend.draw(&PathElement::new([(0, y), (24, y)], colour))?;
        legend.draw(&Text::new(
            line.stage.as_str(),
            (32, y - 8),
            ("sans-serif", 16),
        ))?;
    }
    root.present()
}
