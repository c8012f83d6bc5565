//! Inline SVG charts: grouped bars with intervals, box plots, line charts.
//! Plain strings, no script and no external resource, so the report opens
//! anywhere offline. Every mark carries the class `mark` and every chart a
//! `data-marks` count, which is what the browser test checks.

use std::fmt::Write;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 40.0;

/// A bar's value and its interval, if any.
pub type BarValue = (f64, Option<(f64, f64)>);

/// One series of a bar chart: a value (and maybe an interval) per category.
pub struct Bars<'a> {
    /// Legend label.
    pub name: &'a str,
    /// Fill colour.
    pub color: &'a str,
    /// Per category: the value and its interval.
    pub values: Vec<Option<BarValue>>,
}

/// Escapes text for HTML and SVG.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The vertical pixel of `value` on a `range` axis.
fn y_of(value: f64, (low, high): (f64, f64)) -> f64 {
    let plot = HEIGHT - TOP - BOTTOM;
    TOP + plot * (1.0 - ((value - low) / (high - low)).clamp(0.0, 1.0))
}

fn open(svg: &mut String, title: &str, marks: usize) {
    let _ = write!(
        svg,
        r#"<svg class="chart" data-marks="{marks}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{t}" xmlns="http://www.w3.org/2000/svg"><title>{t}</title><text x="{LEFT}" y="16" class="title">{t}</text>"#,
        t = escape(title)
    );
}

/// Round tick values for an axis over `(low, high)`: a step of 1, 2, 2.5 or
/// 5 times a power of ten giving about `target` intervals, and the range
/// widened to whole steps. Returns the widened range, the ticks, and the
/// decimals a label needs.
pub fn nice_ticks((low, high): (f64, f64), target: usize) -> ((f64, f64), Vec<f64>, usize) {
    let (low, high) = if high > low { (low, high) } else { (low - 0.5, high + 0.5) };
    let raw = (high - low) / target.max(1) as f64;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().map(|m| m * power).find(|s| *s >= raw * 0.999).unwrap_or(power);
    // Snap to whole steps, forgiving float noise (0.30000000000000004 / 0.1).
    let (first, last) = ((low / step + 1e-9).floor(), (high / step - 1e-9).ceil());
    let ticks: Vec<f64> = (0..=(last - first) as usize).map(|i| (first + i as f64) * step).collect();
    let decimals = (0..6).find(|d| ((step * 10f64.powi(*d)).round() - step * 10f64.powi(*d)).abs() < 1e-9);
    ((first * step, last * step), ticks, decimals.unwrap_or(6) as usize)
}

/// Grid lines and labels at round values; returns the axis range the
/// marks are drawn on (the given one widened to whole steps).
fn y_axis(svg: &mut String, range: (f64, f64)) -> (f64, f64) {
    let (range, ticks, decimals) = nice_ticks(range, 4);
    for value in ticks {
        let y = y_of(value, range);
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{tx}" y="{ty:.1}" class="tick" text-anchor="end">{value:.decimals$}</text>"#,
            x2 = WIDTH - RIGHT,
            tx = LEFT - 4.0,
            ty = y + 3.0
        );
    }
    range
}

/// A vertical whisker at `x` from `y1` to `y2` (pixels).
fn whisker(svg: &mut String, x: f64, y1: f64, y2: f64) {
    let _ = write!(svg, r#"<line class="whisker" x1="{x:.1}" x2="{x:.1}" y1="{y1:.1}" y2="{y2:.1}"/>"#);
}

/// The label of category `index` under its slot on the x axis.
fn category_label(svg: &mut String, index: usize, category: &str, slot: f64) {
    let _ = write!(
        svg,
        r#"<text x="{x:.1}" y="{y}" class="tick" text-anchor="middle">{c}</text>"#,
        x = LEFT + slot * (index as f64 + 0.5),
        y = HEIGHT - BOTTOM + 14.0,
        c = escape(category)
    );
}

fn legend(svg: &mut String, entries: &[(&str, &str)]) {
    // Under the title, from the left: titles are long, legends short.
    let mut x = LEFT;
    for (name, color) in entries {
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="22" width="10" height="10" fill="{color}"/><text x="{tx:.1}" y="31" class="tick">{n}</text>"#,
            tx = x + 14.0,
            n = escape(name)
        );
        x += 24.0 + 6.5 * name.chars().count() as f64;
    }
}

