//! Reading a pipeline file with positions: every problem is reported with
//! `file:line:column` and the dotted key it concerns, and as many problems as
//! possible are found in one pass.
//!
//! serde stops at the first error, so the document is first parsed into a
//! spanned tree (toml's `DeTable`), then each section is deserialized on its
//! own: one mistake per section is reported, not one per file. Value checks
//! ([`PipelineSpec::value_problems`]) then run on the typed result and are
//! located by looking their key up in the spanned tree.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::memory::{Manifests, memory_problems, plan};
use crate::model::bundle::{Bundle, Verify};
use crate::model::memory::parse_size;
use crate::spec::common::ModelContexts;
use crate::spec::models::ModelsSpec;
use crate::spec::run::RunSpec;
use crate::spec::{BASE_VARIANT, PipelineSpec, SectionReader, StageName, StagesSpec};
use crate::vocab::roles::ModelRole;

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SpecProblem {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// Dotted key the problem concerns (`stages.pairs.min_margin`), or `` for the file.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Errors at the pipeline-file boundary.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The file was read but is not a valid pipeline.
    #[error("{}", ProblemList { file: path, problems })]
    Invalid { path: PathBuf, problems: Vec<SpecProblem> },
}

struct ProblemList<'a> {
    file: &'a Path,
    problems: &'a [SpecProblem],
}

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        writeln!(f, "{}: {count} problem{} in pipeline file", self.file.display(), if count == 1 { "" } else { "s" })?;
        for (i, p) in self.problems.iter().enumerate() {
            let key = if p.key.is_empty() { String::new() } else { format!("`{}`: ", p.key) };
            write!(f, "{}:{}:{}: {key}{}", self.file.display(), p.line, p.column, p.message)?;
            if i + 1 < count {
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

/// A pipeline file that passed validation, with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    /// The typed pipeline (the base, without its variants).
    pub spec: PipelineSpec,
    /// The file it was read from.
    pub file: PathBuf,
    /// The directory relative paths in the file are resolved against.
    pub base_dir: PathBuf,
    /// The `[variants.NAME]` pipelines: the base with each overlay merged in, by name.
    pub variants: Vec<(String, PipelineSpec)>,
}

/// Reads and validates the pipeline file at `path`.
pub fn load(path: &Path) -> Result<LoadedSpec, SpecError> {
    load_checking(path, true)
}

/// Like [`load`], without holding the memory plan against `[run]
/// device_memory`: `croco plan` shows a plan that does not fit.
pub fn load_for_plan(path: &Path) -> Result<LoadedSpec, SpecError> {
    load_checking(path, false)
}

fn load_checking(path: &Path, check_memory: bool) -> Result<LoadedSpec, SpecError> {
    let source =
        std::fs::read_to_string(path).map_err(|source| SpecError::Read { path: path.to_path_buf(), source })?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() { PathBuf::from(".") } else { base_dir };
    let bundles = BundleChecks { dir: &base_dir, memory: check_memory };
    let (spec, variants) = check(&source, path, Some(bundles))?;
    Ok(LoadedSpec { spec, file: path.to_path_buf(), base_dir, variants })
}

/// Parses and validates pipeline text; `path` is only used in messages.
pub fn parse(source: &str, path: &Path) -> Result<PipelineSpec, SpecError> {
    parse_with_variants(source, path).map(|(spec, _)| spec)
}

/// Parses and validates pipeline text and every variant in it (without
/// reading any bundle: the context checks need [`load`]).
pub fn parse_with_variants(
    source: &str,
    path: &Path,
) -> Result<(PipelineSpec, Vec<(String, PipelineSpec)>), SpecError> {
    check(source, path, None)
}

/// What is checked against the bundles a pipeline names.
#[derive(Clone, Copy)]
struct BundleChecks<'a> {
    /// What relative bundle paths are resolved against.
    dir: &'a Path,
    /// Whether the memory plan is held against `[run] device_memory`.
    memory: bool,
}

