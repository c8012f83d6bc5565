//! Preference tuning: LoRA adapters (PEFT files, merging), the truncation
//! shared by ref_logps and tune, the DPO step against torch fixtures, and the
//! ref_logps + tune stages on the demo policy (loss down, resume after kill).

use croco::model::bundle::{Bundle, Verify};
use croco::model::dpo::{Truncation, encode_pair};
use croco::model::lora::{Adapter, AdapterConfig};
use croco::model::policy::Policy;
use croco::model::runtime::{Device, SessionConfig};
use croco::model::tokenizer::ChatTokenizer;

use crate::util::{query, repo};

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

/// The layer-wise step run from Rust on the exporter's fixed batch
/// (`parity/dpo.json` + `dpo.safetensors`, computed by torch after it
/// matched transformers + peft) gives torch's loss, log-probs and LoRA
/// gradients: loss and log-probs within the fixture's `atol` (1e-4), every
/// gradient within relative L2 `grad_rtol` (1e-3). The two cases cover the
/// sigmoid loss with label smoothing and IPO with dropout (the masks are a
/// hash both sides compute alike). The step recomputing whole layers and
/// the one keeping the MLP products give the same numbers, bit for bit.
#[test]
fn the_dpo_step_matches_the_torch_fixtures() {
    use croco::model::dpo::{Loss, LossSettings, PairTokens};
    use croco::model::layerwise::{LayerwiseGraphs, Recompute};
    use croco::model::tensors::{read_f32_tensors, safetensors_bytes};
    let bundle = policy_bundle();
    let dir = repo().join("data/models/policy/parity");
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("dpo.json")).unwrap()).unwrap();
    let tensors = read_f32_tensors(&std::fs::read(dir.join("dpo.safetensors")).unwrap()).unwrap();
    let lora: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .filter(|(name, _)| name.starts_with("base_model."))
        .map(|(name, (shape, values))| (name.clone(), shape.clone(), values.as_slice()))
        .collect();
    let lora_config = &fixture["lora"];
    let config = serde_json::to_vec(&serde_json::json!({
        "r": lora_config["rank"], "lora_alpha": lora_config["alpha"], "target_modules": lora_config["target_modules"]
    }))
    .unwrap();
    let adapter = Adapter::from_peft(&bundle, &safetensors_bytes(&lora).unwrap(), &config).unwrap();

    let rows = |key: &str| -> Vec<Vec<f64>> {
        fixture[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
            .collect()
    };
    let (ids, mask, response) = (rows("input_ids"), rows("attention_mask"), rows("response_mask"));
    let unpadded = |i: usize| -> (Vec<i64>, usize) {
        let first = mask[i].iter().position(|&m| m == 1.0).unwrap();
        let start = response[i].iter().position(|&m| m == 1.0).unwrap() - first;
        (ids[i][first..].iter().map(|&v| v as i64).collect(), start)
    };
    let pairs_count = ids.len() / 2;
    let pairs: Vec<PairTokens> = (0..pairs_count)
        .map(|i| {
            let ((chosen, start), (rejected, rejected_start)) = (unpadded(i), unpadded(i + pairs_count));
            assert_eq!(start, rejected_start, "both sequences of a pair share the prompt");
            PairTokens { chosen, rejected, response_start: start }
        })
        .collect();
    let batch: Vec<&PairTokens> = pairs.iter().collect();
    let (atol, rtol) = (fixture["atol"].as_f64().unwrap(), fixture["grad_rtol"].as_f64().unwrap());
    let mut steps = Vec::new();
    for (recompute, case) in [Recompute::Full, Recompute::Selective]
        .into_iter()
        .flat_map(|r| fixture["cases"].as_array().unwrap().iter().map(move |c| (r, c)))
    {
        let mut graphs = LayerwiseGraphs::load(&bundle, 0, &CPU, recompute, (0, 0), None).unwrap();
        assert_eq!(graphs.recompute(), recompute);
        let name = case["name"].as_str().unwrap();
        let reference_logps = &tensors[&format!("{name}/ref_logps")].1;
        let reference: Vec<(f32, f32)> =
            (0..pairs_count).map(|i| (reference_logps[i], reference_logps[i + pairs_count])).collect();
        let settings = LossSettings {
            beta: case["beta"].as_f64().unwrap() as f32,
            label_smoothing: case["label_smoothing"].as_f64().unwrap() as f32,
            loss: if case["ipo"].as_f64().unwrap() == 1.0 { Loss::Ipo } else { Loss::Sigmoid },
            rpo_alpha: 0.0,
            dropout: case["dropout_p"].as_f64().unwrap() as f32,
            dropout_seed: case["dropout_seed"].as_i64().unwrap(),
        };
        assert_eq!(adapter.scale() as f64, case["lora_scale"].as_f64().unwrap());
        let output = graphs.step(&batch, &reference, &adapter, &settings).unwrap();
        let loss_error = (f64::from(output.loss) - case["expected_loss"].as_f64().unwrap()).abs();
        assert!(loss_error < atol, "{name}: loss off by {loss_error}");
        let expected = &tensors[&format!("{name}/expected_policy_logps")].1;
        let got: Vec<f32> = output.chosen_logps.iter().chain(&output.rejected_logps).copied().collect();
        let logp_error = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(f64::from(logp_error) < atol, "{name}: log-probs off by {logp_error}");
        for ((tensor, _, _), grad) in adapter.named_tensors(|_| true).iter().zip(&output.grads) {
            let want = &tensors[&format!("{name}/grad.{tensor}")].1;
            let diff: f64 = grad.iter().zip(want).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>().sqrt();
            let norm: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum::<f64>().sqrt();
            assert!(diff <= rtol * norm.max(1e-12), "{name}: gradient of {tensor} off by relative {}", diff / norm);
        }
        steps.push((output.loss, output.chosen_logps, output.rejected_logps, output.grads));
    }
    let (full, selective) = steps.split_at(steps.len() / 2);
    assert_eq!(full, selective, "selective recompute changed the step");
}

