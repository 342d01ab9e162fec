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

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;
use std::rc::{Rc, Weak};

use memmap2::Mmap;

use super::WeightError;
use crate::weights::{HostTensor, WeightSource};

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

/// The most deeply nested containers a pickle may build (state dicts nest a few levels). A
/// constant, not a cap a user raises: it bounds the recursion of [`collect_tensors`] (a stack
/// bound, not a size), and a real state dict is nowhere near it.
const MAX_DEPTH: u32 = 256;
/// The default of [`PICKLE_CAP`]: the largest `data.pkl` inflated from a zip checkpoint (a
/// sharded 18 GB model's is a few MB).
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// The cap on a compressed `data.pkl`'s inflated size, raised by `XCOMPOSER_MAX_PICKLE_BYTES`.
pub const PICKLE_CAP: crate::capped::Cap = crate::capped::Cap { var: "XCOMPOSER_MAX_PICKLE_BYTES", default: MAX_PICKLE_BYTES };

/// The pickle opcodes this reader knows, named as in Python's `pickletools` (shown upper-case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Proto,
    Frame,
    Stop,
    Mark,
    EmptyDict,
    EmptyList,
    EmptyTuple,
    EmptySet,
    None,
    NewTrue,
    NewFalse,
    BinInt1,
    BinInt2,
    BinInt,
    Long1,
    Long4,
    BinFloat,
    BinUnicode,
    ShortBinUnicode,
    BinUnicode8,
    BinString,
    ShortBinString,
    BinBytes,
    ShortBinBytes,
    BinPut,
    LongBinPut,
    Memoize,
    BinGet,
    LongBinGet,
    Tuple,
    Tuple1,
    Tuple2,
    Tuple3,
    List,
    Dict,
    Append,
    Appends,
    AddItems,
    SetItem,
    SetItems,
    Pop,
    PopMark,
    Dup,
    Global,
    StackGlobal,
    Reduce,
    NewObj,
    Build,
    BinPersId,
}

impl Op {
    /// The opcode a byte stands for.
    fn from_byte(b: u8) -> Option<Self> {
        use Op::*;
        Some(match b {
            0x80 => Proto,
            0x95 => Frame,
            b'.' => Stop,
            b'(' => Mark,
            b'}' => EmptyDict,
            b']' => EmptyList,
            b')' => EmptyTuple,
            0x8f => EmptySet,
            b'N' => None,
            0x88 => NewTrue,
            0x89 => NewFalse,
            b'K' => BinInt1,
            b'M' => BinInt2,
            b'J' => BinInt,
            0x8a => Long1,
            0x8b => Long4,
            b'G' => BinFloat,
            b'X' => BinUnicode,
            0x8c => ShortBinUnicode,
            0x8d => BinUnicode8,
            b'T' => BinString,
            b'U' => ShortBinString,
            b'B' => BinBytes,
            b'C' => ShortBinBytes,
            b'q' => BinPut,
            b'r' => LongBinPut,
            0x94 => Memoize,
            b'h' => BinGet,
            b'j' => LongBinGet,
            b't' => Tuple,
            0x85 => Tuple1,
            0x86 => Tuple2,
            0x87 => Tuple3,
            b'l' => List,
            b'd' => Dict,
            b'a' => Append,
            b'e' => Appends,
            0x90 => AddItems,
            b's' => SetItem,
            b'u' => SetItems,
            b'0' => Pop,
            b'1' => PopMark,
            b'2' => Dup,
            b'c' => Global,
            0x93 => StackGlobal,
            b'R' => Reduce,
            0x81 => NewObj,
            b'b' => Build,
            b'Q' => BinPersId,
            _ => return Option::None,
        })
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format!("{self:?}").to_uppercase())
    }
}

/// What is wrong at a place in a pickle.
#[derive(Debug, thiserror::Error)]
enum PickleProblem {
    /// The data ends inside an opcode's argument.
    #[error("truncated pickle")]
    Truncated,
    /// A text argument has no closing newline.
    #[error("unterminated text line")]
    UnterminatedLine,
    /// A byte that is no opcode this reader knows.
    #[error("unsupported pickle opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    /// An opcode needs more values than the stack holds.
    #[error("{0} on a stack with too few values")]
    StackUnderflow(Op),
    /// An opcode that collects items since the last MARK found none.
    #[error("{0} without a MARK on the stack")]
    NoMark(Op),
    /// An opcode found a value of the wrong kind.
    #[error("{op} needs {expected} on the stack, found {found}")]
    WrongType { op: Op, expected: &'static str, found: &'static str },
    /// Containers nested past [`MAX_DEPTH`].
    #[error("{op} nests containers deeper than {MAX_DEPTH} levels")]
    TooDeep { op: Op },
    /// A memo slot read before it was written.
    #[error("{op} of memo {index}, which is not set")]
    MemoMissing { op: Op, index: u32 },
    /// A FRAME longer than what is left of the data.
    #[error("FRAME of {len} bytes reaches past the end of the pickle ({left} bytes left)")]
    Frame { len: u64, left: usize },
    /// Key/value items of odd count.
    #[error("{0} with an odd number of items; expected key, value pairs")]
    OddItems(Op),
    /// A torch object (persistent id, tensor arguments) that is not as torch writes it.
    #[error("{0}")]
    Torch(&'static str),
    /// A storage class torch does not write (or this reader does not read).
    #[error("unsupported storage type {0}")]
    StorageType(String),
}

/// A pickle that cannot be read: which, where and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{what}: pickle byte {pos}: {problem}")]
struct PickleError {
    what: String,
    pos: usize,
    problem: PickleProblem,
}

/// A container's items and how deeply it nests. It is dropped without recursion, so a pickle
/// that builds a long chain of containers cannot overflow the stack when it is freed.
#[derive(Debug)]
struct Node<T: Items> {
    depth: Cell<u32>,
    items: RefCell<Vec<T>>,
}

/// What a container holds: values, or key/value pairs.
trait Items: Sized {
    /// Moves the values out into `out`.
    fn into_values(self, out: &mut Vec<Value>);
}

impl Items for Value {
    fn into_values(self, out: &mut Vec<Value>) {
        out.push(self)
    }
}

impl Items for (Value, Value) {
    fn into_values(self, out: &mut Vec<Value>) {
        out.extend([self.0, self.1])
    }
}

impl<T: Items> Node<T> {
    fn new(items: Vec<T>, depth: u32) -> Rc<Self> {
        Rc::new(Self { depth: Cell::new(depth), items: RefCell::new(items) })
    }

