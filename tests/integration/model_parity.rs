//! croco's ONNX Runtime layer against the export tool's parity fixtures
//! (computed with transformers): greedy tokens exactly, log-probs and reward
//! scores within the fixtures' tolerance (1e-4). Needs ONNX Runtime
//! (`pip install onnxruntime==1.31.1`; `.ci/run` installs it).

use std::path::PathBuf;

use croco::model::bundle::{Bundle, Verify};
use croco::model::continuous::SlotLimits;
use croco::model::graph::{BoundGraph, WeightFeed};
use croco::model::policy::{Generated, GenerationRequest, Policy};
use croco::model::precision::Precision;
use croco::model::reward::RewardModel;
use croco::model::runtime::{Device, SessionConfig, Target};
use croco::model::sampling::SamplingParams;
use croco::model::tokenizer::ChatTokenizer;
use croco::model::weights::Weights;
use ort::session::builder::PrepackedWeights;
use ort::value::{DynValue, Tensor};
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
        // A static batch, one slot, and two slots with prompts prefilled in chunks of 3 tokens.
        let whole = SlotLimits::for_prompts(requests.len(), 1);
        for limits in [
            whole,
            SlotLimits { slots: 1, ..whole },
            SlotLimits { slots: 2, prefill_prompts: 1, prefill_chunk_tokens: 3 },
        ] {
            let generated = policy.generate(&requests, &SamplingParams::GREEDY, max_new, limits, &mut |_| {}).unwrap();
            for (row, samples) in generated.iter().enumerate() {
                let got: Vec<i64> = samples[0].tokens.iter().copied().chain(samples[0].stop_token).collect();
                assert_eq!(got, ints(&case["expected_tokens"][row]), "{name}: tokens of row {row}, {limits:?}");
                let text = policy.tokenizer.decode(&samples[0].tokens).unwrap();
                assert_eq!(text, case["expected_text"][row].as_str().unwrap(), "{name}: text of row {row}");
            }
        }
    }
}

#[test]
fn sampling_is_reproducible_per_seed_and_samples_share_one_prefill() {
    let mut policy = policy();
    let prompt = policy.tokenizer.encode_prompt("Write a short poem about the sea.").unwrap();
    let params = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: None };
    let request = |seeds: Vec<u64>| vec![GenerationRequest { prompt: prompt.clone(), seeds }];
    let mut generate = |requests: &[GenerationRequest]| {
        let limits = SlotLimits::for_prompts(1, requests[0].seeds.len());
        policy.generate(requests, &params, 24, limits, &mut |_| {}).unwrap()
    };
    let first = generate(&request(vec![1, 2, 3, 4]));
    let again = generate(&request(vec![1, 2, 3, 4]));
    assert_same_samples(&first, &again, "same seeds, same tokens");
    let distinct: std::collections::HashSet<_> = first[0].iter().map(|g| g.tokens.clone()).collect();
    assert!(distinct.len() > 1, "different seeds draw different samples");
    // A sample does not depend on its batch mates: seed 3 alone gives the same tokens.
    let alone = generate(&request(vec![3]));
    assert_same_samples(&alone, &[vec![first[0][2].clone()]], "seed 3 alone");
}

/// The same tokens and ends; log-probs equal up to the float rounding that
/// another batch shape brings.
fn assert_same_samples(got: &[Vec<Generated>], expected: &[Vec<Generated>], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}");
    for (r, (got, expected)) in got.iter().zip(expected).enumerate() {
        assert_eq!(got.len(), expected.len(), "{what}");
        for (k, (g, e)) in got.iter().zip(expected).enumerate() {
            assert_eq!(
                (&g.tokens, g.stop_token, g.finish),
                (&e.tokens, e.stop_token, e.finish),
                "{what}: request {r}, sample {k}"
            );
            assert!(
                (g.logprob - e.logprob).abs() < 1e-6 * (1.0 + e.logprob.abs()),
                "{what}: {} vs {}",
                g.logprob,
                e.logprob
            );
        }
    }
}

