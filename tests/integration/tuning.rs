//! Preference tuning: LoRA adapters (PEFT files, merging), the truncation
//! shared by ref_logps and tune, the DPO step against torch fixtures, and the
//! ref_logps + tune stages on the demo policy (loss down, resume after kill).

use croco::model::bundle::{Bundle, Verify};
use croco::model::dpo::{Truncation, encode_pair};
use croco::model::lora::{Adapter, AdapterConfig};
use croco::model::policy::Policy;
use croco::model::runtime::{Device, SessionConfig};
use croco::model::tokenizer::ChatTokenizer;

use crate::util::repo;

const CPU: SessionConfig = SessionConfig { device: Device::Cpu, device_id: 0, threads: 2 };

fn policy_bundle() -> Bundle {
    Bundle::open(&repo().join("data/models/policy"), Verify::Sizes).unwrap()
}

fn config(rank: usize, targets: &[&str]) -> AdapterConfig {
    let text = serde_json::json!({
        "r": rank, "lora_alpha": 2.0 * rank as f64, "lora_dropout": 0.0,
        "target_modules": targets, "peft_type": "LORA", "task_type": "CAUSAL_LM"
    });
    serde_json::from_value(text).unwrap()
}

fn exchange(policy: &Policy) -> Vec<(Vec<i64>, usize)> {
    let pairs = [("Name three colours.", "Red, green and blue."), ("Nomme un fruit.", "Une pomme.")];
    pairs.iter().map(|(p, r)| policy.tokenizer.encode_exchange(p, r).unwrap()).collect()
}

#[test]
fn a_fresh_adapter_changes_nothing_and_a_trained_one_changes_log_probs() {
    let bundle = policy_bundle();
    let fresh = Adapter::init(&bundle, config(4, &["q_proj", "v_proj"]), 7).unwrap();
    let sequences = exchange(&Policy::load(policy_bundle(), &CPU).unwrap());
    let base = Policy::load(policy_bundle(), &CPU).unwrap().logprobs(&sequences).unwrap();
    let merged = Policy::load_tuned(policy_bundle(), Some(&fresh), &CPU).unwrap().logprobs(&sequences).unwrap();
    assert_eq!(base, merged, "B = 0 at initialisation: the adapted model is the base");

    let mut trained = fresh.clone();
    for module in trained.modules.iter_mut().filter(|m| m.trainable) {
        module.b.iter_mut().enumerate().for_each(|(i, b)| *b = ((i % 7) as f32 - 3.0) * 0.01);
    }
    let tuned = Policy::load_tuned(policy_bundle(), Some(&trained), &CPU).unwrap().logprobs(&sequences).unwrap();
    for (b, t) in base.iter().zip(&tuned) {
        assert!((b.sum - t.sum).abs() > 1e-3, "a non-zero adapter moves log-probs: {} vs {}", b.sum, t.sum);
    }
}

#[test]
fn merging_adds_scale_times_b_times_a() {
    let bundle = policy_bundle();
    let mut adapter = Adapter::init(&bundle, config(2, &["o_proj"]), 1).unwrap();
    let module = adapter.modules.iter_mut().find(|m| m.trainable).unwrap();
    module.b.iter_mut().enumerate().for_each(|(i, b)| *b = i as f32 * 1e-3);
    let module = adapter.modules.iter().find(|m| m.trainable).unwrap().clone();
    let (rows, cols) = (module.out_features, module.in_features);
    let mut weight = vec![0.5f32; rows * cols];
    adapter.merge_into(&module.weight, &mut weight);
    let scale = adapter.scale();
    for (o, i) in [(0, 0), (rows - 1, cols - 1), (rows / 2, 3)] {
        let delta: f32 = (0..2).map(|k| module.b[o * 2 + k] * module.a[k * cols + i]).sum::<f32>() * scale;
        assert!((weight[o * cols + i] - (0.5 + delta)).abs() < 1e-6, "element ({o}, {i})");
    }
    let mut untouched = vec![0.5f32; 4];
    adapter.merge_into("model.layers.0.self_attn.q_proj.weight", &mut untouched);
    assert_eq!(untouched, vec![0.5; 4], "untargeted modules are not merged");
}

#[test]
fn peft_files_round_trip_and_name_what_is_wrong() {
    let bundle = policy_bundle();
    let mut adapter = Adapter::init(&bundle, config(3, &["q_proj", "down_proj"]), 3).unwrap();
    adapter.modules.iter_mut().filter(|m| m.trainable).for_each(|m| m.b.fill(0.25));
    let (weights, config_json) = adapter.to_peft().unwrap();
    let back = Adapter::from_peft(&bundle, &weights, &config_json).unwrap();
    assert_eq!(back, adapter);
    let names = safetensors::SafeTensors::deserialize(&weights).unwrap().names().len();
    assert_eq!(names, 4 * 2 * 2, "4 layers x 2 targeted modules x (A, B)");

    let wrong_rank = serde_json::to_vec(&config(5, &["q_proj", "down_proj"])).unwrap();
    let error = Adapter::from_peft(&bundle, &weights, &wrong_rank).unwrap_err().to_string();
    assert!(error.contains("lora_A.weight") && error.contains("[5, 256]"), "{error}");
    let unknown = serde_json::to_vec(&config(3, &["lm_head"])).unwrap();
    let error = Adapter::from_peft(&bundle, &weights, &unknown).unwrap_err().to_string();
    assert!(error.contains("`lm_head`"), "{error}");
}

#[test]
fn truncation_cuts_the_prompt_from_the_left_then_the_responses_from_the_right() {
    let tokenizer = ChatTokenizer::load(&policy_bundle()).unwrap();
    let prompt = "Write a long story about a lighthouse keeper who counts ships every night. ".repeat(4);
    let (chosen, rejected) =
        ("A short answer.", "A much longer answer that goes on and on about the sea and the ships.");
    let wide = Truncation { max_length: 4096, max_prompt_length: 2048 };
    let (full, cut) = encode_pair(&tokenizer, &prompt, chosen, rejected, wide).unwrap();
    assert!(!cut);
    let longest = full.rejected_tokens();

    // Room for the whole responses: only the prompt's beginning goes.
    let limits = Truncation { max_length: longest + 20, max_prompt_length: 8 };
    let (pair, cut) = encode_pair(&tokenizer, &prompt, chosen, rejected, limits).unwrap();
    assert!(cut);
    assert_eq!(pair.response_start, 20);
    assert_eq!(pair.rejected, full.rejected[full.response_start - 20..], "the prompt's end and the response stay");
    assert_eq!(pair.chosen_tokens(), full.chosen_tokens());

    // Too little room: the prompt keeps max_prompt_length, the responses lose their ends.
    let tight = Truncation { max_length: 16, max_prompt_length: 10 };
    let (pair, _) = encode_pair(&tokenizer, &prompt, chosen, rejected, tight).unwrap();
    assert_eq!((pair.response_start, pair.rejected.len()), (10, 16));
    assert_eq!(pair.rejected[10..], full.rejected[full.response_start..full.response_start + 6]);
    assert!(pair.chosen.len() <= 16);
}
