//! Draws the serving comparison (docs/BENCHMARKS.md) as grouped bars from the
//! RESULT lines of the peers' `run_all.sh` output files (`docs/bench/*_to0.txt`).
//!
//! ```text
//! cargo run -p fuse-live-testkit --bin serving_chart -- --out PATH --title TITLE \
//!     --workloads stat1,orc1,seq1 \
//!     --series 'NAME=LABEL@FILE[:FIRST-LAST][,FILE...]' ... [--caption LINE] ...
//! ```
//!
//! A RESULT line reads `RESULT LABEL WORKLOAD MEDIAN UNIT [REP REP ...] ...`. For each
//! series and workload, the bar is the median of the medians of the matching lines in
//! the series' files (only lines FIRST to LAST, 1-based, when given), the whisker the
//! lowest and highest of all their repetitions. One panel per workload, each with its
//! own scale and unit.
use std::process::ExitCode;

use fuse_live_testkit::chart::{Bar, Bars, Panel};

type Res<T> = Result<T, String>;

/// One series: its name and where its figures come from.
struct Series {
    name: String,
    label: String,
    files: Vec<(String, Option<(usize, usize)>)>,
}

/// One RESULT line.
struct Line {
    label: String,
    workload: String,
    median: f64,
    unit: String,
    reps: Vec<f64>,
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serving_chart: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Res<()> {
    let (mut out, mut title, mut workloads) = (None, String::new(), Vec::new());
    let (mut series, mut caption) = (Vec::new(), Vec::new());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--out" => out = Some(value()?),
            "--title" => title = value()?,
            "--workloads" => {
                workloads = value()?.split(',').map(str::to_owned).collect();
            }
            "--series" => series.push(parse_series(&value()?)?),
            "--caption" => caption.push(value()?),
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    let out = out.ok_or("--out PATH is missing")?;
    if series.is_empty() || workloads.is_empty() {
        return Err("give --workloads and at least one --series".into());
    }
    let mut panels: Vec<Panel> = workloads
        .iter()
        .map(|w| Panel {
            title: w.clone(),
            unit: String::new(),
            bars: Vec::new(),
        })
        .collect();
    for s in &series {
        let mut lines = Vec::new();
        for (file, range) in &s.files {
            lines.extend(read_results(file, *range)?);
        }
        for p in &mut panels {
            let mut found: Vec<&Line> = lines
                .iter()
                .filter(|r| r.label == s.label && r.workload == p.title)
                .collect();
            if found.is_empty() {
                p.bars.push(None);
                continue;
            }
            if let Some(u) = found.iter().map(|r| &r.unit).find(|u| **u != found[0].unit) {
                return Err(format!(
                    "{} {}: mixed units {} and {u}",
                    s.name, p.title, found[0].unit
                ));
            }
            if p.unit.is_empty() {
                p.unit = found[0].unit.clone();
            } else if p.unit != found[0].unit {
                return Err(format!(
                    "{}: mixed units {} and {}",
                    p.title, p.unit, found[0].unit
                ));
            }
            found.sort_by(|a, b| a.median.total_cmp(&b.median));
            let n = found.len();
            // The median of the medians (the mean of the middle two for an even count).
            let value = if n % 2 == 1 {
                found[n / 2].median
            } else {
                (found[n / 2 - 1].median + found[n / 2].median) / 2.0
            };
            let reps = found.iter().flat_map(|r| r.reps.iter().copied());
            let range = reps.fold(None, |acc: Option<(f64, f64)>, v| {
                Some(acc.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
            });
            p.bars.push(Some(Bar { value, range }));
            println!(
                "{} {}: {value:.0} {} from {n} runs {:?}",
                s.name, p.title, p.unit, range
            );
        }
    }
    let chart = Bars {
        title,
        series: series.iter().map(|s| s.name.clone()).collect(),
        panels,
        caption,
    };
    std::fs::write(&out, chart.render()).map_err(|e| format!("{out}: {e}"))?;
    println!("written to {out}");
    Ok(())
}

/// Parses `NAME=LABEL@FILE[:FIRST-LAST][,FILE...]`.
fn parse_series(s: &str) -> Res<Series> {
    let bad = || format!("bad --series {s:?}: want NAME=LABEL@FILE[:FIRST-LAST][,FILE...]");
    let (name, rest) = s.split_once('=').ok_or_else(bad)?;
    let (label, files) = rest.split_once('@').ok_or_else(bad)?;
    let files = files
        .split(',')
        .map(|f| match f.rsplit_once(':') {
            Some((path, range)) => {
                let (a, b) = range.split_once('-').ok_or_else(bad)?;
                let a: usize = a.parse().map_err(|_| bad())?;
                let b: usize = b.parse().map_err(|_| bad())?;
                if a == 0 || b < a {
                    return Err(bad());
                }
                Ok((path.to_owned(), Some((a, b))))
            }
            None => Ok((f.to_owned(), None)),
        })
        .collect::<Res<Vec<_>>>()?;
    if name.is_empty() || label.is_empty() || files.iter().any(|(f, _)| f.is_empty()) {
        return Err(bad());
    }
    Ok(Series {
        name: name.to_owned(),
        label: label.to_owned(),
        files,
    })
}

/// The RESULT lines of `file` (within the 1-based line range, if any).
fn read_results(file: &str, range: Option<(usize, usize)>) -> Res<Vec<Line>> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if range.is_some_and(|(a, b)| n < a || n > b) || !line.starts_with("RESULT ") {
            continue;
        }
        out.push(parse_result(line).ok_or_else(|| format!("{file}:{n}: bad RESULT line"))?);
    }
    Ok(out)
}

