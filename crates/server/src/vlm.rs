//! Chat requests with images, answered by InternLM-XComposer (`--xcomposer DIR`): the
//! conversation becomes the original's chat prompt (past user/assistant pairs as history, their
//! images kept), decoded with one sequence (greedy, or sampled with `temperature`) and streamed.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::Flex;
use burn::tensor::Tensor;
use tokio::sync::mpsc;
use xcomposer_llm::GenerationConfig;
use xcomposer_llm::generation::Sampler;
use xcomposer_vision::ImageInput;
use xcomposer_vision::xcomposer::model::{Turn, XComposer};

use crate::AppState;
use crate::chat::{ChatEvent, Outcome};
use crate::error::ApiError;
use crate::openai::Plan;
use crate::queue::Job;

/// Why the step callback ended a decode.
enum Halt {
    Cancelled,
    StopString,
}

type Embeds = Tensor<Flex, 3>;

/// Past turns with their images' embeddings, the question, and its images' embeddings.
type Conversation = (Vec<(Turn, Vec<Embeds>)>, String, Vec<Embeds>);

/// The conversation as XComposer's history and last question (system messages are left out:
/// the model has its own meta instruction).
fn conversation(xc: &XComposer<Flex>, plan: &Plan) -> Result<Conversation, ApiError> {
    let mut history = vec![];
    let mut pending: Option<(String, Vec<Embeds>)> = None;
    for (i, m) in plan.messages.iter().enumerate() {
        let images = plan
            .images
            .iter()
            .filter(|(at, _, _)| *at == i)
            .map(|(_, param, img)| {
                let decoded = ImageInput::pil_compatible().decode_for(&img.bytes, Path::new(param), &xc.preprocess).map_err(|e| ApiError::invalid(param.clone(), e.to_string()).code("invalid_image"))?;
                xc.encode_pixels(xc.preprocess.apply(&decoded.rgb)).map_err(|e| ApiError::internal(e.to_string()))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        match m.role.as_str() {
            "user" => {
                if pending.is_some() {
                    return Err(ApiError::invalid(format!("messages[{i}].role"), "InternLM-XComposer takes alternating user and assistant turns: two user messages in a row"));
                }
                pending = Some((m.content.clone(), images));
            }
            "assistant" => {
                let (user, imgs) = pending.take().ok_or_else(|| ApiError::invalid(format!("messages[{i}].role"), "an assistant message must answer a user message"))?;
                history.push((Turn { user, images: vec![], answer: m.content.clone() }, imgs));
            }
            _ => {}
        }
    }
    let (text, images) = pending.ok_or_else(|| ApiError::invalid("messages", "no user message to answer"))?;
    Ok((history, text, images))
}

/// The job answering `plan` with InternLM-XComposer.
pub fn job(state: &Arc<AppState>, xc: Arc<XComposer<Flex>>, plan: Plan, tx: mpsc::UnboundedSender<ChatEvent>, cancel: Arc<AtomicBool>) -> Job {
    crate::chat::chat_job(state, tx, cancel, move |tx, cancel| run(&xc, &plan, tx, cancel))
}

/// Decodes, sending text as it grows; `Err(None)` when cancelled.
fn run(xc: &XComposer<Flex>, plan: &Plan, tx: &mpsc::UnboundedSender<ChatEvent>, cancel: &AtomicBool) -> Outcome {
    let (history, text, images) = conversation(xc, plan).map_err(Some)?;
    let prompt = xc.chat_prompt(&text, &images, &history).map_err(|e| Some(ApiError::invalid("messages", e.to_string())))?;
    let prompt_tokens = prompt.dims()[1];
    let cfg = xcomposer_llm::beam::EmbedGenConfig { num_beams: 1, max_new_tokens: plan.cfg.max_new_tokens, ..xcomposer_vision::xcomposer::language::gen_config() };
    let mut emitted = String::new();
    let mut steps = 0usize;
    let mut halt = None;
    let mut on_step = |seq: &[u32]| {
        steps = seq.len().saturating_sub(1);
        let text = answer(xc, seq);
        let (text, hit) = cut_at_stop(&text, &plan.cfg.stop_strings);
        if text.len() > emitted.len() && text.starts_with(emitted.as_str()) && !text.ends_with('\u{fffd}') {
            if tx.send(ChatEvent::Delta(text[emitted.len()..].to_string())).is_err() {
                cancel.store(true, Ordering::SeqCst);
            }
            emitted = text.to_string();
        }
        halt = if cancel.load(Ordering::SeqCst) {
            Some(Halt::Cancelled)
        } else {
            hit.then_some(Halt::StopString)
        };
        if halt.is_some() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    };
    let decoded = if plan.cfg.temperature > 0.0 {
        let gen_cfg = GenerationConfig { repetition_penalty: cfg.repetition_penalty, penalize_prompt: false, ..plan.cfg.clone() };
        let mut sampler = Sampler::new(&gen_cfg).map_err(|e| Some(ApiError::internal(format!("InternLM-XComposer failed: {e}"))))?;
        xc.decode_sampled(prompt, &mut sampler, &cfg, &mut on_step)
    } else {
        xc.decode_streaming(prompt, &cfg, &mut on_step)
    };
    let out = decoded.map_err(|e| Some(ApiError::internal(format!("InternLM-XComposer failed: {e}"))))?;
    match halt {
        Some(Halt::Cancelled) => return Err(None),
        Some(Halt::StopString) => return Ok(("stop", prompt_tokens, steps)),
        None => {}
    }
    let full = answer(xc, &out.sequence);
    if full.len() > emitted.len() && full.starts_with(emitted.as_str()) {
        let _ = tx.send(ChatEvent::Delta(full[emitted.len()..].to_string()));
    }
    let n = out.new_tokens().len();
    let finish = if n >= cfg.max_new_tokens { "length" } else { "stop" };
    Ok((finish, prompt_tokens, n))
}

/// The answer text of a running sequence, as the original decodes it.
fn answer(xc: &XComposer<Flex>, seq: &[u32]) -> String {
    let text = xc.tokenizer.decode(seq, true).unwrap_or_default();
    text.split("<TOKENS_UNUSED_1>").next().unwrap_or_default().to_string()
}

/// The text before the first stop string, and whether one was found.
fn cut_at_stop<'a>(text: &'a str, stops: &[String]) -> (&'a str, bool) {
    match stops.iter().filter_map(|s| text.find(s.as_str())).min() {
        Some(at) => (&text[..at], true),
        None => (text, false),
    }
}

#[cfg(test)]
mod tests {
    use super::cut_at_stop;

    #[test]
    fn stop_strings_cut_at_the_earliest() {
        let stops = vec!["b".to_string(), "cd".to_string()];
        assert_eq!(cut_at_stop("a cd b", &stops), ("a ", true));
        assert_eq!(cut_at_stop("xyz", &stops), ("xyz", false));
    }
}
