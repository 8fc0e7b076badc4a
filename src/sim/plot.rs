//! The thesis's figures, redrawn from a study as SVG with plotters: Fig. 5.2 (normalised cost vs
//! iterations), Fig. 5.3 (reduction vs c_m) and Figs. 5.1/5.4 (ToR×ToR traffic heat maps); and
//! the protocol's traffic against the data centre's size.
//! Writes only the file it is given.

use super::messages::report::ScalePoint;
use super::study::{Report, SweepPoint};
use plotters::prelude::*;
use scored_proto::PolicyKind;
use std::path::Path;

/// A figure that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot draw the figure: {message}")]
pub struct PlotError {
    pub path: String,
    pub message: String,
}

fn err(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |message| PlotError {
        path: path.display().to_string(),
        message,
    }
}

fn colour(p: PolicyKind) -> RGBColor {
    match p {
        PolicyKind::RoundRobin => RGBColor(0x1f, 0x77, 0xb4),
        PolicyKind::Global => RGBColor(0x2c, 0xa0, 0x2c),
        PolicyKind::Distributed => RGBColor(0xd6, 0x27, 0x28),
        PolicyKind::LoadAware => RGBColor(0xff, 0x7f, 0x0e),
    }
}

const FONT: &str = "sans-serif";

/// One sweep curve of `policy`: S-CORE's single moves solid with dots, group moves dashed with
/// triangles; named in the legend when `legend`.
fn sweep_curve<X, Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<X, Y>>,
    pts: Vec<(f64, f64)>,
    policy: PolicyKind,
    group: bool,
    legend: bool,
    e: &dyn Fn(String) -> PlotError,
) -> Result<(), PlotError>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    if pts.is_empty() {
        return Ok(());
    }
    let col = colour(policy);
    let line = if group {
        chart.draw_series(DashedLineSeries::new(
            pts.clone(),
            6,
            4,
            col.stroke_width(2),
        ))
    } else {
        chart.draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))
    }
    .map_err(|x| e(x.to_string()))?;
    if legend {
        let name = if group {
            format!("{} + group moves", policy.name())
        } else {
            policy.name().to_string()
        };
        let line = line.label(name);
        if group {
            line.legend(move |(x, y)| {
                plotters::element::DashedPathElement::new(
                    vec![(x, y), (x + 20, y)],
                    5,
                    3,
                    col.stroke_width(3),
                )
            });
        } else {
            line.legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(3))
            });
        }
    }
    if group {
        chart.draw_series(
            pts.into_iter()
                .map(|p| TriangleMarker::new(p, 5, col.filled())),
        )
    } else {
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, col.filled())))
    }
    .map_err(|x| e(x.to_string()))?;
    Ok(())
}