    fn drain_into(&self, out: &mut Vec<Value>) {
        for item in self.items.borrow_mut().drain(..) {
            item.into_values(out);
        }
    }
}

impl<T: Items> Drop for Node<T> {
    fn drop(&mut self) {
        let mut pending = vec![];
        self.drain_into(&mut pending);
        while let Some(v) = pending.pop() {
            match v {
                Value::Tuple(n) | Value::List(n) => Rc::into_inner(n).into_iter().for_each(|n| n.drain_into(&mut pending)),
                Value::Dict(n) => Rc::into_inner(n).into_iter().for_each(|n| n.drain_into(&mut pending)),
                _ => {}
            }
        }
    }
}

/// A decoded pickle value (only what state dicts contain is given structure; floats and byte
/// strings are skipped, as no state dict entry we read needs their values). Cloning is cheap
/// (strings and containers are shared), so DUP and memo reads copy no data.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float,
    Str(Rc<str>),
    Bytes,
    Tuple(Rc<Node<Value>>),
    List(Rc<Node<Value>>),
    Dict(Rc<Node<(Value, Value)>>),
    Global(Rc<(String, String)>),
    /// A storage reference from a persistent id: (dtype, key).
    Storage(TorchDtype, Rc<str>),
    Tensor(Rc<TorchTensor>),
    /// The result of calling something we do not model.
    Opaque,
    Mark,
}

impl Value {
    /// How many containers deep the value nests (0 for a scalar).
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(n) | Value::List(n) => n.depth.get(),
            Value::Dict(n) => n.depth.get(),
            _ => 0,
        }
    }

    /// The value's kind, for messages.
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a global",
            Value::Storage(..) => "a storage",
            Value::Tensor(_) => "a tensor",
            Value::Opaque => "an object",
            Value::Mark => "a MARK",
        }
    }
}

/// Pairs up `[k0, v0, k1, v1, …]`; `None` when the count is odd.
fn pairs(items: Vec<Value>) -> Option<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return Option::None;
    }
    let mut it = items.into_iter();
    let mut out = Vec::with_capacity(it.len() / 2);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    /// Where the current opcode starts (errors name it).
    at: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    what: &'a str,
    /// The containers APPEND/SETITEM changed: the only way to a reference cycle.
    extended: Extended,
}

/// Weak references to the lists and dicts a pickle extended after building them.
#[derive(Debug, Default)]
struct Extended {
    lists: Vec<Weak<Node<Value>>>,
    dicts: Vec<Weak<Node<(Value, Value)>>>,
}

/// A pickle's value. Dropping it empties the containers that the pickle extended, so one put
/// inside itself (`]` DUP APPEND) is freed instead of leaked through its own reference.
#[derive(Debug)]
struct Pickled {
    value: Value,
    extended: Extended,
}

impl std::ops::Deref for Pickled {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.value
    }
}

impl Drop for Pickled {
    fn drop(&mut self) {
        self.value = Value::None;
        let mut pending = vec![];
        for n in self.extended.lists.drain(..).filter_map(|w| w.upgrade()) {
            n.drain_into(&mut pending);
        }
        for n in self.extended.dicts.drain(..).filter_map(|w| w.upgrade()) {
            n.drain_into(&mut pending);
        }
    }
}

type PResult<T> = Result<T, PickleError>;

