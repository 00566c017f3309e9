//! Learning-curve PNGs (plotters, bitmap backend; text with DejaVu Sans from the system,
//! Debian package `fonts-dejavu-core`).

use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

use crate::study::Curve;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers the font once per process; every call returns that registration's
/// outcome (a later call used to return `Ok` after a failed first one, and the plot
/// then failed with a vaguer error).
fn register_font() -> Result<()> {
    static OUTCOME: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let outcome = OUTCOME.get_or_init(|| {
        (|| -> Result<()> {
            let path = FONT_PATHS
                .iter()
                .find(|p| Path::new(p).is_file())
                .context("no DejaVuSans.ttf found: install the Debian package fonts-dejavu-core")?;
            let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| anyhow::anyhow!("{path}: not a usable TrueType font"))?;
            Ok(())
        })()
        .map_err(|e| format!("{e:#}"))
    });
    outcome.clone().map_err(anyhow::Error::msg)
}

/// One PNG with a line (and ±std band) per curve; x = environment steps, y = success.
/// Drawn beside `path` and renamed over it, so an earlier plot is replaced only by a
/// whole one.
pub fn learning_curves(path: &Path, title: &str, curves: &[(&str, &Curve)]) -> Result<()> {
    register_font()?;
    // plotters picks the image format by the extension: the partial file ends in .png.
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial.png");
    let partial = std::path::PathBuf::from(partial);
    let drawn = draw(&partial, title, curves);
    match drawn.and_then(|()| {
        std::fs::rename(&partial, path).with_context(|| format!("replacing {}", path.display()))
    }) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e.context(format!("{}: plotting failed", path.display())))
        }
    }
}

fn draw(path: &Path, title: &str, curves: &[(&str, &Curve)]) -> Result<()> {
    let x_max = curves
        .iter()
        .filter_map(|(_, c)| c.steps.last())
        .max()
        .copied()
        .unwrap_or(1)
        .max(1);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    let err = |e: String| anyhow::anyhow!("{e}");
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max as f64, 0f64..1f64)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("environment steps")
        .x_label_formatter(&|x| format!("{}", *x as i64))
        .y_desc("success rate")
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, (name, c)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let upper: Vec<(f64, f64)> = c
            .steps
            .iter()
            .zip(c.mean.iter().zip(&c.std))
            .map(|(s, (m, d))| (*s as f64, (m + d).min(1.0)))
            .collect();
        let lower: Vec<(f64, f64)> = c
            .steps
            .iter()
            .zip(c.mean.iter().zip(&c.std))
            .map(|(s, (m, d))| (*s as f64, (m - d).max(0.0)))
            .rev()
            .collect();
        let band: Vec<(f64, f64)> = upper.into_iter().chain(lower).collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, color.mix(0.15))))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(
                c.steps.iter().zip(&c.mean).map(|(s, m)| (*s as f64, *m)),
                color.stroke_width(3),
            ))
            .map_err(|e| err(e.to_string()))?
            .label(format!("{name} ({} seeds)", c.seeds))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