/// A pipeline over the demo's imported en/fr responses (no sampling: fast),
/// with ref_logps and tune on the demo policy; `tune` is the [stages.tune] body.
fn tuning_pipeline(dir: &std::path::Path, tune: &str) -> std::path::PathBuf {
    let head = crate::util::imported_pairs_pipeline("tuning", dir);
    let text = format!(
        "{head}\n[stages.ref_logps]\nmax_length = 192\nmax_prompt_length = 96\nrows_per_part = 16\n\n[stages.tune]\n{tune}\n"
    );
    crate::util::write_pipeline(dir, &text)
}

fn floats(batches: &[arrow::array::RecordBatch], column: usize) -> Vec<f64> {
    use arrow::array::{Array, Float64Array};
    batches
        .iter()
        .flat_map(|b| {
            let values = b.column(column).as_any().downcast_ref::<Float64Array>().unwrap();
            (0..values.len()).map(|i| values.value(i)).collect::<Vec<_>>()
        })
        .collect()
}

const LEARNS: &str = "learning_rate = 2e-3\nepochs = 4\nmicro_batch = 4\ngrad_accumulation = 2\nwarmup_ratio = 0.1\n\
                      checkpoint_every = 3\nlora = { rank = 8, alpha = 16.0, dropout = 0.0 }";

