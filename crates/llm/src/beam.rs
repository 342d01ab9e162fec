//! Decoding from prompt embeddings (a vision-language prompt is image embeddings spliced into
//! text), with Hugging Face 4.33.1's semantics as InternLM-XComposer uses them: the generated
//! sequence starts with BOS and the token budget does not count the prompt; the repetition
//! penalty sees `[BOS] + generated` only; generation ends at EOS or when every row ends in one of
//! the stop tokens (eoh/eoa). [`greedy`] and [`beam_search`] (HF's `BeamSearchScorer` with
//! `early_stopping=False`).

use std::ops::ControlFlow;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::decoder::{Decoder, KvCache};
use crate::generation::{Sampler, apply_repetition_penalty, argmax};
use crate::grammar::{Constraint, GrammarState};

/// What to decode.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedGenConfig {
    /// Beams (1 = greedy).
    pub num_beams: usize,
    /// New tokens at most.
    pub max_new_tokens: usize,
    /// HF repetition penalty over `[BOS] + generated` (1 = off).
    pub repetition_penalty: f32,
    /// Exponent of the hypothesis length in beam scores.
    pub length_penalty: f32,
    /// The id the sequence starts with.
    pub bos_id: u32,
    /// End of sequence: closes a hypothesis.
    pub eos_id: u32,
    /// Generation stops once every row ends in one of these.
    pub stop_ids: Vec<u32>,
}

/// A step callback: sees the running sequence (the best beam) after each step and answers
/// `ControlFlow::Break(())` to end decoding there, with the tokens so far.
pub type OnStep<'a> = dyn FnMut(&[u32]) -> ControlFlow<()> + 'a;

/// The step callback that never stops decoding.
pub fn every_step(_: &[u32]) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

/// A decoded sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedGenOutput {
    /// `[BOS, new tokens…]`, as HF returns it.
    pub sequence: Vec<u32>,
    /// Beam search's normalised score of the sequence (0 for greedy).
    pub score: f32,
    /// Every finished hypothesis with its score, best first (beam search).
    pub hypotheses: Vec<(Vec<u32>, f32)>,
}

impl EmbedGenOutput {
    /// The new tokens (BOS removed).
    pub fn new_tokens(&self) -> &[u32] {
        &self.sequence[1..]
    }
}

/// What [`greedy_steps`] and [`beam_steps`] need of a decoder: a prompt run as one sequence,
/// then one token per sequence per step, the logits of each sequence's last position, and the
/// sequences reordered as beams are kept. Implemented for burn's [`Decoder`] ([`BurnSteps`]) and
/// the CUDA engine.
pub trait StepDecoder {
    /// What can go wrong on the device.
    type Error;
    /// Runs the prompt as a single sequence.
    fn prefill(&mut self) -> Result<(), Self::Error>;
    /// The logits of the last position of every sequence.
    fn logits(&mut self) -> Result<Vec<Vec<f32>>, Self::Error>;
    /// Keeps sequences `rows`, in that order (repeats allowed).
    fn reorder(&mut self, rows: &[usize]) -> Result<(), Self::Error>;
    /// Appends `tokens[s]` to sequence `s`.
    fn step(&mut self, tokens: &[u32]) -> Result<(), Self::Error>;
    /// The greedy next token of sequence 0 after the repetition `penalty` over `seq`.
    fn greedy_token(&mut self, seq: &[u32], penalty: f32) -> Result<u32, Self::Error> {
        let mut row = self.logits()?.swap_remove(0);
        apply_repetition_penalty(&mut row, seq, penalty);
        Ok(argmax(&row))
    }
    /// Beam search's candidates of the first `seqs.len()` sequences: each row's log-softmax with
    /// the repetition `penalty` over `seqs[b]` applied after it (as HF's processors see
    /// log-probabilities), its `k` best as (log-prob, id), best first, lower id first on ties.
    fn top_logprobs(&mut self, seqs: &[Vec<u32>], penalty: f32, k: usize) -> Result<Vec<Vec<(f32, u32)>>, Self::Error> {
        Ok(top_logprobs_host(self.logits()?, seqs, penalty, k))
    }
}

