//! PyTorch checkpoints (`torch.save` of a state dict) as a [`WeightSource`], without Python.
//!
//! Both container formats are read:
//! - the **zip** format (torch ≥ 1.6): `ARCHIVE/data.pkl` holds the pickled state dict and each
//!   storage is the uncompressed member `ARCHIVE/data/KEY`;
//! - the **legacy** format: five pickles in a row (magic number, protocol version, system info,
//!   the state dict, the list of storage keys) followed by each storage as an i64 element count
//!   and its raw little-endian bytes.
//!
//! The pickle stream is run by a small interpreter that knows only what state dicts use
//! (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`, typed
//! storages as persistent ids); everything else becomes an opaque value that is never executed.
//! The file is memory-mapped and a tensor's bytes are converted only when it is loaded, so a
//! sharded 18 GB checkpoint is streamed rather than held twice.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use memmap2::Mmap;

use crate::weights::{HostTensor, WeightError, WeightSource};

/// The element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchDtype {
    /// float32
    F32,
    /// float16
    F16,
    /// bfloat16
    BF16,
    /// float64
    F64,
    /// int64
    I64,
    /// int32
    I32,
    /// int16
    I16,
    /// int8
    I8,
    /// uint8
    U8,
    /// bool
    Bool,
}

impl TorchDtype {
    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "DoubleStorage" => Self::F64,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    fn to_f32(self, b: &[u8]) -> f32 {
        match self {
            Self::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Self::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            Self::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            Self::F64 => f64::from_le_bytes(b[..8].try_into().unwrap()) as f32,
            Self::I64 => i64::from_le_bytes(b[..8].try_into().unwrap()) as f32,
            Self::I32 => i32::from_le_bytes(b[..4].try_into().unwrap()) as f32,
            Self::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
            Self::I8 => b[0] as i8 as f32,
            Self::U8 | Self::Bool => b[0] as f32,
        }
    }
}

/// A tensor of the state dict: where its elements are and how they are laid out.
#[derive(Debug, Clone)]
pub struct TorchTensor {
    /// Element type.
    pub dtype: TorchDtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
    /// Offset into the storage in elements.
    pub offset: usize,
    /// Storage key.
    pub storage: String,
}

/// A decoded pickle value (only what state dicts contain is given structure; floats and byte
/// strings are skipped, as no state dict entry we read needs their values).
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Rc<(String, String)>),
    /// A storage reference from a persistent id: (dtype, key).
    Storage(TorchDtype, Rc<str>),
    Tensor(Rc<TorchTensor>),
    /// The result of calling something we do not model.
    Opaque,
    Mark,
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    what: &'a str,
}