/// Fig. 5.2: Eq. 3.1 normalised to the initial cost, against iterations (token rounds), one line
/// per policy, and the centralised plans' cost per round as step lines (incremental grey,
/// re-placement black).
pub fn cost_over_iterations(path: &Path, report: &Report, vms: usize) -> Result<(), PlotError> {
    let e = err(path);
    let c0 = report.initial_costs[0];
    let rounds = report.initial_costs.len() as f64;
    let mut y_max: f64 = 1.05;
    for r in &report.runs {
        for c in &r.costs {
            y_max = y_max.max(c / c0 * 1.02);
        }
    }
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Normalised communication cost vs. iterations (cf. thesis Fig. 5.2)",
            (FONT, 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..rounds, 0f64..y_max)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("iterations (one iteration = every VM holds the token once)")
        .y_desc("cost / initial cost")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    for r in &report.runs {
        // At most ~4000 points a line: the cost only moves in small steps between rounds.
        let stride = (r.costs.len() / 4000).max(1);
        let mut pts: Vec<(f64, f64)> = vec![(0.0, 1.0)];
        for (k, c) in r.costs.iter().enumerate() {
            let boundary = (k + 1) % vms == 0 || k % vms == 0;
            if k % stride == 0 || boundary || k + 1 == r.costs.len() {
                pts.push(((k + 1) as f64 / vms as f64, c / c0));
            }
        }
        let col = colour(r.policy);
        chart
            .draw_series(LineSeries::new(pts, col.stroke_width(2)))
            .map_err(|x| e(x.to_string()))?
            .label(r.policy.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(3)));
    }
    if let Some(b) = &report.baseline {
        let grey = RGBColor(140, 140, 140);
        for (costs, label, col) in [
            (&b.incremental_costs, "centralised, incremental", grey),
            (&b.costs, "centralised, re-placement", BLACK),
        ] {
            let mut pts = Vec::new();
            for (r, c) in costs.iter().enumerate() {
                pts.push((r as f64, c / c0));
                pts.push(((r + 1) as f64, c / c0));
            }
            chart
                .draw_series(LineSeries::new(pts, col.stroke_width(2)))
                .map_err(|x| e(x.to_string()))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(3))
                });
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 15))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// Fig. 5.3: cost reduction after the run against c_m, one line per policy. Left panel: the
/// thesis's range, 0–30%, linear; right panel: every point above 0 on a log axis, to show where
/// the reduction falls.
pub fn reduction_vs_cm(path: &Path, points: &[SweepPoint]) -> Result<(), PlotError> {
    let e = err(path);
    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let root = root
        .titled(
            "Cost reduction vs. migration cost c_m (cf. thesis Fig. 5.3)",
            (FONT, 22),
        )
        .map_err(|x| e(x.to_string()))?;
    let (left, right) = root.split_horizontally(520);
    let x_desc = "c_m, % of the mean per-VM share of the initial cost";
    // Solid with dots: S-CORE's single moves; dashed with triangles: with group moves.
    let series = |policy: PolicyKind, group: bool, keep: &dyn Fn(f64) -> bool| -> Vec<(f64, f64)> {
        points
            .iter()
            .filter(|p| p.policy == policy && p.group == group && keep(p.cm_fraction))
            .map(|p| (p.cm_fraction * 100.0, p.reduction * 100.0))
            .collect()
    };
    {
        let mut chart = ChartBuilder::on(&left)
            .caption("thesis range", (FONT, 16))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..30f64, 0f64..100f64)
            .map_err(|x| e(x.to_string()))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("cost reduction, %")
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(|x| e(x.to_string()))?;
        for group in [false, true] {
            for policy in PolicyKind::ALL {
                let pts = series(policy, group, &|f| f <= 0.3 + 1e-9);
                sweep_curve(&mut chart, pts, policy, group, true, &e)?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .label_font((FONT, 14))
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(|x| e(x.to_string()))?;
    }
    let positive: Vec<f64> = points
        .iter()
        .filter(|p| p.cm_fraction > 0.0)
        .map(|p| p.cm_fraction * 100.0)
        .collect();
    if let (Some(lo), Some(hi)) = (
        positive.iter().copied().reduce(f64::min),
        positive.iter().copied().reduce(f64::max),
    ) {
        let mut chart = ChartBuilder::on(&right)
            .caption("all points above 0, log scale", (FONT, 16))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0f64..100f64)
            .map_err(|x| e(x.to_string()))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("cost reduction, %")
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(|x| e(x.to_string()))?;
        for group in [false, true] {
            for policy in PolicyKind::ALL {
                let pts = series(policy, group, &|f| f > 0.0);
                sweep_curve(&mut chart, pts, policy, group, false, &e)?;
            }
        }
    }
    root.present().map_err(|x| e(x.to_string()))
}

