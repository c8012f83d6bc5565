//! Reading multiple-choice task files: JSONL lines, native or mapped from
//! another benchmark's fields, checked line by line before any model runs so
//! a bad file fails fast and names its line.

use serde_json::{Map, Value};

use crate::spec::evaluate::{ChoiceTask, OptionFields};
use crate::stages::stage::{StageError, StageInput};

/// One multiple-choice item.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceItem {
    /// Unique id within its task.
    pub item_id: String,
    /// ISO 639-1 code.
    pub language: String,
    /// The text the options are conditioned on.
    pub context: String,
    /// The candidates, at least two, pairwise distinct.
    pub options: Vec<String>,
    /// Index of the correct option (0-based).
    pub gold: usize,
}

/// Reads `task`'s file and keeps the items in the run's languages (at most
/// `max_items_per_language` each). Returns the items and how many lines were
/// skipped for their language.
pub async fn read_task(
    input: &StageInput<'_>,
    index: usize,
    task: &ChoiceTask,
) -> Result<(Vec<ChoiceItem>, u64), StageError> {
    let (options, retry) = (input.storage_options, input.retry);
    let bytes = crate::store::storage::read_input_file(&task.source, input.base_dir, options, retry).await?;
    let file = format!("stages.evaluate.choice[{index}].source = {:?}", task.source);
    if bytes.is_empty() {
        return Err(StageError::Input { file, problem: "the file is empty".into() });
    }
    let items = parse_items(&bytes, task).map_err(|BadLine { line, column, problem }| StageError::Line {
        file: file.clone(),
        line,
        column,
        problem,
    })?;
    if items.is_empty() {
        return Err(StageError::Input { file, problem: "has no items (only blank lines)".into() });
    }
    let languages = input.languages;
    let limit = task.max_items_per_language.map_or(usize::MAX, |n| n as usize);
    let mut taken: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut kept: Vec<ChoiceItem> = Vec::new();
    let mut skipped = 0;
    for item in items {
        if !languages.contains(&item.language) {
            skipped += 1;
            continue;
        }
        let count = taken.entry(item.language.clone()).or_default();
        if *count < limit {
            *count += 1;
            kept.push(item);
        }
    }
    Ok((kept, skipped))
}

/// A line of a task file that is not an item: its number, the column
/// (1-based, where known) and the problem.
#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    /// 1-based line number in the file.
    pub line: usize,
    /// 1-based column, in characters, where the problem is known to start.
    pub column: Option<usize>,
    /// What is wrong.
    pub problem: String,
}

/// Parses every line of a task file (a leading byte-order mark and CRLF
/// line ends are accepted).
pub fn parse_items(bytes: &[u8], task: &ChoiceTask) -> Result<Vec<ChoiceItem>, BadLine> {
    let bytes = bytes.strip_prefix(crate::store::lines::BOM).unwrap_or(bytes);
    let mut items: Vec<ChoiceItem> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let bad = |column, problem| BadLine { line: i + 1, column, problem };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let object = match crate::store::lines::json_object(line) {
            Ok(Some(object)) => object,
            Ok(None) => continue,
            Err((column, problem)) => return Err(bad(column, problem)),
        };
        let item = parse_item(&object, task).map_err(|problem| bad(None, problem))?;
        if !seen.insert(item.item_id.clone()) {
            return Err(bad(None, format!("item_id `{}` occurs twice", item.item_id)));
        }
        items.push(item);
    }
    Ok(items)
}

fn parse_item(object: &Map<String, Value>, task: &ChoiceTask) -> Result<ChoiceItem, String> {
    let columns = &task.columns;
    let item_id = match columns.item_id.contains('{') {
        true => fill_template(&columns.item_id, object)?,
        false => scalar_text(object, &columns.item_id)?,
    };
    let language = string_field(object, &columns.language)?;
    // With a map, an unmapped value is a language the task does not use: the
    // caller skips it like any language outside the run.
    let language = match task.language_map.is_empty() {
        true if !crate::langs::is_iso_639_1(&language) => {
            return Err(format!("field `{}`: `{language}` is not an ISO 639-1 code", columns.language));
        }
        true => language,
        false => task.language_map.get(&language).cloned().unwrap_or(language),
    };
    let context = match &task.context_template {
        Some(template) => fill_template(template, object)?,
        None => string_field(object, &columns.context)?,
    };
    let options = read_options(object, &columns.options)?;
    let gold = read_gold(object, &columns.gold, task.gold_base as usize, options.len())?;
    Ok(ChoiceItem { item_id, language, context, options, gold })
}

fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Result<&'a Value, String> {
    object.get(name).filter(|v| !v.is_null()).ok_or_else(|| format!("field `{name}` is missing"))
}

fn string_field(object: &Map<String, Value>, name: &str) -> Result<String, String> {
    field(object, name)?.as_str().map(str::to_string).ok_or_else(|| format!("field `{name}` must be a string"))
}

/// A string or a number, as text (ids are numbers in some benchmarks).
fn scalar_text(object: &Map<String, Value>, name: &str) -> Result<String, String> {
    match field(object, name)? {
        Value::String(text) if !text.is_empty() => Ok(text.clone()),
        Value::Number(number) => Ok(number.to_string()),
        _ => Err(format!("field `{name}` must be a non-empty string or a number")),
    }
}