/// Parses and validates pipeline text and its variants; with `bundles`,
/// token budgets (and the memory plan) are also checked against the
/// manifests of the bundles found there.
fn check(
    source: &str,
    path: &Path,
    bundles: Option<BundleChecks<'_>>,
) -> Result<(PipelineSpec, Vec<(String, PipelineSpec)>), SpecError> {
    let mut problems = Problems { source, list: Vec::new(), bundles };
    let (document, syntax_errors) = DeTable::parse_recoverable(source);
    for error in syntax_errors {
        problems.toml_error("", &error);
    }
    let mut base = document.get_ref().clone();
    let overlays = base.remove("variants");
    let spec = if problems.list.is_empty() { read_sections(&base, &mut problems) } else { None };
    // Variants are checked only on a valid base, so a base mistake is reported once.
    let variants = match (&spec, overlays) {
        (Some(_), Some(overlays)) if problems.list.is_empty() => read_variants(&base, &overlays, &mut problems),
        _ => vec![],
    };
    match spec {
        Some(spec) if problems.list.is_empty() => Ok((spec, variants)),
        _ => {
            problems.list.sort_by_key(|p| (p.line, p.column));
            Err(SpecError::Invalid { path: path.to_path_buf(), problems: problems.list })
        }
    }
}

/// Each `[variants.NAME]` table merged into the base document and read as a
/// pipeline of its own; its problems are reported with the variant's name.
fn read_variants(
    base: &DeTable<'_>,
    overlays: &Spanned<DeValue<'_>>,
    problems: &mut Problems<'_>,
) -> Vec<(String, PipelineSpec)> {
    let Some(overlays) = overlays.get_ref().as_table() else {
        problems.push(Some(overlays.span()), "variants", "must be a table of [variants.NAME] tables");
        return vec![];
    };
    let mut variants = Vec::new();
    for (name, overlay) in overlays.iter() {
        let name = name.get_ref().to_string();
        let key = format!("variants.{name}");
        let valid_name =
            name != BASE_VARIANT && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        let Some(table) = overlay.get_ref().as_table().filter(|_| valid_name) else {
            let message = "a variant is a table named with letters, digits, `-` or `_` (not `base`)";
            problems.push(Some(overlay.span()), &key, message);
            continue;
        };
        if entry(table, "run").and_then(|run| run.get_ref().as_table()).is_some_and(|run| entry(run, "root").is_some())
        {
            problems.push(Some(overlay.span()), &key, "variants share the base's storage root: remove `run.root`");
            continue;
        }
        if entry(table, "variants").is_some() {
            problems.push(Some(overlay.span()), &key, "variants do not nest");
            continue;
        }
        let mut merged = base.clone();
        merge(&mut merged, table);
        let mut own = Problems { source: problems.source, list: Vec::new(), bundles: problems.bundles };
        let spec = read_sections(&merged, &mut own);
        for mut problem in own.list {
            problem.message = format!("in variant `{name}`: {}", problem.message);
            problems.list.push(problem);
        }
        variants.extend(spec.map(|spec| (name, spec)));
    }
    variants
}

