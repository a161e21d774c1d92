//! A bounded pickle reader: it turns a pickle into a graph of plain data and never imports or
//! calls anything. `GLOBAL os system` is a name, and `REDUCE` on it records "this callable with
//! these arguments"; what a checkpoint means is decided afterwards by `torch` (its child module).
//!
//! Everything is bounded by the input: objects live in one arena (so a memo read is an index,
//! never a copy, and dropping is flat however deep the nesting), every length is checked against
//! the bytes left, and the object count is capped.

pub(crate) mod quantized;
pub(crate) mod tensor;
pub(crate) mod torch;

use std::collections::HashMap;

/// Index of an object in the arena.
pub(crate) type Id = u32;

#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64, as its little-endian two's-complement bytes (the legacy
    /// `torch.save` magic number is one).
    BigInt(Vec<u8>),
    /// Kept for the few floats that carry weights: a quantized tensor's scale.
    Float(f64),
    Str(String),
    /// Byte strings are never needed for weights: they are skipped, not kept.
    Bytes,
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global {
        module: String,
        name: String,
    },
    /// What `REDUCE`/`NEWOBJ`/`OBJ`/`INST` would have built: the callable and its arguments, plus
    /// whatever `SETITEM(S)`, `APPEND(S)` and `BUILD` later gave the object. Nothing is called.
    Object {
        callable: Id,
        args: Id,
        state: Option<Id>,
        items: Vec<(Id, Id)>,
        list: Vec<Id>,
    },
    /// A persistent id (`BINPERSID`): torch's reference to a storage (or, in legacy whole-module
    /// files, to a module class with its source).
    Persistent(Id),
}

/// Caps on what one pickle may build.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_objects: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // A state dict of 10,000 tensors builds about 200,000 objects.
        Limits {
            max_objects: 4_000_000,
        }
    }
}

/// A parsed pickle: the arena and the object `STOP` returned.
#[derive(Debug)]
pub(crate) struct Pickle {
    values: Vec<Value>,
    pub root: Id,
}

impl Pickle {
    pub fn get(&self, id: Id) -> &Value {
        &self.values[id as usize]
    }

