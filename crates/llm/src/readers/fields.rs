//! Optional fields of a JSON configuration (`config.json`, `preprocessor_config.json`): the
//! default when a field is absent or `null`, an error naming the field (with its path inside the
//! file, `text_config.hidden_size`) when it has the wrong type or range. Numbers are converted
//! with checks, never with a wrapping cast.

use std::path::Path;

use serde_json::Value;

use super::WeightError;

/// The largest JSON configuration file read (Hugging Face's are a few KiB; a
/// `tokenizer_config.json` with a long chat template stays far under).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The cap of JSON configurations: [`MAX_CONFIG_BYTES`], raised by `XCOMPOSER_MAX_CONFIG_BYTES`.
pub const CONFIG_CAP: super::capped::Cap = super::capped::Cap { var: "XCOMPOSER_MAX_CONFIG_BYTES", default: MAX_CONFIG_BYTES };

/// Reads the JSON configuration file at `path`: a regular file (never a FIFO or device, which
/// would block or never end) within [`CONFIG_CAP`], parsed. The error is the reason
/// alone; the caller's error names the file.
pub fn read_json(path: &Path) -> Result<Value, String> {
    let bytes = super::capped::read_within(path, CONFIG_CAP).map_err(|e| e.reason())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// The fields of one JSON object.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    obj: &'a Value,
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    /// The fields of `obj`, whose errors name them as `PREFIXkey` (`prefix` "" at the top level,
    /// "text_config." inside a nested object).
    pub fn new(obj: &'a Value, prefix: &'a str) -> Self {
        Fields { obj, prefix }
    }

    /// The value of `key`, `None` when absent or `null`.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    /// An error about `key` ([`WeightError::Field`]).
    pub fn err(&self, key: &str, reason: String) -> WeightError {
        WeightError::Field { field: format!("{}{key}", self.prefix), reason }
    }

    /// A positive integer that fits a `usize`, or `default`.
    pub fn positive_usize(&self, key: &str, default: usize) -> Result<usize, WeightError> {
        let Some(v) = self.get(key) else { return Ok(default) };
        v.as_u64().filter(|n| *n > 0).and_then(|n| usize::try_from(n).ok()).ok_or_else(|| self.err(key, format!("is {v}; expected a positive integer")))
    }

    /// A positive integer that fits a `usize` and must be present.
    pub fn required_usize(&self, key: &str) -> Result<usize, WeightError> {
        self.get(key).ok_or_else(|| self.err(key, "is missing; expected a positive integer".into()))?;
        self.positive_usize(key, 0)
    }

    /// A string that must be present.
    pub fn required_str(&self, key: &str) -> Result<&'a str, WeightError> {
        let v = self.get(key).ok_or_else(|| self.err(key, "is missing; expected a string".into()))?;
        v.as_str().ok_or_else(|| self.err(key, format!("is {v}; expected a string")))
    }

    /// A positive number that stays finite and positive as an `f32`, or `default`.
    pub fn positive_f32(&self, key: &str, default: f32) -> Result<f32, WeightError> {
        let Some(v) = self.get(key) else { return Ok(default) };
        v.as_f64().and_then(positive_f32).ok_or_else(|| self.err(key, format!("is {v}; expected a positive number within f32's range")))
    }

    /// A positive finite number, or `default`.
    pub fn positive_f64(&self, key: &str, default: f64) -> Result<f64, WeightError> {
        let Some(v) = self.get(key) else { return Ok(default) };
        v.as_f64().filter(|x| *x > 0.0 && x.is_finite()).ok_or_else(|| self.err(key, format!("is {v}; expected a positive number")))
    }

    /// `true` or `false`, or `default`.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool, WeightError> {
        let Some(v) = self.get(key) else { return Ok(default) };
        v.as_bool().ok_or_else(|| self.err(key, format!("is {v}; expected true or false")))
    }

    /// One of the strings in `allowed`; `allowed[0]` when absent.
    pub fn one_of(&self, key: &str, allowed: &[&'static str]) -> Result<&'static str, WeightError> {
        let Some(v) = self.get(key) else { return Ok(allowed[0]) };
        let quoted: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        v.as_str().and_then(|s| allowed.iter().find(|a| **a == s).copied()).ok_or_else(|| self.err(key, format!("is {v}; expected {}", quoted.join(" or "))))
    }
}

/// `x` as an `f32` when it is positive and stays finite and above zero as one.
pub fn positive_f32(x: f64) -> Option<f32> {
    let y = x as f32;
    (y > 0.0 && y.is_finite()).then_some(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_files_are_read_only_when_regular_and_within_the_cap() {
        // Before: read_to_string on /dev/zero ran until memory was gone; on a FIFO it waited forever.
        assert_eq!(read_json(Path::new("/dev/zero")).unwrap_err(), "not a regular file (a folder, FIFO or device); expected a file");
        let dir = std::env::temp_dir().join(format!("xcomposer-fields-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("config.json");
        std::fs::File::create(&big).unwrap().set_len(MAX_CONFIG_BYTES + 1).unwrap();
        assert_eq!(read_json(&big).unwrap_err(), format!("larger than the limit of {MAX_CONFIG_BYTES} bytes (raise it with the environment variable XCOMPOSER_MAX_CONFIG_BYTES)"));
        std::fs::write(&big, br#"{"a": 1}"#).unwrap();
        assert_eq!(read_json(&big).unwrap(), serde_json::json!({"a": 1}));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn absent_and_null_take_the_default_and_bad_values_name_the_field() {
        let v: Value = serde_json::json!({"a": 3, "n": null, "z": 0, "big": 1e300, "s": "gelu", "neg": -1.5, "b": "yes"});
        let f = Fields::new(&v, "text_config.");
        assert_eq!(f.positive_usize("a", 9).unwrap(), 3);
        assert_eq!(f.positive_usize("n", 9).unwrap(), 9);
        assert_eq!(f.positive_usize("missing", 9).unwrap(), 9);
        assert_eq!(f.positive_usize("z", 9).unwrap_err().to_string(), "text_config.z is 0; expected a positive integer");
        assert_eq!(f.positive_f64("neg", 1.0).unwrap_err().to_string(), "text_config.neg is -1.5; expected a positive number");
        assert_eq!(f.positive_f64("big", 1.0).unwrap(), 1e300);
        assert_eq!(f.bool("b", true).unwrap_err().to_string(), "text_config.b is \"yes\"; expected true or false");
        assert_eq!(f.one_of("s", &["quick_gelu", "gelu"]).unwrap(), "gelu");
        assert_eq!(f.one_of("n", &["quick_gelu", "gelu"]).unwrap(), "quick_gelu");
        assert_eq!(f.one_of("a", &["gelu"]).unwrap_err().to_string(), "text_config.a is 3; expected \"gelu\"");
        assert_eq!(f.required_usize("a").unwrap(), 3);
        assert_eq!(f.required_usize("n").unwrap_err().to_string(), "text_config.n is missing; expected a positive integer");
        assert_eq!(f.required_str("s").unwrap(), "gelu");
        assert_eq!(f.required_str("a").unwrap_err().to_string(), "text_config.a is 3; expected a string");
        assert_eq!(f.positive_f32("big", 1.0).unwrap_err().to_string(), "text_config.big is 1e+300; expected a positive number within f32's range");
        assert_eq!(f.positive_f32("a", 1.0).unwrap(), 3.0);
    }
}
