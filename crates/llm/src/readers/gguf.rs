//! GGUF (versions 2 and 3): header, typed metadata, tensor infos and bounds-checked tensor data.
//!
//! The file is memory-mapped; every read goes through [`Cursor`], which turns a short read into
//! an error naming what was being read, so a truncated or garbage file never panics.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::WeightError;
use super::path_io::AtPath;
use crate::quant::GgmlType;

/// A metadata value of any GGUF type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `UINT8`.
    U8(u8),
    /// `INT8`.
    I8(i8),
    /// `UINT16`.
    U16(u16),
    /// `INT16`.
    I16(i16),
    /// `UINT32`.
    U32(u32),
    /// `INT32`.
    I32(i32),
    /// `FLOAT32`.
    F32(f32),
    /// `BOOL`.
    Bool(bool),
    /// `STRING`.
    String(String),
    /// `ARRAY` (elements of one type).
    Array(Vec<Value>),
    /// `UINT64`.
    U64(u64),
    /// `INT64`.
    I64(i64),
    /// `FLOAT64`.
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer of any width that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if the value is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file and what it holds.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Dimensions as GGUF stores them: `dims[0]` varies fastest (reverse of PyTorch order).
    pub dims: Vec<u64>,
    /// The element/block type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Size of the data in bytes.
    pub size: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }

    /// The shape in row-major (PyTorch) order: the reverse of `dims`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// The bytes backing a GGUF file: a read-only memory map, or an owned buffer (tests, fuzzing).
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file: metadata and tensor infos, with the data left in the mapped file.
pub struct Gguf {
    bytes: Bytes,
    /// Format version (2 or 3).
    pub version: u32,
    /// All metadata, by key, in key order.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment (`general.alignment`, default 32).
    pub alignment: usize,
}

impl fmt::Debug for Gguf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian reader over a byte slice.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], WeightError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(WeightError::Truncated { what: what(), offset: self.pos }),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], WeightError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, WeightError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, WeightError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, WeightError> {
        let len = self.u64(what)?;
        let len = usize::try_from(len).map_err(|_| WeightError::Truncated { what: what(), offset: self.pos })?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WeightError::BadString { what: what() })
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
}

