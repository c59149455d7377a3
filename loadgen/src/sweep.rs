//! `loadgen sweep`: latency against offered load. One run at `--rate max` measures the
//! engine's maximum; then runs offer 10%, 20%, ... 100% of it (`--steps`), each for
//! `--step-seconds`, and report what was acked and the ack latency percentiles at each. The
//! result is a JSON report and one self-contained HTML page of SVG charts (latency against
//! offered load; throughput and p99 over time), which fetches nothing.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::client::{Report, RunOpts, run};

/// How a sweep runs: `base` for every run (target, workload, connections, ...), with the rate
/// and duration set per run.
pub struct SweepOpts {
    pub base: RunOpts,
    /// Offered loads: `steps` even fractions of the maximum, up to all of it.
    pub steps: usize,
    pub step_duration: Duration,
    /// How long the run that measures the maximum lasts.
    pub max_duration: Duration,
}

/// What a sweep found (the JSON report).
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    pub workload: String,
    pub target: String,
    pub connections: usize,
    pub batch_envelopes: usize,
    /// Events per second acked by the run at `--rate max`.
    pub max_events_per_sec: f64,
    pub max_run: Report,
    pub steps: Vec<Step>,
}

/// One offered load.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Of the measured maximum.
    pub offered_fraction: f64,
    pub offered_events_per_sec: f64,
    pub acked_events_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub events_failed: u64,
    pub run: Report,
}

/// Runs the sweep; `on_step` hears of each run as it ends (for progress lines).
pub fn sweep(opts: &SweepOpts, mut on_step: impl FnMut(&str)) -> Result<Sweep, String> {
    if opts.steps == 0 {
        return Err("--steps must be at least 1".into());
    }
    // `base.stop` interrupts the sweep; each run has a flag of its own (a run sets its flag
    // when it ends), set when the sweep is interrupted.
    let interrupt = opts.base.stop.clone();
    let interrupted = || {
        interrupt
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    };
    let with = |rate: Option<f64>, duration: Duration| -> Result<Report, String> {
        let mut o = opts.base.clone();
        o.rate = rate;
        o.duration = duration;
        o.events = None;
        let flag = Arc::new(AtomicBool::new(false));
        o.stop = Some(flag.clone());
        let Some(interrupt) = interrupt.clone() else {
            return run(&o);
        };
        let watcher = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if interrupt.load(Ordering::Relaxed) {
                    flag.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let r = run(&o);
        if let Some(f) = &o.stop {
            f.store(true, Ordering::Relaxed);
        }
        let _ = watcher.join();
        r
    };
    let max_run = with(None, opts.max_duration)?;
    let max = max_run.events_per_sec;
    on_step(&format!(
        "max: {max:.0} events/s acked, p99 {} µs",
        max_run.latency_us.p99
    ));
    if max < 1.0 {
        return Err("the run at --rate max acked nothing".into());
    }
    let mut steps = Vec::new();
    for k in 1..=opts.steps {
        if interrupted() {
            break;
        }
        let fraction = k as f64 / opts.steps as f64;
        let offered = max * fraction;
        let r = with(Some(offered), opts.step_duration)?;
        let step = Step {
            offered_fraction: fraction,
            offered_events_per_sec: offered,
            acked_events_per_sec: r.events_per_sec,
            p50_us: r.latency_us.p50,
            p99_us: r.latency_us.p99,
            p999_us: r.latency_us.p999,
            events_failed: r.events_failed,
            run: r,
        };
        on_step(&format!(
            "{:>3.0}%: offered {:.0}, acked {:.0} events/s, p50 {} µs, p99 {} µs, p999 {} µs",
            fraction * 100.0,
            offered,
            step.acked_events_per_sec,
            step.p50_us,
            step.p99_us,
            step.p999_us
        ));
        steps.push(step);
    }
    Ok(Sweep {
        workload: opts.base.workload.to_string(),
        target: opts.base.target.clone(),
        connections: opts.base.connections,
        batch_envelopes: opts.base.batch_envelopes,
        max_events_per_sec: max,
        max_run,
        steps,
    })
}

/// Writes `sweep.json` and `sweep.html` into `dir` (made if need be); returns their paths.
pub fn write(
    s: &Sweep,
    dir: &std::path::Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    let err = |p: &std::path::Path, e: std::io::Error| format!("{}: {e}", p.display());
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let json = dir.join("sweep.json");
    let page = dir.join("sweep.html");
    let text = serde_json::to_string_pretty(s).expect("a sweep serializes");
    std::fs::write(&json, text + "\n").map_err(|e| err(&json, e))?;
    std::fs::write(&page, html(s)).map_err(|e| err(&page, e))?;
    Ok((json, page))
}

/// One line of a chart: its name, colour and points.
struct Series<'a> {
    name: &'a str,
    colour: &'a str,
    points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;

/// Escapes text for HTML and SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A number as a short axis label (`1.2M`, `350k`, `42`).
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        let m = format!("{:.3}", v / 1e6);
        format!("{}M", m.trim_end_matches('0').trim_end_matches('.'))
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A line chart as an SVG element; `log_y` puts the y axis on a log scale (latencies span
/// decades).
fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>], log_y: bool) -> String {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let fy = |y: f64| if log_y { y.max(1.0).log10() } else { y };
    let (ly0, ly1) = if log_y {
        (fy(y0).floor(), fy(y1).ceil().max(fy(y0).floor() + 1.0))
    } else {
        (0.0, if y1 > 0.0 { y1 * 1.1 } else { 1.0 })
    };
    let w = WIDTH - LEFT - RIGHT;
    let h = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * w;
    let py = |y: f64| TOP + h - (fy(y) - ly0) / (ly1 - ly0) * h;
    let mut o = String::new();
    let _ = write!(
        o,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"##
    );
    let _ = write!(
        o,
        r##"<text x="{}" y="18" font-size="14" font-weight="bold">{}</text>"##,
        LEFT,
        esc(title)
    );
    // Grid and y ticks.
    let y_ticks: Vec<f64> = if log_y {
        (ly0 as i32..=ly1 as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|i| ly1 * f64::from(i) / 5.0).collect()
    };
    for v in y_ticks {
        let y = py(v);
        let _ = write!(
            o,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + w,
            LEFT - 6.0,
            y + 4.0,
            short(v)
        );
    }
    for i in 0..=5 {
        let v = x0 + (x1 - x0) * f64::from(i) / 5.0;
        let x = px(v);
        let _ = write!(
            o,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + h,
            TOP + h + 16.0,
            short(v)
        );
    }
    let _ = write!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{w}" height="{h}" fill="none" stroke="#888"/>"##
    );
    let _ = write!(
        o,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
        LEFT + w / 2.0,
        HEIGHT - 8.0,
        esc(x_label)
    );
    let _ = write!(
        o,
        r##"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        TOP + h / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let line: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            o,
            r##"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"##,
            s.colour,
            line.join(" ")
        );
        for &(x, y) in &s.points {
            let _ = write!(
                o,
                r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"><title>{}: {} at {}</title></circle>"##,
                px(x),
                py(y),
                s.colour,
                esc(s.name),
                short(y),
                short(x)
            );
        }
        let lx = LEFT + 10.0 + 110.0 * i as f64;
        let _ = write!(
            o,
            r##"<rect x="{lx:.1}" y="{:.1}" width="12" height="3" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"##,
            TOP + 10.0,
            s.colour,
            lx + 16.0,
            TOP + 14.0,
            esc(s.name)
        );
    }
    o.push_str("</svg>");
    o
}