impl<'a> Unpickler<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> String {
        format!("{}: pickle byte {}: {msg}", self.what, self.pos)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| self.err("truncated pickle"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<usize, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }
    fn u32(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().unwrap()) as usize)
    }
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.err("unterminated text line"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn pop(&mut self) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let at = self.stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| self.err("no MARK on the stack"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&mut self) -> Result<&mut Value, String> {
        let e = self.err("stack underflow");
        self.stack.last_mut().ok_or(e)
    }
    fn str(&mut self, n: usize) -> Result<Value, String> {
        let b = self.take(n)?;
        Ok(Value::Str(String::from_utf8_lossy(b).into_owned()))
    }

    /// Runs the pickle to its STOP and returns the result.
    fn run(&mut self) -> Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?;
                } // PROTO
                0x95 => {
                    self.take(8)?;
                } // FRAME
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'}' => self.stack.push(Value::Dict(Default::default())),
                b']' => self.stack.push(Value::List(Default::default())),
                b')' => self.stack.push(Value::Tuple(Rc::new(vec![]))),
                0x8f => self.stack.push(Value::List(Default::default())), // EMPTY_SET (as a list)
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(Value::Int(v))
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.stack.push(Value::Int(v))
                }
                b'J' => {
                    let b = self.take(4)?;
                    self.stack.push(Value::Int(i32::from_le_bytes(b.try_into().unwrap()) as i64))
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? };
                    let b = self.take(n)?;
                    if n > 8 {
                        // Only the legacy magic number is this long; keep its low bits.
                        self.stack.push(Value::Int(i64::from_le_bytes(b[..8].try_into().unwrap())));
                    } else {
                        let mut buf = [if b.last().is_some_and(|&x| x & 0x80 != 0) { 0xff } else { 0 }; 8];
                        buf[..n].copy_from_slice(b);
                        self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                    }
                }
                b'G' => {
                    let b = self.take(8)?;
                    let _ = b;
                    self.stack.push(Value::Float)
                }
                b'X' => {
                    let n = self.u32()?;
                    let v = self.str(n)?;
                    self.stack.push(v)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.str(n)?;
                    self.stack.push(v)
                }
                0x8d => {
                    let b = self.take(8)?;
                    let n = u64::from_le_bytes(b.try_into().unwrap()) as usize;
                    let v = self.str(n)?;
                    self.stack.push(v)
                }
                b'T' | b'U' | b'B' | b'C' => {
                    let n = if matches!(op, b'U' | b'C') { self.u8()? as usize } else { self.u32()? };
                    let b = self.take(n)?;
                    self.stack.push(if matches!(op, b'T' | b'U') { Value::Str(String::from_utf8_lossy(b).into_owned()) } else { Value::Bytes })
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' | b'j' => {
                    let i = if op == b'h' { self.u8()? as u32 } else { self.u32()? as u32 };
                    let v = self.memo.get(&i).cloned().ok_or_else(|| self.err(format!("memo {i} is not set")))?;
                    self.stack.push(v)
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))))
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = items.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].clone(), c[1].clone())).collect();
                    self.stack.push(Value::Dict(Rc::new(RefCell::new(pairs))))
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Value::List(l) = self.top()? {
                        l.borrow_mut().push(v);
                    }
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    if let Value::List(l) = self.top()? {
                        l.borrow_mut().extend(items);
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    if let Value::Dict(d) = self.top()? {
                        d.borrow_mut().push((k, v));
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if let Value::Dict(d) = self.top()? {
                        d.borrow_mut().extend(items.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].clone(), c[1].clone())));
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v)
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(Rc::new((module, name))))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(Rc::new((m, n)))),
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.call(func, args)?;
                    self.stack.push(v)
                }
                b'b' => {
                    // BUILD: object state (e.g. a state dict's `_metadata`); not needed.
                    self.pop()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v)
                }
                _ => return Err(self.err(format!("unsupported pickle opcode 0x{op:02x}"))),
            }
        }
    }

    fn persistent(&self, pid: Value) -> Result<Value, String> {
        let Value::Tuple(t) = pid else { return Err(self.err("persistent id is not a tuple")) };
        match t.as_slice() {
            [Value::Str(kind), Value::Global(class), Value::Str(key), _location, _numel, rest @ ..] if kind == "storage" => {
                if let Some(v) = rest.first()
                    && !matches!(v, Value::None)
                {
                    return Err(self.err("storage views (pre-1.0 checkpoints) are not supported"));
                }
                let dtype = TorchDtype::from_storage_class(&class.1).ok_or_else(|| self.err(format!("unsupported storage type {}.{}", class.0, class.1)))?;
                Ok(Value::Storage(dtype, key.as_str().into()))
            }
            _ => Err(self.err("unrecognised persistent id")),
        }
    }

    fn call(&self, func: Value, args: Value) -> Result<Value, String> {
        let Value::Global(g) = &func else { return Ok(Value::Opaque) };
        let args: &[Value] = match &args {
            Value::Tuple(t) => t,
            _ => &[],
        };
        match (g.0.as_str(), g.1.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") => Ok(Value::Dict(Default::default())),
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                let ints = |v: &Value| -> Option<Vec<usize>> {
                    match v {
                        Value::Tuple(t) => t.iter().map(|x| if let Value::Int(i) = x { usize::try_from(*i).ok() } else { None }).collect(),
                        _ => None,
                    }
                };
                match args {
                    [Value::Storage(dtype, key), Value::Int(offset), size, stride, ..] => {
                        let shape = ints(size).ok_or_else(|| self.err("tensor size is not a tuple of ints"))?;
                        let stride = ints(stride).ok_or_else(|| self.err("tensor stride is not a tuple of ints"))?;
                        if shape.len() != stride.len() {
                            return Err(self.err("tensor size and stride differ in length"));
                        }
                        Ok(Value::Tensor(Rc::new(TorchTensor { dtype: *dtype, shape, stride, offset: *offset as usize, storage: key.to_string() })))
                    }
                    _ => Err(self.err("unexpected arguments to _rebuild_tensor_v2")),
                }
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => Ok(args.first().cloned().unwrap_or(Value::Opaque)),
            _ => Ok(Value::Opaque),
        }
    }
}

/// Runs one pickle starting at `pos`; returns its value and the position after it.
fn unpickle(data: &[u8], pos: usize, what: &str) -> Result<(Value, usize), String> {
    let mut u = Unpickler { data, pos, stack: vec![], memo: HashMap::new(), what };
    let v = u.run()?;
    Ok((v, u.pos))
}

