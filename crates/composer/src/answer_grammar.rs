//! The grammars the language-model stages decode under when the model takes one
//! ([`crate::TextModel::takes_grammar`]): the spotter's list of line markers, the captioner's
//! quoted caption, the A–D letter, and the structured writer's outline.

use std::fmt::Write;

use xcomposer_llm::grammar::Grammar;

/// Longest caption the caption grammar lets a model write, in characters.
pub const CAPTION_GRAMMAR_CHARS: usize = 80;

/// Longest title or heading line of an outline, in characters.
pub const OUTLINE_LINE_CHARS: usize = 80;

fn parse(name: &str, text: &str) -> Grammar {
    Grammar::parse(name, text).unwrap_or_else(|e| unreachable!("the built-in {name} grammar is valid (tested): {e}"))
}

/// Exactly `count` distinct markers `<SegN>` of the `lines` given (ascending, as `" <Seg1>,
/// <Seg4>"`), so an answer can only name lines that exist, once each. `count` is cut to the
/// number of lines; with no lines the only sentence is the empty answer.
///
/// ```
/// use xcomposer_composer::answer_grammar::spot_grammar;
/// let g = spot_grammar(&[0, 2, 3], 2);
/// assert!(g.matches(" <Seg0>, <Seg3>") && g.matches("<Seg2>, <Seg3>"));
/// assert!(!g.matches(" <Seg3>, <Seg0>") && !g.matches(" <Seg1>, <Seg2>") && !g.matches(" <Seg0>"));
/// ```
pub fn spot_grammar(lines: &[usize], count: usize) -> Grammar {
    let mut lines = lines.to_vec();
    lines.sort_unstable();
    lines.dedup();
    let count = count.min(lines.len());
    if count == 0 {
        return parse("spot", "root ::= \"\"");
    }
    // after-I-L: line index I was named and L more are to come.
    let mut g = String::from("root ::= \" \"? (");
    let firsts: Vec<String> = (0..=lines.len() - count).map(|i| format!("\"<Seg{}>\" after-{i}-{}", lines[i], count - 1)).collect();
    let _ = writeln!(g, "{})", firsts.join(" | "));
    for left in 0..count {
        for i in 0..lines.len() {
            if left == 0 {
                let _ = writeln!(g, "after-{i}-0 ::= \"\"");
                continue;
            }
            let next: Vec<String> = (i + 1..=lines.len() - left).map(|j| format!("\", <Seg{}>\" after-{j}-{}", lines[j], left - 1)).collect();
            if !next.is_empty() {
                let _ = writeln!(g, "after-{i}-{left} ::= {}", next.join(" | "));
            }
        }
    }
    parse("spot", &g)
}

/// A caption that the prompt's opening quote began: 1 to [`CAPTION_GRAMMAR_CHARS`] characters
/// on one line, no quote inside, not starting with a space, then the closing `"`.
///
/// ```
/// use xcomposer_composer::answer_grammar::caption_grammar;
/// let g = caption_grammar();
/// assert!(g.matches("A honeybee on a flower\"") && g.matches("长城的烽火台\""));
/// assert!(!g.matches("\"") && !g.matches(" a bee\"") && !g.matches("a bee") && !g.matches("a\nbee\""));
/// ```
pub fn caption_grammar() -> Grammar {
    let text = format!("root ::= [^\"\\n”“ ] [^\"\\n”“]{{0,{}}} \"\\\"\"", CAPTION_GRAMMAR_CHARS - 1);
    parse("caption", &text)
}

/// One letter naming one of `n` candidates (A–D), after an optional space.
///
/// ```
/// use xcomposer_composer::answer_grammar::choice_grammar;
/// let g = choice_grammar(3);
/// assert!(g.matches(" C") && g.matches("A") && !g.matches("D") && !g.matches("AB"));
/// ```
pub fn choice_grammar(n: usize) -> Grammar {
    let letters = &"ABCD"[..n.clamp(1, 4)];
    parse("choice", &format!("root ::= \" \"? [{letters}]"))
}

