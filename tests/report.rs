#![allow(clippy::unwrap_used)]
//! `lowsched report` and `lowsched stats --hlog` on a recorded state directory
//! (tests/fixtures/report-run, made by benches/report/record-fixture.sh from a real short run:
//! memcached under load, three jobs, one paused by hand, a daemon restart in the middle), and on
//! state directories with no service or no jobs. The SVG is parsed as XML: the expected series
//! exist, their timestamps are ordered, and the sizes are sane. No root needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_lowsched");
/// Stroke colours of the series (src/cli/report/plot.rs).
const P95: &str = "#1F77B4";
const QPS: &str = "#2CA02C";
const CORES: &str = "#FF7F0E";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report-run")
}

fn report(args: &[&str], out: &Path) -> Output {
    let o = Command::new(BIN)
        .arg("report")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

struct Svg {
    width: f64,
    height: f64,
    texts: Vec<String>,
    /// Polylines' points by stroke colour.
    lines: Vec<(String, Vec<(f64, f64)>)>,
    rects: usize,
}

fn parse_svg(path: &Path) -> Svg {
    let text = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the SVG is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    let num =
        |n: &roxmltree::Node<'_, '_>, a: &str| n.attribute(a).unwrap().parse::<f64>().unwrap();
    let mut svg = Svg {
        width: num(&root, "width"),
        height: num(&root, "height"),
        texts: Vec::new(),
        lines: Vec::new(),
        rects: 0,
    };
    for n in root.descendants().filter(|n| n.is_element()) {
        match n.tag_name().name() {
            "text" => svg.texts.push(n.text().unwrap_or("").trim().to_string()),
            "rect" => svg.rects += 1,
            "polyline" => {
                let pts = n
                    .attribute("points")
                    .unwrap()
                    .split_whitespace()
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect();
                svg.lines
                    .push((n.attribute("stroke").unwrap_or("").to_uppercase(), pts));
            }
            _ => {}
        }
    }
    svg
}

impl Svg {
    fn has_text(&self, t: &str) -> bool {
        self.texts.iter().any(|x| x == t)
    }

    /// All points of the series drawn in `colour`, in drawing order, without its legend sample
    /// (a flat two-point line 18 px long).
    fn series(&self, colour: &str) -> Vec<(f64, f64)> {
        let legend = |p: &[(f64, f64)]| {
            p.len() == 2 && p[0].1 == p[1].1 && (p[1].0 - p[0].0 - 18.0).abs() < 0.5
        };
        self.lines
            .iter()
            .filter(|(c, p)| c == colour && !legend(p))
            .flat_map(|(_, p)| p.iter().copied())
            .collect()
    }
}

fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

#[test]
fn a_recorded_run_draws_every_series_on_one_ordered_time_axis() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let o = report(&["--state-dir", fixture().to_str().unwrap()], &out);
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary.contains("windows over the SLO (p95 <= 800 us"),
        "{summary}"
    );
    assert!(summary.contains("3 jobs (3 succeeded)"), "{summary}");
    assert!(summary.contains("makespan"), "{summary}");
    assert!(summary.contains("1 paused stretches"), "{summary}");

    let svg = parse_svg(&out.with_extension("svg"));
    assert_eq!(svg.width, 1400.0);
    assert!(
        (700.0..5000.0).contains(&svg.height),
        "height {}",
        svg.height
    );
    for t in [
        "p95",
        "p99",
        "SLO 800 us",
        "service QPS",
        "service cores",
        "fft #1 (succeeded)",
        "matrix #2 (succeeded)",
        "stream #3 (succeeded)",
        "paused",
        "1c",
    ] {
        assert!(svg.has_text(t), "no text {t:?} in {:?}", svg.texts);
    }
    for (name, colour) in [("p95", P95), ("QPS", QPS), ("cores", CORES)] {
        let pts = svg.series(colour);
        assert!(pts.len() >= 2, "{name}: {} points", pts.len());
        // Timestamps ordered: x never goes back (the cores' step function repeats an x).
        assert!(
            pts.windows(2).all(|w| w[1].0 >= w[0].0),
            "{name}: x goes back"
        );
        assert!(
            pts.iter()
                .all(|&(x, y)| (0.0..=svg.width).contains(&x) && (0.0..=svg.height).contains(&y)),
            "{name}: a point outside the picture"
        );
    }
    // The p95 line spans the history: from near the left edge to near the right one.
    let p95 = svg.series(P95);
    let (first, last) = (p95[0].0, p95[p95.len() - 1].0);
    assert!(
        first < 150.0 && last > 1250.0,
        "p95 spans x {first}..{last}"
    );
    // Gantt stretches: three jobs, fft in two running and one paused stretch.
    assert!(svg.rects >= 6, "{} rects", svg.rects);
    assert_eq!(
        png_size(&out.with_extension("png")),
        (1400, svg.height as u32)
    );
}