/// Flattens a (possibly nested) state dict into `name → tensor`.
fn collect_tensors(v: &Value, prefix: &str, out: &mut Vec<(String, TorchTensor)>) {
    match v {
        Value::Tensor(t) => out.push((prefix.to_string(), (**t).clone())),
        Value::Dict(d) => {
            for (k, v) in d.borrow().iter() {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                let name = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
                collect_tensors(v, &name, out);
            }
        }
        _ => {}
    }
}

/// One checkpoint file: its tensors and where each storage's bytes lie in the mapped file.
struct TorchFile {
    map: Mmap,
    /// Storage key → byte range in `map`.
    storages: HashMap<String, (usize, usize)>,
}

/// A PyTorch checkpoint: one `.bin`/`.pth`/`.pt` file, or the shards listed by
/// `pytorch_model.bin.index.json`.
pub struct TorchWeights {
    files: Vec<TorchFile>,
    /// Tensor name → (file index, tensor).
    tensors: HashMap<String, (usize, TorchTensor)>,
    /// Tensor names in file order.
    names: Vec<String>,
    name: String,
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> WeightError {
    WeightError::File { path: path.to_path_buf(), reason: reason.to_string() }
}

impl TorchWeights {
    /// Opens one checkpoint file (zip or legacy format).
    pub fn open_file(path: &Path) -> Result<Self, WeightError> {
        let mut w = Self { files: vec![], tensors: HashMap::new(), names: vec![], name: path.display().to_string() };
        w.add_file(path)?;
        Ok(w)
    }

    /// Opens a folder with `pytorch_model.bin.index.json` (all shards) or `pytorch_model.bin`.
    pub fn open_dir(dir: &Path) -> Result<Self, WeightError> {
        let index = dir.join("pytorch_model.bin.index.json");
        if !index.exists() {
            return Self::open_file(&dir.join("pytorch_model.bin"));
        }
        let text = std::fs::read_to_string(&index).map_err(|e| file_err(&index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| file_err(&index, e))?;
        let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| file_err(&index, "no \"weight_map\" object"))?;
        let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shards.sort();
        shards.dedup();
        let mut w = Self { files: vec![], tensors: HashMap::new(), names: vec![], name: dir.display().to_string() };
        for s in shards {
            if s.contains('/') || s.contains('\\') || s.starts_with('.') {
                return Err(file_err(&index, format!("shard name {s:?} is not a plain file name")));
            }
            w.add_file(&dir.join(s))?;
        }
        for (k, v) in map {
            if !w.tensors.contains_key(k) {
                return Err(file_err(&index, format!("lists tensor '{k}' in {v}, which does not hold it")));
            }
        }
        Ok(w)
    }

    fn add_file(&mut self, path: &Path) -> Result<(), WeightError> {
        let file = std::fs::File::open(path).map_err(|e| file_err(path, e))?;
        // SAFETY: the file is opened read-only and is not modified while mapped (checkpoints are
        // read-only inputs).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| file_err(path, e))?;
        let what = path.display().to_string();
        let (found, storages) = if map.starts_with(b"PK\x03\x04") { read_zip(&file, &map, path)? } else { read_legacy(&map, &what).map_err(|e| file_err(path, e))? };
        if found.is_empty() {
            return Err(file_err(path, "holds no tensors (is it a state dict?)"));
        }
        let idx = self.files.len();
        for (name, t) in found {
            let (start, end) = *storages.get(&t.storage).ok_or_else(|| file_err(path, format!("tensor '{name}' refers to storage {} which is not in the file", t.storage)))?;
            let avail = (end - start) / t.dtype.size();
            let last = t.offset + t.shape.iter().zip(&t.stride).map(|(&n, &s)| n.saturating_sub(1) * s).sum::<usize>();
            if t.shape.iter().all(|&n| n > 0) && last >= avail {
                return Err(file_err(path, format!("tensor '{name}' reaches past the end of its storage")));
            }
            self.names.push(name.clone());
            self.tensors.insert(name, (idx, t));
        }
        self.files.push(TorchFile { map, storages });
        Ok(())
    }

