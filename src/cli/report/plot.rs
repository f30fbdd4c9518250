//! Drawing the report with plotters, the same picture as SVG and PNG: four panels on one time
//! axis (the service's p95/p99 per window with the SLO line and the controller's decisions, its
//! QPS, its cores, and a Gantt chart of the batch jobs). Text uses the DejaVu Sans font compiled
//! into the binary, so the PNG renders on a machine with no fonts installed.

use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, RGBColor};

use super::load::{Phase, RunData, Window};

/// DejaVu Sans (Bitstream Vera license: redistributable; see assets/fonts/LICENSE-DejaVu.txt).
static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

pub const WIDTH: u32 = 1400;
const LATENCY_H: u32 = 330;
const QPS_H: u32 = 160;
const CORES_H: u32 = 160;
const TITLE_H: u32 = 40;
const ROW_H: u32 = 34;
const Y_LABELS: u32 = 80;

const P95: RGBColor = RGBColor(31, 119, 180);
const P99: RGBColor = RGBColor(148, 103, 189);
const SLO: RGBColor = RGBColor(214, 39, 40);
const QPS: RGBColor = RGBColor(44, 160, 44);
const CORES: RGBColor = RGBColor(255, 127, 14);
const PAUSED: RGBColor = RGBColor(170, 170, 170);
const GROW: RGBColor = RGBColor(214, 39, 40);
const SHRINK: RGBColor = RGBColor(44, 160, 44);
const UNDO: RGBColor = RGBColor(140, 86, 75);

type DrawResult = Result<(), String>;

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// The picture's height for this run (the Gantt chart grows with the jobs).
pub fn height(d: &RunData) -> u32 {
    TITLE_H + LATENCY_H + QPS_H + CORES_H + gantt_height(d)
}

fn gantt_height(d: &RunData) -> u32 {
    70 + ROW_H * (d.jobs.len().max(2) as u32)
}

/// The report as an SVG document.
pub fn svg(d: &RunData, title: &str) -> Result<String, String> {
    register_font();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, height(d))).into_drawing_area();
        draw(&root, d, title)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The report as a PNG file at `path`.
pub fn png(d: &RunData, title: &str, path: &std::path::Path) -> DrawResult {
    register_font();
    let root = BitMapBackend::new(path, (WIDTH, height(d))).into_drawing_area();
    draw(&root, d, title)?;
    root.present().map_err(|e| e.to_string())
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, d: &RunData, title: &str) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let (top, rest) = root.split_vertically(TITLE_H);
    top.draw(&Text::new(
        title.to_string(),
        (12, 10),
        (FAMILY, 20).into_font().color(&BLACK),
    ))
    .map_err(err)?;
    let (lat, rest) = rest.split_vertically(LATENCY_H);
    let (qps, rest) = rest.split_vertically(QPS_H);
    let (cores, gantt) = rest.split_vertically(CORES_H);
    let span = 0.0..(d.to - d.from);
    latency_panel(&lat, d, span.clone())?;
    qps_panel(&qps, d, span.clone())?;
    cores_panel(&cores, d, span.clone())?;
    gantt_panel(&gantt, d, span)
}

/// The windows' points (x: seconds into the span) as runs without gaps: a line is broken
/// where windows are missing (nothing was probed, the daemon was down) or have no value.
fn runs(d: &RunData, value: impl Fn(&Window) -> Option<f64>) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut prev_end = f64::NEG_INFINITY;
    for w in &d.windows {
        let Some(v) = value(w) else {
            prev_end = f64::NEG_INFINITY;
            continue;
        };
        let joined = w.t - prev_end <= w.dur.max(0.001);
        match out.last_mut() {
            Some(run) if joined => run.push((w.t - d.from, v)),
            _ => out.push(vec![(w.t - d.from, v)]),
        }
        prev_end = w.t + w.dur;
    }
    out
}

/// `250 us`, `1.6 ms`, `2 s`.
fn us_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{} s", v / 1e6)
    } else if v >= 1e3 {
        format!("{} ms", v / 1e3)
    } else {
        format!("{v:.0} us")
    }
}