/// What each run of the c_m sweep paid for what it removed: cost reduction against the GiB its
/// migrations sent (log scale), one curve per policy, S-CORE's single moves solid with dots,
/// group moves dashed with triangles; along a curve c_m grows from right to left.
pub fn reduction_vs_migrated(path: &Path, points: &[SweepPoint]) -> Result<(), PlotError> {
    let e = err(path);
    let gib = |p: &SweepPoint| p.migrated_bytes / (1024.0 * 1024.0 * 1024.0);
    let moved: Vec<f64> = points.iter().map(gib).filter(|&g| g > 0.0).collect();
    let (Some(lo), Some(hi)) = (
        moved.iter().copied().reduce(f64::min),
        moved.iter().copied().reduce(f64::max),
    ) else {
        return Ok(());
    };
    let root = SVGBackend::new(path, (760, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Cost reduction vs. bytes migrated, over the c_m sweep",
            (FONT, 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0f64..100f64)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("GiB sent by migrations (each VM's forecast)")
        .y_desc("cost reduction, %")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    for group in [false, true] {
        for policy in PolicyKind::ALL {
            let mut pts: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.policy == policy && p.group == group && gib(p) > 0.0)
                .map(|p| (gib(p), p.reduction * 100.0))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            sweep_curve(&mut chart, pts, policy, group, true, &e)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 13))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// Figs. 5.1/5.4: traffic between ToR switches (racks), log colour scale shared through `max`
/// (so before and after compare), white below 1/1000 of it. The diagonal (traffic that stays inside a
/// rack, which crosses no ToR uplink) is drawn grey. Racks are in topology order, so neighbours
/// share an aggregation switch.
pub fn rack_heat_map(
    path: &Path,
    matrix: &[Vec<f64>],
    max: f64,
    title: &str,
) -> Result<(), PlotError> {
    let e = err(path);
    let n = matrix.len() as i32;
    let root = SVGBackend::new(path, (760, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let (plot, bar) = root.split_horizontally(660);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0i32..n, 0i32..n)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("ToR switch")
        .y_desc("ToR switch")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    // Three decades below the maximum are shown; less is drawn as the lightest shade.
    let decades = 3.0;
    let shade = |v: f64| {
        let t = ((v / max).log10() / decades + 1.0).clamp(0.0, 1.0);
        heat(t)
    };
    let mut cells = Vec::new();
    for (i, row) in matrix.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            // Cells below the colour scale stay white: it keeps the SVG small.
            if v >= max * 10f64.powf(-decades) && i != j {
                cells.push((i as i32, j as i32, shade(v)));
            }
        }
        cells.push((i as i32, i as i32, RGBColor(170, 170, 170)));
    }
    chart
        .draw_series(
            cells
                .into_iter()
                .map(|(i, j, c)| Rectangle::new([(i, j), (i + 1, j + 1)], c.filled())),
        )
        .map_err(|x| e(x.to_string()))?;
    // Colour bar.
    let mut bar_chart = ChartBuilder::on(&bar)
        .margin_top(52)
        .margin_bottom(52)
        .margin_right(40)
        .y_label_area_size(0)
        .right_y_label_area_size(0)
        .build_cartesian_2d(0f64..1f64, -decades..0f64)
        .map_err(|x| e(x.to_string()))?;
    bar_chart
        .draw_series((0..50).map(|k| {
            let lo = -decades + decades * k as f64 / 50.0;
            let hi = lo + decades / 50.0;
            Rectangle::new(
                [(0.0, lo), (0.4, hi)],
                heat((lo + decades) / decades).filled(),
            )
        }))
        .map_err(|x| e(x.to_string()))?;
    for d in 0..=decades as i32 {
        let y = -(d as f64);
        let label = if d == 0 {
            "max".to_string()
        } else {
            format!("1e-{d}")
        };
        bar_chart
            .draw_series(std::iter::once(Text::new(
                label,
                (0.45, y - 0.02),
                (FONT, 12).into_font().color(&BLACK),
            )))
            .map_err(|x| e(x.to_string()))?;
    }
    root.present().map_err(|x| e(x.to_string()))
}

/// White → yellow → red → dark red as `t` goes 0 → 1.
fn heat(t: f64) -> RGBColor {
    let stops = [
        (0.0, (255.0, 255.0, 210.0)),
        (0.35, (254.0, 204.0, 92.0)),
        (0.7, (227.0, 26.0, 28.0)),
        (1.0, (103.0, 0.0, 13.0)),
    ];
    let t = t.clamp(0.0, 1.0);
    for w in stops.windows(2) {
        let ((t0, c0), (t1, c1)) = (w[0], w[1]);
        if t <= t1 {
            let f = (t - t0) / (t1 - t0);
            let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
            return RGBColor(mix(c0.0, c1.0), mix(c0.1, c1.1), mix(c0.2, c1.2));
        }
    }
    RGBColor(103, 0, 13)
}

/// The protocol's growth with the data centre (docs/evaluation.md, "Protocol scale"): bytes per
/// decision (left) and per round (right) of each kind against hosts, log-log, for one run
/// (policy) of each `messages.csv` read back.
pub fn protocol_scale(path: &Path, points: &[ScalePoint], run: &str) -> Result<(), PlotError> {
    let e = err(path);
    let pts: Vec<&ScalePoint> = points
        .iter()
        .filter(|p| p.run == run && p.kind != "total")
        .collect();
    let hosts: Vec<f64> = pts.iter().map(|p| p.hosts as f64).collect();
    let (Some(lo), Some(hi)) = (
        hosts.iter().copied().reduce(f64::min),
        hosts.iter().copied().reduce(f64::max),
    ) else {
        return Err(e(format!("no rows of run `{run}` to draw")));
    };
    let root = SVGBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let root = root
        .titled(
            &format!("Protocol traffic by kind vs. data-centre size ({run})"),
            (FONT, 22),
        )
        .map_err(|x| e(x.to_string()))?;
    let (left, right) = root.split_horizontally(550);
    let mut kinds: Vec<&str> = Vec::new();
    for p in &pts {
        if !kinds.contains(&p.kind.as_str()) {
            kinds.push(&p.kind);
        }
    }
    let palette = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0xe3, 0x77, 0xc2),
        RGBColor(0x7f, 0x7f, 0x7f),
        RGBColor(0xbc, 0xbd, 0x22),
        RGBColor(0x17, 0xbe, 0xcf),
    ];
    let x_range = (lo / 1.3)..(hi * 1.3);
    for (area, caption, per_round) in [
        (&left, "bytes per decision", false),
        (&right, "bytes per round", true),
    ] {
        let value = |p: &ScalePoint| {
            if per_round {
                p.bytes_per_round
            } else {
                p.bytes_per_decision
            }
        };
        let ys: Vec<f64> = pts.iter().map(|p| value(p)).filter(|&v| v > 0.0).collect();
        let y_lo = ys.iter().copied().fold(f64::INFINITY, f64::min).min(1.0);
        let y_hi = ys.iter().copied().fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FONT, 16))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(
                x_range.clone().log_scale(),
                (y_lo / 2.0..y_hi * 2.0).log_scale(),
            )
            .map_err(|x| e(x.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("hosts")
            .y_desc(caption)
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(|x| e(x.to_string()))?;
        for (i, kind) in kinds.iter().enumerate() {
            let mut series: Vec<(f64, f64)> = pts
                .iter()
                .filter(|p| p.kind == *kind && value(p) > 0.0)
                .map(|p| (p.hosts as f64, value(p)))
                .collect();
            series.sort_by(|a, b| a.0.total_cmp(&b.0));
            if series.is_empty() {
                continue;
            }
            let col = palette[i % palette.len()];
            chart
                .draw_series(LineSeries::new(series.clone(), col.stroke_width(2)))
                .map_err(|x| e(x.to_string()))?
                .label(kind.to_string())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(3))
                });
            chart
                .draw_series(series.into_iter().map(|p| Circle::new(p, 4, col.filled())))
                .map_err(|x| e(x.to_string()))?;
        }
        if !per_round {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font((FONT, 12))
                .border_style(BLACK)
                .background_style(WHITE.mix(0.9))
                .draw()
                .map_err(|x| e(x.to_string()))?;
        }
    }
    root.present().map_err(|x| e(x.to_string()))
}
