//! What the evaluation reports: the statistics of judged comparisons
//! ([`stats`], shared with the report stage), and `croco report`: the
//! pipeline's tables gathered ([`data`]) and rendered as one self-contained
//! HTML file ([`html`], charts in [`svg`]) or as Markdown ([`markdown`]).

pub mod cells;
pub mod data;
pub mod html;
pub mod markdown;
pub mod stats;
pub mod svg;

/// Errors while building a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading a table failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A table the report needs has no current version.
    #[error("{0}")]
    NotComputed(String),
    /// A query's rows could not be read.
    #[error("report data: {0}")]
    Data(String),
}

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