fn note<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, text: &str) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        text.to_string(),
        (w as i32 / 2 - 160, h as i32 / 2),
        (FAMILY, 16).into_font().color(&RGBColor(90, 90, 90)),
    ))
    .map_err(err)
}

type LinearChart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A panel on the shared time axis with a linear y axis from 0 to `top`, its mesh drawn.
fn linear_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    span: std::ops::Range<f64>,
    top: f64,
    y_labels: usize,
    desc: &str,
) -> Result<LinearChart<'a, DB>, String>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(Y_LABELS)
        .build_cartesian_2d(span, 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .label_style((FAMILY, 12))
        .y_labels(y_labels)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc(desc)
        .draw()
        .map_err(err)?;
    Ok(chart)
}

/// The panel's legend box, top right.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// A legend entry's short line in a series' style.
fn line_key((x, y): (i32, i32), style: ShapeStyle) -> PathElement<(i32, i32)> {
    PathElement::new(vec![(x, y), (x + 18, y)], style)
}

fn latency_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    d: &RunData,
    span: std::ops::Range<f64>,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let slo = d.slo_us as f64;
    let top = d
        .windows
        .iter()
        .map(|w| w.p99_us)
        .fold(slo * 2.0, f64::max)
        .min(2e6);
    let bottom = d
        .windows
        .iter()
        .map(|w| w.p95_us)
        .fold(slo / 4.0, f64::min)
        .max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{} latency per window (log scale; a window whose p95 fell on a failed probe is at the top)",
                d.service.as_deref().unwrap_or("service")
            ),
            (FAMILY, 16),
        )
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(Y_LABELS)
        .build_cartesian_2d(span.clone(), (bottom..top).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .label_style((FAMILY, 12))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| us_label(*v))
        .y_desc("latency")
        .draw()
        .map_err(err)?;
    if d.windows.is_empty() {
        return note(
            area,
            "no service latency in this span (no service monitored)",
        );
    }
    let clamp = |v: f64| v.clamp(bottom, top);
    for (name, style, pick) in [
        (
            "p99",
            P99.stroke_width(1),
            (|w| w.p99_us) as fn(&Window) -> f64,
        ),
        ("p95", P95.stroke_width(2), |w| w.p95_us),
    ] {
        for (i, run) in runs(d, |w| Some(clamp(pick(w)))).into_iter().enumerate() {
            let s = chart
                .draw_series(LineSeries::new(run, style))
                .map_err(err)?;
            if i == 0 {
                s.label(name).legend(move |(x, y)| line_key((x, y), style));
            }
        }
    }
    chart
        .draw_series(DashedLineSeries::new(
            [(span.start, slo), (span.end, slo)],
            8,
            5,
            SLO.stroke_width(2),
        ))
        .map_err(err)?
        .label(format!("SLO {} us", d.slo_us))
        .legend(|(x, y)| line_key((x, y), SLO.stroke_width(2)));
    decision_markers(&mut chart, d, top)?;
    legend(&mut chart)
}

type LogChart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::combinators::LogCoord<f64>,
    >,
>;

fn decision_markers<DB: DrawingBackend>(
    chart: &mut LogChart<'_, DB>,
    d: &RunData,
    top: f64,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let y = top / 1.6;
    for (kind, color) in [("grow", GROW), ("shrink", SHRINK), ("undo", UNDO)] {
        let pts: Vec<f64> = d
            .decisions
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| c.t - d.from)
            .collect();
        if pts.is_empty() {
            continue;
        }
        let series = chart
            .draw_series(pts.into_iter().map(|t| match kind {
                "grow" => TriangleMarker::new((t, y), 6, color.filled()).into_dyn(),
                "shrink" => Circle::new((t, y), 4, color.filled()).into_dyn(),
                _ => Cross::new((t, y), 5, color.stroke_width(2)).into_dyn(),
            }))
            .map_err(err)?;
        series
            .label(format!("{kind} (controller)"))
            .legend(move |(x, y)| Circle::new((x + 9, y), 4, color.filled()));
    }
    Ok(())
}

