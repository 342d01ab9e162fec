//! A JSON-schema subset compiled to GBNF: `object` (`properties` in the order written,
//! `required`, no other keys), `string` (`minLength`, `maxLength`), `integer`, `number`,
//! `boolean`, `null`, `array` (`items`, `minItems`, `maxItems`), `enum` and `const`. The JSON
//! is compact (at most one space after `:` and `,`). Annotations (`title`, `description`,
//! `$schema`, `$id`, `default`, `examples`) are ignored; any other keyword is refused, naming
//! its JSON pointer.

use std::fmt::Write;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{Grammar, GrammarError};

/// JSON with the order of object keys kept (a schema's properties are written in that order).
#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Json, E> {
                serde_json::Number::from_f64(n).map(Json::Number).ok_or_else(|| E::custom("a number that is not finite"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                Ok(Json::Str(s.into()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Json::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    out.push((k, v));
                }
                Ok(Json::Object(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Json {
    fn compact(&self) -> String {
        match self {
            Json::Null => "null".into(),
            Json::Bool(b) => b.to_string(),
            Json::Number(n) => n.to_string(),
            Json::Str(s) => serde_json::Value::String(s.clone()).to_string(),
            Json::Array(a) => format!("[{}]", a.iter().map(Json::compact).collect::<Vec<_>>().join(",")),
            Json::Object(o) => format!("{{{}}}", o.iter().map(|(k, v)| format!("{}:{}", Json::Str(k.clone()).compact(), v.compact())).collect::<Vec<_>>().join(",")),
        }
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(o) => o.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// `s` as a GBNF string literal.
fn literal(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const KNOWN: &[&str] = &["type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "minLength", "maxLength", "enum", "const"];
const ANNOTATIONS: &[&str] = &["title", "description", "$schema", "$id", "default", "examples"];

/// The shared rules every compiled schema may use.
const BASE: &str = r#"
ws ::= " "?
char ::= [^"\\\x00-\x1f] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
integer ::= "-"? ([0-9] | [1-9] [0-9]{1,15})
number ::= integer ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?
"#;

struct Compiler<'a> {
    file: &'a str,
    rules: String,
    count: usize,
}

impl Compiler<'_> {
    fn bad(&self, pointer: &str, message: impl Into<String>) -> GrammarError {
        GrammarError::Schema { file: self.file.into(), pointer: pointer.into(), message: message.into() }
    }

    fn rule(&mut self, body: String) -> String {
        self.count += 1;
        let name = format!("v{}", self.count);
        let _ = writeln!(self.rules, "{name} ::= {body}");
        name
    }

    fn count_of(&self, schema: &Json, key: &str, pointer: &str) -> Result<Option<usize>, GrammarError> {
        match schema.get(key) {
            None => Ok(None),
            Some(Json::Number(n)) if n.as_u64().is_some_and(|v| v <= 1000) => Ok(n.as_u64().map(|v| v as usize)),
            Some(_) => Err(self.bad(&format!("{pointer}/{key}"), "expected a whole number from 0 to 1000")),
        }
    }

    /// A GBNF expression for values of `schema`.
    fn value(&mut self, schema: &Json, pointer: &str) -> Result<String, GrammarError> {
        let Json::Object(keys) = schema else { return Err(self.bad(pointer, "a schema must be an object")) };
        if let Some((k, _)) = keys.iter().find(|(k, _)| !KNOWN.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str())) {
            return Err(self.bad(&format!("{pointer}/{k}"), format!("unsupported keyword (supported: {})", KNOWN.join(", "))));
        }
        if let Some(v) = schema.get("const") {
            return Ok(literal(&v.compact()));
        }
        if let Some(v) = schema.get("enum") {
            let Json::Array(options) = v else { return Err(self.bad(&format!("{pointer}/enum"), "expected an array")) };
            if options.is_empty() {
                return Err(self.bad(&format!("{pointer}/enum"), "an empty enum allows nothing"));
            }
            return Ok(format!("({})", options.iter().map(|o| literal(&o.compact())).collect::<Vec<_>>().join(" | ")));
        }
        let ty = match schema.get("type") {
            Some(Json::Str(t)) => t.as_str(),
            None if schema.get("properties").is_some() => "object",
            Some(_) => return Err(self.bad(&format!("{pointer}/type"), "expected one type name (a list of types is not supported)")),
            None => return Err(self.bad(pointer, "no `type` (nor `enum`, `const` or `properties`)")),
        };
        match ty {
            "string" => {
                let min = self.count_of(schema, "minLength", pointer)?.unwrap_or(0);
                let max = self.count_of(schema, "maxLength", pointer)?;
                if max.is_some_and(|m| m < min) {
                    return Err(self.bad(pointer, "maxLength is below minLength"));
                }
                let reps = max.map_or(format!("{{{min},}}"), |m| format!("{{{min},{m}}}"));
                Ok(self.rule(format!("\"\\\"\" char{reps} \"\\\"\"")))
            }
            "integer" => Ok("integer".into()),
            "number" => Ok("number".into()),
            "boolean" => Ok("(\"true\" | \"false\")".into()),
            "null" => Ok("\"null\"".into()),
            "array" => self.array(schema, pointer),
            "object" => self.object(schema, pointer),
            other => Err(self.bad(&format!("{pointer}/type"), format!("unsupported type {other:?} (supported: object, string, integer, number, boolean, null, array)"))),
        }
    }

    fn array(&mut self, schema: &Json, pointer: &str) -> Result<String, GrammarError> {
        let items = schema.get("items").ok_or_else(|| self.bad(pointer, "an array needs `items`"))?;
        let item = self.value(items, &format!("{pointer}/items"))?;
        let min = self.count_of(schema, "minItems", pointer)?.unwrap_or(0);
        let max = self.count_of(schema, "maxItems", pointer)?;
        if max.is_some_and(|m| m < min) {
            return Err(self.bad(pointer, "maxItems is below minItems"));
        }
        if max == Some(0) {
            return Ok("(\"[\" ws \"]\")".into());
        }
        let more = match max {
            Some(m) => format!("{{{},{}}}", min.saturating_sub(1), m - 1),
            None => format!("{{{},}}", min.saturating_sub(1)),
        };
        let list = format!("{item} (\",\" ws {item}){more}");
        let body = if min == 0 { format!("\"[\" ws ({list})? \"]\"") } else { format!("\"[\" ws {list} \"]\"") };
        Ok(self.rule(body))
    }

    fn object(&mut self, schema: &Json, pointer: &str) -> Result<String, GrammarError> {
        match schema.get("additionalProperties") {
            None | Some(Json::Bool(false)) => {}
            Some(_) => return Err(self.bad(&format!("{pointer}/additionalProperties"), "only `false` is supported (the listed properties alone)")),
        }
        let props = match schema.get("properties") {
            Some(Json::Object(p)) => p.clone(),
            None => vec![],
            Some(_) => return Err(self.bad(&format!("{pointer}/properties"), "expected an object")),
        };
        let required: Vec<String> = match schema.get("required") {
            None => vec![],
            Some(Json::Array(r)) => {
                r.iter().map(|v| if let Json::Str(s) = v { Ok(s.clone()) } else { Err(self.bad(&format!("{pointer}/required"), "expected property names")) }).collect::<Result<_, _>>()?
            }
            Some(_) => return Err(self.bad(&format!("{pointer}/required"), "expected an array of property names")),
        };
        if let Some(r) = required.iter().find(|r| !props.iter().any(|(k, _)| k == *r)) {
            return Err(self.bad(&format!("{pointer}/required"), format!("{r:?} is not among the properties")));
        }
        let mut mandatory = Vec::new();
        let mut optional = Vec::new();
        for (name, sub) in &props {
            let value = self.value(sub, &format!("{pointer}/properties/{name}"))?;
            let pair = format!("{} ws \":\" ws {value}", literal(&Json::Str(name.clone()).compact()));
            if required.contains(name) { mandatory.push(pair) } else { optional.push(pair) }
        }
        // Required properties first, in order; then each optional one may follow, in order.
        let tail = |from: usize| optional[from..].iter().map(|p| format!("(\",\" ws {p})?")).collect::<Vec<_>>().join(" ");
        let body = if !mandatory.is_empty() {
            format!("{} {}", mandatory.join(" \",\" ws "), tail(0))
        } else if optional.is_empty() {
            String::new()
        } else {
            format!("({})?", (0..optional.len()).map(|i| format!("{} {}", optional[i], tail(i + 1))).collect::<Vec<_>>().join(" | "))
        };
        Ok(self.rule(format!("\"{{\" ws {body} ws \"}}\"")))
    }
}

/// Compiles a JSON schema (the subset in this module's documentation) to a [`Grammar`] whose
/// sentences are the compact JSON values it describes; `file` names it in errors.
///
/// ```
/// use xcomposer_llm::grammar::json_schema;
/// let schema = r#"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 5}, "age": {"type": "integer"}}, "required": ["name"]}"#;
/// let g = json_schema("person.json", schema).unwrap();
/// assert!(g.matches(r#"{"name": "Ada", "age": 36}"#) && g.matches(r#"{"name":"Ada"}"#));
/// assert!(!g.matches(r#"{"name": "Adaline"}"#) && !g.matches(r#"{"age": 36}"#));
/// ```
pub fn json_schema(file: &str, text: &str) -> Result<Grammar, GrammarError> {
    let schema: Json = serde_json::from_str(text).map_err(|e| GrammarError::Syntax { file: file.into(), line: e.line(), column: e.column(), message: format!("not JSON: {e}") })?;
    let mut c = Compiler { file, rules: String::new(), count: 0 };
    let root = c.value(&schema, "")?;
    let text = format!("root ::= {root}\n{}{BASE}", c.rules);
    Grammar::parse(&format!("{file} (compiled)"), &text)
}