#[tokio::test]
async fn tuning_drives_the_dpo_loss_down_and_reward_accuracy_up_and_writes_a_peft_adapter() {
    use croco::pipeline::runner::RunOptions;
    let dir = tempfile::tempdir().unwrap();
    let file = tuning_pipeline(dir.path(), LEARNS);
    let reports = crate::util::run(&file, RunOptions::default()).await;
    assert_eq!(crate::util::ran(&reports), ["prompts", "generate", "score", "pairs", "ref_logps", "tune"]);
    let (pairs, references, tune) = (&reports[3], &reports[4], &reports[5]);
    assert_eq!(references.rows, pairs.rows, "one ref_logps row per pair");
    let steps = tune.stats["steps"].as_u64().unwrap();
    assert_eq!(tune.rows, steps, "one train_log row per optimizer step");
    assert_eq!(steps, pairs.rows.div_ceil(8) * 4);
    // `auto` on the CPU: the demo's step fits the host's memory many times over.
    assert_eq!(tune.stats["recompute"], "selective");

    let log = query(&file, "SELECT loss, reward_accuracy, reward_margin, lr FROM train_log ORDER BY step").await;
    let (loss, accuracy, margin, lr) = (floats(&log, 0), floats(&log, 1), floats(&log, 2), floats(&log, 3));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let quarter = loss.len() / 4;
    let (first, last) = (mean(&loss[..quarter]), mean(&loss[loss.len() - quarter..]));
    assert!((loss[0] - std::f64::consts::LN_2).abs() < 1e-3, "B = 0: the first loss is ln 2, got {}", loss[0]);
    assert!(last < first - 0.1, "the loss falls: first quarter {first:.3}, last quarter {last:.3}");
    assert!(mean(&accuracy[accuracy.len() - quarter..]) > 0.8, "reward accuracy at the end: {accuracy:?}");
    assert!(mean(&margin[margin.len() - quarter..]) > mean(&margin[..quarter]), "margins grow: {margin:?}");
    assert_eq!(lr[0], 0.0, "warm-up starts at 0");
    assert!(lr[lr.len() - 1] < 2e-3 * 0.05, "cosine ends near 0");

    // The adapter is committed with the version, in PEFT's format, and it is what was trained.
    let adapter_dir = std::path::PathBuf::from(tune.stats["adapter"].as_str().unwrap().trim_start_matches("file://"));
    let weights = std::fs::read(adapter_dir.join("adapter_model.safetensors")).unwrap();
    let config = std::fs::read(adapter_dir.join("adapter_config.json")).unwrap();
    let adapter = Adapter::from_peft(&policy_bundle(), &weights, &config).unwrap();
    assert_eq!(adapter.config.r, 8);
    assert!(adapter.modules.iter().filter(|m| m.trainable).all(|m| m.b.iter().any(|&b| b != 0.0)), "every B moved");
}

/// The SFT baseline (`loss = "sft"`) and the other TRL losses train through
/// the same layer-wise step: SFT's loss is the chosen tokens' mean NLL, and it
/// falls; hinge, robust and rpo_alpha run and move the adapter.
#[rstest::rstest]
#[case::sft("loss = \"sft\"")]
#[case::hinge("loss = \"hinge\"")]
#[case::robust("loss = \"robust\"\nlabel_smoothing = 0.1")]
#[case::sigmoid_with_rpo("rpo_alpha = 0.5")]
#[tokio::test]
async fn every_loss_trains_the_adapter(#[case] loss: &str) {
    use croco::pipeline::runner::RunOptions;
    let dir = tempfile::tempdir().unwrap();
    let settings = format!(
        "{loss}\nlearning_rate = 2e-3\nepochs = 2\nmicro_batch = 4\ngrad_accumulation = 2\n\
                            lora = {{ rank = 4, alpha = 8.0, dropout = 0.0 }}"
    );
    let file = tuning_pipeline(dir.path(), &settings);
    let reports = crate::util::run(&file, RunOptions::default()).await;
    let log = query(&file, "SELECT loss FROM train_log ORDER BY step").await;
    let loss_values = floats(&log, 0);
    assert!(loss_values.iter().all(|l| l.is_finite()), "{loss}: {loss_values:?}");
    if loss.contains("sft") {
        // A fresh adapter is the base: the first loss is the base's mean NLL of the chosen tokens.
        assert!(loss_values[0] > 0.5, "sft: the NLL starts high: {loss_values:?}");
        let half = loss_values.len() / 2;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&loss_values[half..]) < mean(&loss_values[..half]), "sft: the NLL falls: {loss_values:?}");
    }
    let tune = reports.last().unwrap();
    let adapter_dir = std::path::PathBuf::from(tune.stats["adapter"].as_str().unwrap().trim_start_matches("file://"));
    let weights = std::fs::read(adapter_dir.join("adapter_model.safetensors")).unwrap();
    let config = std::fs::read(adapter_dir.join("adapter_config.json")).unwrap();
    let adapter = Adapter::from_peft(&policy_bundle(), &weights, &config).unwrap();
    assert!(adapter.modules.iter().filter(|m| m.trainable).any(|m| m.b.iter().any(|&b| b != 0.0)), "{loss}: B moved");
}

