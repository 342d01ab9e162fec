//! InternLM-XComposer as the composer's text model ([`XComposerText`]), and the composer with
//! every stage on it, decoded as the original web demo decodes them ([`Composer::with_xcomposer`]).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::Backend;
use xcomposer_llm::beam::{EmbedGenConfig, EmbedGenOutput};
use xcomposer_llm::generation::{GenerationConfig, Sampler};

use crate::captioner::{CaptionStyle, LlmCaptioner};
use crate::composer::Composer;
use crate::prompts::Prompts;
use crate::retriever::Retriever;
use crate::selector::Selector;
use crate::spotter::LlmSpotter;
use crate::text_model::{Completion, LazyVocabulary, Request, Sampling, TextModel};
use crate::vlm_selector::VlmSelector;
use crate::writer::LlmWriter;
use xcomposer_vision::xcomposer::model::XComposer;

/// An InternLM-XComposer model answering text prompts as the original's composition code asks
/// them: `[BOS] " <|User|>:{user}\n<TOKENS_UNUSED_0> <|Bot|>:{prefix}"`, no meta instruction,
/// greedy, beam or (temperature > 0, one beam) sampled decoding, the best running beam streamed.
pub struct XComposerText<B: Backend> {
    /// The model (shared with the selector).
    pub model: Arc<XComposer<B>>,
    /// Whether a request's grammar is enforced, every beam kept to it ([`TextModel::takes_grammar`]);
    /// off, the stages ask and decode exactly as the original.
    pub constrained: bool,
    /// The tokens' bytes for grammars (shared with the selector).
    pub vocabulary: LazyVocabulary,
}

impl<B: Backend> XComposerText<B> {
    /// The model taking grammars ([`XComposerText::constrained`]), its own vocabulary.
    pub fn new(model: Arc<XComposer<B>>) -> Self {
        XComposerText { model, constrained: true, vocabulary: LazyVocabulary::default() }
    }

    /// The model answering as the original: grammars ignored, the stages' parsers and
    /// fallbacks take the answers.
    pub fn original(model: Arc<XComposer<B>>) -> Self {
        XComposerText { constrained: false, ..Self::new(model) }
    }
}

/// The prompt text of a request, as the original lays it out (BOS added at tokenization).
pub fn prompt_text(req: &Request) -> String {
    format!(" <|User|>:{}\n<TOKENS_UNUSED_0> <|Bot|>:{}", req.prompt.user, req.prompt.prefix)
}

/// `text` cut before the first stop string and after `max_lines` non-empty lines (0: no limit).
fn cut(text: &str, stop: &[String], max_lines: usize) -> (String, Option<&'static str>) {
    let mut out = text.to_string();
    let mut why = None;
    if let Some(at) = stop.iter().filter_map(|s| out.find(s.as_str())).min() {
        out.truncate(at);
        why = Some("stop_string");
    }
    if max_lines > 0 {
        let mut seen = 0;
        let mut end = out.len();
        for (i, line) in out.split_inclusive('\n').scan(0, |at, l| Some((std::mem::replace(at, *at + l.len()), l))) {
            if !line.trim().is_empty() {
                seen += 1;
                if seen == max_lines {
                    end = i + line.trim_end_matches('\n').len();
                    break;
                }
            }
        }
        if end < out.len() {
            out.truncate(end);
            why = Some("max_lines");
        }
    }
    (out, why)
}

/// One request as XComposerText answered it: everything the original's `generate` call had.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The prompt text ([`prompt_text`]).
    pub prompt: String,
    /// Its token ids, BOS first.
    pub prompt_ids: Vec<u32>,
    /// The decoding settings.
    pub config: EmbedGenConfig,
    /// The decoded sequence (`[BOS, new tokens…]`).
    pub output: EmbedGenOutput,
    /// What the stage is given.
    pub completion: Completion,
}

/// The decoding settings of a request whose prompt has `prompt_ids` and `prompt_chars`
/// characters, room for `room` new tokens: the original's eoh/eoa stop, beams and penalty as
/// asked; with `prompt_as_inputs`, the demo's `max_length = max_new_tokens + prompt_chars`
/// counted over the prompt's ids too (and no more than the context holds).
fn gen_config(req: &Request, prompt_ids: usize, prompt_chars: usize, room: usize) -> EmbedGenConfig {
    let max_new_tokens = if req.prompt_as_inputs { (req.max_new_tokens + prompt_chars).saturating_sub(prompt_ids).min(room) } else { req.max_new_tokens };
    EmbedGenConfig { num_beams: req.sampling.beams.max(1), max_new_tokens, repetition_penalty: req.sampling.repetition_penalty, ..xcomposer_vision::xcomposer::language::gen_config() }
}