    /// How many objects the pickle built (what an honest walk visits about once).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Every object, for scans that need no structure (the storages a legacy file lists).
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    pub fn str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, id: Id) -> Option<i64> {
        match self.get(id) {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// A float (or an integer, as Python accepts one where a float is expected).
    pub fn float(&self, id: Id) -> Option<f64> {
        match self.get(id) {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// `Some((module, name))` when `id` is a global.
    pub fn global(&self, id: Id) -> Option<(&str, &str)> {
        match self.get(id) {
            Value::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }

    /// The elements of a tuple or list.
    pub fn seq(&self, id: Id) -> Option<&[Id]> {
        match self.get(id) {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }

    /// A short description of an object for messages (`dict`, `call to os.system`, ...).
    pub fn describe(&self, id: Id) -> String {
        match self.get(id) {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) | Value::BigInt(_) => "an integer".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Bytes => "bytes".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global { module, name } => format!("a reference to {module}.{name}"),
            Value::Persistent(_) => "a persistent id".into(),
            Value::Object { callable, .. } => match self.get(*callable) {
                Value::Global { module, name } => format!("an object built by {module}.{name}"),
                _ => "an object".into(),
            },
        }
    }
}

/// Why a pickle was refused, with the byte offset.
#[derive(Debug, Clone)]
pub(crate) struct PickleError {
    pub offset: usize,
    pub reason: String,
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for PickleError {}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err<T>(&self, reason: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError {
            offset: self.pos,
            reason: reason.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.data.len() => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => self.err(format!(
                "needs {n} more bytes, {} left: truncated pickle",
                self.data.len() - self.pos
            )),
        }
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    /// A length read from the pickle, checked against the bytes left before anything is taken.
    fn len(&mut self, n: u64) -> Result<usize, PickleError> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return self.err(format!(
                "declares {n} bytes, {left} left: truncated or lying pickle"
            ));
        }
        Ok(n as usize)
    }

    /// A protocol-0 text argument, up to the newline.
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return self.err("unterminated text argument");
        };
        let s = std::str::from_utf8(&rest[..end]).or_else(|_| self.err("text is not UTF-8"))?;
        self.pos += end + 1;
        Ok(s)
    }
}

struct Machine {
    values: Vec<Value>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    limits: Limits,
}

impl Machine {
    fn push_new(&mut self, r: &Reader, v: Value) -> Result<(), PickleError> {
        if self.values.len() >= self.limits.max_objects {
            return r.err(format!(
                "builds more than {} objects",
                self.limits.max_objects
            ));
        }
        self.values.push(v);
        self.push(r, (self.values.len() - 1) as Id)
    }

    /// Pushes an existing object (memo reads and DUP push no new one, but still take memory).
    fn push(&mut self, r: &Reader, id: Id) -> Result<(), PickleError> {
        if self.stack.len() >= self.limits.max_objects {
            return r.err(format!(
                "stack deeper than {} entries",
                self.limits.max_objects
            ));
        }
        self.stack.push(id);
        Ok(())
    }

    fn mark(&mut self, r: &Reader) -> Result<(), PickleError> {
        if self.marks.len() >= self.limits.max_objects {
            return r.err(format!("more than {} open MARKs", self.limits.max_objects));
        }
        self.marks.push(self.stack.len());
        Ok(())
    }

    fn pop(&mut self, r: &Reader) -> Result<Id, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return r.err("pops an empty stack");
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&self, r: &Reader) -> Result<Id, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return r.err("reads an empty stack");
        }
        Ok(*self.stack.last().expect("checked"))
    }

    fn pop_mark(&mut self, r: &Reader) -> Result<Vec<Id>, PickleError> {
        let Some(m) = self.marks.pop() else {
            return r.err("no MARK to pop to");
        };
        Ok(self.stack.split_off(m))
    }

    fn pairs(r: &Reader, items: Vec<Id>) -> Result<Vec<(Id, Id)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return r.err("odd number of items for a dict");
        }
        Ok(items.chunks(2).map(|c| (c[0], c[1])).collect())
    }

    fn set_items(&mut self, r: &Reader, target: Id, kv: Vec<(Id, Id)>) -> Result<(), PickleError> {
        match &mut self.values[target as usize] {
            Value::Dict(d) => d.extend(kv),
            Value::Object { items, .. } => items.extend(kv),
            _ => return r.err("SETITEM on something that is not a dict"),
        }
        Ok(())
    }

    fn append(&mut self, r: &Reader, target: Id, new: Vec<Id>) -> Result<(), PickleError> {
        match &mut self.values[target as usize] {
            Value::List(l) => l.extend(new),
            Value::Object { list, .. } => list.extend(new),
            _ => return r.err("APPEND on something that is not a list"),
        }
        Ok(())
    }

    fn object(&mut self, r: &Reader, callable: Id, args: Id) -> Result<(), PickleError> {
        self.push_new(
            r,
            Value::Object {
                callable,
                args,
                state: None,
                items: Vec::new(),
                list: Vec::new(),
            },
        )
    }

    fn memo_put(&mut self, r: &Reader, key: u64) -> Result<(), PickleError> {
        let top = self.top(r)?;
        if self.memo.len() >= self.limits.max_objects && !self.memo.contains_key(&key) {
            return r.err(format!(
                "memoizes more than {} objects",
                self.limits.max_objects
            ));
        }
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, r: &Reader, key: u64) -> Result<(), PickleError> {
        match self.memo.get(&key) {
            Some(&id) => self.push(r, id),
            None => r.err(format!("memo key {key} was never stored")),
        }
    }
}

fn parse_long(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() <= 8 {
        let fill = if bytes[bytes.len() - 1] & 0x80 != 0 {
            0xff
        } else {
            0
        };
        let mut b = [fill; 8];
        b[..bytes.len()].copy_from_slice(bytes);
        return Value::Int(i64::from_le_bytes(b));
    }
    Value::BigInt(bytes.to_vec())
}

fn text_int(r: &Reader, s: &str) -> Result<Value, PickleError> {
    let s = s.trim_end_matches('L');
    match s {
        "00" => return Ok(Value::Bool(false)),
        "01" => return Ok(Value::Bool(true)),
        _ => {}
    }
    match s.parse::<i64>() {
        Ok(i) => Ok(Value::Int(i)),
        Err(_)
            if !s.is_empty()
                && s.trim_start_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit()) =>
        {
            Ok(Value::BigInt(Vec::new()))
        }
        Err(_) => r.err(format!("bad integer {s:?}")),
    }
}

/// Longest module or class name accepted: Python's are short, and a global is copied (a memo'd
/// megabyte string named by many STACK_GLOBALs must not be).
const MAX_GLOBAL_NAME: usize = 1024;

fn global_part(r: &Reader, s: &str) -> Result<String, PickleError> {
    if s.len() > MAX_GLOBAL_NAME {
        return r.err(format!(
            "a module or class name of {} bytes (at most {MAX_GLOBAL_NAME})",
            s.len()
        ));
    }
    Ok(s.to_string())
}