/// How a one-sequence decode chooses each token instead of plain greedy.
pub enum TokenChoice<'a> {
    /// Greedy, the repetition penalty also over these ids before the answer (the prompt's ids,
    /// BOS first), as HF's penalty does when the prompt's ids are the `inputs`.
    SeeingPrompt(&'a [u32]),
    /// Drawn by a sampler (temperature, top-p, its own repetition penalty over `[BOS] +
    /// generated`, seeded): the original's `do_sample=True` with one beam.
    Sampled(&'a mut Sampler),
}

/// A decoder whose greedy choice is made as `choice` says, so [`greedy_steps`] decodes with it.
pub struct Chosen<'a, D> {
    /// The decoder.
    pub inner: D,
    /// How each token is chosen.
    pub choice: TokenChoice<'a>,
}

impl<D: StepDecoder> StepDecoder for Chosen<'_, D> {
    type Error = D::Error;

    fn prefill(&mut self) -> Result<(), Self::Error> {
        self.inner.prefill()
    }

    fn logits(&mut self) -> Result<Vec<Vec<f32>>, Self::Error> {
        self.inner.logits()
    }

    fn reorder(&mut self, rows: &[usize]) -> Result<(), Self::Error> {
        self.inner.reorder(rows)
    }

    fn step(&mut self, tokens: &[u32]) -> Result<(), Self::Error> {
        self.inner.step(tokens)
    }

    fn greedy_token(&mut self, seq: &[u32], penalty: f32) -> Result<u32, Self::Error> {
        match &mut self.choice {
            TokenChoice::SeeingPrompt(seen) => {
                // `seq` is [BOS, answer…]; the prompt's ids already start with BOS.
                let all: Vec<u32> = seen.iter().chain(&seq[1..]).copied().collect();
                self.inner.greedy_token(&all, penalty)
            }
            TokenChoice::Sampled(sampler) => {
                let mut row = self.inner.logits()?.swap_remove(0);
                Ok(sampler.sample(&mut row, seq))
            }
        }
    }
}

/// [`StepDecoder::top_logprobs`] on logits rows already on the host.
pub fn top_logprobs_host(rows: Vec<Vec<f32>>, seqs: &[Vec<u32>], penalty: f32, k: usize) -> Vec<Vec<(f32, u32)>> {
    rows.into_iter()
        .zip(seqs)
        .map(|(mut row, seq)| {
            beam_scores_of(&mut row, seq, penalty);
            let mut idx: Vec<usize> = (0..row.len()).collect();
            let k = k.min(row.len());
            let order = |x: &usize, y: &usize| row[*y].total_cmp(&row[*x]).then(x.cmp(y));
            idx.select_nth_unstable_by(k - 1, order);
            idx.truncate(k);
            idx.sort_by(order);
            idx.into_iter().map(|t| (row[t], t as u32)).collect()
        })
        .collect()
}

/// A decoder whose sequences follow a grammar, for [`greedy_steps`] and [`beam_steps`] (and a
/// sampled [`Chosen`] around it): each sequence, each beam, keeps its own parse, which follows
/// the beams as they are reordered and grow. A beam's candidates are its best tokens that its
/// parse allows, scored as without the grammar (log-softmax and penalty first, then the mask,
/// as HF's `prefix_allowed_tokens_fn` masks beam scores), so a grammar that allows every token
/// a search takes changes nothing. EOS and the stop ids are allowed once the text is a whole
/// sentence; a sequence whose parse allows nothing can only end (EOS).
pub struct Grammared<'a, D> {
    /// The decoder.
    pub inner: D,
    constraint: &'a Constraint,
    eos: u32,
    /// EOS and the stop ids.
    ends: Vec<u32>,
    /// Each sequence's parse; `None` once it took a refused token (a beam padded in at −∞).
    states: Vec<Option<GrammarState>>,
}

impl<'a, D> Grammared<'a, D> {
    /// `inner` kept to `constraint`, with `cfg`'s EOS and stop ids as the tokens that end a sentence.
    pub fn new(inner: D, constraint: &'a Constraint, cfg: &EmbedGenConfig) -> Self {
        let mut ends = vec![cfg.eos_id];
        ends.extend(&cfg.stop_ids);
        Grammared { inner, constraint, eos: cfg.eos_id, ends, states: vec![Some(constraint.grammar.start())] }
    }