/// Parses `RESULT LABEL WORKLOAD MEDIAN UNIT [REP ...] ...`.
fn parse_result(line: &str) -> Option<Line> {
    let mut p = line.split_whitespace().skip(1);
    let (label, workload) = (p.next()?, p.next()?);
    let median: f64 = p.next()?.parse().ok()?;
    let unit = p.next()?;
    let reps = match (line.find('['), line.find(']')) {
        (Some(a), Some(b)) if a < b => line[a + 1..b]
            .split_whitespace()
            .map(|v| v.parse().ok())
            .collect::<Option<Vec<f64>>>()?,
        _ => Vec::new(),
    };
    if !median.is_finite() || reps.iter().any(|v| !v.is_finite()) {
        return None;
    }
    Some(Line {
        label: label.to_owned(),
        workload: workload.to_owned(),
        median,
        unit: unit.to_owned(),
        reps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_result_lines() {
        let r = parse_result(
            "RESULT dev stat1 48361 ops/s [48361 48112 51750] srv_cpu_us_per_op=10.12",
        )
        .unwrap();
        assert_eq!((r.label.as_str(), r.workload.as_str()), ("dev", "stat1"));
        assert_eq!((r.median, r.unit.as_str()), (48361.0, "ops/s"));
        assert_eq!(r.reps, [48361.0, 48112.0, 51750.0]);
        assert!(parse_result("RESULT dev stat1").is_none());
        assert!(parse_result("RESULT dev stat1 x ops/s [1]").is_none());
        assert!(parse_result("RESULT dev stat1 1 ops/s [1 y]").is_none());
        assert!(parse_result("RESULT dev stat1 NaN ops/s").is_none());
    }

    #[test]
    fn parses_series() {
        let s = parse_series("ours io_uring=ours_st_to0@a.txt,b.txt:1-16").unwrap();
        assert_eq!(
            (s.name.as_str(), s.label.as_str()),
            ("ours io_uring", "ours_st_to0")
        );
        assert_eq!(s.files[0], ("a.txt".to_owned(), None));
        assert_eq!(s.files[1], ("b.txt".to_owned(), Some((1, 16))));
        for bad in [
            "x",
            "x=y",
            "x=y@",
            "x=y@f:3-1",
            "x=y@f:0-2",
            "x=y@f:a-b",
            "=y@f",
        ] {
            assert!(parse_series(bad).is_err(), "{bad}");
        }
    }
}
