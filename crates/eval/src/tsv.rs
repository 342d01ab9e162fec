//! Tab-separated files as `pandas.read_csv(path, sep='\t')` reads them (how the original and the
//! official MMBench tools read MMBench/CCBench): a field that starts with `"` is quoted (tabs and
//! newlines inside, `""` for a quote), blank lines are skipped, and pandas' default NA strings
//! (`""`, `"NA"`, `"nan"`, `"None"`, …) are missing values.

use std::path::Path;

use crate::error::EvalError;
use xcomposer_llm::readers::path_io::AtPath;

/// pandas' default `na_values` (`pandas._libs.parsers.STR_NA_VALUES`).
const NA_VALUES: [&str; 19] = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"];

/// Whether pandas reads `s` as a missing value (so the official tools see `nan`).
pub fn is_na(s: &str) -> bool {
    NA_VALUES.contains(&s)
}

/// `s` with tabs and line breaks made spaces, so it stays one cell of one line.
pub fn one_line(s: &str) -> String {
    s.chars().map(|c| if matches!(c, '\t' | '\n' | '\r') { ' ' } else { c }).collect()
}

/// A parsed table: the header and the rows, each cell `None` where pandas reads NaN.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Each row's cells (as many as columns) with the line it starts on (1-based).
    pub rows: Vec<(usize, Vec<Option<String>>)>,
}

impl Table {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Table, EvalError> {
        let text = std::fs::read_to_string(path).at(path)?;
        Table::parse(&text, path)
    }

    /// Parses TSV text; `path` names it in errors (a row with the wrong number of fields, an
    /// unclosed quote).
    pub fn parse(text: &str, path: &Path) -> Result<Table, EvalError> {
        let mut records = records(text.strip_prefix('\u{feff}').unwrap_or(text), path)?.into_iter();
        let Some((_, header)) = records.next() else { return Err(EvalError::data(path, "line 1", "the file is empty (no header row)")) };
        let columns: Vec<String> = header;
        let mut rows = vec![];
        for (line, fields) in records {
            if fields.len() != columns.len() {
                return Err(EvalError::data(path, format!("line {line}"), format!("{} fields, the header has {}", fields.len(), columns.len())));
            }
            rows.push((line, fields.into_iter().map(|f| (!NA_VALUES.contains(&f.as_str())).then_some(f)).collect()));
        }
        Ok(Table { columns, rows })
    }

    /// The position of column `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// Whether every present cell of column `col` reads as a number (pandas would make it numeric).
    pub fn is_numeric(&self, col: usize) -> bool {
        self.rows.iter().filter_map(|(_, r)| r[col].as_deref()).all(|v| v.trim().parse::<f64>().is_ok())
    }

    /// How pandas renders a cell of column `col` when the original formats it into a string:
    /// missing → `nan`; a numeric column's values as Python prints its int64 (no missing value)
    /// or float64 values; anything else as written.
    pub fn rendered(&self, row: usize, col: usize) -> String {
        let Some(v) = self.rows[row].1[col].as_deref() else { return "nan".into() };
        if !self.is_numeric(col) {
            return v.to_string();
        }
        let ints = self.rows.iter().all(|(_, r)| r[col].as_deref().is_some_and(|x| x.trim().parse::<i64>().is_ok()));
        match ints {
            true => v.trim().parse::<i64>().map(|i| i.to_string()).unwrap_or_else(|_| v.into()),
            false => python_float_repr(v.trim().parse::<f64>().unwrap_or(f64::NAN)),
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, scientific below 1e-4 and from 1e16.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = x.abs();
    if a == 0.0 || (1e-4..1e16).contains(&a) {
        return format!("{x:?}");
    }
    let s = format!("{x:e}");
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
}

/// Splits text into records of fields (pandas' C parser with `quotechar='"'`), each with its
/// first line number; blank lines are skipped.
fn records(text: &str, path: &Path) -> Result<Vec<(usize, Vec<String>)>, EvalError> {
    let mut out = vec![];
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = vec![];
        let mut field = String::new();
        let mut at_field_start = true;
        loop {
            match chars.next() {
                None => break,
                Some('"') if at_field_start => {
                    at_field_start = false;
                    loop {
                        match chars.next() {
                            None => return Err(EvalError::data(path, format!("line {start}"), "a quoted field is never closed")),
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                field.push('"');
                            }
                            Some('"') => break,
                            Some(c) => {
                                line += usize::from(c == '\n');
                                field.push(c);
                            }
                        }
                    }
                }
                Some('\t') => {
                    fields.push(std::mem::take(&mut field));
                    at_field_start = true;
                }
                Some('\r') if chars.peek() == Some(&'\n') => {}
                Some('\n') | Some('\r') => {
                    line += 1;
                    break;
                }
                Some(c) => {
                    at_field_start = false;
                    field.push(c);
                }
            }
        }
        fields.push(field);
        if !(fields.len() == 1 && fields[0].is_empty()) {
            out.push((start, fields));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Table {
        Table::parse(text, Path::new("t.tsv")).unwrap()
    }

    #[test]
    fn quoted_fields_hold_tabs_newlines_and_doubled_quotes_and_na_strings_are_missing() {
        let t = parse("a\tb\tc\n\"x\ty\"\t\"say \"\"hi\"\"\nthere\"\tNone\n\n1\tsay \"no\"\t\n");
        assert_eq!(t.columns, ["a", "b", "c"]);
        assert_eq!(t.rows[0], (2, vec![Some("x\ty".into()), Some("say \"hi\"\nthere".into()), None]));
        // A quote inside an unquoted field is a character; line numbers count the quoted newline.
        assert_eq!(t.rows[1], (5, vec![Some("1".into()), Some("say \"no\"".into()), None]));
    }

    #[test]
    fn a_row_with_the_wrong_field_count_names_file_and_line() {
        let e = Table::parse("a\tb\n1\t2\n3\n", Path::new("bench.tsv")).unwrap_err().to_string();
        assert_eq!(e, "bench.tsv: line 3: 1 fields, the header has 2");
    }

    #[test]
    fn numeric_columns_render_as_pandas_prints_them() {
        // Column a: int64; b: float64 because of a missing value; c: strings.
        let t = parse("a\tb\tc\n3\t2\tx\n007\t\t5\n");
        assert_eq!((t.rendered(0, 0), t.rendered(1, 0)), ("3".to_string(), "7".to_string()));
        assert_eq!((t.rendered(0, 1), t.rendered(1, 1)), ("2.0".to_string(), "nan".to_string()));
        assert_eq!(t.rendered(1, 2), "5");
    }

    #[test]
    fn float_repr_matches_python() {
        // Values from Python 3.11's repr().
        for (x, s) in [(1.0, "1.0"), (0.1, "0.1"), (1e16, "1e+16"), (1.5e-5, "1.5e-05"), (123456.789, "123456.789"), (0.0001, "0.0001"), (-2.5e20, "-2.5e+20")] {
            assert_eq!(python_float_repr(x), s);
        }
    }
}
