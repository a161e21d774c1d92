//! What a torch pickle holds: tensors (`_rebuild_tensor_v2` over a persistent storage id) and the
//! names `state_dict()` would give them, found by walking dicts, lists, tuples and pickled
//! objects (`nn.Module`s, TorchScript modules, wrappers) as plain data.
//!
//! Every tensor belongs to a *state dict*: the nearest enclosing object, or the nearest dict or
//! list that holds tensors directly. Its key path (`model_state_dict`, `state_dict`, or empty for
//! a top-level one) is kept apart from the tensor's name inside it (`encoder.rnn.weight_ih_l0`).

use std::collections::HashSet;

use candle_core::DType;

use crate::pickle::{Id, Pickle, Value};

/// Deepest nesting of containers and modules walked (real checkpoints nest a few dozen levels).
const MAX_DEPTH: usize = 256;
/// Most containers visited: shared references make a graph, so a small pickle can reach the same
/// object along exponentially many paths.
const MAX_VISITS: usize = 1_000_000;

/// A reference to (part of) a storage, as the persistent id gives it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    /// The storage's key: `data/{key}` in a zip, a key of the storage table in a legacy file.
    pub key: String,
    /// `None` for element types candle has no dtype for (complex, int8, ...).
    pub dtype: Option<DType>,
    pub elem_size: usize,
    /// Element count the pickle declares for the storage.
    pub numel: u64,
    /// Elements before the view, for a legacy storage view (`view_metadata`); 0 otherwise.
    pub view_offset: u64,
}

/// A tensor: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    /// In elements, from the start of the storage.
    pub offset: u64,
    pub shape: Vec<usize>,
    pub stride: Vec<u64>,
}

/// A tensor found in the pickle.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// Key path of its state dict joined with its name inside it.
    pub name: String,
    /// Key path of its state dict (empty at the top level).
    pub state_dict: String,
    pub tensor: TensorRef,
}

fn storage_type(module: &str, name: &str) -> Option<(Option<DType>, usize)> {
    if module != "torch" && module != "torch.cuda" {
        return None;
    }
    Some(match name {
        "FloatStorage" => (Some(DType::F32), 4),
        "DoubleStorage" => (Some(DType::F64), 8),
        "HalfStorage" => (Some(DType::F16), 2),
        "BFloat16Storage" => (Some(DType::BF16), 2),
        "LongStorage" => (Some(DType::I64), 8),
        "IntStorage" => (Some(DType::I32), 4),
        "ShortStorage" => (Some(DType::I16), 2),
        "ByteStorage" | "BoolStorage" => (Some(DType::U8), 1),
        "CharStorage" => (None, 1),
        "ComplexFloatStorage" => (None, 8),
        "ComplexDoubleStorage" => (None, 16),
        _ => return None,
    })
}

/// The storage a persistent id names: `('storage', type, key, location, numel[, view])`.
fn storage_ref(p: &Pickle, pid: Id) -> Result<StorageRef, String> {
    let t = p.seq(pid).ok_or("a storage id that is not a tuple")?;
    if t.len() < 5 || p.str(t[0]) != Some("storage") {
        return Err(format!(
            "a persistent id of {} fields, not a storage",
            t.len()
        ));
    }
    let (module, name) = p.global(t[1]).ok_or("a storage type that is not a class")?;
    let (dtype, elem_size) = storage_type(module, name)
        .ok_or_else(|| format!("unknown storage type {module}.{name}"))?;
    let key = match p.get(t[2]) {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => return Err("a storage key that is not a string".into()),
    };
    let numel = p
        .int(t[4])
        .and_then(|n| u64::try_from(n).ok())
        .ok_or("a storage size that is not a non-negative integer")?;
    let mut view_offset = 0;
    if let Some(&view) = t.get(5) {
        if let Some(v) = p.seq(view) {
            // (view_key, offset, view_size): a view into the storage `key`.
            view_offset = v
                .get(1)
                .and_then(|&o| p.int(o))
                .and_then(|o| u64::try_from(o).ok())
                .ok_or("a storage view offset that is not a non-negative integer")?;
        }
    }
    Ok(StorageRef {
        key,
        dtype,
        elem_size,
        numel,
        view_offset,
    })
}

