//! Constrained decoding: a grammar that the generated text must follow, enforced by masking every
//! token whose text cannot continue a valid parse.
//!
//! The grammar format is a subset of llama.cpp's GBNF:
//!
//! ```text
//! # a comment
//! root   ::= "Answer: " letter ("," " "? letter)*   # literals, rule references, grouping
//! letter ::= [A-D]                                  # character classes: ranges, [^...] negated
//! word   ::= [a-z]+ | "n/a"                         # alternation; ?, *, + and {m}, {m,}, {m,n}
//! ```
//!
//! Literals and classes take the escapes `\n`, `\t`, `\r`, `\\`, `\"`, `\]`, `\xHH` and
//! `\uHHHH`; `.` is any character. A rule may span lines (it ends where the next `name ::=`
//! starts); `root` is where parsing begins. Left recursion (a rule that can reach itself before
//! consuming a character) is refused, as are references to undefined rules; errors name the
//! file, line and column. [`json_schema`] compiles a JSON-schema subset to this format.
//!
//! [`Grammar`] holds the compiled rules; [`GrammarState`] is a parse in progress (the set of
//! llama.cpp-style stacks); [`Vocabulary`] holds every token's bytes in a trie, computed once per
//! tokenizer, and answers which tokens may come next.

mod json_schema_compile;
mod matcher;
mod parse;
mod vocabulary;

pub use json_schema_compile::json_schema;
pub use matcher::GrammarState;
pub use vocabulary::{Constraint, Vocabulary};

/// A compiled grammar: rules of alternatives of sequences of elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Grammar {
    rules: Vec<Rule>,
    names: Vec<String>,
    root: usize,
}

/// One rule: its alternatives, each a sequence of elements.
#[derive(Debug, Clone, PartialEq)]
struct Rule {
    alts: Vec<Vec<Elem>>,
}

/// One element of a sequence.
#[derive(Debug, Clone, PartialEq)]
enum Elem {
    /// One character from a class.
    Chars(CharClass),
    /// Another rule.
    Ref(usize),
}

/// A set of characters: inclusive ranges, possibly negated.
#[derive(Debug, Clone, PartialEq)]
struct CharClass {
    ranges: Vec<(char, char)>,
    negated: bool,
}

impl CharClass {
    fn single(c: char) -> Self {
        CharClass { ranges: vec![(c, c)], negated: false }
    }

    fn matches(&self, c: char) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }

    /// Whether some character outside ASCII is in the class (a token that ends inside a
    /// multi-byte character may then be allowed).
    fn takes_non_ascii(&self) -> bool {
        self.negated || self.ranges.iter().any(|&(_, hi)| hi as u32 >= 0x80)
    }
}

/// A grammar that cannot be read, with where it went wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GrammarError {
    /// A GBNF syntax or structure error at a line and column (1-based).
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The grammar file (or a name for inline text).
        file: String,
        /// Line, from 1.
        line: usize,
        /// Column in characters, from 1.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A JSON schema outside the supported subset, at a JSON pointer.
    #[error("{file}: {pointer}: {message}")]
    Schema {
        /// The schema file.
        file: String,
        /// Where in the schema (`/properties/name`; empty for the whole document).
        pointer: String,
        /// What is wrong.
        message: String,
    },
    /// The file could not be read.
    #[error("{file}: {message}")]
    Io {
        /// The file.
        file: String,
        /// The reason.
        message: String,
    },
}

impl Grammar {
    /// Parses GBNF text; `file` names it in errors.
    ///
    /// ```
    /// use xcomposer_llm::grammar::Grammar;
    /// let g = Grammar::parse("inline", "root ::= \"yes\" | \"no\"").unwrap();
    /// assert!(g.matches("yes") && !g.matches("maybe"));
    /// let e = Grammar::parse("g.gbnf", "root ::= [a-z\n").unwrap_err().to_string();
    /// assert!(e.starts_with("g.gbnf:1:"), "{e}");
    /// ```
    pub fn parse(file: &str, text: &str) -> Result<Self, GrammarError> {
        parse::parse(file, text)
    }

    /// Reads and parses a GBNF file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, GrammarError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| GrammarError::Io { file: file.clone(), message: e.to_string() })?;
        Self::parse(&file, &text)
    }

    /// The parse state before any text.
    pub fn start(&self) -> GrammarState {
        GrammarState::start(self)
    }

    /// Whether the whole of `text` is a sentence of the grammar.
    pub fn matches(&self, text: &str) -> bool {
        let mut s = self.start();
        s.advance_bytes(self, text.as_bytes()) && s.is_accepting()
    }
}

#[cfg(test)]
mod tests;