/// The draw for `sampling` when it samples (temperature > 0, one beam), as the original's
/// `do_sample=True`: temperature, top-p, the repetition penalty and the seed.
fn sampler_for(sampling: &Sampling) -> Result<Option<Sampler>, String> {
    if sampling.temperature == 0.0 {
        return Ok(None);
    }
    if sampling.beams > 1 {
        return Err(format!("sampling draws one sequence; {} beams asked with temperature {} (the original's beam sampling is not built)", sampling.beams, sampling.temperature));
    }
    let cfg = GenerationConfig { temperature: sampling.temperature, top_p: sampling.top_p, repetition_penalty: sampling.repetition_penalty, seed: sampling.seed, ..Default::default() };
    Sampler::new(&cfg).map(Some).map_err(|e| e.to_string())
}

impl<B: Backend> XComposerText<B>
where
    XComposer<B>: Send + Sync,
{
    /// Answers `req` as [`TextModel::complete`] does, keeping the prompt's ids, the settings and
    /// the decoded sequence.
    pub fn answer(&self, req: &Request, on_text: &mut (dyn FnMut(&str) -> ControlFlow<()> + Send)) -> Result<Answered, String> {
        let mut sampler = sampler_for(&req.sampling)?;
        if sampler.is_some() && req.prompt_as_inputs {
            return Err(format!("{} samples only prompts whose ids the penalty does not see (temperature {} asked)", self.id(), req.sampling.temperature));
        }
        let m = &self.model;
        let grammar = req.grammar.clone().filter(|_| self.constrained);
        if grammar.is_some() && (sampler.is_some() || req.prompt_as_inputs) {
            return Err(format!("{} decodes under a grammar greedily or with beams, without the prompt's ids penalised (temperature {}, prompt as inputs {} asked)", self.id(), req.sampling.temperature, req.prompt_as_inputs));
        }
        let t = Instant::now();
        let text = prompt_text(req);
        let prompt_ids = m.tokenizer.encode(&text, true).map_err(|e| e.to_string())?;
        let prompt = m.embed_ids(&prompt_ids).map_err(|e| e.to_string())?;
        let room = m.text.config().max_position.saturating_sub(prompt_ids.len());
        let cfg = gen_config(req, prompt_ids.len(), text.chars().count(), room);
        let seen: &[u32] = if req.prompt_as_inputs { &prompt_ids } else { &[] };
        // Stream the running text while it only grows (a beam search may change its best beam).
        let mut shown = String::new();
        let mut first_token = None;
        let mut on_step = |seq: &[u32]| {
            first_token.get_or_insert_with(Instant::now);
            let text = m.tokenizer.decode(seq, true).unwrap_or_default();
            let text = cut(text.split("<TOKENS_UNUSED_1>").next().unwrap_or_default(), &req.stop, req.max_lines).0;
            match text.strip_prefix(shown.as_str()).filter(|n| !n.is_empty()) {
                Some(new) => {
                    let flow = on_text(new);
                    shown = text;
                    flow
                }
                None => ControlFlow::Continue(()),
            }
        };
        let out = match (sampler.as_mut(), grammar) {
            (Some(s), _) => m.decode_sampled(prompt, s, &cfg, &mut on_step),
            (None, Some(g)) => m.decode_constrained(prompt, &self.vocabulary.constraint(&m.tokenizer.sp, g), &cfg, &mut on_step),
            (None, None) => m.decode_seeing(prompt, seen, &cfg, &mut on_step),
        }
        .map_err(|e| e.to_string())?;
        let (answer, why) = cut(&m.answer_text(&out), &req.stop, req.max_lines);
        let new_tokens = out.new_tokens().len();
        let ended_by_token = out.sequence.last().is_some_and(|t| *t == cfg.eos_id || cfg.stop_ids.contains(t));
        let stop_reason = why.unwrap_or(if ended_by_token { "stop_token" } else { "max_tokens" });
        let prefill_seconds = first_token.map_or(0.0, |f| (f - t).as_secs_f64());
        let completion = Completion { text: answer, prompt_tokens: prompt_ids.len(), new_tokens, prefill_seconds, decode_seconds: t.elapsed().as_secs_f64() - prefill_seconds, stop_reason: stop_reason.into() };
        Ok(Answered { prompt: text, prompt_ids, config: cfg, output: out, completion })
    }
}

impl<B: Backend> TextModel for XComposerText<B>
where
    XComposer<B>: Send + Sync,
{
    fn id(&self) -> String {
        let dir = &self.model.dir;
        dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned())
    }

    fn complete(&self, req: &Request, on_text: &mut (dyn FnMut(&str) -> ControlFlow<()> + Send)) -> Result<Completion, String> {
        self.answer(req, on_text).map(|a| a.completion)
    }

    fn takes_grammar(&self) -> bool {
        self.constrained
    }
}

