//! Text objects line by line: what the readers of line-oriented inputs
//! (JSONL, CSV) need to accept a UTF-8 byte-order mark and to name the
//! file's own line numbers in errors.

use bytes::Bytes;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use super::error::StoreError;
use super::storage::Storage;

/// The UTF-8 byte-order mark that editors on Windows and some exporters
/// write at the start of a text file.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The size in bytes of the object at `path`, and whether it starts with a
/// [`BOM`] (one HEAD, and a 3-byte range read when there is room for one).
pub async fn size_and_bom(storage: &Storage, path: &Path) -> Result<(u64, bool), StoreError> {
    let size = storage.store().head(path).await.map_err(|source| storage.error(path, source))?.size;
    if size < BOM.len() as u64 {
        return Ok((size, false));
    }
    let head = storage.store().get_range(path, 0..BOM.len() as u64).await;
    Ok((size, head.map_err(|source| storage.error(path, source))?.as_ref() == BOM))
}

/// Calls `visit` with every line of the object at `path` (1-based number,
/// bytes without the line end or a leading [`BOM`]), streamed, until `visit`
/// returns `false`.
pub async fn visit_lines(
    storage: &Storage,
    path: &Path,
    mut visit: impl FnMut(usize, &[u8]) -> bool,
) -> Result<(), StoreError> {
    let object = storage.store().get(path).await.map_err(|source| storage.error(path, source))?;
    let mut stream = object.into_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut number = 0;
    let mut emit = |number: &mut usize, line: &[u8]| {
        *number += 1;
        let line = if *number == 1 { line.strip_prefix(BOM).unwrap_or(line) } else { line };
        visit(*number, line.strip_suffix(b"\r").unwrap_or(line))
    };
    while let Some(chunk) = stream.next().await {
        let chunk: Bytes = chunk.map_err(|source| storage.error(path, source))?;
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            if !emit(&mut number, &pending[start..start + end]) {
                return Ok(());
            }
            start += end + 1;
        }
        pending.drain(..start);
    }
    if !pending.is_empty() {
        emit(&mut number, &pending);
    }
    Ok(())
}

/// A JSON object, as one JSONL line holds it.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// What is wrong with one JSONL line: the column (1-based, in characters)
/// where known, and the problem.
pub type LineProblem = (Option<usize>, String);

/// One JSONL line as a JSON object: `Ok(None)` for a blank line, else what
/// is wrong with it: invalid UTF-8, invalid JSON, or a JSON value that is
/// not an object.
pub fn json_object(bytes: &[u8]) -> Result<Option<JsonObject>, LineProblem> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let column = String::from_utf8_lossy(&bytes[..e.valid_up_to()]).chars().count() + 1;
            return Err((Some(column), "invalid UTF-8".into()));
        }
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(object)) => Ok(Some(object)),
        Ok(_) => Err((None, "not a JSON object".into())),
        Err(e) => {
            // serde_json's message ends with its own "at line 1 column N": the
            // caller names the file's line, and the column is given apart.
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message).to_string();
            Err((Some(e.column()), format!("invalid JSON: {message}")))
        }
    }
}