/// The structured writer's plan, after its `Title:` (or `标题：`) prefix: a title line, then
/// `sections` numbered heading lines (`1. …`), each line of 2 to [`OUTLINE_LINE_CHARS`]
/// characters without `#`, `*` or quotes.
///
/// ```
/// use xcomposer_composer::answer_grammar::outline_grammar;
/// let g = outline_grammar(2);
/// assert!(g.matches(" Bees at Work\n1. The hive\n2. Honey\n"));
/// assert!(!g.matches(" Bees\n1. The hive\n") && !g.matches(" Bees\n1. Hive\n2. Honey\n3. More\n"));
/// ```
pub fn outline_grammar(sections: usize) -> Grammar {
    let mut g = String::from("root ::= \" \"? line \"\\n\"");
    for k in 1..=sections.max(1) {
        let _ = write!(g, " \"{k}. \" line \"\\n\"");
    }
    let _ = write!(g, "\nline ::= [^\\n#*\" ] [^\\n#*\"]{{1,{}}}\n", OUTLINE_LINE_CHARS - 1);
    parse("outline", &g)
}

/// Longest section paragraph the paragraph grammar allows, in characters.
pub const PARAGRAPH_GRAMMAR_CHARS: usize = 1000;

/// One paragraph of prose of at least `min_chars` characters on one line (no heading mark,
/// quote or space first), optionally ended by a line break: a small model cannot stop after a
/// heading line or leave the section empty.
///
/// ```
/// use xcomposer_composer::answer_grammar::paragraph_grammar;
/// let g = paragraph_grammar(20);
/// assert!(g.matches("Bees live in hives all year.\n") && g.matches("Bees live in hives all year."));
/// assert!(!g.matches("The hive:\nBees live in hives.") && !g.matches("# Bees live in hives all year."));
/// ```
pub fn paragraph_grammar(min_chars: usize) -> Grammar {
    let min = min_chars.clamp(1, PARAGRAPH_GRAMMAR_CHARS);
    let text = format!("root ::= [^\\n#*\" ] [^\\n]{{{},{}}} \"\\n\"?", min - 1, PARAGRAPH_GRAMMAR_CHARS - 1);
    parse("paragraph", &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spot_grammar_names_exactly_count_distinct_valid_lines_in_order() {
        let g = spot_grammar(&[5, 1, 3, 1], 3);
        assert!(g.matches(" <Seg1>, <Seg3>, <Seg5>"));
        for bad in [" <Seg1>, <Seg3>", " <Seg1>, <Seg1>, <Seg3>", " <Seg0>, <Seg3>, <Seg5>", " <Seg1>, <Seg3>, <Seg5>, <Seg5>", "lines 1, 3 and 5"] {
            assert!(!g.matches(bad), "{bad}");
        }
        // More asked than there are lines: all of them.
        assert!(spot_grammar(&[0, 1], 5).matches("<Seg0>, <Seg1>"));
        assert!(spot_grammar(&[], 2).matches(""));
        // Once complete, nothing may follow: decoding ends there.
        let mut s = g.start();
        assert!(s.advance_bytes(&g, b" <Seg1>, <Seg3>, <Seg5>") && s.is_complete());
    }

    #[test]
    fn caption_grammar_bounds_the_length() {
        let g = caption_grammar();
        assert!(g.matches(&format!("{}\"", "a".repeat(CAPTION_GRAMMAR_CHARS))));
        assert!(!g.matches(&format!("{}\"", "a".repeat(CAPTION_GRAMMAR_CHARS + 1))));
    }

    #[test]
    fn outline_grammar_wants_every_heading() {
        let g = outline_grammar(4);
        assert!(g.matches("Bees\n1. Hive\n2. Honey\n3. Dance\n4. Winter\n"));
        assert!(!g.matches("Bees\n1. Hive\n2. Honey\n3. Dance\n"));
        assert!(!g.matches("Bees\n1. \"Hive\"\n2. Honey\n3. Dance\n4. Winter\n"));
        assert!(!g.matches("Bees\n1. # Hive\n2. Honey\n3. Dance\n4. Winter\n"));
    }
}
