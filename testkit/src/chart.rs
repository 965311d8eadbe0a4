//! Minimal SVG charts for the benchmark write-ups (`docs/bench/*.svg`): a latency
//! timeline of every client operation across handoffs, and grouped bars of serving
//! throughput. Hand-written SVG (rectangles, lines, polylines, text), no dependency:
//! see "Benchmark charts" in docs/DESIGN.md for why.
use std::fmt::Write as _;

/// Colours of the charts (a colour-blind-safe palette).
const BLUE: &str = "#4e79a7";
const LIGHT_BLUE: &str = "#a0cbe8";
const ORANGE: &str = "#f28e2b";
const PURPLE: &str = "#7b3294";
const RED: &str = "#d62728";
const GREY: &str = "#555555";
const GRID: &str = "#dddddd";

/// The series colours of [`Bars`], in order.
pub const SERIES_COLOURS: [&str; 6] = ["#9c9c9c", "#b07aa1", BLUE, ORANGE, "#59a14f", "#edc948"];

/// An SVG document being drawn: shapes are appended in order (later on top).
pub struct Svg {
    width: f64,
    height: f64,
    body: String,
}

/// Where a text's x coordinate is: its start, middle or end.
#[derive(Clone, Copy)]
pub enum Anchor {
    /// x is the text's left end.
    Start,
    /// x is the text's middle.
    Middle,
    /// x is the text's right end.
    End,
}

impl Svg {
    /// An empty white canvas of `width` × `height` pixels.
    pub fn new(width: f64, height: f64) -> Svg {
        let mut s = Svg {
            width,
            height,
            body: String::new(),
        };
        s.rect(0.0, 0.0, width, height, "#ffffff", 1.0);
        s
    }

    /// A filled rectangle with the given opacity.
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str, opacity: f64) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{fill}" fill-opacity="{opacity}"/>"#,
            w.max(0.0),
            h.max(0.0)
        );
    }

    /// A straight line; `dash` is an SVG dash array such as `"4 3"`.
    #[allow(clippy::too_many_arguments)]
    pub fn line(
        &mut self,
        x1: f64,
        y1: f64,
        x2: f64,
        y2: f64,
        stroke: &str,
        width: f64,
        dash: Option<&str>,
    ) {
        let dash = dash
            .map(|d| format!(r#" stroke-dasharray="{d}""#))
            .unwrap_or_default();
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="{width}"{dash}/>"#
        );
    }

    /// An open polyline through `points`.
    pub fn polyline(&mut self, points: &[(f64, f64)], stroke: &str, width: f64) {
        if points.is_empty() {
            return;
        }
        let mut p = String::new();
        for (x, y) in points {
            let _ = write!(p, "{x:.1},{y:.1} ");
        }
        let _ = writeln!(
            self.body,
            r#"<polyline points="{}" fill="none" stroke="{stroke}" stroke-width="{width}"/>"#,
            p.trim_end()
        );
    }

    /// A filled circle.
    pub fn circle(&mut self, cx: f64, cy: f64, r: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="{r}" fill="{fill}"/>"#
        );
    }

    /// Text in a sans-serif font of `size` pixels, its baseline at `y`.
    pub fn text(&mut self, x: f64, y: f64, s: &str, size: f64, anchor: Anchor, fill: &str) {
        let anchor = match anchor {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        };
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}" fill="{fill}">{}</text>"#,
            escape(s)
        );
    }

    /// Text turned 90° counter-clockwise around (x, y) (a y-axis title).
    pub fn vtext(&mut self, x: f64, y: f64, s: &str, size: f64) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="middle" fill="{GREY}" transform="rotate(-90 {x:.1} {y:.1})">{}</text>"#,
            escape(s)
        );
    }

    /// The finished document.
    pub fn finish(self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n{}</svg>\n",
            self.body,
            w = self.width,
            h = self.height
        )
    }
}