/// The web demo's new-token budgets: its `max_length` counts the BOS that starts the sequence.
pub mod budget {
    /// Image spotting (`generate_loc`, `max_length=300`).
    pub const SPOT: usize = 299;
    /// Captions (`generate_cap`, `max_length=100`).
    pub const CAPTION: usize = 99;
    /// The ➕ caption's `max_length` is this plus the prompt's characters (`generate_insert_cap`).
    pub const INSERT_CAPTION: usize = 100;
    /// The A–D choice (`model_select_image`, `max_length=10`).
    pub const SELECT: usize = 9;
}

/// The web demo's default article decoding: 5 beams, repetition penalty 5.0, no sampling.
pub const XCOMPOSER_WRITING: Sampling = Sampling { temperature: 0.0, top_p: 1.0, repetition_penalty: 5.0, seed: 0, beams: 5 };

impl Composer {
    /// Every stage on one InternLM-XComposer model, decoded as the original web demo decodes
    /// them: the article with 5 beams and repetition penalty 5.0; image lines with 5 beams (299
    /// tokens, no penalty); captions greedy with penalty 5.0 (99 tokens), cut as the original;
    /// the model's A–D choice among the candidates ([`VlmSelector`]). The image lines and the
    /// letter are decoded under their grammars (every beam kept to its own parse), so the spotter
    /// is asked for a number of lines ([`crate::spotter`]); the stages of [`XComposerText::original`]
    /// ([`Composer::xcomposer_stages`]) ask as the original. The original's prompts are Chinese
    /// whatever the title's language: pass [`Prompts::original`] for them.
    pub fn with_xcomposer<B: Backend>(model: Arc<XComposer<B>>, prompts: Arc<Prompts>, retriever: Box<dyn Retriever>) -> Self
    where
        XComposer<B>: Send + Sync,
    {
        Self::with_xcomposer_writing(model, prompts, retriever, XCOMPOSER_WRITING)
    }

    /// [`Composer::with_xcomposer`] with the article written as `writing` asks: the web demo's
    /// controls (beams, repetition penalty, and its "random sample" box as a temperature > 0
    /// with one beam; the seed is the compose request's).
    pub fn with_xcomposer_writing<B: Backend>(model: Arc<XComposer<B>>, prompts: Arc<Prompts>, retriever: Box<dyn Retriever>, writing: Sampling) -> Self
    where
        XComposer<B>: Send + Sync,
    {
        let text = XComposerText::new(model.clone());
        let selector = VlmSelector { vocabulary: text.vocabulary.clone(), ..VlmSelector::new(model, prompts.clone()) };
        let text: Arc<dyn TextModel> = Arc::new(text);
        let mut composer = Self::xcomposer_stages(text.clone(), Box::new(selector), prompts.clone(), retriever);
        composer.writer = Box::new(LlmWriter { sampling: writing, ..LlmWriter::new(text, prompts) });
        composer
    }

    /// The stages of [`Composer::with_xcomposer`] around any text model and selector (in tests,
    /// wrappers that record what the stages ask).
    pub fn xcomposer_stages(text: Arc<dyn TextModel>, selector: Box<dyn Selector>, prompts: Arc<Prompts>, retriever: Box<dyn Retriever>) -> Self {
        let writer = LlmWriter { sampling: XCOMPOSER_WRITING, ..LlmWriter::new(text.clone(), prompts.clone()) };
        let spotter = LlmSpotter { max_new_tokens: budget::SPOT, beams: 5, ..LlmSpotter::new(text.clone(), prompts.clone()) };
        let captioner = LlmCaptioner { repetition_penalty: 5.0, max_new_tokens: budget::CAPTION, style: CaptionStyle::Original, ..LlmCaptioner::new(text, prompts) };
        Composer { writer: Box::new(writer), spotter: Box::new(spotter), captioner: Box::new(captioner), retriever, selector }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_cut_at_stop_strings_and_line_counts() {
        let stop = vec!["\"".to_string()];
        assert_eq!(cut("a cup of tea\" and more", &stop, 0), ("a cup of tea".into(), Some("stop_string")));
        assert_eq!(cut("one\n\ntwo\nthree\n", &[], 2), ("one\n\ntwo".into(), Some("max_lines")));
        assert_eq!(cut("one\ntwo", &[], 2), ("one\ntwo".into(), None));
        assert_eq!(cut("plain", &stop, 3), ("plain".into(), None));
    }

    #[test]
    fn prompts_are_laid_out_as_the_original_composition_code() {
        let prompt = crate::prompts::Prompt { user: "根据给定标题写一个图文并茂，不重复的文章：长城".into(), prefix: String::new() };
        let req = Request { prompt: &prompt, max_new_tokens: 8, sampling: Sampling::greedy(5.0), stop: vec![], max_lines: 0, prompt_as_inputs: false, grammar: None };
        assert_eq!(prompt_text(&req), " <|User|>:根据给定标题写一个图文并茂，不重复的文章：长城\n<TOKENS_UNUSED_0> <|Bot|>:");
    }
}