/// Deep-merges `overlay` into `base`: tables merge key by key, any other
/// value replaces the base's.
fn merge<'i>(base: &mut DeTable<'i>, overlay: &DeTable<'i>) {
    for (key, value) in overlay.iter() {
        let existing = base.iter_mut().find(|(k, _)| k.get_ref() == key.get_ref()).map(|(_, v)| v);
        match (existing, value.get_ref()) {
            (Some(existing), DeValue::Table(inner)) if existing.get_ref().is_table() => {
                if let DeValue::Table(target) = existing.get_mut() {
                    merge(target, inner);
                }
            }
            (Some(existing), _) => *existing = value.clone(),
            (None, _) => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Collected problems plus the text they point into.
struct Problems<'a> {
    source: &'a str,
    list: Vec<SpecProblem>,
    /// Where relative bundle paths lead, when bundles are to be read.
    bundles: Option<BundleChecks<'a>>,
}

impl Problems<'_> {
    fn push(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        let (line, column) = line_column(self.source, span.map_or(0, |s| s.start));
        self.list.push(SpecProblem { line, column, key: key.to_string(), message: message.into() });
    }

    /// Adds value problems, each located at its key (or nearest ancestor).
    fn locate_all(&mut self, document: &DeTable<'_>, found: Vec<(String, String)>) {
        for (key, message) in found {
            let span = locate(document, &key);
            self.push(span, &key, message);
        }
    }

    fn toml_error(&mut self, key: &str, error: &toml::de::Error) {
        self.push(error.span(), key, error.message().trim().to_string());
    }
}

/// 1-based line and character column of byte `offset` in `source`.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The manifest of each `[models]` bundle that can be read under `dir`
/// (the manifest only: the plan opens every bundle again, checks its files
/// and names what is wrong with it, URLs and missing bundles included).
pub fn model_manifests(models: &ModelsSpec, dir: &Path) -> Manifests {
    let roles = [
        (ModelRole::Judge, &models.judge),
        (ModelRole::OffPolicy, &models.off_policy),
        (ModelRole::Policy, &models.policy),
        (ModelRole::Reference, &models.reference),
        (ModelRole::Reward, &models.reward),
    ];
    let manifest = |location: &String| Some(Bundle::open(&dir.join(location), Verify::Manifest).ok()?.manifest);
    roles.into_iter().filter_map(|(role, location)| Some((role, manifest(location.as_ref()?)?))).collect()
}

const TOP_LEVEL: [&str; 4] = ["run", "models", "stages", "variants"];

/// Reads every section on its own and value-checks each one that parsed, so
/// one file shows all its problems; `None` when any section failed.
fn read_sections(document: &DeTable<'_>, problems: &mut Problems<'_>) -> Option<PipelineSpec> {
    for (key, _) in document.iter() {
        if !TOP_LEVEL.contains(&key.get_ref().as_ref()) {
            let message = format!("unknown section `{}`, expected one of: {}", key.get_ref(), TOP_LEVEL.join(", "));
            problems.push(Some(key.span()), key.get_ref(), message);
        }
    }
    let run: Option<RunSpec> = required_section(document, "run", problems);
    if let Some(run) = &run {
        problems.locate_all(document, run.value_problems());
    }
    let models: Option<ModelsSpec> = match entry(document, "models") {
        Some(value) => section(value, "models", problems),
        None => Some(ModelsSpec::default()),
    };
    let stages = read_stages(document, problems);
    if let (Some(stages), Some(models)) = (&stages, &models) {
        problems.locate_all(document, stages.model_problems(models));
    }
    let spec = PipelineSpec { run: run?, models: models?, stages: stages? };
    if let Some(bundles) = problems.bundles {
        let manifests = model_manifests(&spec.models, bundles.dir);
        let contexts: ModelContexts =
            manifests.iter().map(|(role, m)| (*role, m.architecture.max_position_embeddings)).collect();
        problems.locate_all(document, spec.stages.context_problems(&contexts));
        if let Some(device_memory) = spec.run.device_memory.as_deref().and_then(parse_size)
            && bundles.memory
        {
            problems.locate_all(document, memory_problems(&plan(&spec, &manifests), device_memory));
        }
    }
    Some(spec)
}