/// Unquotes a protocol-0 `STRING` argument (`'abc'`); escapes are kept as written.
fn text_string(r: &Reader, s: &str) -> Result<String, PickleError> {
    let b = s.as_bytes();
    if b.len() >= 2 && (b[0] == b'\'' || b[0] == b'"') && b[b.len() - 1] == b[0] {
        Ok(s[1..s.len() - 1].to_string())
    } else {
        r.err("STRING argument is not quoted")
    }
}

/// Parses one pickle from the start of `data`; returns it and the number of bytes it used (a
/// legacy `torch.save` file is several pickles back to back, then raw storages).
pub(crate) fn parse(data: &[u8], limits: Limits) -> Result<(Pickle, usize), PickleError> {
    let mut r = Reader { data, pos: 0 };
    let mut m = Machine {
        values: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        limits,
    };
    loop {
        let op = r.u8()?;
        match op {
            b'.' => {
                let root = m.pop(&r)?;
                return Ok((
                    Pickle {
                        values: m.values,
                        root,
                    },
                    r.pos,
                ));
            }
            0x80 | 0x95 | b'(' | b'0' | b'1' | b'2' => m.control_op(&mut r, op)?,
            b'p' | b'q' | b'r' | 0x94 | b'g' | b'h' | b'j' => m.memo_op(&mut r, op)?,
            b')'
            | b't'
            | 0x85..=0x87
            | b']'
            | b'l'
            | b'a'
            | b'e'
            | b'}'
            | b'd'
            | b's'
            | b'u'
            | 0x8f
            | 0x90
            | 0x91 => m.container_op(&mut r, op)?,
            b'c' | 0x93 | b'R' | 0x81 | 0x92 | b'o' | b'i' | b'b' | b'Q' | b'P' => {
                m.object_op(&mut r, op)?
            }
            _ => m.scalar_op(&mut r, op)?,
        }
    }
}

/// The opcodes, by family: `parse` reads an opcode and hands it to its family.
impl Machine {
    /// Protocol, framing, marks and stack shuffles.
    fn control_op(&mut self, r: &mut Reader, op: u8) -> Result<(), PickleError> {
        match op {
            0x80 => {
                let proto = r.u8()?;
                if proto > 5 {
                    return r.err(format!("unsupported pickle protocol {proto}"));
                }
            }
            0x95 => {
                r.u64()?; // FRAME: a length hint; the data follows inline.
            }
            b'(' => self.mark(r)?,
            b'0' => {
                self.pop(r)?;
            }
            b'1' => {
                self.pop_mark(r)?;
            }
            b'2' => {
                let t = self.top(r)?;
                self.push(r, t)?;
            }
            _ => return r.err(format!("opcode 0x{op:02x} dispatched to the wrong family")),
        }
        Ok(())
    }

    /// The memo: PUT and GET in their forms.
    fn memo_op(&mut self, r: &mut Reader, op: u8) -> Result<(), PickleError> {
        match op {
            b'p' => {
                let key = r.line()?.parse::<u64>().or_else(|_| r.err("bad PUT key"))?;
                self.memo_put(r, key)?
            }
            b'q' => {
                let key = r.u8()? as u64;
                self.memo_put(r, key)?
            }
            b'r' => {
                let key = r.u32()? as u64;
                self.memo_put(r, key)?
            }
            0x94 => {
                let key = self.memo.len() as u64;
                self.memo_put(r, key)?
            }
            b'g' => {
                let key = r.line()?.parse::<u64>().or_else(|_| r.err("bad GET key"))?;
                self.memo_get(r, key)?
            }
            b'h' => {
                let key = r.u8()? as u64;
                self.memo_get(r, key)?
            }
            b'j' => {
                let key = r.u32()? as u64;
                self.memo_get(r, key)?
            }
            _ => return r.err(format!("opcode 0x{op:02x} dispatched to the wrong family")),
        }
        Ok(())
    }