/// Grouped bars per category with 95 % interval whiskers and an optional
/// dashed reference line (½ for win rates).
pub fn bar_chart(
    title: &str,
    categories: &[String],
    series: &[Bars<'_>],
    range: (f64, f64),
    reference: Option<f64>,
) -> String {
    let marks = series.iter().flat_map(|s| s.values.iter()).filter(|v| v.is_some()).count();
    let mut svg = String::new();
    open(&mut svg, title, marks);
    let range = y_axis(&mut svg, range);
    let slot = (WIDTH - LEFT - RIGHT) / categories.len().max(1) as f64;
    let bar = (slot * 0.8) / series.len().max(1) as f64;
    for (c, category) in categories.iter().enumerate() {
        let x0 = LEFT + slot * c as f64 + slot * 0.1;
        for (s, series) in series.iter().enumerate() {
            let Some((value, interval)) = series.values.get(c).copied().flatten() else { continue };
            let (x, y, base) = (x0 + bar * s as f64, y_of(value, range), y_of(range.0.max(0.0), range));
            let _ = write!(
                svg,
                r#"<rect class="mark" x="{x:.1}" y="{top:.1}" width="{w:.1}" height="{h:.1}" fill="{color}"><title>{cat} {name}: {value:.3}</title></rect>"#,
                top = y.min(base),
                w = bar - 2.0,
                h = (base - y).abs().max(0.5),
                color = series.color,
                cat = escape(category),
                name = escape(series.name)
            );
            if let Some((low, high)) = interval.filter(|(l, h)| l.is_finite() && h.is_finite()) {
                whisker(&mut svg, x + (bar - 2.0) / 2.0, y_of(low, range), y_of(high, range));
            }
        }
        category_label(&mut svg, c, category, slot);
    }
    if let Some(reference) = reference {
        let y = y_of(reference, range);
        let _ = write!(
            svg,
            r#"<line class="reference" x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}"/>"#,
            x2 = WIDTH - RIGHT
        );
    }
    legend(&mut svg, &series.iter().map(|s| (s.name, s.color)).collect::<Vec<_>>());
    svg.push_str("</svg>");
    svg
}

/// Box plots (quartiles, whiskers at the extremes) of two groups per category.
pub fn box_chart(title: &str, categories: &[String], groups: &[(&str, &str, Vec<Vec<f64>>)]) -> String {
    let values: Vec<f64> = groups.iter().flat_map(|g| g.2.iter().flatten().copied()).collect();
    let marks = groups.iter().flat_map(|g| g.2.iter()).filter(|v| !v.is_empty()).count();
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let range = if low.is_finite() && high > low { (low, high) } else { (low.min(0.0) - 1.0, high.max(0.0) + 1.0) };
    let mut svg = String::new();
    open(&mut svg, title, marks);
    let range = y_axis(&mut svg, range);
    let slot = (WIDTH - LEFT - RIGHT) / categories.len().max(1) as f64;
    let width = (slot * 0.8) / groups.len().max(1) as f64;
    for (c, category) in categories.iter().enumerate() {
        for (g, (name, color, per_category)) in groups.iter().enumerate() {
            let Some(sample) = per_category.get(c).filter(|s| !s.is_empty()) else { continue };
            let [min, q1, median, q3, max] = five_numbers(sample);
            let x = LEFT + slot * c as f64 + slot * 0.1 + width * g as f64;
            whisker(&mut svg, x + (width - 2.0) / 2.0, y_of(max, range), y_of(min, range));
            let _ = write!(
                svg,
                r#"<rect class="mark" x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} {}: median {median:.3}, n={}</title></rect><line class="median" x1="{x:.1}" x2="{:.1}" y1="{my:.1}" y2="{my:.1}"/>"#,
                y_of(q3, range),
                width - 2.0,
                (y_of(q1, range) - y_of(q3, range)).max(0.5),
                escape(category),
                escape(name),
                sample.len(),
                x + width - 2.0,
                my = y_of(median, range)
            );
        }
        category_label(&mut svg, c, category, slot);
    }
    legend(&mut svg, &groups.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>());
    svg.push_str("</svg>");
    svg
}

/// Minimum, quartiles and maximum (linear interpolation between order statistics).
pub fn five_numbers(sample: &[f64]) -> [f64; 5] {
    let mut sorted = sample.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let position = q * (sorted.len() - 1) as f64;
        let (below, above) = (position.floor() as usize, position.ceil() as usize);
        sorted[below] + (sorted[above] - sorted[below]) * (position - below as f64)
    };
    [at(0.0), at(0.25), at(0.5), at(0.75), at(1.0)]
}

