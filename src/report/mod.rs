//! What the evaluation reports: the statistics of judged comparisons
//! ([`stats`]). Rendering (`croco report`) comes with the evaluate stage.

pub mod stats;