fn usizes(p: &Pickle, id: Id, what: &str) -> Result<Vec<usize>, String> {
    let items = p.seq(id).ok_or_else(|| format!("{what} is not a tuple"))?;
    items
        .iter()
        .map(|&i| {
            p.int(i)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| format!("{what} holds a value that is not a non-negative integer"))
        })
        .collect()
}

/// `Ok(Some(..))` when `id` rebuilds a tensor, `Ok(None)` when it is something else, `Err` when
/// it is a tensor whose description is malformed.
fn tensor(p: &Pickle, id: Id) -> Result<Option<TensorRef>, String> {
    match p.get(id) {
        Value::Object { callable, args, .. } => rebuild(p, *callable, *args, 0),
        _ => Ok(None),
    }
}

/// The tensor `callable(*args)` rebuilds, if it is one of torch's tensor rebuild functions.
fn rebuild(p: &Pickle, callable: Id, args: Id, depth: usize) -> Result<Option<TensorRef>, String> {
    let Some((module, name)) = p.global(callable) else {
        return Ok(None);
    };
    if depth > 4 {
        return Err(format!("{module}.{name} nested more than 4 deep"));
    }
    let args = p.seq(args).unwrap_or(&[]);
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            if args.len() < 4 {
                return Err(format!("{name} with {} arguments", args.len()));
            }
            let Value::Persistent(pid) = p.get(args[0]) else {
                return Err("a tensor whose storage is not a persistent id".into());
            };
            let storage = storage_ref(p, *pid)?;
            let offset = p
                .int(args[1])
                .and_then(|o| u64::try_from(o).ok())
                .ok_or("a storage offset that is not a non-negative integer")?;
            let shape = usizes(p, args[2], "the size")?;
            let stride: Vec<u64> = usizes(p, args[3], "the stride")?
                .into_iter()
                .map(|s| s as u64)
                .collect();
            if stride.len() != shape.len() {
                return Err(format!(
                    "size {shape:?} and stride {stride:?} differ in rank"
                ));
            }
            Ok(Some(TensorRef {
                storage,
                offset,
                shape,
                stride,
            }))
        }
        // Parameters wrap a tensor: (tensor, requires_grad, hooks[, state]).
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")
        | ("torch.nn.parameter", "Parameter") => match args.first().map(|&a| p.get(a)) {
            Some(Value::Object { callable, args, .. }) => rebuild(p, *callable, *args, depth + 1),
            _ => Err(format!("{name} without a tensor")),
        },
        // (func, type, args, state): the tensor is func(*args).
        ("torch._tensor", "_rebuild_from_type_v2") => match (args.first(), args.get(2)) {
            (Some(&func), Some(&inner)) => rebuild(p, func, inner, depth + 1),
            _ => Err("_rebuild_from_type_v2 with too few arguments".into()),
        },
        _ => Ok(None),
    }
}

/// The walk from the root to every tensor.
struct Walk<'a> {
    p: &'a Pickle,
    out: Vec<Found>,
    path: Vec<String>,
    ancestors: Vec<Id>,
    visits: usize,
}

enum Node {
    /// Key/value entries (dicts, `OrderedDict`s, object attributes, list items by index).
    Entries(Vec<(String, Id)>),
    /// An object's entries: it starts a state dict of its own if none is open.
    Object(Vec<(String, Id)>),
    Leaf,
}