/// The sweep as one HTML page: its charts and a table of the steps, with nothing fetched.
pub fn html(s: &Sweep) -> String {
    let steps = &s.steps;
    let by_load = |f: fn(&Step) -> u64| -> Vec<(f64, f64)> {
        steps
            .iter()
            .map(|st| (st.offered_events_per_sec, f(st) as f64))
            .collect()
    };
    let latency = chart(
        "Ack latency against offered load",
        "offered events/s",
        "batch ack latency, µs (log)",
        &[
            Series {
                name: "p50",
                colour: "#1f77b4",
                points: by_load(|st| st.p50_us),
            },
            Series {
                name: "p99",
                colour: "#d62728",
                points: by_load(|st| st.p99_us),
            },
            Series {
                name: "p999",
                colour: "#9467bd",
                points: by_load(|st| st.p999_us),
            },
        ],
        true,
    );
    let acked = chart(
        "Acked against offered",
        "offered events/s",
        "acked events/s",
        &[
            Series {
                name: "acked",
                colour: "#2ca02c",
                points: steps
                    .iter()
                    .map(|st| (st.offered_events_per_sec, st.acked_events_per_sec))
                    .collect(),
            },
            Series {
                name: "offered",
                colour: "#aaa",
                points: steps
                    .iter()
                    .map(|st| (st.offered_events_per_sec, st.offered_events_per_sec))
                    .collect(),
            },
        ],
        false,
    );
    // The runs back to back: the max run, then each step, on one clock.
    let mut throughput = Vec::new();
    let mut p99 = Vec::new();
    let mut offset = 0;
    for r in std::iter::once(&s.max_run).chain(steps.iter().map(|st| &st.run)) {
        for t in &r.timeline {
            throughput.push(((offset + t.t_s) as f64, t.events_per_sec as f64));
            p99.push(((offset + t.t_s) as f64, t.p99_us as f64));
        }
        offset += r.timeline.last().map_or(0, |t| t.t_s);
    }
    let over_time = chart(
        "Throughput over time (the max run, then each step)",
        "seconds",
        "events/s acked",
        &[Series {
            name: "acked/s",
            colour: "#2ca02c",
            points: throughput,
        }],
        false,
    );
    let p99_time = chart(
        "p99 ack latency over time",
        "seconds",
        "p99 µs (log)",
        &[Series {
            name: "p99",
            colour: "#d62728",
            points: p99,
        }],
        true,
    );
    let mut rows = String::new();
    for st in steps {
        let _ = write!(
            rows,
            "<tr><td>{:.0}%</td><td>{:.0}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            st.offered_fraction * 100.0,
            st.offered_events_per_sec,
            st.acked_events_per_sec,
            st.p50_us,
            st.p99_us,
            st.p999_us,
            st.events_failed
        );
    }
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sluice sweep: {workload}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}svg{{display:block;margin:1em 0}}</style>
</head><body>
<h1>sluice: latency against offered load ({workload})</h1>
<p>Target {target}, {connections} connections, {batch} envelopes a batch. The run at
<code>--rate max</code> acked <b>{max:.0} events/s</b> (p99 {max_p99} µs); each step then offered a
fraction of it. Latency is each batch's, from when it was due to be sent to its ack.</p>
{latency}
{acked}
{over_time}
{p99_time}
<table><tr><th>offered</th><th>offered events/s</th><th>acked events/s</th><th>p50 µs</th><th>p99 µs</th><th>p999 µs</th><th>failed</th></tr>
{rows}</table>
</body></html>
"##,
        workload = esc(&s.workload),
        target = esc(&s.target),
        connections = s.connections,
        batch = s.batch_envelopes,
        max = s.max_events_per_sec,
        max_p99 = s.max_run.latency_us.p99,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Latency, Tick};

    fn report(rate: f64, p99: u64) -> Report {
        Report {
            workload: "w1".into(),
            seed: 1,
            target: "127.0.0.1:7400".into(),
            rate: format!("{rate}"),
            connections: 4,
            batch_envelopes: 128,
            events_sent: 10,
            events_acked: 10,
            events_failed: 0,
            envelopes_dead_lettered: 0,
            batches_acked: 1,
            batches_failed: 0,
            duration_s: 1.0,
            events_per_sec: rate,
            latency_us: Latency {
                p50: p99 / 3,
                p90: p99 / 2,
                p99,
                p999: p99 * 2,
                max: p99 * 3,
            },
            pool_events: 10,
            frames_resealed: 0,
            timeline: (1..=3)
                .map(|t| Tick {
                    t_s: t,
                    events_per_sec: rate as u64,
                    p99_us: p99,
                })
                .collect(),
        }
    }

    /// The page stands alone: every step in its table, four charts, and no address to fetch.
    #[test]
    fn axis_labels_are_short() {
        assert_eq!(short(1_000_000.0), "1M");
        assert_eq!(short(1_250_000.0), "1.25M");
        assert_eq!(short(350_000.0), "350k");
        assert_eq!(short(42.0), "42");
        assert_eq!(short(0.0), "0");
    }

    #[test]
    fn the_page_has_its_charts_and_fetches_nothing() {
        let steps: Vec<Step> = (1..=4)
            .map(|k| {
                let r = report(250_000.0 * f64::from(k), 300 * k as u64);
                Step {
                    offered_fraction: f64::from(k) / 4.0,
                    offered_events_per_sec: 250_000.0 * f64::from(k),
                    acked_events_per_sec: r.events_per_sec,
                    p50_us: r.latency_us.p50,
                    p99_us: r.latency_us.p99,
                    p999_us: r.latency_us.p999,
                    events_failed: 0,
                    run: r,
                }
            })
            .collect();
        let s = Sweep {
            workload: "w1".into(),
            target: "127.0.0.1:7400".into(),
            connections: 4,
            batch_envelopes: 128,
            max_events_per_sec: 1_000_000.0,
            max_run: report(1_000_000.0, 2000),
            steps,
        };
        let page = html(&s);
        assert_eq!(page.matches("<svg").count(), 4);
        assert_eq!(page.matches("<tr><td>").count(), 4);
        assert!(page.contains("<td>100%</td>"));
        // The only URL is the SVG namespace, which names and fetches nothing.
        let fetches = ["src=", "href=", "url(", "@import", "<script", "<link"];
        for f in fetches {
            assert!(!page.contains(f), "{f} in the page");
        }
        assert!(page.contains("polyline"));
    }
}
