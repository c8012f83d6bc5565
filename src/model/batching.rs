//! Batches of sequences bounded by rows and by tokens: sequences sorted by
//! length, then cut so that no batch holds more than `max_rows` rows nor
//! more than `max_tokens` padded tokens (rows × its longest row), as vLLM
//! bounds a step by `max_num_seqs` and `max_num_batched_tokens`. Memory then
//! follows tokens, not the longest row times a fixed row count.

/// The limits of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// At most this many rows.
    pub max_rows: usize,
    /// At most this many padded tokens (rows × the longest row); `None`: no limit.
    pub max_tokens: Option<usize>,
}

/// The indices of `lengths`, shortest first, cut into batches within
/// `limits`. A sequence longer than `max_tokens` forms a batch of its own.
pub fn length_sorted_batches(lengths: &[usize], limits: BatchLimits) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending: the row joining is the longest of its batch.
        let padded = (current.len() + 1) * lengths[i];
        let full = current.len() == limits.max_rows.max(1) || limits.max_tokens.is_some_and(|max| padded > max);
        if full && !current.is_empty() {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// `run` over length-sorted batches of `items` within `limits` (`length`
/// gives an item's tokens); its results back in the order of `items`.
pub fn in_batches<T: Clone, R, E>(
    items: &[T],
    length: impl Fn(&T) -> usize,
    limits: BatchLimits,
    mut run: impl FnMut(&[T]) -> Result<Vec<R>, E>,
) -> Result<Vec<R>, E> {
    let lengths: Vec<usize> = items.iter().map(length).collect();
    let mut results: Vec<Option<R>> = items.iter().map(|_| None).collect();
    for batch in length_sorted_batches(&lengths, limits) {
        let selected: Vec<T> = batch.iter().map(|&i| items[i].clone()).collect();
        for (&i, result) in batch.iter().zip(run(&selected)?) {
            results[i] = Some(result);
        }
    }
    Ok(results.into_iter().map(|r| r.expect("every item is in one batch")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_alone_cut_sorted_sequences_into_fixed_sized_batches() {
        let limits = BatchLimits { max_rows: 2, max_tokens: None };
        assert_eq!(length_sorted_batches(&[5, 1, 3, 2, 4], limits), vec![vec![1, 3], vec![2, 4], vec![0]]);
    }

    #[test]
    fn a_token_budget_bounds_rows_times_the_longest_row() {
        let limits = BatchLimits { max_rows: 100, max_tokens: Some(12) };
        // Sorted: 2, 3, 4, 6, 13 → [2, 3, 4] (3 × 4 = 12), [6, ...] (2 × 13 > 12) → [6], [13] alone.
        let batches = length_sorted_batches(&[13, 2, 6, 3, 4], limits);
        assert_eq!(batches, vec![vec![1, 3, 4], vec![2], vec![0]]);
        for batch in &batches {
            let longest = batch.iter().map(|&i| [13, 2, 6, 3, 4][i]).max().unwrap();
            assert!(batch.len() * longest <= 12 || batch.len() == 1, "{batch:?}");
        }
    }

    #[test]
    fn batched_results_come_back_in_item_order() {
        let items = vec!["ccc", "a", "bb", "dddd", "e"];
        let limits = BatchLimits { max_rows: 2, max_tokens: Some(4) };
        let mut calls = Vec::new();
        let lengths = in_batches(
            &items,
            |s| s.len(),
            limits,
            |batch| {
                calls.push(batch.to_vec());
                Ok::<_, ()>(batch.iter().map(|s| s.len()).collect())
            },
        );
        assert_eq!(lengths, Ok(vec![3, 1, 2, 4, 1]));
        assert!(calls.iter().all(|b| b.len() <= 2), "{calls:?}");
    }

    #[test]
    fn every_sequence_is_in_exactly_one_batch() {
        let lengths: Vec<usize> = (0..97).map(|i| (i * 37) % 23 + 1).collect();
        let batches = length_sorted_batches(&lengths, BatchLimits { max_rows: 8, max_tokens: Some(40) });
        let mut seen: Vec<usize> = batches.concat();
        seen.sort();
        assert_eq!(seen, (0..97).collect::<Vec<_>>());
    }
}