    /// The `k` best (score, id) of sequence `s`'s processed `row` that its parse allows, padded
    /// to `k` (as many as a beam search takes from each row) with refused ids at −∞: a beam
    /// search keeps its width, and a padded beam can never win.
    fn top_allowed(&self, s: usize, row: &[f32], k: usize) -> Vec<(f32, u32)> {
        let mut top = match &self.states[s] {
            Some(state) => self.constraint.top_k(state, row, k, &self.ends),
            None => vec![],
        };
        let k = k.min(row.len());
        let pad: Vec<u32> = (0..row.len() as u32).filter(|t| !self.ends.contains(t) && !top.iter().any(|x| x.1 == *t)).take(k.saturating_sub(top.len())).collect();
        top.extend(pad.into_iter().map(|t| (f32::NEG_INFINITY, t)));
        top
    }
}

impl<D: StepDecoder> StepDecoder for Grammared<'_, D> {
    type Error = D::Error;

    fn prefill(&mut self) -> Result<(), Self::Error> {
        self.states = vec![Some(self.constraint.grammar.start())];
        self.inner.prefill()
    }

    /// Every row with the tokens its parse refuses at −∞ (EOS alone left when it allows none).
    fn logits(&mut self) -> Result<Vec<Vec<f32>>, Self::Error> {
        let mut rows = self.inner.logits()?;
        for (row, state) in rows.iter_mut().zip(&self.states) {
            let left = state.as_ref().map_or(0, |st| self.constraint.mask(st, row, &self.ends));
            if left == 0 {
                row.fill(f32::NEG_INFINITY);
                if let Some(x) = row.get_mut(self.eos as usize) {
                    *x = 0.0;
                }
            }
        }
        Ok(rows)
    }

    fn reorder(&mut self, rows: &[usize]) -> Result<(), Self::Error> {
        self.states = rows.iter().map(|&r| self.states[r].clone()).collect();
        self.inner.reorder(rows)
    }

    fn step(&mut self, tokens: &[u32]) -> Result<(), Self::Error> {
        let c = self.constraint;
        for (state, t) in self.states.iter_mut().zip(tokens) {
            if self.ends.contains(t) {
                continue;
            }
            let took = match (state.as_mut(), c.vocabulary.bytes(*t)) {
                (Some(s), Some(b)) => s.advance_bytes(&c.grammar, b),
                _ => false,
            };
            if !took {
                *state = None;
            }
        }
        self.inner.step(tokens)
    }

    fn greedy_token(&mut self, seq: &[u32], penalty: f32) -> Result<u32, Self::Error> {
        let mut row = self.inner.logits()?.swap_remove(0);
        apply_repetition_penalty(&mut row, seq, penalty);
        Ok(self.states[0].as_ref().and_then(|st| self.constraint.argmax(st, &mut row, &self.ends)).unwrap_or(self.eos))
    }

    fn top_logprobs(&mut self, seqs: &[Vec<u32>], penalty: f32, k: usize) -> Result<Vec<Vec<(f32, u32)>>, Self::Error> {
        let rows = self.inner.logits()?;
        Ok(rows
            .into_iter()
            .zip(seqs)
            .enumerate()
            .map(|(s, (mut row, seq))| {
                beam_scores_of(&mut row, seq, penalty);
                self.top_allowed(s, &row, k)
            })
            .collect())
    }
}

/// A burn [`Decoder`] with its cache, after a prompt `[1, len, hidden]`.
pub struct BurnSteps<'a, B: Backend> {
    dec: &'a Decoder<B>,
    cache: KvCache<B>,
    prompt: Option<Tensor<B, 3>>,
    logits: Option<Tensor<B, 3>>,
}

impl<'a, B: Backend> BurnSteps<'a, B> {
    /// Ready to run `prompt`.
    pub fn new(dec: &'a Decoder<B>, prompt: Tensor<B, 3>) -> Self {
        BurnSteps { dec, cache: dec.new_cache(), prompt: Some(prompt), logits: None }
    }
}