/// `s` with the XML special characters escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// A duration in seconds as text with a fitting unit: "850 ns", "68 µs", "9.8 ms", "1.2 s".
pub fn fmt_secs(s: f64) -> String {
    let (v, unit) = if s >= 1.0 {
        (s, "s")
    } else if s >= 1e-3 {
        (s * 1e3, "ms")
    } else if s >= 1e-6 {
        (s * 1e6, "µs")
    } else {
        (s * 1e9, "ns")
    };
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

/// An integer with thousands separators: "65,893".
pub fn thousands(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A "nice" tick step (1, 2 or 5 × 10^k) giving about `want` ticks over `span`.
pub fn nice_step(span: f64, want: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / want.max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// One timed operation of a [`Timeline`].
#[derive(Clone, Copy, Debug)]
pub struct Op {
    /// When it ended, in seconds from the start of the timeline.
    pub end_s: f64,
    /// How long it took, in seconds.
    pub latency_s: f64,
    /// False if it failed.
    pub ok: bool,
}

/// An event marked on a [`Timeline`]: a handoff (or a crash and its recovery).
#[derive(Clone, Debug)]
pub struct Event {
    /// The event's whole window (seconds): e.g. from starting the new process until
    /// the old one exited.
    pub window: (f64, f64),
    /// The pause inside it (seconds), when the daemon served nothing, if known.
    pub pause: Option<(f64, f64)>,
    /// A short label drawn above the window, e.g. "handoff 1: pause 1.1 ms".
    pub label: String,
}

/// A latency timeline: every operation's latency against time (log scale), the
/// events marked as bands, failed operations in red.
pub struct Timeline {
    /// The chart's title.
    pub title: String,
    /// The operations, in any order.
    pub ops: Vec<Op>,
    /// The events.
    pub events: Vec<Event>,
    /// Caption lines drawn below the chart (counts, load, command).
    pub caption: Vec<String>,
}

impl Timeline {
    /// The chart as an SVG document. Operations are drawn per pixel column: a band
    /// from the shortest to the longest operation that ended in it (so every
    /// operation is within a band, and the longest ones are its top) and a line
    /// through the columns' medians; failed operations as red dots on top.
    pub fn render(&self) -> String {
        let (w, h) = (1000.0, 474.0 + 16.0 * self.caption.len() as f64);
        let (left, right, top, bottom) = (72.0, 20.0, 92.0, 420.0);
        let pw = w - left - right;
        let mut svg = Svg::new(w, h);
        svg.text(left, 24.0, &self.title, 17.0, Anchor::Start, "#000");

        let t_max = self
            .ops
            .iter()
            .map(|o| o.end_s)
            .chain(self.events.iter().map(|e| e.window.1))
            .fold(0.0f64, f64::max)
            .max(1e-3);
        let lat = |o: &Op| o.latency_s.max(1e-7);
        let (lo, hi) = self.ops.iter().fold((f64::MAX, 0.0f64), |(a, b), o| {
            (a.min(lat(o)), b.max(lat(o)))
        });
        let (lo, hi) = if self.ops.is_empty() {
            (1e-6, 1e-3)
        } else {
            (lo, hi)
        };
        let d_lo = lo.log10().floor();
        let d_hi = hi.log10().ceil().max(d_lo + 1.0);
        let x = |t: f64| left + pw * (t / t_max).clamp(0.0, 1.0);
        let y = |v: f64| {
            let f = (v.max(1e-9).log10() - d_lo) / (d_hi - d_lo);
            bottom - (bottom - top) * f.clamp(0.0, 1.0)
        };

        // Grid and axes.
        let mut d = d_lo;
        while d <= d_hi + 1e-9 {
            let v = 10f64.powf(d);
            svg.line(left, y(v), w - right, y(v), GRID, 1.0, None);
            svg.text(
                left - 6.0,
                y(v) + 4.0,
                &fmt_secs(v),
                11.0,
                Anchor::End,
                GREY,
            );
            d += 1.0;
        }
        let step = nice_step(t_max, 10.0);
        let mut t = 0.0;
        while t <= t_max + 1e-9 {
            svg.line(x(t), bottom, x(t), bottom + 4.0, GREY, 1.0, None);
            let label = if step < 1.0 {
                format!("{t:.1}")
            } else {
                format!("{t:.0}")
            };
            svg.text(x(t), bottom + 17.0, &label, 11.0, Anchor::Middle, GREY);
            t += step;
        }
        svg.line(left, bottom, w - right, bottom, GREY, 1.0, None);
        svg.line(left, top, left, bottom, GREY, 1.0, None);
        svg.text(
            left + pw / 2.0,
            bottom + 34.0,
            "time (s)",
            12.0,
            Anchor::Middle,
            GREY,
        );
        svg.vtext(
            18.0,
            (top + bottom) / 2.0,
            "latency of each operation (log scale)",
            12.0,
        );

        // Events: the window as a light band, the pause as a dark bar, the label.
        for (i, e) in self.events.iter().enumerate() {
            let (a, b) = (x(e.window.0), x(e.window.1));
            svg.rect(a, top, b - a, bottom - top, ORANGE, 0.18);
            if let Some((p, q)) = e.pause {
                let (p, q) = (x(p), x(q));
                let pw = (q - p).max(2.0);
                svg.rect(p, top, pw, bottom - top, PURPLE, 0.75);
            }
            // Alternate label heights so that close events stay readable.
            let ly = top - 6.0 - 14.0 * (i % 2) as f64;
            // Labels of events in the right third end at their window's end.
            if a > left + pw * 0.67 {
                svg.text(b, ly, &e.label, 11.0, Anchor::End, PURPLE);
            } else {
                svg.text(a, ly, &e.label, 11.0, Anchor::Start, PURPLE);
            }
        }

        // Operations, per pixel column.
        let cols = pw.round() as usize;
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); cols.max(1)];
        for o in &self.ops {
            let c = (((o.end_s / t_max) * cols as f64) as usize).min(cols.saturating_sub(1));
            per[c].push(lat(o));
        }
        let mut medians = Vec::new();
        for (c, v) in per.iter_mut().enumerate() {
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            let cx = left + c as f64 + 0.5;
            let (mn, mx) = (v[0], v[v.len() - 1]);
            svg.rect(
                cx - 0.5,
                y(mx),
                1.0,
                (y(mn) - y(mx)).max(1.0),
                LIGHT_BLUE,
                1.0,
            );
            medians.push((cx, y(v[v.len() / 2])));
        }
        svg.polyline(&medians, BLUE, 1.0);
        for o in self.ops.iter().filter(|o| !o.ok) {
            svg.circle(x(o.end_s), y(lat(o)), 3.0, RED);
        }

        // Legend, top right.
        let ly = 46.0;
        let mut lx = left;
        let mut item = |svg: &mut Svg, swatch: &dyn Fn(&mut Svg, f64), label: &str| {
            swatch(svg, lx);
            svg.text(lx + 18.0, ly + 4.0, label, 11.0, Anchor::Start, "#000");
            lx += 34.0 + 6.6 * label.chars().count() as f64;
        };
        item(
            &mut svg,
            &|s, x| s.rect(x, ly - 5.0, 12.0, 10.0, LIGHT_BLUE, 1.0),
            "shortest to longest operation",
        );
        item(
            &mut svg,
            &|s, x| s.line(x, ly, x + 12.0, ly, BLUE, 2.0, None),
            "median",
        );
        item(&mut svg, &|s, x| s.circle(x + 6.0, ly, 3.0, RED), "failed");
        item(
            &mut svg,
            &|s, x| s.rect(x, ly - 5.0, 12.0, 10.0, ORANGE, 0.3),
            "handoff window",
        );
        item(
            &mut svg,
            &|s, x| s.rect(x + 4.0, ly - 5.0, 3.0, 10.0, PURPLE, 0.75),
            "pause (daemon-side stall)",
        );

        for (i, c) in self.caption.iter().enumerate() {
            svg.text(
                left,
                bottom + 58.0 + 16.0 * i as f64,
                c,
                12.0,
                Anchor::Start,
                "#000",
            );
        }
        svg.finish()
    }
}

/// One bar of [`Bars`]: a value with an optional range (e.g. the min and max of
/// the repetitions).
#[derive(Clone, Copy, Debug)]
pub struct Bar {
    /// The bar's height.
    pub value: f64,
    /// The whisker: lowest and highest value, if any.
    pub range: Option<(f64, f64)>,
}

/// One panel (workload) of [`Bars`]: a bar per series, with its own y scale.
#[derive(Clone, Debug)]
pub struct Panel {
    /// The panel's title (the workload).
    pub title: String,
    /// The unit of its values, e.g. "ops/s".
    pub unit: String,
    /// One bar per series (`None`: no figure for that series).
    pub bars: Vec<Option<Bar>>,
}

/// Grouped bars: a panel per workload, a bar per series in each.
pub struct Bars {
    /// The chart's title.
    pub title: String,
    /// The series names (the legend), in bar order.
    pub series: Vec<String>,
    /// The panels.
    pub panels: Vec<Panel>,
    /// Caption lines drawn below the chart.
    pub caption: Vec<String>,
}

impl Bars {
    /// The chart as an SVG document.
    pub fn render(&self) -> String {
        let n = self.panels.len().max(1) as f64;
        let panel_w = 250.0;
        let (left, right, top, bottom) = (20.0, 20.0, 84.0, 360.0);
        // Wide enough for the title and the longest caption line (about 0.55 em a
        // character).
        let text_w = self
            .caption
            .iter()
            .map(|c| 6.6 * c.chars().count() as f64)
            .chain([9.4 * self.title.chars().count() as f64])
            .fold(0.0, f64::max);
        let w = (left + right + panel_w * n)
            .max(left + right + text_w)
            .max(760.0);
        let h = 400.0 + 16.0 * self.caption.len() as f64;
        let mut svg = Svg::new(w, h);
        svg.text(left, 24.0, &self.title, 17.0, Anchor::Start, "#000");

        // Legend.
        let mut lx = left;
        for (i, s) in self.series.iter().enumerate() {
            let c = SERIES_COLOURS[i % SERIES_COLOURS.len()];
            svg.rect(lx, 40.0, 12.0, 12.0, c, 1.0);
            svg.text(lx + 17.0, 50.0, s, 12.0, Anchor::Start, "#000");
            lx += 34.0 + 7.0 * s.chars().count() as f64;
        }

        for (p, panel) in self.panels.iter().enumerate() {
            let x0 = left + panel_w * p as f64 + 56.0;
            let pw = panel_w - 70.0;
            let max = panel
                .bars
                .iter()
                .flatten()
                .map(|b| b.range.map_or(b.value, |r| r.1.max(b.value)))
                .fold(0.0f64, f64::max)
                .max(1.0);
            let step = nice_step(max, 5.0);
            let y_max = (max / step).ceil() * step;
            let y = |v: f64| bottom - (bottom - top) * (v / y_max).clamp(0.0, 1.0);
            let mut t = 0.0;
            while t <= y_max + 1e-9 {
                svg.line(x0, y(t), x0 + pw, y(t), GRID, 1.0, None);
                svg.text(x0 - 5.0, y(t) + 4.0, &thousands(t), 10.0, Anchor::End, GREY);
                t += step;
            }
            svg.line(x0, bottom, x0 + pw, bottom, GREY, 1.0, None);
            svg.line(x0, top, x0, bottom, GREY, 1.0, None);
            svg.text(
                x0 + pw / 2.0,
                bottom + 20.0,
                &format!("{} ({})", panel.title, panel.unit),
                12.0,
                Anchor::Middle,
                "#000",
            );
            let nb = panel.bars.len().max(1) as f64;
            let slot = pw / nb;
            for (i, bar) in panel.bars.iter().enumerate() {
                let bx = x0 + slot * i as f64 + slot * 0.12;
                let bw = slot * 0.76;
                let Some(b) = bar else {
                    svg.text(
                        bx + bw / 2.0,
                        bottom - 6.0,
                        "no run",
                        9.5,
                        Anchor::Middle,
                        GREY,
                    );
                    continue;
                };
                let c = SERIES_COLOURS[i % SERIES_COLOURS.len()];
                svg.rect(bx, y(b.value), bw, bottom - y(b.value), c, 1.0);
                let mut label_y = y(b.value) - 4.0;
                if let Some((lo, hi)) = b.range {
                    let cx = bx + bw / 2.0;
                    svg.line(cx, y(lo), cx, y(hi), "#000", 1.0, None);
                    svg.line(cx - 4.0, y(lo), cx + 4.0, y(lo), "#000", 1.0, None);
                    svg.line(cx - 4.0, y(hi), cx + 4.0, y(hi), "#000", 1.0, None);
                    label_y = label_y.min(y(hi) - 4.0);
                }
                let label = if b.value >= 10_000.0 {
                    format!("{:.1}k", b.value / 1e3)
                } else {
                    thousands(b.value)
                };
                svg.text(bx + bw / 2.0, label_y, &label, 9.5, Anchor::Middle, "#000");
            }
        }
        for (i, c) in self.caption.iter().enumerate() {
            svg.text(
                left,
                bottom + 44.0 + 16.0 * i as f64,
                c,
                12.0,
                Anchor::Start,
                "#000",
            );
        }
        svg.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(65893.4), "65,893");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(fmt_secs(9.8e-3), "9.8 ms");
        assert_eq!(fmt_secs(68e-6), "68 µs");
        assert_eq!(fmt_secs(1e-3), "1 ms");
        assert_eq!(nice_step(9.3, 10.0), 1.0);
        assert_eq!(nice_step(65_000.0, 5.0), 20_000.0);
        assert_eq!(escape("a<b&\"c\">"), "a&lt;b&amp;&quot;c&quot;&gt;");
    }

    #[test]
    fn timeline_marks_failures_and_events() {
        let t = Timeline {
            title: "t <1>".into(),
            ops: vec![
                Op {
                    end_s: 0.1,
                    latency_s: 50e-6,
                    ok: true,
                },
                Op {
                    end_s: 0.5,
                    latency_s: 9e-3,
                    ok: false,
                },
            ],
            events: vec![Event {
                window: (0.2, 0.6),
                pause: Some((0.4, 0.401)),
                label: "handoff 1".into(),
            }],
            caption: vec!["2 operations".into()],
        };
        let s = t.render();
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("t &lt;1&gt;"));
        assert_eq!(
            s.matches(RED).count(),
            2,
            "one failed dot and its legend swatch"
        );
        assert!(s.contains("handoff 1") && s.contains("2 operations"));
    }

    #[test]
    fn bars_skip_missing_values() {
        let b = Bars {
            title: "b".into(),
            series: vec!["x".into(), "y".into()],
            panels: vec![Panel {
                title: "stat1".into(),
                unit: "ops/s".into(),
                bars: vec![
                    Some(Bar {
                        value: 65_893.0,
                        range: Some((60_000.0, 66_000.0)),
                    }),
                    None,
                ],
            }],
            caption: vec![],
        };
        let s = b.render();
        assert!(s.contains("65.9k") && s.contains("stat1 (ops/s)") && s.contains("no run"));
        // The bar of series 0 is drawn, series 1 only in the legend.
        assert_eq!(s.matches(SERIES_COLOURS[1]).count(), 1);
    }
}
