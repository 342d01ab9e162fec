//! The GBNF-subset parser: text → [`Grammar`], with the structural checks (every rule defined,
//! `root` present, no left recursion).

use super::{CharClass, Elem, Grammar, GrammarError, Rule};

/// Most repetitions a `{m,n}` may ask for.
const MAX_REPEAT: usize = 1000;

struct Parser<'a> {
    file: &'a str,
    chars: Vec<char>,
    pos: usize,
    names: Vec<String>,
    rules: Vec<Option<Rule>>,
    /// Where each rule was defined (for generated rules: the group or repetition).
    origin: Vec<usize>,
    /// Where each rule was first referenced.
    first_use: Vec<Option<usize>>,
}

pub(super) fn parse(file: &str, text: &str) -> Result<Grammar, GrammarError> {
    let mut p = Parser { file, chars: text.chars().collect(), pos: 0, names: vec![], rules: vec![], origin: vec![], first_use: vec![] };
    p.skip_space();
    while p.pos < p.chars.len() {
        p.rule()?;
        p.skip_space();
    }
    p.finish()
}

impl Parser<'_> {
    fn error(&self, at: usize, message: impl Into<String>) -> GrammarError {
        let before = &self.chars[..at.min(self.chars.len())];
        let line = before.iter().filter(|&&c| c == '\n').count() + 1;
        let column = before.iter().rev().take_while(|&&c| c != '\n').count() + 1;
        GrammarError::Syntax { file: self.file.into(), line, column, message: message.into() }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// Skips whitespace (newlines included) and `#` comments.
    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            if c == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.pos += 1;
                }
            } else if c.is_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn name(&mut self) -> Option<String> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            self.pos += 1;
        }
        (self.pos > start).then(|| self.chars[start..self.pos].iter().collect())
    }

    /// Whether a rule definition (`name ::=`) starts here.
    fn at_definition(&mut self) -> bool {
        let save = self.pos;
        let found = self.name().is_some() && {
            while self.peek().is_some_and(|c| c == ' ' || c == '\t') {
                self.pos += 1;
            }
            self.chars[self.pos..].starts_with(&[':', ':', '='])
        };
        self.pos = save;
        found
    }

    fn symbol(&mut self, name: &str, at: usize) -> usize {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return i;
        }
        self.names.push(name.into());
        self.rules.push(None);
        self.origin.push(at);
        self.first_use.push(None);
        self.names.len() - 1
    }

    /// A rule for a group or repetition inside `parent`, named `parent#N` (a name no
    /// reference can spell, so it never meets a user's rule).
    fn new_rule(&mut self, parent: usize, at: usize, alts: Vec<Vec<Elem>>) -> usize {
        self.names.push(format!("{}#{}", self.names[parent], self.names.len()));
        self.rules.push(Some(Rule { alts }));
        self.origin.push(at);
        self.first_use.push(None);
        self.names.len() - 1
    }

    fn rule(&mut self) -> Result<(), GrammarError> {
        let start = self.pos;
        let name = self.name().ok_or_else(|| self.error(start, format!("expected a rule name, found {:?}", self.peek().unwrap_or(' '))))?;
        self.skip_space();
        if !self.chars[self.pos..].starts_with(&[':', ':', '=']) {
            return Err(self.error(self.pos, format!("expected `::=` after the rule name `{name}`")));
        }
        self.pos += 3;
        let id = self.symbol(&name, start);
        if self.rules[id].is_some() {
            return Err(self.error(start, format!("rule `{name}` is defined twice")));
        }
        self.origin[id] = start;
        // Placeholder so that a self-reference inside sees the rule as defined.
        self.rules[id] = Some(Rule { alts: vec![] });
        let alts = self.alternatives(id)?;
        self.rules[id] = Some(Rule { alts });
        Ok(())
    }

    fn alternatives(&mut self, owner: usize) -> Result<Vec<Vec<Elem>>, GrammarError> {
        let mut alts = vec![self.sequence(owner)?];
        while self.peek() == Some('|') {
            self.pos += 1;
            alts.push(self.sequence(owner)?);
        }
        Ok(alts)
    }

    fn sequence(&mut self, owner: usize) -> Result<Vec<Elem>, GrammarError> {
        let mut seq = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                None | Some('|') | Some(')') => return Ok(seq),
                _ if self.at_definition() => return Ok(seq),
                _ => {}
            }
            let at = self.pos;
            let unit = self.element(owner)?;
            let unit = self.postfix(owner, at, unit)?;
            seq.extend(unit);
        }
    }

    fn element(&mut self, owner: usize) -> Result<Vec<Elem>, GrammarError> {
        let at = self.pos;
        match self.peek() {
            Some('"') => {
                self.pos += 1;
                let mut out = Vec::new();
                loop {
                    match self.peek() {
                        None | Some('\n') => return Err(self.error(at, "unterminated string literal")),
                        Some('"') => break,
                        _ => out.push(Elem::Chars(CharClass::single(self.char_or_escape()?))),
                    }
                }
                self.pos += 1;
                Ok(out)
            }
            Some('[') => self.class().map(|c| vec![Elem::Chars(c)]),
            Some('.') => {
                self.pos += 1;
                Ok(vec![Elem::Chars(CharClass { ranges: vec![], negated: true })])
            }
            Some('(') => {
                self.pos += 1;
                let alts = self.alternatives(owner)?;
                if self.peek() != Some(')') {
                    return Err(self.error(self.pos, "expected `)` to close the group"));
                }
                self.pos += 1;
                Ok(vec![Elem::Ref(self.new_rule(owner, at, alts))])
            }
            Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                let name = self.name().unwrap_or_default();
                let id = self.symbol(&name, at);
                self.first_use[id].get_or_insert(at);
                Ok(vec![Elem::Ref(id)])
            }
            Some(c) => Err(self.error(at, format!("expected a \"literal\", [class], (group), `.` or rule name, found {c:?}"))),
            None => Err(self.error(at, "unexpected end of the grammar")),
        }
    }

    /// One character of a literal or class, escapes decoded.
    fn char_or_escape(&mut self) -> Result<char, GrammarError> {
        let at = self.pos;
        let c = self.peek().ok_or_else(|| self.error(at, "unexpected end of the grammar"))?;
        self.pos += 1;
        if c != '\\' {
            return Ok(c);
        }
        let e = self.peek().ok_or_else(|| self.error(at, "unexpected end after `\\`"))?;
        self.pos += 1;
        let hex = |p: &mut Self, n: usize| -> Result<char, GrammarError> {
            let digits: String = p.chars.get(p.pos..p.pos + n).unwrap_or_default().iter().collect();
            let v = u32::from_str_radix(&digits, 16).ok().filter(|_| digits.len() == n).and_then(char::from_u32);
            p.pos += n;
            v.ok_or_else(|| p.error(at, format!("`\\{e}` needs {n} hex digits of a valid character")))
        };
        match e {
            'n' => Ok('\n'),
            't' => Ok('\t'),
            'r' => Ok('\r'),
            '\\' | '"' | ']' | '[' | '-' | '^' | '/' => Ok(e),
            'x' => hex(self, 2),
            'u' => hex(self, 4),
            _ => Err(self.error(at, format!("unknown escape `\\{e}` (known: \\n \\t \\r \\\\ \\\" \\] \\xHH \\uHHHH)"))),
        }
    }

    fn class(&mut self) -> Result<CharClass, GrammarError> {
        let at = self.pos;
        self.pos += 1;
        let negated = self.peek() == Some('^');
        if negated {
            self.pos += 1;
        }
        let mut ranges = Vec::new();
        loop {
            match self.peek() {
                None | Some('\n') => return Err(self.error(at, "unterminated character class (missing `]`)")),
                Some(']') => break,
                _ => {}
            }
            let lo_at = self.pos;
            let lo = self.char_or_escape()?;
            let hi = if self.peek() == Some('-') && self.chars.get(self.pos + 1).is_some_and(|&c| c != ']') {
                self.pos += 1;
                self.char_or_escape()?
            } else {
                lo
            };
            if hi < lo {
                return Err(self.error(lo_at, format!("range {lo:?}-{hi:?} runs backwards")));
            }
            ranges.push((lo, hi));
        }
        self.pos += 1;
        Ok(CharClass { ranges, negated })
    }

    fn number(&mut self) -> Option<usize> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect::<String>().parse().ok()
    }

    /// `?`, `*`, `+`, `{m}`, `{m,}`, `{m,n}` after a unit, as rules.
    fn postfix(&mut self, owner: usize, at: usize, unit: Vec<Elem>) -> Result<Vec<Elem>, GrammarError> {
        let (min, max) = match self.peek() {
            Some('?') => (0, Some(1)),
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('{') => {
                let brace = self.pos;
                self.pos += 1;
                let min = self.number().ok_or_else(|| self.error(brace, "expected a number after `{`"))?;
                let max = if self.peek() == Some(',') {
                    self.pos += 1;
                    if self.peek() == Some('}') { None } else { Some(self.number().ok_or_else(|| self.error(brace, "expected a number after `,`"))?) }
                } else {
                    Some(min)
                };
                if self.peek() != Some('}') {
                    return Err(self.error(brace, "expected `}` to close the repetition"));
                }
                if max.is_some_and(|m| m < min) || min.max(max.unwrap_or(0)) > MAX_REPEAT {
                    return Err(self.error(brace, format!("repetition {{{min},{}}} must have min ≤ max ≤ {MAX_REPEAT}", max.map_or(String::new(), |m| m.to_string()))));
                }
                (min, max)
            }
            _ => return Ok(unit),
        };
        self.pos += 1;
        let mut out: Vec<Elem> = (0..min).flat_map(|_| unit.iter().cloned()).collect();
        match max {
            None => {
                let star = self.new_rule(owner, at, vec![]);
                let mut again = unit.clone();
                again.push(Elem::Ref(star));
                self.rules[star] = Some(Rule { alts: vec![again, vec![]] });
                out.push(Elem::Ref(star));
            }
            Some(max) if max > min => {
                let mut tail: Option<usize> = None;
                for _ in min..max {
                    let mut seq = unit.clone();
                    seq.extend(tail.map(Elem::Ref));
                    tail = Some(self.new_rule(owner, at, vec![seq, vec![]]));
                }
                out.extend(tail.map(Elem::Ref));
            }
            Some(_) => {}
        }
        Ok(out)
    }

    /// Checks the grammar as a whole and builds it.
    fn finish(self) -> Result<Grammar, GrammarError> {
        let root = self.names.iter().position(|n| n == "root").ok_or_else(|| self.error(self.chars.len(), "no `root` rule (parsing starts there)"))?;
        if let Some(id) = (0..self.names.len()).find(|&i| self.rules[i].is_none()) {
            return Err(self.error(self.first_use[id].unwrap_or(0), format!("rule `{}` is used but never defined", self.names[id])));
        }
        let rules: Vec<Rule> = self.rules.iter().map(|r| r.clone().unwrap_or(Rule { alts: vec![] })).collect();
        if let Some(id) = left_recursive(&rules) {
            return Err(self.error(self.origin[id], format!("rule `{}` can reach itself before reading a character (left recursion, or a repetition of something that can be empty)", self.names[id])));
        }
        Ok(Grammar { rules, names: self.names, root })
    }
}

