//! `croco report`: the pipeline's tables gathered ([`data`]) and rendered as
//! one self-contained HTML file ([`html`], charts in [`svg`]) or as Markdown
//! ([`markdown`]).

pub mod cells;
pub mod data;
pub mod html;
pub mod markdown;
pub mod svg;

pub use data::ReportError;

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// One self-contained HTML file.
    Html,
    /// Markdown (headline and task tables).
    Md,
}

/// Renders `data` in `format`.
pub fn render(data: &data::ReportData, format: ReportFormat) -> String {
    match format {
        ReportFormat::Html => html::render(data),
        ReportFormat::Md => markdown::render(data),
    }
}