impl<'a> Unpickler<'a> {
    fn err(&self, problem: PickleProblem) -> PickleError {
        PickleError { what: self.what.to_string(), pos: self.at, problem }
    }
    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| self.err(PickleProblem::Truncated))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> PResult<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }
    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> PResult<usize> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }
    fn line(&mut self) -> PResult<String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.err(PickleProblem::UnterminatedLine))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn pop(&mut self, op: Op) -> PResult<Value> {
        self.stack.pop().ok_or_else(|| self.err(PickleProblem::StackUnderflow(op)))
    }
    fn pop_mark(&mut self, op: Op) -> PResult<Vec<Value>> {
        let at = self.stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| self.err(PickleProblem::NoMark(op)))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&self, op: Op) -> PResult<Value> {
        self.stack.last().cloned().ok_or_else(|| self.err(PickleProblem::StackUnderflow(op)))
    }
    fn str(&mut self, n: usize) -> PResult<Value> {
        let b = self.take(n)?;
        Ok(Value::Str(String::from_utf8_lossy(b).into()))
    }
    fn memo_get(&self, op: Op, index: u32) -> PResult<Value> {
        self.memo.get(&index).cloned().ok_or_else(|| self.err(PickleProblem::MemoMissing { op, index }))
    }
    fn memo_put(&mut self, op: Op, index: u32) -> PResult<()> {
        let v = self.top(op)?;
        self.memo.insert(index, v);
        Ok(())
    }

    /// The depth of a container at `depth` once `items` are in it; refused past [`MAX_DEPTH`].
    fn deeper(&self, op: Op, depth: u32, items: &[Value]) -> PResult<u32> {
        let d = items.iter().map(|v| v.depth() + 1).fold(depth.max(1), u32::max);
        if d > MAX_DEPTH {
            return Err(self.err(PickleProblem::TooDeep { op }));
        }
        Ok(d)
    }
    fn tuple(&self, op: Op, items: Vec<Value>) -> PResult<Value> {
        let d = self.deeper(op, 1, &items)?;
        Ok(Value::Tuple(Node::new(items, d)))
    }
    fn list(&self, op: Op, items: Vec<Value>) -> PResult<Value> {
        let d = self.deeper(op, 1, &items)?;
        Ok(Value::List(Node::new(items, d)))
    }
    fn dict(&self, op: Op, items: Vec<Value>) -> PResult<Value> {
        let d = self.deeper(op, 1, &items)?;
        let pairs = pairs(items).ok_or_else(|| self.err(PickleProblem::OddItems(op)))?;
        Ok(Value::Dict(Node::new(pairs, d)))
    }
    /// APPEND, APPENDS, ADDITEMS: `items` go into the list (or set) on top of the stack.
    fn extend_list(&mut self, op: Op, items: Vec<Value>) -> PResult<()> {
        let Value::List(l) = self.top(op)? else { return Err(self.wrong(op, "a list")) };
        l.depth.set(self.deeper(op, l.depth.get(), &items)?);
        l.items.borrow_mut().extend(items);
        self.extended.lists.push(Rc::downgrade(&l));
        Ok(())
    }
    /// SETITEM, SETITEMS: `items` (keys and values) go into the dict on top of the stack.
    fn extend_dict(&mut self, op: Op, items: Vec<Value>) -> PResult<()> {
        let Value::Dict(d) = self.top(op)? else { return Err(self.wrong(op, "a dict")) };
        d.depth.set(self.deeper(op, d.depth.get(), &items)?);
        let pairs = pairs(items).ok_or_else(|| self.err(PickleProblem::OddItems(op)))?;
        d.items.borrow_mut().extend(pairs);
        self.extended.dicts.push(Rc::downgrade(&d));
        Ok(())
    }
    fn wrong(&self, op: Op, expected: &'static str) -> PickleError {
        let found = self.stack.last().map_or("nothing", Value::kind);
        self.err(PickleProblem::WrongType { op, expected, found })
    }
    /// FRAME: the frame must lie inside the data.
    fn frame(&mut self) -> PResult<()> {
        let len = u64::from_le_bytes(self.array()?);
        let left = self.data.len() - self.pos;
        if len > left as u64 {
            return Err(self.err(PickleProblem::Frame { len, left }));
        }
        Ok(())
    }
    /// LONG1 and LONG4: little-endian two's complement of `n` bytes.
    fn long(&mut self, n: usize) -> PResult<Value> {
        let b = self.take(n)?;
        if n > 8 {
            // Only the legacy magic number is this long; keep its low bits.
            return Ok(Value::Int(i64::from_le_bytes(b[..8].try_into().expect("8 bytes"))));
        }
        let mut buf = [if b.last().is_some_and(|&x| x & 0x80 != 0) { 0xff } else { 0 }; 8];
        buf[..n].copy_from_slice(b);
        Ok(Value::Int(i64::from_le_bytes(buf)))
    }

    /// Runs the pickle to its STOP and returns the result.
    fn run(&mut self) -> PResult<Value> {
        loop {
            self.at = self.pos;
            let byte = self.u8()?;
            let op = Op::from_byte(byte).ok_or_else(|| self.err(PickleProblem::UnknownOpcode(byte)))?;
            if op == Op::Stop {
                return self.pop(op);
            }
            self.step(op)?;
        }
    }

    /// Runs one opcode (its argument bytes follow it).
    fn step(&mut self, op: Op) -> PResult<()> {
        let v = match op {
            Op::Proto => return self.u8().map(drop),
            Op::Frame => return self.frame(),
            Op::Mark => Value::Mark,
            Op::EmptyDict => Value::Dict(Node::new(vec![], 1)),
            Op::EmptyList | Op::EmptySet => Value::List(Node::new(vec![], 1)),
            Op::EmptyTuple => Value::Tuple(Node::new(vec![], 1)),
            Op::None => Value::None,
            Op::NewTrue => Value::Bool(true),
            Op::NewFalse => Value::Bool(false),
            Op::BinInt1 => Value::Int(self.u8()? as i64),
            Op::BinInt2 => Value::Int(u16::from_le_bytes(self.array()?) as i64),
            Op::BinInt => Value::Int(i32::from_le_bytes(self.array()?) as i64),
            Op::Long1 => {
                let n = self.u8()? as usize;
                self.long(n)?
            }
            Op::Long4 => {
                let n = self.u32()?;
                self.long(n)?
            }
            Op::BinFloat => {
                self.take(8)?;
                Value::Float
            }
            Op::BinUnicode | Op::BinString => {
                let n = self.u32()?;
                self.str(n)?
            }
            Op::ShortBinUnicode | Op::ShortBinString => {
                let n = self.u8()? as usize;
                self.str(n)?
            }
            Op::BinUnicode8 => {
                let n = usize::try_from(u64::from_le_bytes(self.array()?)).unwrap_or(usize::MAX);
                self.str(n)?
            }
            Op::BinBytes | Op::ShortBinBytes => {
                let n = if op == Op::BinBytes { self.u32()? } else { self.u8()? as usize };
                self.take(n)?;
                Value::Bytes
            }
            Op::BinPut => {
                let i = self.u8()? as u32;
                return self.memo_put(op, i);
            }
            Op::LongBinPut => {
                let i = self.u32()? as u32;
                return self.memo_put(op, i);
            }
            Op::Memoize => return self.memo_put(op, self.memo.len() as u32),
            Op::BinGet => {
                let i = self.u8()? as u32;
                self.memo_get(op, i)?
            }
            Op::LongBinGet => {
                let i = self.u32()? as u32;
                self.memo_get(op, i)?
            }
            Op::Tuple => {
                let items = self.pop_mark(op)?;
                self.tuple(op, items)?
            }
            Op::Tuple1 | Op::Tuple2 | Op::Tuple3 => {
                let n = [Op::Tuple1, Op::Tuple2, Op::Tuple3].iter().position(|&t| t == op).expect("a TUPLEn") + 1;
                if self.stack.len() < n {
                    return Err(self.err(PickleProblem::StackUnderflow(op)));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.tuple(op, items)?
            }
            Op::List => {
                let items = self.pop_mark(op)?;
                self.list(op, items)?
            }
            Op::Dict => {
                let items = self.pop_mark(op)?;
                self.dict(op, items)?
            }
            Op::Append => {
                let v = self.pop(op)?;
                return self.extend_list(op, vec![v]);
            }
            Op::Appends | Op::AddItems => {
                let items = self.pop_mark(op)?;
                return self.extend_list(op, items);
            }
            Op::SetItem => {
                let v = self.pop(op)?;
                let k = self.pop(op)?;
                return self.extend_dict(op, vec![k, v]);
            }
            Op::SetItems => {
                let items = self.pop_mark(op)?;
                return self.extend_dict(op, items);
            }
            Op::Pop => return self.pop(op).map(drop),
            Op::PopMark => return self.pop_mark(op).map(drop),
            Op::Dup => self.top(op)?,
            Op::Global => {
                let module = self.line()?;
                let name = self.line()?;
                Value::Global(Rc::new((module, name)))
            }
            Op::StackGlobal => {
                let name = self.pop(op)?;
                let module = self.pop(op)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => Value::Global(Rc::new((m.to_string(), n.to_string()))),
                    (m, _) => return Err(self.err(PickleProblem::WrongType { op, expected: "two strings", found: m.kind() })),
                }
            }
            Op::Reduce | Op::NewObj => {
                let args = self.pop(op)?;
                let func = self.pop(op)?;
                self.call(func, args)?
            }
            // BUILD: object state (e.g. a state dict's `_metadata`); not needed.
            Op::Build => return self.pop(op).map(drop),
            Op::BinPersId => {
                let pid = self.pop(op)?;
                self.persistent(pid)?
            }
            Op::Stop => unreachable!("handled by run"),
        };
        self.stack.push(v);
        Ok(())
    }

    fn persistent(&self, pid: Value) -> PResult<Value> {
        let torch = |m| self.err(PickleProblem::Torch(m));
        let Value::Tuple(t) = pid else { return Err(torch("persistent id is not a tuple")) };
        let t = t.items.borrow();
        match t.as_slice() {
            [Value::Str(kind), Value::Global(class), Value::Str(key), _location, _numel, rest @ ..] if &**kind == "storage" => {
                if rest.first().is_some_and(|v| !matches!(v, Value::None)) {
                    return Err(torch("storage views (pre-1.0 checkpoints) are not supported"));
                }
                let dtype = TorchDtype::from_storage_class(&class.1).ok_or_else(|| self.err(PickleProblem::StorageType(format!("{}.{}", class.0, class.1))))?;
                Ok(Value::Storage(dtype, key.clone()))
            }
            _ => Err(torch("unrecognised persistent id")),
        }
    }

    fn call(&self, func: Value, args: Value) -> PResult<Value> {
        let Value::Global(g) = &func else { return Ok(Value::Opaque) };
        let args: Vec<Value> = match &args {
            Value::Tuple(t) => t.items.borrow().clone(),
            _ => vec![],
        };
        match (g.0.as_str(), g.1.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") => Ok(Value::Dict(Node::new(vec![], 1))),
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => self.rebuild_tensor(&args),
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => Ok(args.first().cloned().unwrap_or(Value::Opaque)),
            _ => Ok(Value::Opaque),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, …)`.
    fn rebuild_tensor(&self, args: &[Value]) -> PResult<Value> {
        let torch = |m| self.err(PickleProblem::Torch(m));
        let ints = |v: &Value| -> Option<Vec<usize>> {
            match v {
                Value::Tuple(t) => t.items.borrow().iter().map(|x| if let Value::Int(i) = x { usize::try_from(*i).ok() } else { Option::None }).collect(),
                _ => Option::None,
            }
        };
        let [Value::Storage(dtype, key), Value::Int(offset), size, stride, ..] = args else { return Err(torch("unexpected arguments to _rebuild_tensor_v2")) };
        let offset = usize::try_from(*offset).map_err(|_| torch("negative storage offset"))?;
        let shape = ints(size).ok_or_else(|| torch("tensor size is not a tuple of non-negative ints"))?;
        let stride = ints(stride).ok_or_else(|| torch("tensor stride is not a tuple of non-negative ints"))?;
        if shape.len() != stride.len() {
            return Err(torch("tensor size and stride differ in length"));
        }
        Ok(Value::Tensor(Rc::new(TorchTensor { dtype: *dtype, shape, stride, offset, storage: key.to_string() })))
    }
}

/// Runs one pickle starting at `pos`; returns its value and the position after it.
fn unpickle(data: &[u8], pos: usize, what: &str) -> Result<(Pickled, usize), PickleError> {
    let mut u = Unpickler { data, pos, at: pos, stack: vec![], memo: HashMap::new(), what, extended: Extended::default() };
    let v = u.run();
    u.stack.clear();
    u.memo.clear();
    let extended = std::mem::take(&mut u.extended);
    match v {
        Ok(value) => Ok((Pickled { value, extended }, u.pos)),
        Err(e) => {
            drop(Pickled { value: Value::None, extended });
            Err(e)
        }
    }
}

/// Flattens a (possibly nested) state dict into `name → tensor`; a dict nested deeper than
/// [`MAX_DEPTH`] (or inside itself) is refused.
fn collect_tensors(v: &Value, prefix: &str, depth: u32, out: &mut Vec<(String, TorchTensor)>) -> Result<(), String> {
    match v {
        Value::Tensor(t) => out.push((prefix.to_string(), (**t).clone())),
        Value::Dict(_) if depth > MAX_DEPTH => return Err(format!("the state dict nests deeper than {MAX_DEPTH} levels at '{prefix}'")),
        Value::Dict(d) => {
            for (k, v) in d.items.borrow().iter() {
                let key = match k {
                    Value::Str(s) => s.to_string(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                let name = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
                collect_tensors(v, &name, depth + 1, out)?;
            }
        }
        _ => {}
    }
    Ok(())
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
        let shards = super::shard_index::ShardIndex::read(&index)?;
        let mut w = Self { files: vec![], tensors: HashMap::new(), names: vec![], name: dir.display().to_string() };
        for s in &shards.shards {
            w.add_file(s)?;
        }
        for (k, v) in &shards.weight_map {
            if !w.tensors.contains_key(k) {
                return Err(file_err(&index, format!("lists tensor '{k}' in {v}, which does not hold it")));
            }
        }
        Ok(w)
    }

    fn add_file(&mut self, path: &Path) -> Result<(), WeightError> {
        let file = super::capped::open_regular(path)?;
        // SAFETY: the file is opened read-only and is not modified while mapped (checkpoints are
        // read-only inputs).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| file_err(path, e))?;
        let what = path.display().to_string();
        let (found, storages) = if map.starts_with(b"PK\x03\x04") { read_zip(&file, &map, path)? } else { read_legacy(&map, &what, path)? };
        if found.is_empty() {
            return Err(file_err(path, "holds no tensors (is it a state dict?)"));
        }
        let idx = self.files.len();
        for (name, t) in found {
            let (start, end) = *storages.get(&t.storage).ok_or_else(|| file_err(path, format!("tensor '{name}' refers to storage {} which is not in the file", t.storage)))?;
            check_extent(&t, (end - start) / t.dtype.size()).map_err(|e| file_err(path, format!("tensor '{name}' {e}")))?;
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

/// Checks that a tensor's elements lie inside its storage of `avail` elements: no stride 0
/// along a dimension longer than 1, no more elements than the storage holds, and the last
/// element inside it (in checked arithmetic); an empty tensor reads nothing and passes.
fn check_extent(t: &TorchTensor, avail: usize) -> Result<(), String> {
    if t.shape.contains(&0) {
        return Ok(());
    }
    let (mut numel, mut last) = (1usize, Some(t.offset));
    for (d, (&n, &s)) in t.shape.iter().zip(&t.stride).enumerate() {
        if n > 1 && s == 0 {
            return Err(format!("has stride 0 in dimension {d}; expected a view of distinct elements"));
        }
        numel = numel.saturating_mul(n);
        last = last.and_then(|l| l.checked_add((n - 1).checked_mul(s)?));
    }
    if numel > avail {
        return Err(format!("has {numel} elements but its storage holds {avail}"));
    }
    match last {
        Some(l) if l < avail => Ok(()),
        _ => Err("reaches past the end of its storage".into()),
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
        let start = usize::try_from(entry.data_start()).unwrap_or(usize::MAX);
        let end = usize::try_from(entry.compressed_size()).ok().and_then(|n| start.checked_add(n)).filter(|&e| e <= map.len());
        let end = end.ok_or_else(|| file_err(path, format!("zip member {name} reaches past the end of the file")))?;
        if rest == "data.pkl" {
            pkl = Some((name.clone(), entry.compression(), start, end, entry.size()));
        } else if let Some(key) = rest.strip_prefix("data/") {
            if entry.compression() != zip::CompressionMethod::Stored {
                return Err(file_err(path, format!("storage {name} is compressed; torch writes them stored")));
            }
            storages.insert(key.to_string(), (start, end));
        }
    }
    let (name, method, start, end, size) = pkl.ok_or_else(|| file_err(path, "zip checkpoint without data.pkl"))?;
    let bytes: Cow<[u8]> = if method == zip::CompressionMethod::Stored { Cow::Borrowed(&map[start..end]) } else { Cow::Owned(inflate_pickle(&mut zip, &name, size, path)?) };
    let what = format!("{}:{name}", path.display());
    let (root, _) = unpickle(&bytes, 0, &what).map_err(|e| file_err(path, e))?;
    let mut tensors = vec![];
    collect_tensors(&root, "", 0, &mut tensors).map_err(|e| file_err(path, e))?;
    Ok((tensors, storages))
}

/// Inflates the compressed zip member `name` of `size` bytes (as the zip directory says),
/// refusing it before inflating when that size is over [`PICKLE_CAP`], and stopping at the cap
/// when the data inflates to more than the directory said. A refusal names the variable.
fn inflate_pickle(zip: &mut zip::ZipArchive<&std::fs::File>, name: &str, size: u64, path: &Path) -> Result<Vec<u8>, WeightError> {
    let cap = PICKLE_CAP.bytes()?;
    let hint = crate::capped::raise_hint(Some(PICKLE_CAP.var));
    let too_big = || file_err(path, format!("zip member {name} inflates to more than {cap} bytes, the limit for a pickle{hint}"));
    if size > cap {
        return Err(too_big());
    }
    let member = zip.by_name(name).map_err(|e| file_err(path, e))?;
    crate::capped::read_to_end_capped(member, cap).map_err(|e| file_err(path, e))?.ok_or_else(too_big)
}

/// The low 64 bits of torch's legacy magic number 0x1950a86a20f9469cfc6c.
const LEGACY_MAGIC_LOW: i64 = 0xa86a_20f9_469c_fc6c_u64 as i64;

/// Reads the legacy container: five pickles, then the storages in the order of the key list.
fn read_legacy(map: &[u8], what: &str, path: &Path) -> Result<Contents, WeightError> {
    let fail = |e: &dyn std::fmt::Display| file_err(path, e);
    let (magic, pos) = unpickle(map, 0, what).map_err(|e| file_err(path, format!("not a PyTorch checkpoint ({e})")))?;
    if !matches!(*magic, Value::Int(LEGACY_MAGIC_LOW)) {
        return Err(fail(&"not a PyTorch checkpoint (no zip header and no legacy magic number)"));
    }
    let (_protocol, pos) = unpickle(map, pos, what).map_err(|e| fail(&e))?;
    let (sys_info, pos) = unpickle(map, pos, what).map_err(|e| fail(&e))?;
    if let Value::Dict(d) = &*sys_info
        && d.items.borrow().iter().any(|kv| matches!(kv, (Value::Str(k), Value::Bool(false)) if &**k == "little_endian"))
    {
        return Err(fail(&"big-endian checkpoints are not supported"));
    }
    let (root, pos) = unpickle(map, pos, what).map_err(|e| fail(&e))?;
    let (keys, pos) = unpickle(map, pos, what).map_err(|e| fail(&e))?;
    let Value::List(keys) = &*keys else { return Err(fail(&"the storage key list is not a list")) };
    let mut tensors = vec![];
    collect_tensors(&root, "", 0, &mut tensors).map_err(|e| fail(&e))?;
    let storages = legacy_storages(map, pos, &keys.items.borrow(), &tensors).map_err(|e| fail(&e))?;
    Ok((tensors, storages))
}

/// Where each storage of a legacy checkpoint lies: from `pos` on, each is an i64 element count
/// and its bytes, in the order of `keys`; the element size comes from the tensors that use it.
fn legacy_storages(map: &[u8], mut pos: usize, keys: &[Value], tensors: &[(String, TorchTensor)]) -> Result<HashMap<String, (usize, usize)>, String> {
    let elem: HashMap<&str, usize> = tensors.iter().map(|(_, t)| (t.storage.as_str(), t.dtype.size())).collect();
    let mut storages = HashMap::new();
    for k in keys {
        let Value::Str(k) = k else { return Err("a storage key is not a string".into()) };
        let head: [u8; 8] = map.get(pos..).and_then(|m| m.get(..8)).and_then(|h| h.try_into().ok()).ok_or_else(|| format!("storage {k}: truncated file"))?;
        let n = i64::from_le_bytes(head);
        let size = *elem.get(&**k).unwrap_or(&1);
        let bytes = usize::try_from(n).ok().and_then(|n| n.checked_mul(size)).ok_or_else(|| format!("storage {k}: bad element count {n}"))?;
        let start = pos + 8;
        let end = start.checked_add(bytes).filter(|&e| e <= map.len()).ok_or_else(|| format!("storage {k}: truncated file"))?;
        storages.insert(k.to_string(), (start, end));
        pos = end;
    }
    Ok(storages)
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
        legacy_with(&[b'K', 0, b'K', 2, b'K', 3, 0x86, b'K', 1, b'K', 2, 0x86])
    }

    /// [`legacy_bytes`] with `a_layout` (offset, size, stride opcodes) as tensor "a"'s layout.
    fn legacy_with(a_layout: &[u8]) -> Vec<u8> {
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
        p.extend([b'K', 6, b'N', b't', b'Q']);
        p.extend(a_layout);
        p.extend([0x89, b'N', b't', b'R']);
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

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("xcomposer-torch-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn run(pickle: &[u8]) -> Result<Pickled, String> {
        unpickle(pickle, 0, "t.pkl").map(|(v, _)| v).map_err(|e| e.to_string())
    }

    #[test]
    fn deep_nesting_is_an_error_and_deep_chains_free_without_recursion() {
        let mut p = vec![0x80, 2, b'N'];
        p.extend(std::iter::repeat_n(0x85, 3_000_000));
        p.push(b'.');
        let e = run(&p).unwrap_err();
        assert!(e.starts_with("t.pkl: pickle byte 259: TUPLE1 nests containers deeper than 256 levels"), "{e}");
        // Lists linked through the memo after they were nested (so no depth is seen growing):
        // a chain of a million lists, freed without recursion.
        let n = 1_000_000u32;
        let mut p = vec![0x80, 2];
        for i in 0..n {
            p.push(b']');
            p.push(b'r');
            p.extend(i.to_le_bytes());
            p.push(b'0');
        }
        for i in 0..n - 1 {
            p.push(b'j');
            p.extend(i.to_le_bytes());
            p.push(b'j');
            p.extend((i + 1).to_le_bytes());
            p.extend([b'a', b'0']);
        }
        p.extend([b'j', 0, 0, 0, 0, b'.']);
        assert!(matches!(run(&p).as_deref(), Ok(Value::List(_))));
        // A dict inside itself is refused when its tensors are collected.
        let dict_in_itself = [0x80, 2, b'}', b'q', 0, 0x8c, 1, b'k', b'h', 0, b's', b'.'];
        let root = run(&dict_in_itself).unwrap();
        let e = collect_tensors(&root, "", 0, &mut vec![]).unwrap_err();
        assert!(e.starts_with("the state dict nests deeper than 256 levels at 'k.k.k"), "{e}");
    }

    #[test]
    fn containers_put_inside_themselves_are_freed_with_the_pickle() {
        // A list appended to itself (EMPTY_LIST DUP APPEND) and a dict set as its own value
        // (EMPTY_DICT BINPUT, key, BINGET SETITEM): each held by its own reference, they leaked
        // (the fuzz finding leak-list-appended-to-itself) until the pickle emptied them on drop.
        let list_in_itself = [0x80, 2, b']', b'2', b'a', b'.'];
        let dict_in_itself = [0x80, 2, b'}', b'q', 0, 0x8c, 1, b'k', b'h', 0, b's', b'.'];
        for p in [&list_in_itself[..], &dict_in_itself[..]] {
            let pickled = run(p).unwrap();
            let weak = match &*pickled {
                Value::List(n) => WeakNode::List(Rc::downgrade(n)),
                Value::Dict(n) => WeakNode::Dict(Rc::downgrade(n)),
                v => panic!("{v:?}"),
            };
            assert!(weak.alive(), "{p:?}");
            drop(pickled);
            assert!(!weak.alive(), "{p:?} leaked through its own reference");
        }
    }

    /// A weak reference to a list or a dict.
    enum WeakNode {
        List(Weak<Node<Value>>),
        Dict(Weak<Node<(Value, Value)>>),
    }

    impl WeakNode {
        fn alive(&self) -> bool {
            match self {
                WeakNode::List(w) => w.strong_count() > 0,
                WeakNode::Dict(w) => w.strong_count() > 0,
            }
        }
    }

    #[test]
    fn a_checkpoint_that_is_a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = std::env::temp_dir().join(format!("xcomposer-torch-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pytorch_model.bin");
        assert!(std::process::Command::new("mkfifo").arg(&path).status().is_ok_and(|s| s.success()), "mkfifo failed");
        let e = TorchWeights::open_dir(&dir).err().expect("a FIFO was opened as a checkpoint").to_string();
        assert_eq!(e, format!("{}: not a regular file (a folder, FIFO or device); expected a file", path.display()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dup_and_memo_reads_share_strings_instead_of_copying_them() {
        // A 1 MiB string duplicated 200 000 times would be 200 GiB as copies.
        let mut p = vec![0x80, 2, b'X'];
        p.extend((1u32 << 20).to_le_bytes());
        p.extend(std::iter::repeat_n(b'x', 1 << 20));
        p.extend([b'q', 0]);
        p.extend(std::iter::repeat_n(b'2', 200_000));
        for _ in 0..200_000 {
            p.extend([b'h', 0]);
        }
        p.push(b'.');
        let v = run(&p);
        let Ok(Value::Str(s)) = v.as_deref() else { panic!("expected the string") };
        assert_eq!(s.len(), 1 << 20);
    }

    #[test]
    fn frames_past_the_end_and_list_or_dict_ops_on_the_wrong_type_are_errors() {
        let mut frame = vec![0x80, 4, 0x95];
        frame.extend(1000u64.to_le_bytes());
        frame.extend([b'N', b'.']);
        assert_eq!(run(&frame).unwrap_err(), "t.pkl: pickle byte 2: FRAME of 1000 bytes reaches past the end of the pickle (2 bytes left)");
        let cases: [(&[u8], &str); 5] = [
            (b"}Na.", "APPEND needs a list on the stack, found a dict"),
            (b"N(Ne.", "APPENDS needs a list on the stack, found None"),
            (b"]NNs.", "SETITEM needs a dict on the stack, found a list"),
            (b")(NNu.", "SETITEMS needs a dict on the stack, found a tuple"),
            (b"}(Nu.", "SETITEMS with an odd number of items; expected key, value pairs"),
        ];
        for (p, want) in cases {
            let e = run(p).unwrap_err();
            assert!(e.ends_with(want), "{:?}: {e}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn stride_zero_and_negative_offsets_fail_the_extent_check() {
        let dir = temp_dir("extent");
        let path = dir.join("bad.pth");
        let cases: [(&[u8], &str); 3] = [
            // size (2, 3), stride (1, 0): six elements read from three.
            (&[b'K', 0, b'K', 2, b'K', 3, 0x86, b'K', 1, b'K', 0, 0x86], "tensor 'a' has stride 0 in dimension 1"),
            // offset −1 (BININT), which wraps to the end of memory as an unsigned offset.
            (&[b'J', 0xff, 0xff, 0xff, 0xff, b'K', 2, b'K', 3, 0x86, b'K', 1, b'K', 2, 0x86], "negative storage offset"),
            // size (2, 3), stride (1, 3): the last element is at 1 + 2·3 = 7 of 6.
            (&[b'K', 0, b'K', 2, b'K', 3, 0x86, b'K', 1, b'K', 3, 0x86], "tensor 'a' reaches past the end of its storage"),
        ];
        for (layout, want) in cases {
            std::fs::write(&path, legacy_with(layout)).unwrap();
            let e = TorchWeights::open_file(&path).err().expect("refused").to_string();
            assert!(e.starts_with(&format!("{}: ", path.display())) && e.contains(want), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_zip_pickle_over_the_cap_is_refused_before_it_is_inflated_and_the_cap_is_raised_by_its_variable() {
        use std::io::Write;
        let dir = temp_dir("zip");
        let path = dir.join("big.pt");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let deflated = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("archive/data.pkl", deflated).unwrap();
        // One BINUNICODE string of 257 MiB: a whole pickle, 1 MiB over the default cap.
        let len = MAX_PICKLE_BYTES + (1 << 20);
        zip.write_all(&[0x80, 2, b'X']).unwrap();
        zip.write_all(&u32::try_from(len).unwrap().to_le_bytes()).unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..len >> 20 {
            zip.write_all(&chunk).unwrap();
        }
        zip.write_all(b".").unwrap();
        zip.finish().unwrap();
        let e = TorchWeights::open_file(&path).err().expect("refused").to_string();
        assert_eq!(
            e,
            format!(
                "{}: zip member archive/data.pkl inflates to more than 268435456 bytes, the limit for a pickle (raise it with the environment variable XCOMPOSER_MAX_PICKLE_BYTES)",
                path.display()
            )
        );
        // Raised (only raised: a test reading another checkpoint at the same time is not refused
        // by it), the pickle is inflated and read; the string is no state dict.
        // SAFETY: no other test of this binary sets or removes this variable.
        unsafe { std::env::set_var(PICKLE_CAP.var, (MAX_PICKLE_BYTES + (2 << 20)).to_string()) };
        let e = TorchWeights::open_file(&path).err().expect("refused").to_string();
        unsafe { std::env::remove_var(PICKLE_CAP.var) };
        assert_eq!(e, format!("{}: holds no tensors (is it a state dict?)", path.display()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