    /// Tensor names in file order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// A tensor's layout, without reading its values.
    pub fn tensor(&self, name: &str) -> Option<&TorchTensor> {
        self.tensors.get(name).map(|(_, t)| t)
    }
}

/// Reads the zip container: `*/data.pkl` and the `*/data/KEY` members (stored uncompressed).
/// A checkpoint's tensors (name, layout) and the byte range of each storage in the file.
type Contents = (Vec<(String, TorchTensor)>, HashMap<String, (usize, usize)>);

fn read_zip(file: &std::fs::File, map: &[u8], path: &Path) -> Result<Contents, WeightError> {
    let mut zip = zip::ZipArchive::new(file).map_err(|e| file_err(path, e))?;
    let mut pkl = None;
    let mut storages = HashMap::new();
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(|e| file_err(path, e))?;
        let name = entry.name().to_string();
        let Some((_, rest)) = name.split_once('/') else { continue };
        let start = entry.data_start() as usize;
        let end = start + entry.compressed_size() as usize;
        if end > map.len() {
            return Err(file_err(path, format!("zip member {name} reaches past the end of the file")));
        }
        if rest == "data.pkl" {
            pkl = Some((name.clone(), entry.compression(), start, end));
        } else if let Some(key) = rest.strip_prefix("data/") {
            if entry.compression() != zip::CompressionMethod::Stored {
                return Err(file_err(path, format!("storage {name} is compressed; torch writes them stored")));
            }
            storages.insert(key.to_string(), (start, end));
        }
    }
    let (name, method, start, end) = pkl.ok_or_else(|| file_err(path, "zip checkpoint without data.pkl"))?;
    let bytes: Vec<u8> = if method == zip::CompressionMethod::Stored {
        map[start..end].to_vec()
    } else {
        let mut s = vec![];
        std::io::Read::read_to_end(&mut zip.by_name(&name).map_err(|e| file_err(path, e))?, &mut s).map_err(|e| file_err(path, e))?;
        s
    };
    let what = format!("{}:{name}", path.display());
    let (root, _) = unpickle(&bytes, 0, &what).map_err(|e| file_err(path, e))?;
    let mut tensors = vec![];
    collect_tensors(&root, "", &mut tensors);
    Ok((tensors, storages))
}

/// The low 64 bits of torch's legacy magic number 0x1950a86a20f9469cfc6c.
const LEGACY_MAGIC_LOW: i64 = 0xa86a_20f9_469c_fc6c_u64 as i64;

/// Reads the legacy container: five pickles, then the storages in the order of the key list.
fn read_legacy(map: &[u8], what: &str) -> Result<Contents, String> {
    let (magic, pos) = unpickle(map, 0, what).map_err(|e| format!("not a PyTorch checkpoint ({e})"))?;
    if !matches!(magic, Value::Int(LEGACY_MAGIC_LOW)) {
        return Err("not a PyTorch checkpoint (no zip header and no legacy magic number)".into());
    }
    let (_protocol, pos) = unpickle(map, pos, what)?;
    let (sys_info, pos) = unpickle(map, pos, what)?;
    if let Value::Dict(d) = &sys_info {
        for (k, v) in d.borrow().iter() {
            if matches!((k, v), (Value::Str(k), Value::Bool(false)) if k == "little_endian") {
                return Err("big-endian checkpoints are not supported".into());
            }
        }
    }
    let (root, pos) = unpickle(map, pos, what)?;
    let (keys, mut pos) = unpickle(map, pos, what)?;
    let Value::List(keys) = keys else { return Err("the storage key list is not a list".into()) };
    // The element size of each storage comes from the tensors that use it.
    let mut tensors = vec![];
    collect_tensors(&root, "", &mut tensors);
    let elem: HashMap<&str, usize> = tensors.iter().map(|(_, t)| (t.storage.as_str(), t.dtype.size())).collect();
    let mut storages = HashMap::new();
    for k in keys.borrow().iter() {
        let Value::Str(k) = k else { return Err("a storage key is not a string".into()) };
        let head = map.get(pos..pos + 8).ok_or_else(|| format!("storage {k}: truncated file"))?;
        let n = i64::from_le_bytes(head.try_into().unwrap());
        let size = *elem.get(k.as_str()).unwrap_or(&1);
        let bytes = usize::try_from(n).ok().and_then(|n| n.checked_mul(size)).ok_or_else(|| format!("storage {k}: bad element count {n}"))?;
        let start = pos + 8;
        let end = start.checked_add(bytes).filter(|&e| e <= map.len()).ok_or_else(|| format!("storage {k}: truncated file"))?;
        storages.insert(k.clone(), (start, end));
        pos = end;
    }
    Ok((tensors, storages))
}