/// A rule on a cycle of references that read no character, if any.
fn left_recursive(rules: &[Rule]) -> Option<usize> {
    let mut nullable = vec![false; rules.len()];
    loop {
        let mut changed = false;
        for (i, r) in rules.iter().enumerate() {
            if !nullable[i] && r.alts.iter().any(|a| a.iter().all(|e| matches!(e, Elem::Ref(s) if nullable[*s]))) {
                nullable[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let edges: Vec<Vec<usize>> = rules
        .iter()
        .map(|r| {
            let mut out = Vec::new();
            for alt in &r.alts {
                for e in alt {
                    match e {
                        Elem::Ref(s) => {
                            out.push(*s);
                            if !nullable[*s] {
                                break;
                            }
                        }
                        Elem::Chars(_) => break,
                    }
                }
            }
            out
        })
        .collect();
    // Iterative depth-first search: 0 unvisited, 1 on the path, 2 done.
    let mut color = vec![0u8; rules.len()];
    for start in 0..rules.len() {
        if color[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        color[start] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&to) = edges[node].get(*next) {
                *next += 1;
                match color[to] {
                    1 => return Some(to),
                    0 => {
                        color[to] = 1;
                        stack.push((to, 0));
                    }
                    _ => {}
                }
            } else {
                color[node] = 2;
                stack.pop();
            }
        }
    }
    None
}