fn key_string(p: &Pickle, k: Id) -> Option<String> {
    match p.get(k) {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

impl Walk<'_> {
    fn dict_entries(&self, id: Id) -> Option<Vec<(String, Id)>> {
        let p = self.p;
        let kv: &[(Id, Id)] = match p.get(id) {
            Value::Dict(kv) => kv,
            Value::Object { items, .. } => items,
            _ => return None,
        };
        Some(
            kv.iter()
                .filter_map(|&(k, v)| Some((key_string(p, k)?, v)))
                .collect(),
        )
    }

    fn seq_entries(items: &[Id]) -> Vec<(String, Id)> {
        items
            .iter()
            .enumerate()
            .map(|(i, &v)| (i.to_string(), v))
            .collect()
    }

    /// Names listed by a pickled `set(...)` (`_non_persistent_buffers_set`).
    fn set_names(&self, id: Id) -> HashSet<String> {
        let p = self.p;
        let items: &[Id] = match p.get(id) {
            Value::Object { args, list, .. } if !list.is_empty() => list,
            Value::Object { args, .. } => match p.seq(*args).and_then(|a| a.first()) {
                Some(&l) => p.seq(l).unwrap_or(&[]),
                None => &[],
            },
            Value::List(l) | Value::Tuple(l) => l,
            _ => &[],
        };
        items
            .iter()
            .filter_map(|&i| p.str(i).map(String::from))
            .collect()
    }

    fn classify(&self, id: Id) -> Node {
        let p = self.p;
        match p.get(id) {
            Value::Dict(_) => Node::Entries(self.dict_entries(id).unwrap_or_default()),
            Value::List(l) | Value::Tuple(l) => Node::Entries(Self::seq_entries(l)),
            Value::Object {
                callable,
                args,
                state,
                items,
                list,
            } => {
                let dict_class = matches!(
                    p.global(*callable),
                    Some(("collections", "OrderedDict" | "defaultdict"))
                        | Some(("builtins" | "__builtin__", "dict"))
                );
                if !items.is_empty() || dict_class {
                    return Node::Entries(self.dict_entries(id).unwrap_or_default());
                }
                // `torch.compile`'s wrapper pickles as OptimizedModule(module, ..); its
                // state_dict() names start with `_orig_mod.`.
                if let (Some(("torch._dynamo.eval_frame", "OptimizedModule")), Some(&inner)) =
                    (p.global(*callable), p.seq(*args).and_then(|a| a.first()))
                {
                    return Node::Object(vec![("_orig_mod".to_string(), inner)]);
                }
                if let Some(state) = state {
                    // `__getstate__` may give (dict, slots); the dict is what matters.
                    let state = match p.get(*state) {
                        Value::Tuple(t) if !t.is_empty() => t[0],
                        _ => *state,
                    };
                    let Some(attrs) = self.dict_entries(state) else {
                        return Node::Leaf;
                    };
                    let field = |n: &str| attrs.iter().find(|(k, _)| k == n).map(|&(_, v)| v);
                    let module_parts = ["_parameters", "_buffers", "_modules"];
                    if module_parts.iter().any(|n| field(n).is_some()) {
                        // An `nn.Module`: what `state_dict()` would hold, in its order.
                        let skip = field("_non_persistent_buffers_set")
                            .map(|s| self.set_names(s))
                            .unwrap_or_default();
                        let mut entries = Vec::new();
                        for part in module_parts {
                            if let Some(d) = field(part).and_then(|d| self.dict_entries(d)) {
                                entries.extend(
                                    d.into_iter()
                                        .filter(|(k, _)| part != "_buffers" || !skip.contains(k)),
                                );
                            }
                        }
                        return Node::Object(entries);
                    }
                    // A TorchScript module (or another object): its attributes.
                    return Node::Object(attrs);
                }
                if !list.is_empty() {
                    return Node::Entries(Self::seq_entries(list));
                }
                Node::Leaf
            }
            _ => Node::Leaf,
        }
    }

    fn walk(&mut self, id: Id, group: Option<usize>) -> Result<(), String> {
        if self.ancestors.contains(&id) {
            return Ok(()); // a cycle: already being walked
        }
        if self.ancestors.len() >= MAX_DEPTH {
            return Err(format!("containers nested deeper than {MAX_DEPTH} levels"));
        }
        self.visits += 1;
        if self.visits > MAX_VISITS {
            return Err(format!(
                "more than {MAX_VISITS} references to walk (shared objects repeated)"
            ));
        }
        let (entries, is_object) = match self.classify(id) {
            Node::Entries(e) => (e, false),
            Node::Object(e) => (e, true),
            Node::Leaf => return Ok(()),
        };
        let mut tensors = Vec::new();
        for (i, (_, v)) in entries.iter().enumerate() {
            match tensor(self.p, *v) {
                Ok(Some(t)) => tensors.push((i, t)),
                Ok(None) => {}
                Err(e) => {
                    self.path.push(entries[i].0.clone());
                    let at = self.path.join(".");
                    self.path.pop();
                    return Err(format!("tensor `{at}`: {e}"));
                }
            }
        }
        let group = match group {
            None if is_object || !tensors.is_empty() => Some(self.path.len()),
            g => g,
        };
        self.ancestors.push(id);
        let mut next_tensor = tensors.into_iter().peekable();
        for (i, (key, v)) in entries.into_iter().enumerate() {
            self.path.push(key);
            if next_tensor.peek().is_some_and(|(j, _)| *j == i) {
                let (_, t) = next_tensor.next().expect("peeked");
                let start = group.expect("a tensor opens a state dict");
                self.out.push(Found {
                    name: self.path.join("."),
                    state_dict: self.path[..start].join("."),
                    tensor: t,
                });
            } else {
                self.walk(v, group)?;
            }
            self.path.pop();
        }
        self.ancestors.pop();
        Ok(())
    }
}

/// Every tensor reachable from the pickle's root, with its name and state dict.
pub(crate) fn find_tensors(p: &Pickle) -> Result<Vec<Found>, String> {
    let mut w = Walk {
        p,
        out: Vec::new(),
        path: Vec::new(),
        ancestors: Vec::new(),
        visits: 0,
    };
    if tensor(p, p.root)?.is_some() {
        return Err("a single tensor, not a state dict or model: it has no names".into());
    }
    w.walk(p.root, None)?;
    Ok(w.out)
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::pickle::{parse, Limits};
    use proptest::prelude::*;

    /// Pieces of torch pickles, so that random programs reach deep into the reader and the walk.
    const PIECES: &[&[u8]] = &[
        b"\x80\x02",
        b"(",
        b"}",
        b"]",
        b")",
        b"N",
        b"\x88",
        b"K\x03",
        b"K\x00",
        b"J\xff\xff\xff\xff",
        b"\x8a\x01\x05",
        b"\x8c\x07storage",
        b"\x8c\x03cpu",
        b"\x8c\x010",
        b"\x8c\x0cweight_ih_l0",
        b"\x8c\x0b_parameters",
        b"\x8c\x08_modules",
        b"ctorch._utils\n_rebuild_tensor_v2\n",
        b"ctorch._utils\n_rebuild_parameter\n",
        b"ctorch\nFloatStorage\n",
        b"ccollections\nOrderedDict\n",
        b"c__main__\nNet\n",
        b"cos\nsystem\n",
        b"t",
        b"\x85",
        b"\x86",
        b"\x87",
        b"R",
        b"\x81",
        b"b",
        b"s",
        b"u",
        b"a",
        b"e",
        b"q\x00",
        b"q\x01",
        b"h\x00",
        b"h\x01",
        b"\x94",
        b"Q",
        b"0",
        b"2",
        b"1",
        b".",
    ];

    fn program() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                9 => (0..PIECES.len()).prop_map(|i| PIECES[i].to_vec()),
                1 => any::<u8>().prop_map(|b| vec![b]),
            ],
            0..120,
        )
        .prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("GRU_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256),
            ..ProptestConfig::default()
        })]

        /// Random pickle programs are parsed and walked without a panic, within the limits.
        #[test]
        fn random_programs_never_panic(data in program()) {
            if let Ok((p, used)) = parse(&data, Limits { max_objects: 10_000 }) {
                prop_assert!(used <= data.len());
                let _ = find_tensors(&p);
            }
        }
    }

    #[test]
    fn a_memo_doubling_bomb_is_refused_quickly() {
        // [x, x] nested 48 times: 2^48 paths to one list, in ~300 bytes.
        let mut data = b"\x80\x02}q\x00".to_vec();
        for i in 0..48u8 {
            data.extend_from_slice(&[b'h', i, b'h', i, 0x86, b'q', i + 1]);
        }
        data.push(b'.');
        let (p, _) = parse(&data, Limits::default()).unwrap();
        let start = std::time::Instant::now();
        let e = find_tensors(&p).unwrap_err();
        assert!(e.contains("references to walk"), "{e}");
        assert!(start.elapsed().as_secs() < 20);
    }

    #[test]
    fn deep_nesting_and_cycles_are_bounded() {
        let mut data = vec![0x80, 2];
        data.extend(std::iter::repeat_n(b']', 100_000));
        data.extend(std::iter::repeat_n(b'a', 99_999));
        data.push(b'.');
        let (p, _) = parse(&data, Limits::default()).unwrap();
        let e = find_tensors(&p).unwrap_err();
        assert!(e.contains("nested deeper"), "{e}");
        // A list that holds itself: walked once, no tensors.
        let (p, _) = parse(b"\x80\x02]q\x00h\x00a.", Limits::default()).unwrap();
        assert!(find_tensors(&p).unwrap().is_empty());
    }
}