/// The demo prompts, `samples` seeds each.
fn demo_requests(policy: &Policy, prompts: usize, samples: u64) -> Vec<GenerationRequest> {
    let text = std::fs::read_to_string(repo().join("data/prompts/demo.jsonl")).unwrap();
    text.lines()
        .take(prompts)
        .enumerate()
        .map(|(i, line)| {
            let row: Value = serde_json::from_str(line).unwrap();
            let prompt = policy.tokenizer.encode_prompt(row["prompt"].as_str().unwrap()).unwrap();
            GenerationRequest { prompt, seeds: (0..samples).map(|k| 1000 * i as u64 + k).collect() }
        })
        .collect()
}

/// Continuous batching changes which rows share a batch, never what a row
/// computes: a sample's tokens come from its own seed and its own logits,
/// and each row attends to its own cache only. On the CPU the decode
/// session's GEMMs run on weights packed once ([`WeightFeed::Initializers`]),
/// and that kernel reduces each row in the same order whatever the batch
/// (with the weights bound as inputs, one row and 16 rows and more did not:
/// logits differed by ~7e-6), and attention reduces a prompt's positions in
/// the same order whether the prompt comes alone, in a batch or in chunks,
/// as long as no call leaves a query alone in its block of 2 × head_dim
/// queries (that one takes the one-row kernel). So every sample is
/// identical, token for token, at 3 slots as at 64 and in chunks of 1, 2, 5,
/// 128, 129 or 2,048 tokens, the prompts of 129 and 257 tokens (one past whole
/// blocks) included.
#[test]
fn continuous_batching_draws_the_same_tokens_whatever_the_slots_and_chunks() {
    let mut policy = policy();
    let mut requests = demo_requests(&policy, 12, 5);
    let long: Vec<i64> = requests.iter().flat_map(|r| r.prompt.iter().copied()).collect();
    for (i, length) in [129, 257].into_iter().enumerate() {
        requests.insert(3 * i + 1, GenerationRequest { prompt: long[..length].to_vec(), seeds: vec![7, 8, 9] });
    }
    let samples: usize = requests.iter().map(|r| r.seeds.len()).sum();
    let params = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: None };
    let run = |policy: &mut Policy, limits: SlotLimits| {
        policy.steps = Default::default();
        let generated = policy.generate(&requests, &params, 96, limits, &mut |_| {}).unwrap();
        (generated, policy.steps)
    };
    let (reference, static_steps) = run(&mut policy, SlotLimits::for_prompts(4, 5));
    let lengths: std::collections::BTreeSet<usize> = reference.iter().flatten().map(|g| g.tokens.len()).collect();
    assert!(lengths.len() > 10, "the samples end at different lengths: {lengths:?}");
    for limits in [
        SlotLimits { slots: 3, prefill_prompts: 1, prefill_chunk_tokens: 2048 },
        SlotLimits { slots: 64, prefill_prompts: 8, prefill_chunk_tokens: 2048 },
        SlotLimits { slots: 7, prefill_prompts: 3, prefill_chunk_tokens: 5 },
        SlotLimits { slots: 5, prefill_prompts: 2, prefill_chunk_tokens: 2 },
        SlotLimits { slots: 9, prefill_prompts: 1, prefill_chunk_tokens: 1 },
        SlotLimits { slots: 16, prefill_prompts: 4, prefill_chunk_tokens: 128 },
        SlotLimits { slots: 11, prefill_prompts: 4, prefill_chunk_tokens: 129 },
    ] {
        let (generated, steps) = run(&mut policy, limits);
        for (r, (got, expected)) in generated.iter().zip(&reference).enumerate() {
            for (k, (g, e)) in got.iter().zip(expected).enumerate() {
                assert_eq!((&g.tokens, g.stop_token), (&e.tokens, e.stop_token), "{limits:?}: sample ({r}, {k})");
                assert_eq!(g.logprob, e.logprob, "{limits:?}: sample ({r}, {k}) of {samples}");
            }
        }
        assert_eq!(steps.prefill_tokens, static_steps.prefill_tokens, "{limits:?}: every prompt prefilled once");
        assert!(steps.useful_slot_steps <= steps.slot_steps);
    }
    let prompt_tokens: u64 = requests.iter().map(|r| r.prompt.len() as u64).sum();
    assert_eq!(static_steps.prefill_tokens, prompt_tokens);
}

