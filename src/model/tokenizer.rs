//! A bundle's tokenizer with its chat template: prompts and responses become
//! token ids exactly as the exporter's parity fixtures say.

use tokenizers::Tokenizer;

use super::ModelError;
use super::bundle::{Bundle, ChatSpec};

/// The tokenizer of a bundle plus its chat rules.
pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    chat: ChatSpec,
    /// Id fed to finished or padded rows.
    pub pad_token_id: i64,
    /// Generation stops after any of these.
    pub stop_token_ids: Vec<i64>,
}

impl ChatTokenizer {
    /// Loads `tokenizer.json` and checks that every special token of the
    /// manifest has the manifest's id (a tokenizer from another bundle fails here).
    pub fn load(bundle: &Bundle) -> Result<ChatTokenizer, ModelError> {
        let spec = &bundle.manifest.tokenizer;
        let path = bundle.file(&spec.file);
        let invalid = |problem: String| ModelError::Invalid { dir: bundle.dir.clone(), problem };
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| invalid(format!("`{}`: {e}", spec.file)))?;
        for (token, id) in &spec.special_tokens {
            let found = tokenizer.token_to_id(token).map(i64::from);
            if found != Some(*id) {
                return Err(invalid(format!(
                    "tokenizer mismatch: `{}` maps `{token}` to {found:?}, the manifest says {id}",
                    spec.file
                )));
            }
        }
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > bundle.manifest.architecture.vocab_size {
            return Err(invalid(format!(
                "tokenizer mismatch: `{}` has {vocab} tokens, the model's vocabulary is {}",
                spec.file, bundle.manifest.architecture.vocab_size
            )));
        }
        Ok(ChatTokenizer {
            tokenizer,
            chat: bundle.manifest.chat.clone(),
            pad_token_id: spec.pad_token_id,
            stop_token_ids: spec.stop_token_ids.clone(),
        })
    }

    /// Ids of `text` as is (special tokens written in it are recognised).
    pub fn encode_text(&self, text: &str) -> Result<Vec<i64>, ModelError> {
        let encoding = self
            .tokenizer
            .encode(text, self.chat.add_special_tokens)
            .map_err(|source| ModelError::Tokenizer { source })?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    /// Token ids the model generates from: the prompt template around `prompt`.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<i64>, ModelError> {
        self.encode_text(&self.prompt_text(prompt))
    }

    /// The prompt template around `prompt`: the text a response follows.
    pub fn prompt_text(&self, prompt: &str) -> String {
        self.chat.prompt_template.replacen("{prompt}", prompt, 1)
    }

    /// Ids of `prefix` followed by `continuation`, and where the
    /// continuation's tokens start. Both texts are encoded together, as the
    /// model would read them; the start is where the ids of `prefix` alone stop
    /// agreeing with them, so a token that straddles the boundary counts as
    /// the continuation's (lm-evaluation-harness does the same).
    pub fn encode_continuation(&self, prefix: &str, continuation: &str) -> Result<(Vec<i64>, usize), ModelError> {
        let ids = self.encode_text(&format!("{prefix}{continuation}"))?;
        let prefix_ids = self.encode_text(prefix)?;
        let start = ids.iter().zip(&prefix_ids).take_while(|(a, b)| a == b).count();
        Ok((ids, start))
    }

    /// Token ids of the whole exchange and where the response starts. The
    /// response is spliced in after the prompt is placed, so a prompt that
    /// contains the text `{response}` is left alone.
    pub fn encode_exchange(&self, prompt: &str, response: &str) -> Result<(Vec<i64>, usize), ModelError> {
        let (before, after) = self.chat.template.split_once("{response}").expect("validated chat template");
        let text = format!("{}{response}{after}", before.replacen("{prompt}", prompt, 1));
        let ids = self.encode_text(&text)?;
        let prompt_ids = self.encode_prompt(prompt)?;
        if !ids.starts_with(&prompt_ids) {
            return Err(ModelError::Template(format!(
                "the prompt's tokens are not a prefix of the exchange's tokens for prompt {prompt:?}"
            )));
        }
        Ok((ids, prompt_ids.len()))
    }

    /// Text of generated ids, special tokens dropped.
    pub fn decode(&self, ids: &[i64]) -> Result<String, ModelError> {
        let ids: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
        self.tokenizer.decode(&ids, true).map_err(|source| ModelError::Tokenizer { source })
    }
}
