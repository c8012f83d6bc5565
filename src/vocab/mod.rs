//! The shared vocabulary, below every other layer: the roles models play,
//! the names of the evaluation's tasks and sides, and the statistics of
//! judged comparisons. Ids ([`crate::ids`]) and language codes
//! ([`crate::langs`]) belong to this layer too.

pub mod eval;
pub mod roles;
pub mod stats;