impl<B: Backend> StepDecoder for BurnSteps<'_, B> {
    type Error = std::convert::Infallible;

    fn prefill(&mut self) -> Result<(), Self::Error> {
        let prompt = self.prompt.take().expect("prefill runs once");
        self.logits = Some(self.dec.forward_embeds(prompt, &mut self.cache, 1));
        Ok(())
    }

    fn logits(&mut self) -> Result<Vec<Vec<f32>>, Self::Error> {
        let logits = self.logits.clone().expect("prefill first");
        let [b, _, v] = logits.dims();
        let data: Vec<f32> = logits.reshape([b, v]).into_data().convert::<f32>().into_vec().expect("f32 logits");
        Ok(data.chunks(v).map(<[f32]>::to_vec).collect())
    }

    fn reorder(&mut self, rows: &[usize]) -> Result<(), Self::Error> {
        self.cache.reorder(rows);
        Ok(())
    }

    fn step(&mut self, tokens: &[u32]) -> Result<(), Self::Error> {
        let d = self.dec.config.hidden_size;
        let x = self.dec.embed_ids(tokens).reshape([tokens.len(), 1, d]);
        self.logits = Some(self.dec.forward_embeds(x, &mut self.cache, 1));
        Ok(())
    }
}

/// A logits row as beam search scores it: log-softmax, then the repetition `penalty` over `seq`.
fn beam_scores_of(row: &mut [f32], seq: &[u32], penalty: f32) {
    log_softmax(row);
    apply_repetition_penalty(row, seq, penalty);
}

fn log_softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Summed in f64: over a 100k vocabulary an f32 sum drifts by more than the logits' own error.
    let sum: f64 = row.iter().map(|x| f64::from(x - max).exp()).sum();
    let lse = f64::from(max) + sum.ln();
    for x in row.iter_mut() {
        *x = (f64::from(*x) - lse) as f32;
    }
}

fn stopped<'a>(mut seqs: impl Iterator<Item = &'a Vec<u32>>, stop: &[u32]) -> bool {
    !stop.is_empty() && seqs.all(|s| s.last().is_some_and(|t| stop.contains(t)))
}

/// Greedy decoding after `prompt` (`[1, len, hidden]`) on burn.
pub fn greedy<B: Backend>(dec: &Decoder<B>, prompt: Tensor<B, 3>, cfg: &EmbedGenConfig) -> EmbedGenOutput {
    let Ok(out) = greedy_steps(&mut BurnSteps::new(dec, prompt), cfg, &mut every_step);
    out
}

/// Greedy decoding on any [`StepDecoder`]; `on_step` sees the sequence after each new token
/// and may end decoding there (the sequence then ends with that token).
pub fn greedy_steps<D: StepDecoder>(dec: &mut D, cfg: &EmbedGenConfig, on_step: &mut OnStep<'_>) -> Result<EmbedGenOutput, D::Error> {
    dec.prefill()?;
    let mut seq = vec![cfg.bos_id];
    for _ in 0..cfg.max_new_tokens {
        let next = dec.greedy_token(&seq, cfg.repetition_penalty)?;
        seq.push(next);
        if on_step(&seq).is_break() || next == cfg.eos_id || stopped(std::iter::once(&seq), &cfg.stop_ids) || seq.len() > cfg.max_new_tokens {
            break;
        }
        dec.step(&[next])?;
    }
    Ok(EmbedGenOutput { sequence: seq, score: 0.0, hypotheses: vec![] })
}

/// The finished hypotheses of one beam search (HF's `BeamHypotheses`).
struct Hypotheses {
    beams: Vec<(f32, Vec<u32>)>,
    worst: f32,
    n: usize,
    length_penalty: f32,
}

impl Hypotheses {
    fn add(&mut self, hyp: Vec<u32>, sum_logprobs: f32) {
        let score = sum_logprobs / (hyp.len() as f32).powf(self.length_penalty);
        if self.beams.len() < self.n || score > self.worst {
            self.beams.push((score, hyp));
            if self.beams.len() > self.n {
                let (worst_at, _) = self.beams.iter().enumerate().min_by(|a, b| a.1.0.total_cmp(&b.1.0)).expect("non-empty");
                self.beams.remove(worst_at);
                self.worst = self.beams.iter().map(|b| b.0).fold(f32::INFINITY, f32::min);
            } else {
                self.worst = self.worst.min(score);
            }
        }
    }

    fn is_done(&self, best_sum_logprobs: f32, cur_len: usize) -> bool {
        self.beams.len() >= self.n && self.worst >= best_sum_logprobs / (cur_len as f32).powf(self.length_penalty)
    }
}

