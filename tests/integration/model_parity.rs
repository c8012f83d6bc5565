//! croco's ONNX Runtime layer against the export tool's parity fixtures
//! (computed with transformers): greedy tokens exactly, log-probs and reward
//! scores within the fixtures' tolerance (1e-4). Needs ONNX Runtime
//! (`pip install onnxruntime==1.31.1`; `.ci/run` installs it).

use std::path::PathBuf;

use croco::model::bundle::{Bundle, Verify};
use croco::model::policy::{GenerationRequest, Policy};
use croco::model::reward::RewardModel;
use croco::model::runtime::{Device, SessionConfig};
use croco::model::sampling::SamplingParams;
use croco::model::tokenizer::ChatTokenizer;
use serde_json::Value;

use crate::util::repo;

const CPU: SessionConfig = SessionConfig { device: Device::Cpu, device_id: 0, threads: 2 };

fn bundle_dir(name: &str) -> PathBuf {
    repo().join("data/models").join(name)
}

fn fixture(bundle: &str, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(bundle_dir(bundle).join("parity").join(name)).unwrap()).unwrap()
}

fn policy() -> Policy {
    Policy::load(Bundle::open(&bundle_dir("policy"), Verify::Sizes).unwrap(), &CPU).unwrap_or_else(|e| panic!("{e}"))
}

fn ints(value: &Value) -> Vec<i64> {
    value.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
}

fn floats(value: &Value) -> Vec<f64> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

/// The unpadded row `row` of a left-padded fixture batch.
fn unpadded(ids: &Value, mask: &Value, row: usize) -> Vec<i64> {
    ints(&ids[row]).into_iter().zip(ints(&mask[row])).filter(|(_, m)| *m == 1).map(|(id, _)| id).collect()
}

#[test]
fn the_tokenizer_matches_the_fixture_ids() {
    for name in ["policy", "reward"] {
        let bundle = Bundle::open(&bundle_dir(name), Verify::Sizes).unwrap();
        let tokenizer = ChatTokenizer::load(&bundle).unwrap();
        let fixture = fixture(name, "tokenizer.json");
        for case in fixture["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(tokenizer.encode_text(text).unwrap(), ints(&case["ids"]), "{name}: {text:?}");
        }
    }
}

#[test]
fn greedy_generation_matches_transformers_token_for_token() {
    let mut policy = policy();
    let fixture = fixture("policy", "greedy.json");
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let prompts = case["prompts"].as_array().unwrap();
        let requests: Vec<GenerationRequest> = prompts
            .iter()
            .enumerate()
            .map(|(row, prompt)| {
                let ids = policy.tokenizer.encode_prompt(prompt.as_str().unwrap()).unwrap();
                assert_eq!(
                    ids,
                    unpadded(&case["input_ids"], &case["attention_mask"], row),
                    "{name}: prompt ids of row {row}"
                );
                GenerationRequest { prompt: ids, seeds: vec![0] }
            })
            .collect();
        let max_new = case["max_new_tokens"].as_u64().unwrap() as usize;
        let generated = policy.generate(&requests, &SamplingParams::GREEDY, max_new).unwrap();
        for (row, samples) in generated.iter().enumerate() {
            let got: Vec<i64> = samples[0].tokens.iter().copied().chain(samples[0].stop_token).collect();
            assert_eq!(got, ints(&case["expected_tokens"][row]), "{name}: tokens of row {row}");
            let text = policy.tokenizer.decode(&samples[0].tokens).unwrap();
            assert_eq!(text, case["expected_text"][row].as_str().unwrap(), "{name}: text of row {row}");
        }
    }
}

#[test]
fn sampling_is_reproducible_per_seed_and_samples_share_one_prefill() {
    let mut policy = policy();
    let prompt = policy.tokenizer.encode_prompt("Write a short poem about the sea.").unwrap();
    let params = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: None };
    let request = |seeds: Vec<u64>| vec![GenerationRequest { prompt: prompt.clone(), seeds }];
    let first = policy.generate(&request(vec![1, 2, 3, 4]), &params, 24).unwrap();
    let again = policy.generate(&request(vec![1, 2, 3, 4]), &params, 24).unwrap();
    assert_eq!(first, again, "same seeds, same tokens");
    let distinct: std::collections::HashSet<_> = first[0].iter().map(|g| g.tokens.clone()).collect();
    assert!(distinct.len() > 1, "different seeds draw different samples");
    // A sample does not depend on its batch mates: seed 3 alone gives the same tokens.
    let alone = policy.generate(&request(vec![3]), &params, 24).unwrap();
    assert_eq!(alone[0][0], first[0][2]);
}

#[test]
fn response_logprobs_match_transformers() {
    let mut policy = policy();
    let fixture = fixture("policy", "logprob.json");
    let atol = fixture["atol"].as_f64().unwrap();
    let pairs = fixture["pairs"].as_array().unwrap();
    let sequences: Vec<(Vec<i64>, usize)> = pairs
        .iter()
        .enumerate()
        .map(|(row, pair)| {
            let (ids, start) = policy
                .tokenizer
                .encode_exchange(pair["prompt"].as_str().unwrap(), pair["response"].as_str().unwrap())
                .unwrap();
            assert_eq!(ids, unpadded(&fixture["input_ids"], &fixture["attention_mask"], row), "ids of pair {row}");
            (ids, start)
        })
        .collect();
    let got = policy.logprobs(&sequences).unwrap();
    let mut worst: f64 = 0.0;
    for (row, result) in got.iter().enumerate() {
        let expected: Vec<f64> = floats(&fixture["expected_token_logprobs"][row])
            .into_iter()
            .zip(ints(&fixture["response_mask"][row]))
            .filter(|(_, m)| *m == 1)
            .map(|(x, _)| x)
            .collect();
        assert_eq!(result.tokens.len(), expected.len(), "response length of pair {row}");
        for (a, b) in result.tokens.iter().zip(&expected) {
            worst = worst.max((f64::from(*a) - b).abs());
        }
        let sum = fixture["expected_logprob_sum"][row].as_f64().unwrap();
        assert!((f64::from(result.sum) - sum).abs() < atol * 10.0, "sum of pair {row}: {} vs {sum}", result.sum);
    }
    assert!(worst < atol, "max token log-prob difference {worst}");
}

#[test]
fn reward_scores_match_transformers_padded_or_not() {
    let bundle = Bundle::open(&bundle_dir("reward"), Verify::Sizes).unwrap();
    let mut reward = RewardModel::load(bundle, &CPU).unwrap_or_else(|e| panic!("{e}"));
    let fixture = fixture("reward", "score.json");
    let atol = fixture["atol"].as_f64().unwrap();
    let pairs: Vec<(&str, &str)> = fixture["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["prompt"].as_str().unwrap(), p["response"].as_str().unwrap()))
        .collect();
    let batched = reward.score(&pairs).unwrap();
    for (row, (got, expected)) in batched.iter().zip(floats(&fixture["expected_scores"])).enumerate() {
        assert!((f64::from(*got) - expected).abs() < atol, "pair {row}: {got} vs {expected}");
        let alone = reward.score(&pairs[row..=row]).unwrap()[0];
        let unpadded = fixture["expected_scores_unpadded"][row].as_f64().unwrap();
        assert!((f64::from(alone) - unpadded).abs() < atol, "pair {row} alone: {alone} vs {unpadded}");
    }
}