/// A line through `points` (x ascending).
pub fn line_chart(title: &str, points: &[(f64, f64)], color: &str) -> String {
    let finite: Vec<(f64, f64)> = points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    let mut svg = String::new();
    open(&mut svg, title, finite.len());
    let (x_low, x_high) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), p| (l.min(p.0), h.max(p.0)));
    let (y_low, y_high) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), p| (l.min(p.1), h.max(p.1)));
    if finite.is_empty() {
        svg.push_str("</svg>");
        return svg;
    }
    let range = y_axis(&mut svg, (y_low, y_high));
    let x_of =
        |x: f64| LEFT + (WIDTH - LEFT - RIGHT) * if x_high > x_low { (x - x_low) / (x_high - x_low) } else { 0.5 };
    let path: Vec<String> = finite.iter().map(|&(x, y)| format!("{:.1},{:.1}", x_of(x), y_of(y, range))).collect();
    let _ = write!(
        svg,
        r#"<polyline class="mark line" fill="none" stroke="{color}" stroke-width="1.5" points="{}"/><text x="{LEFT}" y="{y}" class="tick">step {x_low:.0}</text><text x="{x2}" y="{y}" class="tick" text-anchor="end">step {x_high:.0}</text>"#,
        path.join(" "),
        y = HEIGHT - BOTTOM + 14.0,
        x2 = WIDTH - RIGHT
    );
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate() {
        assert_eq!(five_numbers(&[4.0, 1.0, 3.0, 2.0, 5.0]), [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(five_numbers(&[1.0, 2.0]), [1.0, 1.25, 1.5, 1.75, 2.0]);
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let (range, ticks, decimals) = nice_ticks((0.0, 1.0), 4);
        assert_eq!((range, ticks, decimals), ((0.0, 1.0), vec![0.0, 0.25, 0.5, 0.75, 1.0], 2));
        // A loss curve from 0.6137 to 0.6925: steps of 0.02.
        let (range, ticks, decimals) = nice_ticks((0.6137, 0.6925), 4);
        assert_eq!(decimals, 2);
        assert!((range.0 - 0.6).abs() < 1e-12 && (range.1 - 0.7).abs() < 1e-12, "{range:?}");
        assert_eq!(ticks.len(), 6);
        let (range, ticks, decimals) = nice_ticks((-3.7, 12.2), 4);
        assert_eq!((range, decimals), ((-5.0, 15.0), 0));
        assert_eq!(ticks, vec![-5.0, 0.0, 5.0, 10.0, 15.0]);
        let (range, _, _) = nice_ticks((2.0, 2.0), 4);
        assert!(range.0 < 2.0 && range.1 > 2.0, "a flat series still gets an axis");
    }

    #[test]
    fn charts_count_their_marks_and_escape_text() {
        let bars = Bars { name: "a<b", color: "#000", values: vec![Some((0.5, Some((0.4, 0.6)))), None] };
        let svg = bar_chart("t&t", &["x".into(), "y".into()], &[bars], (0.0, 1.0), Some(0.5));
        assert!(svg.contains(r#"data-marks="1""#) && svg.contains("a&lt;b") && svg.contains("t&amp;t"));
        assert_eq!(svg.matches(r#"class="mark""#).count(), 1);
        let line = line_chart("loss", &[(1.0, 0.7), (2.0, 0.6), (3.0, f64::NAN)], "#123");
        assert!(line.contains(r#"data-marks="2""#));
    }
}