/// Beam search after `prompt` (`[1, len, hidden]`) on burn, as HF 4.33.1's `beam_search`.
pub fn beam_search<B: Backend>(dec: &Decoder<B>, prompt: Tensor<B, 3>, cfg: &EmbedGenConfig) -> EmbedGenOutput {
    let Ok(out) = beam_steps(&mut BurnSteps::new(dec, prompt), cfg, &mut every_step);
    out
}

/// Beam search on any [`StepDecoder`], as HF 4.33.1's `beam_search`; `on_step` sees the best
/// running beam after each step (what the original's web demo streamed); stopped there, the
/// answer is that beam as it stands, with the hypotheses finished so far.
pub fn beam_steps<D: StepDecoder>(dec: &mut D, cfg: &EmbedGenConfig, on_step: &mut OnStep<'_>) -> Result<EmbedGenOutput, D::Error> {
    let n = cfg.num_beams.max(1);
    dec.prefill()?;
    dec.reorder(&vec![0; n])?;
    let mut seqs: Vec<Vec<u32>> = vec![vec![cfg.bos_id]; n];
    let mut beam_scores: Vec<f32> = (0..n).map(|i| if i == 0 { 0.0 } else { -1e9 }).collect();
    let mut hyps = Hypotheses { beams: vec![], worst: 1e9, n, length_penalty: cfg.length_penalty };
    let mut done = false;
    for step in 0..cfg.max_new_tokens {
        let cur_len = seqs[0].len();
        // Each beam's processed log-probs plus its score; the best 2n over all beams.
        // Before the first step every beam is the prompt: its one row stands for all (the
        // others start at -1e9 and cannot reach the best 2n).
        let tops = match step {
            0 => vec![dec.top_logprobs(&seqs[..1], cfg.repetition_penalty, 2 * n)?.swap_remove(0); n],
            _ => dec.top_logprobs(&seqs, cfg.repetition_penalty, 2 * n)?,
        };
        let mut cand: Vec<(f32, u32, usize)> = Vec::with_capacity(2 * n * n);
        for (b, top) in tops.iter().enumerate() {
            cand.extend(top.iter().map(|&(lp, t)| (lp + beam_scores[b], t, b)));
        }
        // torch.topk over the flattened beams × vocabulary: descending, lower flat index first on ties.
        cand.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.2, a.1).cmp(&(b.2, b.1))));
        cand.truncate(2 * n);
        let mut next: Vec<(f32, u32, usize)> = Vec::with_capacity(n);
        for (rank, &(score, tok, b)) in cand.iter().enumerate() {
            if tok == cfg.eos_id {
                if rank < n {
                    hyps.add(seqs[b].clone(), score);
                }
            } else {
                next.push((score, tok, b));
            }
            if next.len() == n {
                break;
            }
        }
        done = done || hyps.is_done(cand[0].0, cur_len + 1);
        seqs = next.iter().map(|&(_, t, b)| seqs[b].iter().copied().chain([t]).collect()).collect();
        beam_scores = next.iter().map(|c| c.0).collect();
        if on_step(&seqs[0]).is_break() {
            let score = beam_scores[0] / (seqs[0].len() as f32).powf(cfg.length_penalty);
            let mut hypotheses: Vec<(Vec<u32>, f32)> = hyps.beams.into_iter().map(|(s, h)| (h, s)).collect();
            hypotheses.sort_by(|a, b| b.1.total_cmp(&a.1));
            return Ok(EmbedGenOutput { sequence: seqs.swap_remove(0), score, hypotheses });
        }
        let order: Vec<usize> = next.iter().map(|c| c.2).collect();
        // Beams at −∞ (padded in under a grammar) can never win: they neither hold the search
        // open nor need a stop id.
        let mut live = seqs.iter().zip(&beam_scores).filter(|(_, s)| s.is_finite()).map(|(q, _)| q).peekable();
        if done || live.peek().is_none() || stopped(live, &cfg.stop_ids) || step + 1 == cfg.max_new_tokens {
            break;
        }
        dec.reorder(&order)?;
        let toks: Vec<u32> = next.iter().map(|c| c.1).collect();
        dec.step(&toks)?;
    }
    if !done {
        for (seq, score) in seqs.into_iter().zip(beam_scores) {
            hyps.add(seq, score);
        }
    }
    let mut all = hyps.beams;
    // Best first; among equals the later one, as Python's stable sort then `[-1]` picks.
    all.reverse();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    // Hypotheses at −∞ took a token a grammar refused; none left means the grammar allowed
    // nothing at all: the answer is then empty.
    all.retain(|h| h.0 > f32::NEG_INFINITY);
    let (score, mut sequence) = all.first().cloned().unwrap_or((f32::NEG_INFINITY, vec![cfg.bos_id]));
    // HF's `BeamSearchScorer.finalize` writes EOS after a hypothesis shorter than the length
    // limit (`[BOS] + max_new_tokens`), however the search ended.
    if sequence.len() < cfg.max_new_tokens + 1 {
        sequence.push(cfg.eos_id);
    }
    Ok(EmbedGenOutput { sequence, score, hypotheses: all.into_iter().map(|(s, h)| (h, s)).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sequence's logits are the same row: EOS (id 2) the likeliest token.
    struct SameRow {
        rows: usize,
        /// Steps run after the prefill.
        steps: usize,
    }

    impl StepDecoder for SameRow {
        type Error = std::convert::Infallible;
        fn prefill(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
        fn logits(&mut self) -> Result<Vec<Vec<f32>>, Self::Error> {
            Ok(vec![vec![0.0, 1.0, 5.0, 2.0]; self.rows])
        }
        fn reorder(&mut self, rows: &[usize]) -> Result<(), Self::Error> {
            self.rows = rows.len();
            Ok(())
        }
        fn step(&mut self, _: &[u32]) -> Result<(), Self::Error> {
            self.steps += 1;
            Ok(())
        }
    }

    /// A callback that ends decoding at its `at`-th call, keeping every sequence it saw.
    fn stop_at(at: usize, seen: &mut Vec<Vec<u32>>) -> impl FnMut(&[u32]) -> ControlFlow<()> + '_ {
        move |seq| {
            seen.push(seq.to_vec());
            if seen.len() == at { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        }
    }

    #[test]
    fn a_callback_stop_ends_greedy_decoding_after_that_step_with_its_tokens() {
        // EOS is out of reach: greedy repeats id 2, the likeliest, until told to stop.
        let cfg = EmbedGenConfig { num_beams: 1, max_new_tokens: 10, repetition_penalty: 1.0, length_penalty: 1.0, bos_id: 1, eos_id: 99, stop_ids: vec![] };
        let (mut dec, mut seen) = (SameRow { rows: 1, steps: 0 }, vec![]);
        let out = greedy_steps(&mut dec, &cfg, &mut stop_at(3, &mut seen)).unwrap();
        assert_eq!(out.sequence, vec![1, 2, 2, 2]);
        assert_eq!(seen.len(), 3, "no callback after the stop");
        assert_eq!(seen.last(), Some(&out.sequence));
        assert_eq!(dec.steps, 2, "the stopped step's token is not run through the model");
    }

    #[test]
    fn a_callback_stop_ends_beam_search_after_that_step_with_the_best_beam() {
        let cfg = EmbedGenConfig { num_beams: 2, max_new_tokens: 10, repetition_penalty: 1.0, length_penalty: 1.0, bos_id: 1, eos_id: 99, stop_ids: vec![] };
        let (mut dec, mut seen) = (SameRow { rows: 1, steps: 0 }, vec![]);
        let out = beam_steps(&mut dec, &cfg, &mut stop_at(2, &mut seen)).unwrap();
        assert_eq!(seen.len(), 2);
        // The best beam as the callback saw it, no EOS written after it; id 2 twice is the best.
        assert_eq!(out.sequence, vec![1, 2, 2]);
        assert_eq!(seen[1], out.sequence);
        assert_eq!(dec.steps, 1);
        let unstopped = beam_steps(&mut SameRow { rows: 1, steps: 0 }, &cfg, &mut every_step).unwrap();
        assert_eq!(unstopped.sequence.len(), 11, "without a stop the search runs to its budget");
    }

    #[test]
    fn a_hypothesis_ended_early_comes_back_with_its_eos_as_hf_finalize_writes_it() {
        let cfg = EmbedGenConfig { num_beams: 2, max_new_tokens: 5, repetition_penalty: 1.0, length_penalty: 1.0, bos_id: 1, eos_id: 2, stop_ids: vec![] };
        let out = beam_steps(&mut SameRow { rows: 1, steps: 0 }, &cfg, &mut every_step).unwrap();
        // The best hypothesis is BOS closed at once by EOS (log-prob ≈ −0.066 over length 1).
        assert_eq!(out.sequence, vec![1, 2]);
        assert_eq!(out.hypotheses[0].0, vec![1]);
    }

    #[test]
    fn sampled_decoding_draws_from_the_sampler_and_repeats_with_its_seed() {
        use crate::generation::GenerationConfig;
        let cfg = EmbedGenConfig { num_beams: 1, max_new_tokens: 40, repetition_penalty: 1.0, length_penalty: 1.0, bos_id: 1, eos_id: 99, stop_ids: vec![] };
        let draw = |seed: u64| {
            let mut sampler = Sampler::new(&GenerationConfig { temperature: 1.0, seed, ..Default::default() }).unwrap();
            greedy_steps(&mut Chosen { inner: SameRow { rows: 1, steps: 0 }, choice: TokenChoice::Sampled(&mut sampler) }, &cfg, &mut every_step).unwrap().sequence
        };
        let (a, b) = (draw(7), draw(7));
        assert_eq!(a, b, "one seed, one sequence");
        assert_eq!(a.len(), 41);
        // Greedy would repeat id 2 (the likeliest); a draw at temperature 1 does not always take it.
        assert!(a[1..].iter().any(|&t| t != 2), "{a:?}");
        assert!(a[1..].iter().all(|&t| t < 4));
    }

    /// Logits that depend on each sequence's tokens, so that beams part: id 0 (no bytes) and
    /// EOS (id 1) unlikely, the others pseudo-random.
    struct Hashed {
        seqs: Vec<Vec<u32>>,
    }

    const HASHED_TOKENS: [&str; 8] = ["a", "b", "ab", "c", "ba", " ", "cc", "x"];

    impl StepDecoder for Hashed {
        type Error = std::convert::Infallible;
        fn prefill(&mut self) -> Result<(), Self::Error> {
            self.seqs = vec![vec![]];
            Ok(())
        }
        fn logits(&mut self) -> Result<Vec<Vec<f32>>, Self::Error> {
            let row = |s: &Vec<u32>| -> Vec<f32> {
                (0..2 + HASHED_TOKENS.len() as u32)
                    .map(|t| {
                        let h = s.iter().chain([&t]).fold(0xcbf2_9ce4_8422_2325u64, |h, x| (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3));
                        if t < 2 { -3.0 } else { (h >> 40) as f32 / (1u64 << 24) as f32 * 4.0 }
                    })
                    .collect()
            };
            Ok(self.seqs.iter().map(row).collect())
        }
        fn reorder(&mut self, rows: &[usize]) -> Result<(), Self::Error> {
            self.seqs = rows.iter().map(|&r| self.seqs[r].clone()).collect();
            Ok(())
        }
        fn step(&mut self, tokens: &[u32]) -> Result<(), Self::Error> {
            self.seqs.iter_mut().zip(tokens).for_each(|(s, t)| s.push(*t));
            Ok(())
        }
    }

    fn hashed_constraint(grammar: &str) -> Constraint {
        use crate::grammar::{Grammar, Vocabulary};
        let bytes = [None, None].into_iter().chain(HASHED_TOKENS.iter().map(|t| Some(t.as_bytes().to_vec()))).collect();
        Constraint { grammar: std::sync::Arc::new(Grammar::parse("test", grammar).unwrap()), vocabulary: std::sync::Arc::new(Vocabulary::from_token_bytes(bytes)) }
    }

    /// The text of a sequence (BOS, EOS and the stop ids left out), `None` if a token has no bytes.
    fn hashed_text(seq: &[u32], cfg: &EmbedGenConfig) -> Option<String> {
        seq[1..].iter().filter(|t| **t != cfg.eos_id && !cfg.stop_ids.contains(t)).map(|&t| HASHED_TOKENS.get(t.checked_sub(2)? as usize).copied()).collect()
    }

    fn hashed_cfg(beams: usize) -> EmbedGenConfig {
        EmbedGenConfig { num_beams: beams, max_new_tokens: 6, repetition_penalty: 1.3, length_penalty: 1.0, bos_id: 0, eos_id: 1, stop_ids: vec![] }
    }

    #[test]
    fn beam_search_under_a_grammar_keeps_every_beam_to_its_own_parse() {
        // "a"/"b" runs, then one "c" closes the sentence: "ab" and "ba" are single tokens.
        let c = hashed_constraint(r#"root ::= [ab]+ "c""#);
        for beams in [1, 3, 5] {
            let cfg = hashed_cfg(beams);
            let out = beam_steps(&mut Grammared::new(Hashed { seqs: vec![] }, &c, &cfg), &cfg, &mut every_step).unwrap();
            let text = hashed_text(&out.sequence, &cfg).unwrap();
            let whole = out.sequence.last() == Some(&cfg.eos_id);
            let mut state = c.grammar.start();
            assert!(state.advance_bytes(&c.grammar, text.as_bytes()) && (!whole || state.is_accepting()), "{beams} beams: {text:?}");
            for (h, score) in &out.hypotheses {
                let t = hashed_text(h, &cfg).unwrap();
                assert!(score.is_finite() && c.grammar.start().advance_bytes(&c.grammar, t.as_bytes()), "{beams} beams: hypothesis {t:?}");
            }
            // Unconstrained, the same search leaves the grammar at once.
            let free = beam_steps(&mut Hashed { seqs: vec![] }, &cfg, &mut every_step).unwrap();
            let t = hashed_text(&free.sequence, &cfg).unwrap();
            assert!(!c.grammar.start().advance_bytes(&c.grammar, t.as_bytes()), "{t:?}");
        }
        // Sampled under the grammar too (the sampler sees the masked rows).
        let cfg = hashed_cfg(1);
        let mut sampler = Sampler::new(&crate::generation::GenerationConfig { temperature: 1.5, seed: 3, ..Default::default() }).unwrap();
        let out = greedy_steps(&mut Chosen { inner: Grammared::new(Hashed { seqs: vec![] }, &c, &cfg), choice: TokenChoice::Sampled(&mut sampler) }, &cfg, &mut every_step).unwrap();
        let t = hashed_text(&out.sequence, &cfg).unwrap();
        assert!(c.grammar.start().advance_bytes(&c.grammar, t.as_bytes()), "{t:?}");
    }

    #[test]
    fn a_grammar_that_allows_every_token_taken_changes_no_beam() {
        let c = hashed_constraint(r#"root ::= [abcx ]*"#);
        for beams in [1, 4] {
            let cfg = hashed_cfg(beams);
            let under = beam_steps(&mut Grammared::new(Hashed { seqs: vec![] }, &c, &cfg), &cfg, &mut every_step).unwrap();
            let free = beam_steps(&mut Hashed { seqs: vec![] }, &cfg, &mut every_step).unwrap();
            assert_eq!(under, free, "{beams} beams");
            let g = greedy_steps(&mut Grammared::new(Hashed { seqs: vec![] }, &c, &cfg), &cfg, &mut every_step).unwrap();
            assert_eq!(g, greedy_steps(&mut Hashed { seqs: vec![] }, &cfg, &mut every_step).unwrap());
        }
    }

    #[test]
    fn a_grammar_that_allows_nothing_gives_an_empty_answer() {
        let c = hashed_constraint(r#"root ::= "z""#);
        let cfg = hashed_cfg(3);
        let out = beam_steps(&mut Grammared::new(Hashed { seqs: vec![] }, &c, &cfg), &cfg, &mut every_step).unwrap();
        assert_eq!(out.sequence, vec![cfg.bos_id, cfg.eos_id]);
        assert!(out.hypotheses.is_empty());
    }

    #[test]
    fn device_style_candidates_are_the_rows_best_log_probs_penalised() {
        let rows = vec![vec![0.0, 1.0, 5.0, 2.0]];
        let top = top_logprobs_host(rows, &[vec![2]], 50.0, 2);
        let lse = (0f64.exp() + 1f64.exp() + 5f64.exp() + 2f64.exp()).ln() as f32;
        // Id 2 is penalised (its log-prob −0.066 times 50), which puts id 3 (−3.066) first.
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].iter().map(|x| x.1).collect::<Vec<_>>(), vec![3, 2]);
        assert!((top[0][0].0 - (2.0 - lse)).abs() < 1e-5 && (top[0][1].0 - 50.0 * (5.0 - lse)).abs() < 1e-4);
    }
}