/// The same effective batch split into micro-batches of 8, 4 or 2 pairs
/// (gradient accumulation 1, 2 or 4) gives the same loss and gradient norm at
/// every step and the same adapter, up to float32 rounding: the loss is a
/// mean over the effective batch, whatever the split. (AdamW divides each
/// gradient by its running scale, so the rounding of a near-zero gradient
/// can move a weight by a few percent of one step's learning rate.)
#[tokio::test]
async fn the_adapter_does_not_depend_on_the_gradient_accumulation_split() {
    use croco::pipeline::runner::RunOptions;
    const LEARNING_RATE: f32 = 2e-3;
    let mut runs = Vec::new();
    for (micro_batch, accumulation) in [(8, 1), (4, 2), (2, 4)] {
        let dir = tempfile::tempdir().unwrap();
        let settings = format!(
            "learning_rate = {LEARNING_RATE}\nepochs = 2\nmicro_batch = {micro_batch}\ngrad_accumulation = {accumulation}\n\
             lora = {{ rank = 4, alpha = 8.0, dropout = 0.0 }}"
        );
        let file = tuning_pipeline(dir.path(), &settings);
        let reports = crate::util::run(&file, RunOptions::default()).await;
        let tune = reports.last().unwrap();
        let adapter_dir =
            std::path::PathBuf::from(tune.stats["adapter"].as_str().unwrap().trim_start_matches("file://"));
        let weights = std::fs::read(adapter_dir.join("adapter_model.safetensors")).unwrap();
        let log = query(&file, "SELECT loss, grad_norm FROM train_log ORDER BY step").await;
        let adapter = croco::model::tensors::read_f32_tensors(&weights).unwrap();
        runs.push(((micro_batch, accumulation), floats(&log, 0), floats(&log, 1), adapter, dir));
    }
    let (_, loss, norm, adapter, _) = &runs[0];
    for (split, got_loss, got_norm, got, _) in &runs[1..] {
        assert_eq!(got_loss.len(), loss.len(), "{split:?}: the same optimizer steps");
        for (step, (a, b)) in got_loss.iter().zip(loss).chain(got_norm.iter().zip(norm)).enumerate() {
            assert!((a - b).abs() <= 1e-4 * b.abs(), "{split:?}: loss or gradient norm {step}: {a} vs {b}");
        }
        for (name, (_, want)) in adapter {
            let diff = got[name].1.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff <= 0.05 * LEARNING_RATE, "{split:?}: {name} differs by {diff}");
        }
    }
}

/// Regression test for resume: `kill -9` after tune committed a checkpoint,
/// rerun, and the final adapter equals an uninterrupted run's (same seed).
#[tokio::test]
async fn a_killed_tune_resumes_from_its_checkpoint_and_ends_with_the_uninterrupted_adapter() {
    use croco::pipeline::runner::RunOptions;
    use std::time::{Duration, Instant};
    let tune = LEARNS.replace("dropout = 0.0", "dropout = 0.05").replace("epochs = 4", "epochs = 6");
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = crate::util::run(&tuning_pipeline(reference_dir.path(), &tune), RunOptions::default()).await;

    let dir = tempfile::tempdir().unwrap();
    let file = tuning_pipeline(dir.path(), &tune);
    let mut child =
        std::process::Command::new(env!("CARGO_BIN_EXE_croco")).args(["run", file.to_str().unwrap()]).spawn().unwrap();
    let train_log = dir.path().join("root/tables/train_log");
    let deadline = Instant::now() + Duration::from_secs(300);
    while crate::model_stages::count_markers(&train_log) < 2 {
        assert!(Instant::now() < deadline, "tune committed no checkpoint in time");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let resumed = crate::util::run(&file, RunOptions::default()).await;
    let at = resumed[5].stats["resumed_at_step"].as_u64().unwrap();
    assert!(at >= 6, "resumed from a checkpoint, at step {at}");
    let adapter = |reports: &[croco::pipeline::StageReport]| {
        let dir = std::path::PathBuf::from(reports[5].stats["adapter"].as_str().unwrap().trim_start_matches("file://"));
        let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        croco::model::tensors::read_f32_tensors(&weights).unwrap()
    };
    let (expected, got) = (adapter(&reference), adapter(&resumed));
    assert_eq!(expected.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>());
    for (name, (_, want)) in &expected {
        let diff = got[name].1.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "{name} differs by {diff} after resume");
    }
    let log = |file: &std::path::Path| {
        let file = file.to_path_buf();
        async move { floats(&query(&file, "SELECT loss, grad_norm, lr FROM train_log ORDER BY step").await, 0) }
    };
    let (expected_loss, resumed_loss) = (log(&tuning_pipeline(reference_dir.path(), &tune)).await, log(&file).await);
    assert_eq!(expected_loss.len(), resumed_loss.len(), "every step logged once");
    for (a, b) in expected_loss.iter().zip(&resumed_loss) {
        assert!((a - b).abs() < 1e-5, "losses agree step by step: {a} vs {b}");
    }
}