/// Minimum encoded size of one element of a metadata type, used to reject absurd array counts
/// before allocating.
fn min_value_size(tag: u32) -> usize {
    match tag {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

/// The deepest nesting of metadata arrays read (an array of arrays of ... five levels; published
/// files use one). A constant: it bounds the reader's recursion, not a size.
pub const MAX_ARRAY_NESTING: usize = 5;

/// Reads a metadata value of type `tag`; `depth` is the number of arrays around it.
fn read_value(c: &mut Cursor<'_>, tag: u32, key: &str, depth: usize) -> Result<Value, WeightError> {
    let what = || format!("metadata key '{key}'");
    Ok(match tag {
        0 => Value::U8(c.array::<1>(&what)?[0]),
        1 => Value::I8(c.array::<1>(&what)?[0] as i8),
        2 => Value::U16(u16::from_le_bytes(c.array(&what)?)),
        3 => Value::I16(i16::from_le_bytes(c.array(&what)?)),
        4 => Value::U32(c.u32(&what)?),
        5 => Value::I32(i32::from_le_bytes(c.array(&what)?)),
        6 => Value::F32(f32::from_le_bytes(c.array(&what)?)),
        7 => match c.array::<1>(&what)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => {
                return Err(WeightError::BadMetadata { key: key.into(), reason: format!("bool byte {b} is not 0 or 1") });
            }
        },
        8 => Value::String(c.string(&what)?),
        9 => {
            if depth >= MAX_ARRAY_NESTING {
                let reason = format!("arrays nested more than {MAX_ARRAY_NESTING} levels deep (the limit)");
                return Err(WeightError::BadMetadata { key: key.into(), reason });
            }
            let elem = c.u32(&what)?;
            let count = c.u64(&what)?;
            let fits = count
                .checked_mul(min_value_size(elem) as u64)
                .is_some_and(|need| need <= c.remaining() as u64);
            if !fits {
                return Err(WeightError::Truncated { what: format!("array of {count} elements for key '{key}'"), offset: c.pos });
            }
            let mut items = Vec::with_capacity(count as usize);
            for _ in 0..count {
                items.push(read_value(c, elem, key, depth + 1)?);
            }
            Value::Array(items)
        }
        10 => Value::U64(c.u64(&what)?),
        11 => Value::I64(i64::from_le_bytes(c.array(&what)?)),
        12 => Value::F64(f64::from_le_bytes(c.array(&what)?)),
        tag => return Err(WeightError::UnknownValueType { key: key.into(), tag }),
    })
}

impl Gguf {
    /// Opens and parses a GGUF file, memory-mapping its data.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WeightError> {
        let path = path.as_ref();
        let file = super::capped::open_regular(path)?;
        // SAFETY: the map is read-only; like every mmap user we assume the file is not truncated
        // by another process while it is open.
        let map = unsafe { memmap2::Mmap::map(&file) }.at(path)?;
        Self::parse(Bytes::Mapped(map))
    }

    /// Parses a GGUF file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, WeightError> {
        Self::parse(Bytes::Owned(bytes))
    }

    fn parse(bytes: Bytes) -> Result<Self, WeightError> {
        let data = bytes.as_slice();
        let mut c = Cursor { data, pos: 0 };
        let magic: [u8; 4] = c.array(&|| "magic".into())?;
        if &magic != b"GGUF" {
            return Err(WeightError::BadMagic(magic));
        }
        let version = c.u32(&|| "version".into())?;
        if !(2..=3).contains(&version) {
            return Err(WeightError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64(&|| "tensor count".into())?;
        let n_kv = c.u64(&|| "metadata count".into())?;
        // Each key/value takes at least 12 bytes, each tensor info at least 24.
        if n_kv.saturating_mul(12) > c.remaining() as u64 || n_tensors.saturating_mul(24) > c.remaining() as u64 {
            return Err(WeightError::Truncated {
                what: format!("{n_kv} metadata entries and {n_tensors} tensor infos"),
                offset: c.pos,
            });
        }

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("metadata key #{i}"))?;
            let tag = c.u32(&|| format!("type of metadata key '{key}'"))?;
            let value = read_value(&mut c, tag, &key, 0)?;
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => {
                    return Err(WeightError::BadMetadata {
                        key: "general.alignment".into(),
                        reason: format!("expected a power of two, got {v:?}"),
                    });
                }
            },
        };

        let mut raw = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&|| format!("name of tensor #{i}"))?;
            let what = || format!("info of tensor '{name}'");
            let n_dims = c.u32(&what)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(WeightError::BadTensor { name, reason: format!("{n_dims} dimensions (expected 1 to 4)") });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&what)?);
            }
            let tag = c.u32(&what)?;
            let offset = c.u64(&what)?;
            let ggml_type = GgmlType::from_tag(tag).ok_or(WeightError::UnknownTensorType { name: name.clone(), tag })?;
            raw.push((name, dims, ggml_type, offset));
        }

        // No overflow: `pos` is at most the file length and `alignment` at most 2^20.
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ggml_type, offset) in raw {
            let n = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let bad = |reason: String| WeightError::BadTensor { name: name.clone(), reason };
            let n = n.ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
            let block = ggml_type.block_size() as u64;
            if dims[0] % block != 0 {
                return Err(bad(format!(
                    "first dimension {} is not a multiple of the {:?} block size {block}",
                    dims[0], ggml_type
                )));
            }
            let size = (n / block)
                .checked_mul(ggml_type.block_bytes() as u64)
                .ok_or_else(|| bad("size overflows".into()))?;
            if offset % alignment as u64 != 0 {
                return Err(bad(format!("data offset {offset} is not aligned to {alignment}")));
            }
            let start = (data_start as u64).checked_add(offset);
            let end = start.and_then(|s| s.checked_add(size));
            match (start, end) {
                (Some(s), Some(e)) if e <= data.len() as u64 => tensors.push(TensorInfo {
                    name,
                    dims,
                    ggml_type,
                    offset: s as usize,
                    size: size as usize,
                }),
                _ => {
                    return Err(bad(format!(
                        "data ({size} bytes at offset {offset}) runs past the end of the file ({} bytes)",
                        data.len()
                    )));
                }
            }
        }

        Ok(Gguf { version, metadata, tensors, alignment, bytes })
    }

    /// Looks up a tensor's info by name.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw (still quantized) bytes of a tensor.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes.as_slice()[info.offset..info.offset + info.size]
    }

    /// Dequantizes a tensor to f32 values in row-major order, with its row-major shape.
    pub fn dequantize(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), WeightError> {
        let info = self.tensor_info(name).ok_or_else(|| WeightError::Missing { source_name: "the GGUF file".into(), name: name.into() })?;
        let values = crate::quant::dequantize(info.ggml_type, self.tensor_bytes(info), info.n_elements())
            .map_err(|reason| WeightError::BadTensor { name: name.into(), reason })?;
        Ok((values, info.shape()))
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&Value, WeightError> {
        self.get(key).ok_or_else(|| WeightError::BadMetadata { key: key.into(), reason: "missing".into() })
    }

    /// A required string value.
    pub fn get_str(&self, key: &str) -> Result<&str, WeightError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| WeightError::BadMetadata { key: key.into(), reason: format!("expected a string, got {v:?}") })
    }

    /// A required non-negative integer value.
    pub fn get_u64(&self, key: &str) -> Result<u64, WeightError> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| WeightError::BadMetadata {
            key: key.into(),
            reason: format!("expected a non-negative integer, got {v:?}"),
        })
    }

    /// A required float value (integers are accepted).
    pub fn get_f64(&self, key: &str) -> Result<f64, WeightError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| WeightError::BadMetadata { key: key.into(), reason: format!("expected a number, got {v:?}") })
    }

    /// A required array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, WeightError> {
        let v = self.require(key)?;
        let bad = || WeightError::BadMetadata { key: key.into(), reason: "expected an array of strings".into() };
        v.as_array().ok_or_else(bad)?.iter().map(|e| e.as_str().ok_or_else(bad)).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = std::env::temp_dir().join(format!("xcomposer-gguf-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("model.gguf");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
        assert!(made, "mkfifo failed");
        // Before: File::open blocked here until something wrote to the FIFO.
        let e = Gguf::open(&fifo).unwrap_err().to_string();
        assert!(e.contains("model.gguf: not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Builds a GGUF v3 file in memory: one metadata entry per (key, tag, payload), then tensors.
    pub(crate) struct Builder {
        kv: Vec<(String, u32, Vec<u8>)>,
        tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    }

    impl Builder {
        pub(crate) fn new() -> Self {
            Builder { kv: vec![], tensors: vec![] }
        }
        pub(crate) fn kv_str(mut self, k: &str, v: &str) -> Self {
            let mut p = (v.len() as u64).to_le_bytes().to_vec();
            p.extend_from_slice(v.as_bytes());
            self.kv.push((k.into(), 8, p));
            self
        }
        pub(crate) fn kv_u32(mut self, k: &str, v: u32) -> Self {
            self.kv.push((k.into(), 4, v.to_le_bytes().to_vec()));
            self
        }
        pub(crate) fn kv_raw(mut self, k: &str, tag: u32, payload: Vec<u8>) -> Self {
            self.kv.push((k.into(), tag, payload));
            self
        }
        pub(crate) fn tensor(mut self, name: &str, dims: &[u64], tag: u32, data: Vec<u8>) -> Self {
            self.tensors.push((name.into(), dims.to_vec(), tag, data));
            self
        }
        pub(crate) fn build(self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend_from_slice(&3u32.to_le_bytes());
            out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
            out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
            let put_str = |out: &mut Vec<u8>, s: &str| {
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            };
            for (k, tag, payload) in &self.kv {
                put_str(&mut out, k);
                out.extend_from_slice(&tag.to_le_bytes());
                out.extend_from_slice(payload);
            }
            let mut offset = 0u64;
            let mut offsets = vec![];
            for (_, _, _, data) in &self.tensors {
                offsets.push(offset);
                offset += (data.len() as u64).div_ceil(32) * 32;
            }
            for ((name, dims, tag, _), off) in self.tensors.iter().zip(&offsets) {
                put_str(&mut out, name);
                out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
                for d in dims {
                    out.extend_from_slice(&d.to_le_bytes());
                }
                out.extend_from_slice(&tag.to_le_bytes());
                out.extend_from_slice(&off.to_le_bytes());
            }
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
            for (_, _, _, data) in &self.tensors {
                out.extend_from_slice(data);
                while !out.len().is_multiple_of(32) {
                    out.push(0);
                }
            }
            out
        }
    }

    fn sample() -> Vec<u8> {
        // An array of two u16 values, then a nested array of strings.
        let mut arr = 2u32.to_le_bytes().to_vec();
        arr.extend_from_slice(&2u64.to_le_bytes());
        arr.extend_from_slice(&7u16.to_le_bytes());
        arr.extend_from_slice(&9u16.to_le_bytes());
        let f32s: Vec<u8> = [1.5f32, -2.0, 0.25, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        Builder::new()
            .kv_str("general.architecture", "llama")
            .kv_u32("llama.block_count", 2)
            .kv_raw("small", 9, arr)
            .kv_raw("flag", 7, vec![1])
            .kv_raw("pi", 12, std::f64::consts::PI.to_le_bytes().to_vec())
            .kv_raw("neg", 11, (-5i64).to_le_bytes().to_vec())
            .tensor("w", &[2, 2], 0, f32s)
            .build()
    }

    #[test]
    fn parses_metadata_of_every_shape_and_tensor_data() {
        let g = Gguf::from_bytes(sample()).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get_u64("llama.block_count").unwrap(), 2);
        assert_eq!(g.get("small"), Some(&Value::Array(vec![Value::U16(7), Value::U16(9)])));
        assert_eq!(g.get("flag"), Some(&Value::Bool(true)));
        assert_eq!(g.get_f64("pi").unwrap(), std::f64::consts::PI);
        assert_eq!(g.get("neg").unwrap().as_i64(), Some(-5));
        let (v, shape) = g.dequantize("w").unwrap();
        assert_eq!(shape, vec![2, 2]);
        assert_eq!(v, vec![1.5, -2.0, 0.25, 4.0]);
    }

    #[test]
    fn errors_name_the_key_or_tensor() {
        let g = Gguf::from_bytes(sample()).unwrap();
        let e = g.get_str("llama.block_count").unwrap_err().to_string();
        assert!(e.contains("llama.block_count") && e.contains("string"), "{e}");
        let e = g.dequantize("nope").unwrap_err().to_string();
        assert!(e.contains("'nope'"), "{e}");

        let bad_type = Builder::new().tensor("odd", &[32], 99, vec![0; 32]).build();
        let e = Gguf::from_bytes(bad_type).unwrap_err().to_string();
        assert!(e.contains("'odd'") && e.contains("99"), "{e}");

        // Declares 64 f32 values but stores only 8.
        let short = Builder::new().tensor("short", &[64], 0, vec![0; 32]).build();
        let mut bytes = short.clone();
        bytes.truncate(bytes.len() - 8);
        let e = Gguf::from_bytes(bytes).unwrap_err().to_string();
        assert!(e.contains("'short'") && e.contains("past the end"), "{e}");

        let e = Gguf::from_bytes(b"GGUF\x01\0\0\0".to_vec()).unwrap_err().to_string();
        assert!(e.contains("version 1"), "{e}");
        let e = Gguf::from_bytes(b"PK\x03\x04rest".to_vec()).unwrap_err().to_string();
        assert!(e.contains("not a GGUF"), "{e}");
    }

    #[test]
    fn arrays_nested_past_the_limit_are_refused_naming_the_key_and_the_limit() {
        // `levels` arrays, each holding the next, the innermost one u8 value.
        let nested = |levels: usize| {
            let mut payload = vec![7u8];
            let mut tag = 0u32;
            for _ in 0..levels {
                let mut outer = tag.to_le_bytes().to_vec();
                outer.extend_from_slice(&1u64.to_le_bytes());
                outer.extend_from_slice(&payload);
                (payload, tag) = (outer, 9);
            }
            Builder::new().kv_raw("deep", 9, payload).build()
        };
        let g = Gguf::from_bytes(nested(MAX_ARRAY_NESTING)).unwrap();
        let mut v = g.get("deep").unwrap();
        for _ in 0..MAX_ARRAY_NESTING {
            v = &v.as_array().unwrap()[0];
        }
        assert_eq!(v, &Value::U8(7));
        let e = Gguf::from_bytes(nested(MAX_ARRAY_NESTING + 1)).unwrap_err().to_string();
        assert_eq!(e, "metadata key 'deep': arrays nested more than 5 levels deep (the limit)");
    }

    #[test]
    fn every_truncation_of_a_valid_file_is_an_error_not_a_panic() {
        let full = sample();
        // The file ends with the 16 data bytes of "w" and 16 bytes of padding.
        let data_end = full.len() - 16;
        for len in 0..data_end {
            assert!(Gguf::from_bytes(full[..len].to_vec()).is_err(), "prefix of {len} bytes parsed");
        }
        assert!(Gguf::from_bytes(full[..data_end].to_vec()).is_ok());
    }

    #[test]
    fn garbage_bytes_never_panic() {
        // A deterministic xorshift stream: random headers, and valid headers with random tails.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = sample();
        for round in 0..3000 {
            let len = (next() % 400) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 {
                bytes = valid.clone();
                // Flip a few bytes anywhere in a valid file.
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] = next() as u8;
                }
            } else if round % 3 == 0 && len >= 24 {
                bytes[..4].copy_from_slice(b"GGUF");
                bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
            }
            if let Ok(g) = Gguf::from_bytes(bytes) {
                for t in g.tensors.clone() {
                    let _ = g.dequantize(&t.name);
                }
            }
        }
    }
}