fn read_stages(document: &DeTable<'_>, problems: &mut Problems<'_>) -> Option<StagesSpec> {
    let Some(value) = entry(document, "stages") else {
        problems.push(None, "stages", "missing section [stages]: a pipeline needs at least one stage");
        return None;
    };
    let Some(table) = value.get_ref().as_table() else {
        problems.push(Some(value.span()), "stages", "must be a table of stage sections");
        return None;
    };
    let names: Vec<&str> = StageName::ALL.iter().map(|s| s.name()).collect();
    for (key, _) in table.iter() {
        if !names.contains(&key.get_ref().as_ref()) {
            let message = format!("unknown stage `{}`, expected one of: {}", key.get_ref(), names.join(", "));
            problems.push(Some(key.span()), &format!("stages.{}", key.get_ref()), message);
        }
    }
    let before = problems.list.len();
    let stages = StagesSpec::read(&mut StageSections { table, problems });
    // Dependencies are only meaningful once every stage section was read.
    let complete = problems.list.len() == before;
    problems.locate_all(document, stages.value_problems());
    if complete {
        problems.locate_all(document, stages.dependency_problems());
    }
    complete.then_some(stages)
}

fn entry<'a, 'i>(table: &'a DeTable<'i>, name: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    table.iter().find(|(key, _)| key.get_ref().as_ref() == name).map(|(_, value)| value)
}

fn required_section<T: DeserializeOwned>(document: &DeTable<'_>, name: &str, problems: &mut Problems<'_>) -> Option<T> {
    match entry(document, name) {
        Some(value) => section(value, name, problems),
        None => {
            problems.push(None, name, format!("missing section [{name}]"));
            None
        }
    }
}

/// The `[stages]` table of a document, read section by section; a section
/// that fails to deserialize is recorded in `problems` and read as absent.
struct StageSections<'t, 'i, 'p, 's> {
    table: &'t DeTable<'i>,
    problems: &'p mut Problems<'s>,
}

impl SectionReader for StageSections<'_, '_, '_, '_> {
    fn section<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        let name = key.rsplit('.').next().unwrap_or(key);
        entry(self.table, name).and_then(|value| section(value, key, self.problems))
    }
}

fn section<T: DeserializeOwned>(value: &Spanned<DeValue<'_>>, key: &str, problems: &mut Problems<'_>) -> Option<T> {
    let deserializer = ValueDeserializer::from(value.clone());
    match T::deserialize(deserializer) {
        Ok(typed) => Some(typed),
        Err(error) => {
            problems.toml_error(key, &error);
            None
        }
    }
}

/// The span of the value at dotted `key` (`a.b[2].c`), or of its nearest
/// existing ancestor, so a problem about an absent key points at its section.
fn locate(document: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    let mut span = None;
    let mut table = document;
    let mut current: Option<&Spanned<DeValue<'_>>> = None;
    for segment in key.split('.') {
        let (name, index) = split_index(segment);
        if let Some(value) = current {
            match value.get_ref().as_table() {
                Some(inner) => table = inner,
                None => break,
            }
        }
        let Some(mut value) = entry(table, name) else {
            break;
        };
        if let Some(i) = index {
            match value.get_ref().as_array().and_then(|items| items.get(i)) {
                Some(item) => value = item,
                None => break,
            }
        }
        span = Some(value.span());
        current = Some(value);
    }
    span
}

fn split_index(segment: &str) -> (&str, Option<usize>) {
    match segment.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
        None => (segment, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_characters_not_bytes() {
        // "é" is two bytes: byte 5 is the third character of line 2.
        assert_eq!(line_column("a\nbé c", 5), (2, 3));
        assert_eq!(line_column("", 0), (1, 1));
    }

    #[test]
    fn locate_walks_tables_and_array_items() {
        let source = "[run]\nlanguages = [\"en\", \"xx\"]\n";
        let (document, errors) = DeTable::parse_recoverable(source);
        assert!(errors.is_empty());
        let span = locate(document.get_ref(), "run.languages[1]").unwrap();
        assert_eq!(&source[span], "\"xx\"");
        let fallback = locate(document.get_ref(), "run.root").unwrap();
        // An absent key points at its section.
        assert!(fallback.start < source.find("languages").unwrap(), "{fallback:?}");
    }
}