/// The sample's recorded log-prob is the policy's log-prob of its tokens.
fn assert_true_draw(policy: &mut Policy, request: &GenerationRequest, sample: &Generated) {
    let ids: Vec<i64> = request.prompt.iter().chain(&sample.tokens).copied().chain(sample.stop_token).collect();
    let scored = policy.logprobs(&[(ids, request.prompt.len())]).unwrap();
    let difference = (f64::from(scored[0].sum) - sample.logprob).abs();
    assert!(difference < 1e-3 * (1.0 + sample.logprob.abs()), "{} vs {}", scored[0].sum, sample.logprob);
}

#[test]
fn the_behaviour_logprob_is_the_policys_logprob_of_the_sampled_tokens() {
    let mut policy = policy();
    let requests = demo_requests(&policy, 3, 4);
    let params = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: None };
    let generated = policy.generate(&requests, &params, 32, SlotLimits::for_prompts(3, 4), &mut |_| {}).unwrap();
    for (request, samples) in requests.iter().zip(&generated) {
        for sample in samples {
            assert!(sample.logprob < 0.0);
            assert_true_draw(&mut policy, request, sample);
        }
    }
}

/// The device sampler (run here on the CPU's execution provider) draws from
/// the same RNG streams with the host sampler's rule in float32: greedy is
/// transformers' tokens, and every sampled token is a true draw whose
/// recorded log-prob is the policy's; most samples equal the host's.
#[test]
fn sampling_on_the_device_draws_true_samples_and_greedy_matches_transformers() {
    let mut policy = policy();
    policy.sample_on_device(true).unwrap();
    let fixture = fixture("policy", "greedy.json");
    let case = fixture["cases"].as_array().unwrap().last().unwrap();
    let requests: Vec<GenerationRequest> = case["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| GenerationRequest {
            prompt: policy.tokenizer.encode_prompt(p.as_str().unwrap()).unwrap(),
            seeds: vec![0],
        })
        .collect();
    let max_new = case["max_new_tokens"].as_u64().unwrap() as usize;
    let limits = SlotLimits::for_prompts(requests.len(), 1);
    let greedy = policy.generate(&requests, &SamplingParams::GREEDY, max_new, limits, &mut |_| {}).unwrap();
    for (row, samples) in greedy.iter().enumerate() {
        let got: Vec<i64> = samples[0].tokens.iter().copied().chain(samples[0].stop_token).collect();
        assert_eq!(got, ints(&case["expected_tokens"][row]), "greedy tokens of row {row}");
    }
    let requests = demo_requests(&policy, 4, 4);
    let limits = SlotLimits::for_prompts(4, 4);
    for params in [
        SamplingParams { temperature: 1.0, top_p: 1.0, top_k: None },
        SamplingParams { temperature: 0.7, top_p: 0.9, top_k: Some(40) },
    ] {
        let on_device = policy.generate(&requests, &params, 32, limits, &mut |_| {}).unwrap();
        policy.sample_on_device(false).unwrap();
        let on_host = policy.generate(&requests, &params, 32, limits, &mut |_| {}).unwrap();
        policy.sample_on_device(true).unwrap();
        let mut same = 0;
        for (request, (device, host)) in requests.iter().zip(on_device.iter().zip(&on_host)) {
            for (d, h) in device.iter().zip(host) {
                same += usize::from(d.tokens == h.tokens);
                assert!(d.logprob < 0.0, "{params:?}");
                if params.top_k.is_none() {
                    assert_true_draw(&mut policy, request, d);
                }
            }
        }
        assert!(same >= 12, "{params:?}: {same} of 16 samples equal the host's");
    }
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