impl WeightSource for TorchWeights {
    fn source_name(&self) -> String {
        self.name.clone()
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn load(&self, name: &str) -> Result<HostTensor, WeightError> {
        let (fi, t) = self.tensors.get(name).ok_or_else(|| WeightError::Missing { source_name: self.source_name(), name: name.into() })?;
        let file = &self.files[*fi];
        let (start, end) = file.storages[&t.storage];
        let bytes = &file.map[start..end];
        let es = t.dtype.size();
        let n: usize = t.shape.iter().product();
        if n == 0 {
            return Ok(HostTensor { data: vec![], shape: t.shape.clone() });
        }
        // Row-major contiguous (almost every checkpoint tensor): convert the bytes in one pass.
        let contiguous = t.shape.iter().rev().scan(1usize, |expect, &dim| {
            let e = *expect;
            *expect *= dim;
            Some(e)
        });
        if t.shape.iter().zip(&t.stride).rev().zip(contiguous).all(|((&dim, &st), e)| dim <= 1 || st == e) {
            let data = bytes[t.offset * es..(t.offset + n) * es].chunks_exact(es).map(|b| t.dtype.to_f32(b)).collect();
            return Ok(HostTensor { data, shape: t.shape.clone() });
        }
        let mut data = Vec::with_capacity(n);
        // Row-major walk over the shape with the tensor's strides.
        let mut idx = vec![0usize; t.shape.len()];
        for _ in 0..n {
            let off = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            data.push(t.dtype.to_f32(&bytes[off * es..off * es + es]));
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(HostTensor { data, shape: t.shape.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a legacy checkpoint by hand: {"a": f32 [2,3] (transposed strides), "b.c": f16 [2]}.
    fn legacy_bytes() -> Vec<u8> {
        let mut p = vec![];
        // magic number pickle: PROTO 2, LONG1 10 bytes, STOP
        p.extend([0x80, 2, 0x8a, 10]);
        p.extend(0x1950a86a20f9469cfc6c_u128.to_le_bytes()[..10].iter());
        p.push(b'.');
        p.extend([0x80, 2, b'M', 0xe9, 0x03, b'.']);
        p.extend([0x80, 2, b'}', b'.']);
        // state dict
        let s = |p: &mut Vec<u8>, t: &str| {
            p.push(b'X');
            p.extend((t.len() as u32).to_le_bytes());
            p.extend(t.as_bytes());
        };
        p.extend([0x80, 2]);
        p.extend(b"ccollections\nOrderedDict\n)R(");
        s(&mut p, "a");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x00((");
        s(&mut p, "storage");
        p.extend(b"ctorch\nFloatStorage\n");
        s(&mut p, "k0");
        s(&mut p, "cpu");
        p.extend([b'K', 6, b'N', b't', b'Q', b'K', 0, b'K', 2, b'K', 3, 0x86, b'K', 1, b'K', 2, 0x86, 0x89, b'N', b't', b'R']);
        s(&mut p, "b");
        p.extend(b"}(");
        s(&mut p, "c");
        p.extend([b'h', 0, b'(', b'(']);
        s(&mut p, "storage");
        p.extend(b"ctorch\nHalfStorage\n");
        s(&mut p, "k1");
        s(&mut p, "cpu");
        p.extend([b'K', 3, b'N', b't', b'Q', b'K', 1, b'K', 2, 0x85, b'K', 1, 0x85, 0x89, b'N', b't', b'R', b'u', b'u', b'.']);
        // key list
        p.extend([0x80, 2, b'(']);
        s(&mut p, "k0");
        s(&mut p, "k1");
        p.extend([b'l', b'.']);
        p.extend(6i64.to_le_bytes());
        for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
            p.extend(v.to_le_bytes());
        }
        p.extend(3i64.to_le_bytes());
        for v in [7.0f32, 8.0, 9.0] {
            p.extend(half::f16::from_f32(v).to_le_bytes());
        }
        p
    }

    #[test]
    fn reads_a_legacy_checkpoint_with_strides_nesting_and_f16() {
        let dir = std::env::temp_dir().join(format!("xcomposer-torch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("legacy.pth");
        std::fs::write(&path, legacy_bytes()).unwrap();
        let w = TorchWeights::open_file(&path).unwrap();
        assert_eq!(w.names(), ["a", "b.c"]);
        // storage [1..6] viewed as [2,3] with strides (1,2): column-major.
        let a = w.load("a").unwrap();
        assert_eq!(a.shape, [2, 3]);
        assert_eq!(a.data, [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        let c = w.load("b.c").unwrap();
        assert_eq!((c.shape.as_slice(), c.data.as_slice()), (&[2usize][..], &[8.0f32, 9.0][..]));
        assert!(w.load("nope").unwrap_err().to_string().contains("'nope' is missing"));
        // Every truncation fails with an error naming the file, never a panic.
        let full = legacy_bytes();
        for cut in (0..full.len()).step_by(7) {
            std::fs::write(&path, &full[..cut]).unwrap();
            let e = TorchWeights::open_file(&path).err().unwrap_or_else(|| panic!("a file cut at {cut} opened"));
            assert!(e.to_string().contains("legacy.pth"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