fn read_options(object: &Map<String, Value>, fields: &OptionFields) -> Result<Vec<String>, String> {
    let options: Vec<String> = match fields {
        OptionFields::List(name) => {
            let list = field(object, name)?.as_array().ok_or_else(|| format!("field `{name}` must be an array"))?;
            let texts = list.iter().map(|v| v.as_str().map(str::to_string));
            texts.collect::<Option<_>>().ok_or_else(|| format!("field `{name}` must hold strings only"))?
        }
        OptionFields::Fields(names) => names.iter().map(|name| string_field(object, name)).collect::<Result<_, _>>()?,
    };
    if options.len() < 2 {
        return Err(format!("needs at least 2 options, found {}", options.len()));
    }
    if let Some(i) = options.iter().position(|o| o.trim().is_empty()) {
        return Err(format!("option {i} is empty"));
    }
    if let Some(i) = (1..options.len()).find(|&i| options[..i].contains(&options[i])) {
        return Err(format!("option {i} repeats an earlier option"));
    }
    Ok(options)
}

fn read_gold(object: &Map<String, Value>, name: &str, base: usize, options: usize) -> Result<usize, String> {
    let value = field(object, name)?;
    let number = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(text) => text.trim().parse::<u64>().ok(),
        _ => None,
    };
    let number = number.ok_or_else(|| format!("field `{name}` must be a non-negative integer, found {value}"))?;
    let index = (number as usize).checked_sub(base);
    index
        .filter(|&i| i < options)
        .ok_or_else(|| format!("field `{name}` = {number} is out of range for {options} options (gold_base = {base})"))
}

/// `template` with every `{field}` replaced by that field's text.
fn fill_template(template: &str, object: &Map<String, Value>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').map(|c| open + c).ok_or("context_template has an unclosed `{`")?;
        out.push_str(&rest[..open]);
        out.push_str(&scalar_text(object, &rest[open + 1..close])?);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::evaluate::{ChoiceColumns, ChoicePrompt};

    fn task(columns: ChoiceColumns, gold_base: u32, context_template: Option<&str>) -> ChoiceTask {
        ChoiceTask {
            name: "t".into(),
            source: "t.jsonl".into(),
            columns,
            gold_base,
            context_template: context_template.map(str::to_string),
            language_map: Default::default(),
            prompt: ChoicePrompt::Chat,
            max_items_per_language: None,
        }
    }

    fn native() -> ChoiceTask {
        task(ChoiceColumns::default(), 0, None)
    }

    fn problem(line: &str) -> String {
        parse_items(line.as_bytes(), &native()).unwrap_err().problem
    }

    #[test]
    fn native_lines_parse() {
        let line = r#"{"task":"t","item_id":"a","language":"fr","context":"c","options":["x","y"],"gold":1}"#;
        let items = parse_items(line.as_bytes(), &native()).unwrap();
        assert_eq!(items[0].options, ["x", "y"]);
        assert_eq!(items[0].gold, 1);
    }

    #[test]
    fn bad_items_are_named() {
        let base = r#""item_id":"a","language":"fr","context":"c""#;
        assert!(problem(&format!(r#"{{{base},"options":["x","y"]}}"#)).contains("`gold` is missing"));
        assert!(problem(&format!(r#"{{{base},"options":["x","y"],"gold":2}}"#)).contains("out of range"));
        assert!(problem(&format!(r#"{{{base},"options":[],"gold":0}}"#)).contains("at least 2 options"));
        assert!(problem(&format!(r#"{{{base},"options":["x",""],"gold":0}}"#)).contains("option 1 is empty"));
        assert!(problem(&format!(r#"{{{base},"options":["x","x"],"gold":0}}"#)).contains("repeats"));
        assert!(problem(&format!(r#"{{{base},"options":["x","y"],"gold":-1}}"#)).contains("non-negative"));
        let twice =
            format!("{{{base},\"options\":[\"x\",\"y\"],\"gold\":0}}\n{{{base},\"options\":[\"x\",\"y\"],\"gold\":0}}");
        assert_eq!(parse_items(twice.as_bytes(), &native()).unwrap_err().line, 2);
    }

    #[test]
    fn belebele_style_lines_map_onto_items() {
        let columns = ChoiceColumns {
            item_id: "{link}#{question_number}".into(),
            language: "dialect".into(),
            context: "unused".into(),
            options: OptionFields::Fields(vec!["mc_answer1".into(), "mc_answer2".into()]),
            gold: "correct_answer_num".into(),
        };
        let mut task = task(columns, 1, Some("{flores_passage}\nQ: {question}"));
        task.language_map = [("deu_Latn".to_string(), "de".to_string())].into();
        let line = r#"{"link":"w/1","question_number":7,"dialect":"deu_Latn","flores_passage":"P","question":"Q?","mc_answer1":"a","mc_answer2":"b","correct_answer_num":"2"}"#;
        let items = parse_items(line.as_bytes(), &task).unwrap();
        assert_eq!(
            items[0],
            ChoiceItem {
                item_id: "w/1#7".into(),
                language: "de".into(),
                context: "P\nQ: Q?".into(),
                options: vec!["a".into(), "b".into()],
                gold: 1,
            }
        );
    }
}