/// A pipeline whose `[models]` names `policy_adapter` runs the tuned policy:
/// the adapter's checksum changes generate's key (prompts stay shared), the
/// rows name bundle + adapter, and the text differs from the base policy's.
#[tokio::test]
async fn a_policy_adapter_is_merged_into_generation_and_enters_its_key() {
    use croco::pipeline::runner::RunOptions;
    let dir = tempfile::tempdir().unwrap();
    let base = crate::model_stages::model_pipeline(dir.path(), "");
    let mut adapter = Adapter::init(&policy_bundle(), config(4, &["q_proj", "v_proj", "down_proj"]), 5).unwrap();
    adapter.modules.iter_mut().filter(|m| m.trainable).for_each(|m| m.b.fill(0.05));
    let adapter_dir = dir.path().join("adapter");
    std::fs::create_dir_all(&adapter_dir).unwrap();
    let (weights, config_json) = adapter.to_peft().unwrap();
    std::fs::write(adapter_dir.join("adapter_model.safetensors"), weights).unwrap();
    std::fs::write(adapter_dir.join("adapter_config.json"), config_json).unwrap();
    let text = std::fs::read_to_string(&base)
        .unwrap()
        .replace("[models]\n", &format!("[models]\npolicy_adapter = \"{}\"\n", adapter_dir.display()));
    let tuned = dir.path().join("tuned.toml");
    std::fs::write(&tuned, text).unwrap();

    let base_reports = crate::util::run(&base, RunOptions::default()).await;
    let tuned_reports = crate::util::run(&tuned, RunOptions::default()).await;
    assert_eq!(tuned_reports[0].status, "skipped", "prompts are shared");
    assert_eq!(tuned_reports[1].status, "ran");
    assert_ne!(base_reports[1].key, tuned_reports[1].key);

    let texts = |file: std::path::PathBuf| async move {
        let batches = query(&file, "SELECT policy_id, text FROM generations ORDER BY prompt_id, sample_idx").await;
        let batches: Vec<_> = batches.iter().map(croco::store::schema::plain_strings).collect();
        let column = |i: usize| -> Vec<String> {
            batches
                .iter()
                .flat_map(|b| {
                    let values = b.column(i).as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
                    (0..arrow::array::Array::len(values)).map(|r| values.value(r).to_string()).collect::<Vec<_>>()
                })
                .collect()
        };
        (column(0), column(1))
    };
    let ((base_ids, base_texts), (tuned_ids, tuned_texts)) = (texts(base.clone()).await, texts(tuned.clone()).await);
    assert!(base_ids.iter().all(|id| !id.contains("+adapter:")));
    assert!(tuned_ids.iter().all(|id| id.contains("+adapter:")), "{:?}", &tuned_ids[..1]);
    assert_eq!(base_texts.len(), tuned_texts.len());
    let changed = base_texts.iter().zip(&tuned_texts).filter(|(a, b)| a != b).count();
    assert!(changed > base_texts.len() / 2, "the adapter changes most samples ({changed} of {})", base_texts.len());

    std::fs::remove_file(adapter_dir.join("adapter_config.json")).unwrap();
    let loaded = croco::pipeline::validate::load(&tuned).unwrap();
    let error = croco::pipeline::Plan::build(loaded).await.unwrap_err().to_string();
    assert!(error.contains("models.policy_adapter") && error.contains("adapter_config.json"), "{error}");
}