/// The fixture's job ends: (Unix seconds, job name, id).
fn job_ends() -> Vec<(f64, String, u64)> {
    std::fs::read_to_string(fixture().join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "end" && v["id"].is_u64())
        .map(|v| {
            (
                v["time_ms"].as_u64().unwrap() as f64 / 1e3,
                v["job"].as_str().unwrap().to_string(),
                v["id"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_span_narrows_the_axis() {
    let ends = job_ends();
    let (t, name, id) = ends.iter().max_by(|a, b| a.0.total_cmp(&b.0)).unwrap();
    let (since, until) = (t - 5.0, t + 5.0);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let o = report(
        &[
            "--state-dir",
            fixture().to_str().unwrap(),
            "--since",
            &format!("{since:.3}"),
            "--until",
            &format!("{until:.3}"),
        ],
        &out,
    );
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(summary.contains("(10 s)"), "{summary}");
    let svg = parse_svg(&out.with_extension("svg"));
    assert!(svg.has_text(&format!("{name} #{id} (succeeded)")));
    // Jobs that ended before the span are left out.
    for (t, name, id) in ends.iter().filter(|e| e.0 < since) {
        assert!(
            !svg.has_text(&format!("{name} #{id} (succeeded)")),
            "{name} ended at {t}"
        );
    }
}

#[test]
fn no_service_still_draws_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let events = fixture().join("events.jsonl");
    let o = report(
        &[
            "--events",
            events.to_str().unwrap(),
            "--history",
            dir.path().join("none").to_str().unwrap(),
        ],
        &out,
    );
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(summary.contains("no service was monitored"), "{summary}");
    assert!(summary.contains("3 jobs"), "{summary}");
    let svg = parse_svg(&out.with_extension("svg"));
    assert!(svg.has_text("no service latency in this span (no service monitored)"));
    assert!(svg.has_text("fft #1 (succeeded)"));
    assert!(svg.series(P95).is_empty());
}

#[test]
fn no_jobs_still_draws_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let o = report(
        &[
            "--events",
            dir.path().join("none.jsonl").to_str().unwrap(),
            "--history",
            fixture().join("history").to_str().unwrap(),
        ],
        &out,
    );
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary.contains("no batch jobs ran in this span"),
        "{summary}"
    );
    let svg = parse_svg(&out.with_extension("svg"));
    assert!(svg.has_text("no batch jobs ran in this span"));
    assert!(!svg.series(P95).is_empty());
}

#[test]
fn nothing_at_all_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["report", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to report"));
}

#[test]
fn stats_exports_a_span_of_the_history_without_a_daemon() {
    let all =
        lowsched::store::history::read_intervals(&fixture().join("history"), None, None).unwrap();
    let since = all[all.len() / 2].start_unix_s + 0.5;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("span.hlog");
    let o = Command::new(BIN)
        .args(["--socket", "/nonexistent/s.sock", "stats", "--hlog"])
        .arg(&out)
        .arg("--state-dir")
        .arg(fixture())
        .args(["--since", &format!("{since:.3}")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("windows of the history"), "{err}");
    let back = lowsched::store::history::read_hlog(&out).unwrap();
    let want: Vec<f64> = all
        .iter()
        .filter(|i| i.start_unix_s + i.duration_s > since)
        .map(|i| i.start_unix_s)
        .collect();
    let got: Vec<f64> = back.iter().map(|i| i.start_unix_s).collect();
    assert_eq!(got.len(), want.len());
    assert!(!got.is_empty());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 0.002, "{g} vs {w}");
    }
}