    /// Tuples, lists, dicts and sets, built and extended.
    fn container_op(&mut self, r: &mut Reader, op: u8) -> Result<(), PickleError> {
        match op {
            b')' => self.push_new(r, Value::Tuple(Vec::new()))?,
            b't' => {
                let items = self.pop_mark(r)?;
                self.push_new(r, Value::Tuple(items))?
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop(r)?);
                }
                items.reverse();
                self.push_new(r, Value::Tuple(items))?
            }
            b']' => self.push_new(r, Value::List(Vec::new()))?,
            b'l' => {
                let items = self.pop_mark(r)?;
                self.push_new(r, Value::List(items))?
            }
            b'a' => {
                let v = self.pop(r)?;
                let l = self.top(r)?;
                self.append(r, l, vec![v])?;
            }
            b'e' => {
                let items = self.pop_mark(r)?;
                let l = self.top(r)?;
                self.append(r, l, items)?;
            }
            b'}' => self.push_new(r, Value::Dict(Vec::new()))?,
            b'd' => {
                let items = self.pop_mark(r)?;
                let kv = Self::pairs(r, items)?;
                self.push_new(r, Value::Dict(kv))?
            }
            b's' => {
                let v = self.pop(r)?;
                let k = self.pop(r)?;
                let d = self.top(r)?;
                self.set_items(r, d, vec![(k, v)])?;
            }
            b'u' => {
                let items = self.pop_mark(r)?;
                let kv = Self::pairs(r, items)?;
                let d = self.top(r)?;
                self.set_items(r, d, kv)?;
            }
            0x8f => self.push_new(r, Value::List(Vec::new()))?, // EMPTY_SET, kept as a list
            0x90 => {
                let items = self.pop_mark(r)?;
                let s = self.top(r)?;
                self.append(r, s, items)?;
            }
            0x91 => {
                let items = self.pop_mark(r)?;
                self.push_new(r, Value::List(items))?
            }
            _ => return r.err(format!("opcode 0x{op:02x} dispatched to the wrong family")),
        }
        Ok(())
    }

    /// Globals, calls (`REDUCE`, `NEWOBJ`, `OBJ`, `INST`), `BUILD` and persistent ids: recorded, never run.
    fn object_op(&mut self, r: &mut Reader, op: u8) -> Result<(), PickleError> {
        match op {
            b'c' => {
                let module = r.line()?;
                let module = global_part(r, module)?;
                let name = r.line()?;
                let name = global_part(r, name)?;
                self.push_new(r, Value::Global { module, name })?
            }
            0x93 => {
                let name = self.pop(r)?;
                let module = self.pop(r)?;
                let (Value::Str(module), Value::Str(name)) =
                    (&self.values[module as usize], &self.values[name as usize])
                else {
                    return r.err("STACK_GLOBAL needs two strings");
                };
                let (module, name) = (global_part(r, module)?, global_part(r, name)?);
                self.push_new(r, Value::Global { module, name })?
            }
            b'R' | 0x81 => {
                let args = self.pop(r)?;
                let callable = self.pop(r)?;
                self.object(r, callable, args)?
            }
            0x92 => {
                let _kwargs = self.pop(r)?;
                let args = self.pop(r)?;
                let callable = self.pop(r)?;
                self.object(r, callable, args)?
            }
            b'o' => {
                let mut items = self.pop_mark(r)?;
                if items.is_empty() {
                    return r.err("OBJ without a class");
                }
                let callable = items.remove(0);
                self.push_new(r, Value::Tuple(items))?;
                let args = self.pop(r)?;
                self.object(r, callable, args)?
            }
            b'i' => {
                let module = r.line()?;
                let module = global_part(r, module)?;
                let name = r.line()?;
                let name = global_part(r, name)?;
                let items = self.pop_mark(r)?;
                self.push_new(r, Value::Global { module, name })?;
                let callable = self.pop(r)?;
                self.push_new(r, Value::Tuple(items))?;
                let args = self.pop(r)?;
                self.object(r, callable, args)?
            }
            b'b' => {
                let state = self.pop(r)?;
                let obj = self.top(r)?;
                // BUILD on a plain container (a protocol-0 quirk) is ignored.
                if let Value::Object { state: s, .. } = &mut self.values[obj as usize] {
                    *s = Some(state);
                }
            }
            b'Q' => {
                let pid = self.pop(r)?;
                self.push_new(r, Value::Persistent(pid))?
            }
            b'P' => {
                let s = r.line()?.to_string();
                self.push_new(r, Value::Str(s))?;
                let pid = self.pop(r)?;
                self.push_new(r, Value::Persistent(pid))?
            }
            _ => return r.err(format!("opcode 0x{op:02x} dispatched to the wrong family")),
        }
        Ok(())
    }

    /// Constants: None, bools, ints, floats, strings and bytes.
    fn scalar_op(&mut self, r: &mut Reader, op: u8) -> Result<(), PickleError> {
        match op {
            b'N' => self.push_new(r, Value::None)?,
            0x88 => self.push_new(r, Value::Bool(true))?,
            0x89 => self.push_new(r, Value::Bool(false))?,
            b'J' => {
                let v = r.u32()? as i32;
                self.push_new(r, Value::Int(v as i64))?
            }
            b'K' => {
                let v = r.u8()?;
                self.push_new(r, Value::Int(v as i64))?
            }
            b'M' => {
                let v = r.u16()?;
                self.push_new(r, Value::Int(v as i64))?
            }
            0x8a => {
                let n = r.u8()? as u64;
                let n = r.len(n)?;
                let v = parse_long(r.take(n)?);
                self.push_new(r, v)?
            }
            0x8b => {
                let n = r.u32()? as i32;
                if n < 0 {
                    return r.err("LONG4 with a negative length");
                }
                let n = r.len(n as u64)?;
                let v = parse_long(r.take(n)?);
                self.push_new(r, v)?
            }
            b'I' | b'L' => {
                let s = r.line()?;
                let v = text_int(r, s)?;
                self.push_new(r, v)?
            }
            b'G' => {
                let b: [u8; 8] = r.take(8)?.try_into().expect("8 bytes");
                self.push_new(r, Value::Float(f64::from_be_bytes(b)))?
            }
            b'F' => {
                let s = r.line()?;
                let v = s.trim().parse::<f64>().or_else(|_| r.err("bad float"))?;
                self.push_new(r, Value::Float(v))?
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => r.u32()? as u64,
                    0x8c => r.u8()? as u64,
                    _ => r.u64()?,
                };
                let n = r.len(n)?;
                let s = String::from_utf8_lossy(r.take(n)?).into_owned();
                self.push_new(r, Value::Str(s))?
            }
            b'V' => {
                let s = r.line()?.to_string();
                self.push_new(r, Value::Str(s))?
            }
            b'S' => {
                let s = r.line()?;
                let s = text_string(r, s)?;
                self.push_new(r, Value::Str(s))?
            }
            b'T' | b'U' => {
                // Python 2 byte strings: torch's legacy files hold keys and locations this way
                // when written by Python 2.
                let n = if op == b'T' {
                    let n = r.u32()? as i32;
                    if n < 0 {
                        return r.err("BINSTRING with a negative length");
                    }
                    n as u64
                } else {
                    r.u8()? as u64
                };
                let n = r.len(n)?;
                let s = String::from_utf8_lossy(r.take(n)?).into_owned();
                self.push_new(r, Value::Str(s))?
            }
            b'B' | b'C' | 0x8e | 0x96 => {
                let n = match op {
                    b'B' => r.u32()? as u64,
                    b'C' => r.u8()? as u64,
                    _ => r.u64()?,
                };
                let n = r.len(n)?;
                r.take(n)?;
                self.push_new(r, Value::Bytes)?
            }
            _ => {
                r.pos -= 1;
                return r.err(format!("unsupported pickle opcode 0x{op:02x}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pickle whose `root` opcode (`}` a dict, `]` a list) is memo 0, then `n` times a pair of
    /// the previous memo entry twice, memoized: `n` objects that reach one another 2^n ways.
    pub(crate) fn memo_doubling(root: u8, n: u8) -> Vec<u8> {
        let mut data = vec![0x80, 0x02, root, b'q', 0];
        for i in 0..n {
            data.extend_from_slice(&[b'h', i, b'h', i, 0x86, b'q', i + 1]);
        }
        data.push(b'.');
        data
    }

    fn parse_ok(data: &[u8]) -> Pickle {
        parse(data, Limits::default()).expect("parses").0
    }

    #[test]
    fn calls_are_recorded_not_made() {
        // cos\nsystem\n(S'echo hi'\ntR.
        let p = parse_ok(b"cos\nsystem\n(S'echo hi'\ntR.");
        assert_eq!(p.describe(p.root), "an object built by os.system");
    }

    #[test]
    fn memo_reads_share_instead_of_copying() {
        // A list holding itself twice, doubled 40 times: 40 objects, not 2^40.
        let p = parse_ok(&memo_doubling(b']', 40));
        assert!(p.values.len() < 100);
    }

    #[test]
    fn deep_nesting_parses_and_drops_without_recursion() {
        let mut data = vec![0x80, 2];
        data.extend(std::iter::repeat_n(b']', 1_000_000));
        data.extend(std::iter::repeat_n(b'a', 999_999));
        data.push(b'.');
        let p = parse_ok(&data);
        drop(p);
    }

    #[test]
    fn lengths_are_checked_before_reading() {
        let e = parse(
            b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\x7f",
            Limits::default(),
        )
        .unwrap_err();
        assert!(e.reason.contains("truncated or lying"), "{e}");
        let e = parse(b"]]]]]].", Limits { max_objects: 3 }).unwrap_err();
        assert!(e.reason.contains("more than 3 objects"), "{e}");
        assert!(parse(b"\x80\x02N", Limits::default()).is_err());
        assert!(parse(b"a.", Limits::default()).is_err());
    }
}
