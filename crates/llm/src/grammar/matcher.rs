//! A parse in progress: the set of stacks of positions that the text so far can be in (as
//! llama.cpp's grammar sampler keeps them), advanced one character, or one byte, at a time.

use std::rc::Rc;

use super::{Elem, Grammar};

/// A position inside a rule: alternative `alt`, before element `idx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    rule: u32,
    alt: u32,
    idx: u32,
}

/// A stack of positions as a shared list (the top first), so that copies are cheap.
#[derive(Debug, PartialEq)]
struct Frame {
    pos: Pos,
    below: Stack,
}

type Stack = Option<Rc<Frame>>;

fn push(below: &Stack, pos: Pos) -> Stack {
    Some(Rc::new(Frame { pos, below: below.clone() }))
}

fn same(a: &Stack, b: &Stack) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => Rc::ptr_eq(x, y) || x == y,
        (None, None) => true,
        _ => false,
    }
}

/// Where a parse stands: its stacks, and the bytes of a character not yet complete.
#[derive(Debug, Clone)]
pub struct GrammarState {
    stacks: Vec<Stack>,
    partial: Vec<u8>,
}

/// Adds every stack that `stack` becomes once rule references at its top are opened, down to a
/// character class or the empty stack (the parse may end).
fn expand(g: &Grammar, mut stack: Stack, out: &mut Vec<Stack>) {
    while let Some(frame) = stack.as_ref() {
        let pos = frame.pos;
        let alt = &g.rules[pos.rule as usize].alts[pos.alt as usize];
        match alt.get(pos.idx as usize) {
            None => stack = frame.below.clone(),
            Some(Elem::Chars(_)) => break,
            Some(Elem::Ref(r)) => {
                let rest = push(&frame.below, Pos { idx: pos.idx + 1, ..pos });
                for a in 0..g.rules[*r].alts.len() {
                    expand(g, push(&rest, Pos { rule: *r as u32, alt: a as u32, idx: 0 }), out);
                }
                return;
            }
        }
    }
    if !out.iter().any(|s| same(s, &stack)) {
        out.push(stack);
    }
}

/// The stacks after reading `c` (empty when no stack takes it).
fn advance_char(g: &Grammar, stacks: &[Stack], c: char) -> Vec<Stack> {
    let mut out = Vec::new();
    for frame in stacks.iter().flatten() {
        let pos = frame.pos;
        if let Some(Elem::Chars(class)) = g.rules[pos.rule as usize].alts[pos.alt as usize].get(pos.idx as usize)
            && class.matches(c)
        {
            expand(g, push(&frame.below, Pos { idx: pos.idx + 1, ..pos }), &mut out);
        }
    }
    out
}

/// Whether some stack's next class could take a character outside ASCII.
fn takes_non_ascii(g: &Grammar, stacks: &[Stack]) -> bool {
    stacks.iter().flatten().any(|f| matches!(g.rules[f.pos.rule as usize].alts[f.pos.alt as usize].get(f.pos.idx as usize), Some(Elem::Chars(c)) if c.takes_non_ascii()))
}

impl GrammarState {
    pub(super) fn start(g: &Grammar) -> Self {
        let mut stacks = Vec::new();
        for a in 0..g.rules[g.root].alts.len() {
            expand(g, push(&None, Pos { rule: g.root as u32, alt: a as u32, idx: 0 }), &mut stacks);
        }
        GrammarState { stacks, partial: vec![] }
    }

    /// The state after one more byte, `None` when the grammar refuses it. A byte that leaves a
    /// character incomplete is kept pending while some class could still take it.
    pub(super) fn after_byte(&self, g: &Grammar, b: u8) -> Option<GrammarState> {
        let mut partial = self.partial.clone();
        partial.push(b);
        match std::str::from_utf8(&partial) {
            Ok(s) => {
                let c = s.chars().next()?;
                let stacks = advance_char(g, &self.stacks, c);
                (!stacks.is_empty()).then_some(GrammarState { stacks, partial: vec![] })
            }
            Err(e) if e.error_len().is_none() && takes_non_ascii(g, &self.stacks) => Some(GrammarState { stacks: self.stacks.clone(), partial }),
            Err(_) => None,
        }
    }

    /// Reads `bytes`; `false` (the state left as it was) when the grammar refuses them.
    pub fn advance_bytes(&mut self, g: &Grammar, bytes: &[u8]) -> bool {
        let mut s = self.clone();
        for &b in bytes {
            match s.after_byte(g, b) {
                Some(next) => s = next,
                None => return false,
            }
        }
        *self = s;
        true
    }

    /// Whether the text so far is a whole sentence of the grammar.
    pub fn is_accepting(&self) -> bool {
        self.partial.is_empty() && self.stacks.iter().any(Option::is_none)
    }

    /// Whether the text is a whole sentence and nothing more may follow.
    pub fn is_complete(&self) -> bool {
        self.partial.is_empty() && self.stacks.iter().all(Option::is_none) && !self.stacks.is_empty()
    }
}