/// The CPU's decode session takes the weights as initializers its GEMMs
/// pack once (its graph rewritten on load); it computes what a session with
/// the weights bound as inputs does.
#[test]
fn the_decode_graph_with_packed_weights_computes_what_the_bound_one_does() {
    let bundle = Bundle::open(&bundle_dir("policy"), Verify::Sizes).unwrap();
    let weights = Weights::load(&bundle, Precision::Float32, Target::Cpu).unwrap();
    let arch = bundle.manifest.architecture.clone();
    let (rows, width, capacity) = (2, 5, 8);
    let mut inputs: Vec<(String, DynValue)> = vec![
        (
            "input_ids".into(),
            Tensor::from_array(([rows, width], vec![1i64, 3, 40, 41, 42, 1, 3, 50, 51, 52])).unwrap().into_dyn(),
        ),
        ("seqlens_k".into(), Tensor::from_array(([rows], vec![width as i32 - 1; rows])).unwrap().into_dyn()),
        (
            "total_sequence_length".into(),
            Tensor::from_array((Vec::<usize>::new(), vec![width as i32])).unwrap().into_dyn(),
        ),
    ];
    for layer in 0..arch.num_layers {
        for part in ["key", "value"] {
            let zeros = vec![0f32; rows * arch.num_kv_heads * capacity * arch.head_dim];
            let cache = Tensor::from_array(([rows, arch.num_kv_heads, capacity, arch.head_dim], zeros)).unwrap();
            inputs.push((format!("past_key_values.{layer}.{part}"), cache.into_dyn()));
        }
    }
    let inputs: Vec<(&str, &DynValue)> = inputs.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let logits = |graph: &mut BoundGraph| {
        let outputs = graph.run(&inputs, &["logits"]).unwrap_or_else(|e| panic!("{e}"));
        outputs["logits"].try_extract_tensor::<f32>().unwrap().1.to_vec()
    };
    let bound = logits(&mut BoundGraph::new(&bundle, "decode", &weights, Target::Cpu, 2, WeightFeed::Bound).unwrap());
    let container = PrepackedWeights::new();
    let feed = WeightFeed::Initializers(&container);
    let packed = logits(&mut BoundGraph::new(&bundle, "decode", &weights, Target::Cpu, 2, feed).unwrap());
    assert_eq!(bound.len(), packed.len());
    let scale = bound.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = bound.iter().zip(&packed).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(scale > 0.0 && worst <= 1e-5 * scale, "largest difference {worst} (logits up to {scale})");
}