fn qps_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    d: &RunData,
    span: std::ops::Range<f64>,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let pts = runs(d, |w| w.qps);
    let top = pts.iter().flatten().map(|p| p.1).fold(10.0, f64::max) * 1.1;
    let mut chart = linear_chart(area, span, top, 4, "QPS")?;
    if pts.is_empty() {
        return note(area, "no QPS in this span (no service monitored)");
    }
    for (i, run) in pts.into_iter().enumerate() {
        let s = chart
            .draw_series(LineSeries::new(run, QPS.stroke_width(2)))
            .map_err(err)?;
        if i == 0 {
            s.label("service QPS")
                .legend(|(x, y)| line_key((x, y), QPS.stroke_width(2)));
        }
    }
    legend(&mut chart)
}

fn cores_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    d: &RunData,
    span: std::ops::Range<f64>,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let top = d
        .service_cores
        .iter()
        .map(|c| c.1)
        .max()
        .unwrap_or(1)
        .max(2) as f64
        + 0.5;
    let mut chart = linear_chart(area, span.clone(), top, top as usize + 1, "service cores")?;
    if d.service_cores.is_empty() {
        return note(area, "no service cores in this span (no service protected)");
    }
    // A step function: each count holds until the next change, the last until the span's end.
    let mut steps = Vec::new();
    for (i, &(t, n)) in d.service_cores.iter().enumerate() {
        let x = t - d.from;
        if i > 0 {
            steps.push((x, d.service_cores[i - 1].1 as f64));
        }
        steps.push((x, n as f64));
    }
    if let Some(&(_, n)) = d.service_cores.last() {
        steps.push((span.end, n as f64));
    }
    chart
        .draw_series(LineSeries::new(steps, CORES.stroke_width(2)))
        .map_err(err)?
        .label("service cores")
        .legend(|(x, y)| line_key((x, y), CORES.stroke_width(2)));
    legend(&mut chart)
}

fn gantt_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    d: &RunData,
    span: std::ops::Range<f64>,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let rows = d.jobs.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(Y_LABELS)
        .build_cartesian_2d(span.clone(), 0.0..rows)
        .map_err(err)?;
    chart
        .configure_mesh()
        .label_style((FAMILY, 12))
        .disable_y_mesh()
        .y_labels(0)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .x_desc(format!(
            "seconds since {}",
            crate::store::eventlog::iso8601(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(d.from.max(0.0))
            )
            .get(..19)
            .unwrap_or("")
        ))
        .y_desc("batch jobs")
        .draw()
        .map_err(err)?;
    if d.jobs.is_empty() {
        return note(area, "no batch jobs ran in this span");
    }
    let width = span.end - span.start;
    for (row, job) in d.jobs.iter().enumerate() {
        // Bottom half of the row holds the bar, the top half the job's name.
        let y0 = rows - row as f64 - 0.92;
        let y1 = rows - row as f64 - 0.45;
        let color = Palette99::pick(row).to_rgba();
        chart
            .draw_series(job.stretches.iter().map(|s| {
                let style = match s.phase {
                    Phase::Running => color.mix(0.75).filled(),
                    Phase::Paused => PAUSED.mix(0.9).filled(),
                };
                Rectangle::new([(s.from - d.from, y0), (s.to - d.from, y1)], style)
            }))
            .map_err(err)?;
        // Core counts inside stretches wide enough to hold them; "P" on paused ones.
        chart
            .draw_series(
                job.stretches
                    .iter()
                    .filter(|s| (s.to - s.from) / width > 0.02)
                    .map(|s| {
                        let label = match s.phase {
                            Phase::Running => format!("{}c", s.cores),
                            Phase::Paused => "paused".into(),
                        };
                        Text::new(
                            label,
                            ((s.from + s.to) / 2.0 - d.from, y1 - 0.08),
                            (FAMILY, 11).into_font().color(&BLACK),
                        )
                    }),
            )
            .map_err(err)?;
        let first = job.stretches.first().map_or(0.0, |s| s.from - d.from);
        let name = format!("{} #{} ({})", job.name, job.id, job.final_state);
        // Above the bar's start, pulled left when it would run off the chart.
        let at = first.min(span.end - width * 0.2).max(0.0);
        chart
            .draw_series(std::iter::once(Text::new(
                name,
                (at, y1 + 0.42),
                (FAMILY, 12).into_font().color(&BLACK),
            )))
            .map_err(err)?;
    }
    Ok(())
}