/// croco's decode-step attention kernel computes what ONNX Runtime's
/// `GroupQueryAttention` does for one new token per row: the rotated key and
/// the value written at each row's position, and the attention output, for
/// rows at different positions (the first one at position 0, the last past
/// 16 × 2 cached rows), with and without rotary (halves or neighbours
/// paired) and sliding windows, head dimensions of 64 and 128 (the AVX-512
/// kernel, where the CPU has it) and 16 (the portable one), on one-node
/// graphs (`tests/fixtures/attention/make.py`).
#[test]
fn the_decode_step_attention_kernel_computes_what_onnx_runtimes_does() {
    use croco::model::decode_attention;
    use croco::model::onnx_proto::{Op, swap_operator};
    use croco::model::runtime::{packed_session, session};

    let dir = repo().join("tests/fixtures/attention");
    let mut state = 0x2545_f491_u64;
    let mut random = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    };
    for (name, heads, kv_heads, dim, rotary) in [
        ("rotary", 4, 2, 64, true),
        ("rotary_interleaved_window", 6, 2, 16, true),
        ("no_rotary_window", 8, 2, 128, false),
    ] {
        let path = dir.join(format!("{name}.onnx"));
        let mut ort_session = session(&path, Target::Cpu, 2).unwrap();
        let gqa = Op { domain: "com.microsoft", op_type: "GroupQueryAttention" };
        let croco = Op { domain: decode_attention::DOMAIN, op_type: decode_attention::OP_TYPE };
        let (model, swapped) =
            swap_operator(&std::fs::read(&path).unwrap(), gqa, croco, decode_attention::VERSION).unwrap();
        assert_eq!(swapped, 1);
        let mut croco_session = packed_session(&path, &model, Target::Cpu, 2, &[], None, true).unwrap();
        let (rows, capacity, positions) = (3, 48, [0usize, 6, 37]);
        let cache = [rows, kv_heads, capacity, dim];
        let mut inputs: Vec<(String, DynValue)> = vec![
            (
                "query".into(),
                Tensor::from_array(([rows, 1, heads * dim], random(rows * heads * dim))).unwrap().into_dyn(),
            ),
            (
                "key".into(),
                Tensor::from_array(([rows, 1, kv_heads * dim], random(rows * kv_heads * dim))).unwrap().into_dyn(),
            ),
            (
                "value".into(),
                Tensor::from_array(([rows, 1, kv_heads * dim], random(rows * kv_heads * dim))).unwrap().into_dyn(),
            ),
            ("past_key".into(), Tensor::from_array((cache, random(cache.iter().product()))).unwrap().into_dyn()),
            ("past_value".into(), Tensor::from_array((cache, random(cache.iter().product()))).unwrap().into_dyn()),
            (
                "seqlens_k".into(),
                Tensor::from_array(([rows], positions.map(|p| p as i32).to_vec())).unwrap().into_dyn(),
            ),
            (
                "total_sequence_length".into(),
                Tensor::from_array((Vec::<usize>::new(), vec![38i32])).unwrap().into_dyn(),
            ),
        ];
        if rotary {
            let angles: Vec<f32> =
                (0..capacity * dim / 2).map(|i| (i / (dim / 2)) as f32 * 0.37 / (1 + i % (dim / 2)) as f32).collect();
            let table = |f: fn(f32) -> f32| {
                Tensor::from_array(([capacity, dim / 2], angles.iter().map(|&a| f(a)).collect::<Vec<_>>()))
            };
            inputs.push(("cos_cache".into(), table(f32::cos).unwrap().into_dyn()));
            inputs.push(("sin_cache".into(), table(f32::sin).unwrap().into_dyn()));
        }
        let run = |session: &mut ort::session::Session| -> Vec<Vec<f32>> {
            let feed: Vec<(&str, &DynValue)> = inputs.iter().map(|(n, v)| (n.as_str(), v)).collect();
            let outputs = session.run(feed).unwrap_or_else(|e| panic!("{name}: {e}"));
            ["output", "present_key", "present_value"]
                .map(|o| outputs[o].try_extract_tensor::<f32>().unwrap().1.to_vec())
                .to_vec()
        };
        let (expected, got) = (run(&mut ort_session), run(&mut croco_session));
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * (1.0 + b.abs());
        for (i, (g, e)) in got[0].iter().zip(&expected[0]).enumerate() {
            assert!(close(*g, *e), "{name}: output {i}: {g} vs {e}");
        }
        for (tensor, (got, expected)) in got[1..].iter().zip(&expected[1..]).enumerate() {
            for (row, &position) in positions.iter().enumerate() {
                for head in 0..kv_heads {
                    let at = |p: usize| ((row * kv_heads + head) * capacity + p) * dim;
                    let (g, e) = (&got[at(0)..at(position + 1)], &expected[at(0)..at(position + 1)]);
                    assert!(
                        g.iter().zip(e).all(|(g, e)| close(*g, *e)),
                        "{name}: cache {tensor}, row {row}, head {head}"
                    );
                }
            }
        }
    }
}
