//! What a torch pickle holds: tensors (`_rebuild_tensor_v2` over a persistent storage id) and the
//! names `state_dict()` would give them, found by walking dicts, lists, tuples and pickled
//! objects (`nn.Module`s, TorchScript modules, wrappers) as plain data.
//!
//! Every tensor belongs to a *state dict*: the outermost pickled object (a module) around it, else
//! the dict or list that holds it directly. Its key path (`model_state_dict`, `state_dict`, or
//! empty for a top-level one) is kept apart from the tensor's name inside it
//! (`encoder.rnn.weight_ih_l0`).
//!
//! The walk is bounded by the pickle: its work (entries looked at), its output (tensors, name
//! bytes) and its depth are capped in proportion to the objects the pickle built, so that shared
//! references cannot multiply a small file into a huge walk.

use std::borrow::Cow;
use std::collections::HashSet;

use crate::pickle::quantized::{self, rnn_attrs, PackedRnns, QuantizedCell, QuantizedLinearRef};
use crate::pickle::tensor::tensor;
pub(crate) use crate::pickle::tensor::{storage_table, usizes, StorageRef, TensorRef};
use crate::pickle::{Id, Pickle, Value};

/// Deepest nesting of containers and modules walked (real checkpoints nest a few dozen levels).
const MAX_DEPTH: usize = 256;
/// Entries looked at per object the pickle built (an honest tree is walked about once), plus a
/// floor for small pickles.
const WORK_PER_OBJECT: usize = 4;
const MIN_WORK: usize = 1 << 18;
/// Key bytes hashed per unit of work.
const KEY_BYTES_PER_WORK: usize = 64;
/// Most tensors named, and most bytes of names: what a real checkpoint needs, many times over.
pub(crate) const MAX_TENSORS: usize = 1 << 20;
pub(crate) const MAX_NAME_BYTES: usize = 256 << 20;
/// Longest tensor name (a dotted path).
pub(crate) const MAX_NAME_LEN: usize = 4096;

/// A tensor found in the pickle.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// Key path of its state dict joined with its name inside it.
    pub name: String,
    /// Key path of its state dict (empty at the top level).
    pub state_dict: String,
    pub tensor: TensorRef,
}

/// What marks a pickle as holding quantized weights (`torch.ao.quantization`'s output: quantized
/// tensors, or the packed parameters of a dynamically quantized GRU / Linear), which the walk does
/// not report as tensors; `None` for a float model.
pub(crate) fn quantized(p: &Pickle) -> Option<String> {
    p.values().iter().find_map(|v| match v {
        Value::Global { module, name }
            if module == "torch._utils" && name == "_rebuild_qtensor" =>
        {
            Some(format!("quantized tensors ({module}.{name})"))
        }
        Value::Str(s)
            if s.starts_with("__torch__.torch.classes.quantized.")
                || s.starts_with("__torch__.torch.classes.rnn.") =>
        {
            Some(format!("packed quantized parameters ({s})"))
        }
        _ => None,
    })
}

/// The walk from the root to every tensor.
struct Walk<'a> {
    p: &'a Pickle,
    out: Vec<Found>,
    /// Parametrization lists (`rnn.parametrizations.weight_hh_l0`) that hold a second
    /// parametrization, seen as a module or in a state dict's `_metadata`.
    chained: HashSet<String>,
    /// Dynamically quantized RNN cells, and the objects that describe themselves as RNNs.
    packed: PackedRnns,
    path: Vec<Cow<'a, str>>,
    ancestors: Vec<Id>,
    /// Entries left to look at, and name bytes left to write.
    work: usize,
    name_bytes: usize,
}

/// Key/value entries of a container, keys borrowed from the pickle (a memo'd key shared by many
/// entries is never copied).
type Entries<'a> = Vec<(Cow<'a, str>, Id)>;

enum Node<'a> {
    /// A dict, `OrderedDict` or list: its entries (list items by index).
    Container(Entries<'a>),
    /// A pickled object (a module): what `state_dict()` would walk.
    Object(Entries<'a>),
    Leaf,
}

fn key_str(p: &Pickle, k: Id) -> Option<Cow<'_, str>> {
    match p.get(k) {
        Value::Str(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Int(i) => Some(Cow::Owned(i.to_string())),
        _ => None,
    }
}

/// The state dict a node's tensors belong to: where it starts (an index into the path) and
/// whether a module object opened it (then it covers everything beneath).
#[derive(Clone, Copy)]
struct Group {
    start: usize,
    from_object: bool,
}

impl<'a> Walk<'a> {
    fn spend(&mut self, n: usize) -> Result<(), String> {
        self.work = self.work.checked_sub(n).ok_or_else(|| {
            "more references to walk than the pickle's size justifies (shared objects repeated)"
                .to_string()
        })?;
        Ok(())
    }

    /// `(key, value)` pairs, Python's last-wins for a key given twice. A key object repeated
    /// through the memo is recognised by its id, so that only distinct key objects (bounded by
    /// the pickle's bytes) are hashed by content.
    fn dedup(&mut self, pairs: Vec<(Id, Id)>) -> Result<Entries<'a>, String> {
        let p = self.p;
        let mut seen_ids = HashSet::new();
        let mut seen_keys = HashSet::new();
        let mut out: Entries<'a> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs.into_iter().rev() {
            if !seen_ids.insert(k) {
                continue;
            }
            let Some(key) = key_str(p, k) else { continue };
            // Hashing a key costs its length: a long key in a dict reached many times is work.
            self.spend(key.len() / KEY_BYTES_PER_WORK)?;
            if seen_keys.insert(key.clone()) {
                out.push((key, v));
            }
        }
        out.reverse();
        Ok(out)
    }

    fn dict_entries(&mut self, id: Id) -> Result<Option<Entries<'a>>, String> {
        let p = self.p;
        let pairs: Vec<(Id, Id)> = match p.get(id) {
            Value::Dict(kv) => {
                self.spend(kv.len())?;
                kv.clone()
            }
            Value::Object { items, .. } if !items.is_empty() => {
                self.spend(items.len())?;
                items.clone()
            }
            // Python 2's OrderedDict pickles its items as an argument: ([[k, v], ...],).
            Value::Object { args, .. } => {
                let Some(&items) = p.seq(*args).and_then(|a| a.first()) else {
                    return Ok(Some(Vec::new()));
                };
                let items = p.seq(items).unwrap_or(&[]);
                self.spend(items.len())?;
                items
                    .iter()
                    .filter_map(|&kv| match p.seq(kv) {
                        Some(&[k, v]) => Some((k, v)),
                        _ => None,
                    })
                    .collect()
            }
            _ => return Ok(None),
        };
        Ok(Some(self.dedup(pairs)?))
    }

    fn seq_entries(&mut self, items: &[Id]) -> Result<Entries<'a>, String> {
        self.spend(items.len())?;
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, &v)| (Cow::Owned(i.to_string()), v))
            .collect())
    }

    /// Names listed by a pickled `set(...)` (`_non_persistent_buffers_set`).
    fn set_names(&mut self, id: Id) -> Result<HashSet<&'a str>, String> {
        let p = self.p;
        let items: &[Id] = match p.get(id) {
            Value::Object { list, .. } if !list.is_empty() => list,
            Value::Object { args, .. } => match p.seq(*args).and_then(|a| a.first()) {
                Some(&l) => p.seq(l).unwrap_or(&[]),
                None => &[],
            },
            Value::List(l) | Value::Tuple(l) => l,
            _ => &[],
        };
        self.spend(items.len())?;
        Ok(items.iter().filter_map(|&i| p.str(i)).collect())
    }

    fn classify(&mut self, id: Id) -> Result<Node<'a>, String> {
        let p = self.p;
        let Value::Object {
            callable,
            args,
            state,
            items,
            list,
        } = p.get(id)
        else {
            return Ok(match p.get(id) {
                Value::Dict(_) => Node::Container(self.dict_entries(id)?.unwrap_or_default()),
                Value::List(l) | Value::Tuple(l) => Node::Container(self.seq_entries(l)?),
                _ => Node::Leaf,
            });
        };
        let dict_class = matches!(
            p.global(*callable),
            Some(("collections", "OrderedDict" | "defaultdict"))
                | Some(("builtins" | "__builtin__", "dict"))
        );
        if !items.is_empty() || dict_class {
            if let Some(state) = state {
                self.note_metadata(*state)?;
            }
            return Ok(Node::Container(self.dict_entries(id)?.unwrap_or_default()));
        }
        // `torch.compile`'s wrapper pickles as OptimizedModule(module, ..); its state_dict()
        // names start with `_orig_mod.`.
        if let (Some(("torch._dynamo.eval_frame", "OptimizedModule")), Some(&inner)) =
            (p.global(*callable), p.seq(*args).and_then(|a| a.first()))
        {
            return Ok(Node::Object(vec![(Cow::Borrowed("_orig_mod"), inner)]));
        }
        if let Some(state) = state {
            // `__getstate__` may give (dict, slots); the dict is what matters.
            let state = match p.get(*state) {
                Value::Tuple(t) if !t.is_empty() => t[0],
                _ => *state,
            };
            let Some(attrs) = self.dict_entries(state)? else {
                return Ok(Node::Leaf);
            };
            if let Some(a) = rnn_attrs(p, &attrs) {
                if self.packed.modules.len() < MAX_TENSORS {
                    self.packed.modules.push((self.path.join("."), a));
                }
            }
            let field = |n: &str| attrs.iter().find(|(k, _)| k == n).map(|&(_, v)| v);
            let parts = ["_parameters", "_buffers", "_modules"];
            if parts.iter().any(|n| field(n).is_some()) {
                // An `nn.Module`: what `state_dict()` would hold, in its order.
                let skip = match field("_non_persistent_buffers_set") {
                    Some(s) => self.set_names(s)?,
                    None => HashSet::new(),
                };
                let mut entries = Vec::new();
                // `PackedParameter.param` (a quantized RNN's cell) is a plain attribute that
                // its `_save_to_state_dict` lists.
                entries.extend(
                    attrs
                        .iter()
                        .filter(|(_, v)| quantized::is_packed(p, *v))
                        .cloned(),
                );
                for part in parts {
                    let Some(d) = field(part) else { continue };
                    if let Some(d) = self.dict_entries(d)? {
                        entries.extend(
                            d.into_iter()
                                .filter(|(k, _)| part != "_buffers" || !skip.contains(k.as_ref())),
                        );
                    }
                }
                return Ok(Node::Object(entries));
            }
            // A TorchScript module (or another object): its attributes.
            return Ok(Node::Object(attrs));
        }
        if !list.is_empty() {
            return Ok(Node::Container(self.seq_entries(list)?));
        }
        Ok(Node::Leaf)
    }

    /// A state dict's `_metadata` (an attribute of the pickled OrderedDict) names every module
    /// of the model, also those without tensors: a second parametrization of a weight shows
    /// there only.
    fn note_metadata(&mut self, state: Id) -> Result<(), String> {
        let Some(attrs) = self.dict_entries(state)? else {
            return Ok(());
        };
        let Some(&(_, meta)) = attrs.iter().find(|(k, _)| k == "_metadata") else {
            return Ok(());
        };
        for (module, _) in self.dict_entries(meta)?.unwrap_or_default() {
            if let Some(list) = chained_list(&module) {
                let p = self.path.clone();
                let mut full: Vec<&str> = p.iter().map(|s| s.as_ref()).collect();
                full.push(list);
                self.note_chain(&full)?;
            }
        }
        Ok(())
    }

    /// Records the parametrization list at `parts` (empty parts skipped), charged to the name
    /// budget like a tensor's name.
    fn note_chain(&mut self, parts: &[&str]) -> Result<(), String> {
        let parts: Vec<&str> = parts.iter().copied().filter(|s| !s.is_empty()).collect();
        let len = parts.iter().map(|s| s.len() + 1).sum::<usize>();
        if len > MAX_NAME_LEN {
            return Err(format!(
                "a module path of {len} bytes (at most {MAX_NAME_LEN})"
            ));
        }
        let name = parts.join(".");
        if !self.chained.contains(&name) {
            self.name_bytes = self
                .name_bytes
                .checked_sub(name.len())
                .ok_or("more module names than the walk allows")?;
            self.chained.insert(name);
        }
        Ok(())
    }

    fn emit(&mut self, start: usize, tensor: TensorRef) -> Result<(), String> {
        let name = self.path.join(".");
        if name.len() > MAX_NAME_LEN {
            return Err(format!(
                "a tensor name of {} bytes (at most {MAX_NAME_LEN})",
                name.len()
            ));
        }
        let state_dict = self.path[..start].join(".");
        self.name_bytes = self
            .name_bytes
            .checked_sub(name.len() + state_dict.len())
            .ok_or("more tensor names than the walk allows")?;
        if self.out.len() >= MAX_TENSORS {
            return Err(format!("more than {MAX_TENSORS} tensors"));
        }
        self.out.push(Found {
            name,
            state_dict,
            tensor,
        });
        Ok(())
    }

    /// The entries that are packed parameters of a quantized RNN or GRUCell. Apart from `walk`,
    /// whose frame stays small for deep pickles.
    #[inline(never)]
    fn packed_among(
        &self,
        entries: &Entries<'a>,
    ) -> Result<Vec<(usize, quantized::Packed)>, String> {
        let mut found = Vec::new();
        for (i, (key, v)) in entries.iter().enumerate() {
            match quantized::packed(self.p, *v) {
                Ok(Some(c)) => found.push((i, c)),
                Ok(None) => {}
                Err(e) => {
                    let at = self.path.join(".");
                    return Err(format!("`{at}.{key}`: {e}"));
                }
            }
        }
        Ok(found)
    }

    fn emit_packed(&mut self, packed: quantized::Packed, start: usize) -> Result<(), String> {
        match packed {
            quantized::Packed::Cell(c) => self.emit_cell(*c, start),
            quantized::Packed::Linear(lin) => {
                let path = self.path.join(".");
                self.emit_linear(&lin, "weight", "bias", None, start)?;
                if self.packed.linears.len() >= MAX_TENSORS {
                    return Err(format!("more than {MAX_TENSORS} packed linears"));
                }
                self.packed.linears.push(QuantizedLinearRef {
                    path,
                    bias: lin.bias.is_some(),
                    scheme: lin.scheme,
                });
                Ok(())
            }
        }
    }

    /// A packed linear's tensors under the path: `{w}` (int8 values as u8, or f32), per-channel
    /// `{w}.scales` / `.zero_points`, and `{b}` (its own bias, else `fallback`). Whether a bias
    /// was emitted.
    fn emit_linear(
        &mut self,
        lin: &quantized::PackedLinear,
        w: &str,
        b: &str,
        fallback: Option<&TensorRef>,
        start: usize,
    ) -> Result<bool, String> {
        self.path.push(Cow::Owned(w.to_string()));
        self.emit(start, lin.weight.clone())?;
        self.path.pop();
        if let Some((scales, zps)) = &lin.channels {
            for (part, t) in [("scales", scales), ("zero_points", zps)] {
                self.path.push(Cow::Owned(format!("{w}.{part}")));
                self.emit(start, t.clone())?;
                self.path.pop();
            }
        }
        match lin.bias.as_ref().or(fallback) {
            Some(bias) => {
                self.path.push(Cow::Owned(b.to_string()));
                self.emit(start, bias.clone())?;
                self.path.pop();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// A quantized cell's tensors, under its path: `weight_ih`, `weight_hh`, their per-channel
    /// parameters, and the biases the packed linears add (`bias_ih`, `bias_hh`).
    fn emit_cell(&mut self, cell: quantized::Cell, start: usize) -> Result<(), String> {
        let at = self.path.join(".");
        let mut bias = true;
        for (name, lin) in [("ih", &cell.ih), ("hh", &cell.hh)] {
            let fallback = cell
                .biases
                .as_ref()
                .map(|(i, h)| if name == "ih" { i } else { h });
            bias &= self.emit_linear(
                lin,
                &format!("weight_{name}"),
                &format!("bias_{name}"),
                fallback,
                start,
            )?;
        }
        if self.packed.cells.len() >= MAX_TENSORS {
            return Err(format!("more than {MAX_TENSORS} quantized cells"));
        }
        self.packed.cells.push(QuantizedCell {
            path: at,
            fp16: cell.fp16,
            reduce_range: cell.reduce_range,
            ih: cell.ih.scheme,
            hh: cell.hh.scheme,
            bias,
        });
        Ok(())
    }

    fn walk(&mut self, id: Id, group: Option<Group>) -> Result<(), String> {
        if self.ancestors.contains(&id) {
            return Ok(()); // a cycle: already being walked
        }
        if self.ancestors.len() >= MAX_DEPTH {
            return Err(format!("containers nested deeper than {MAX_DEPTH} levels"));
        }
        self.spend(1)?;
        let (entries, is_object) = match self.classify(id)? {
            Node::Container(e) => (e, false),
            Node::Object(e) => (e, true),
            Node::Leaf => return Ok(()),
        };
        // Only the last three segments decide; the path is copied only for a chain.
        let n = self.path.len();
        let link = n >= 3
            && is_chain_link([
                self.path[n - 3].as_ref(),
                self.path[n - 2].as_ref(),
                self.path[n - 1].as_ref(),
            ]);
        if is_object && link {
            let p = self.path.clone();
            let segments: Vec<&str> = p[..n - 1].iter().map(|s| s.as_ref()).collect();
            self.note_chain(&segments)?;
        }
        let mut tensors = Vec::new();
        for (i, (key, v)) in entries.iter().enumerate() {
            match tensor(self.p, *v) {
                Ok(Some(t)) => tensors.push((i, t)),
                Ok(None) => {}
                Err(e) => {
                    let at = self.path.join(".");
                    return Err(format!("tensor `{at}.{key}`: {e}"));
                }
            }
        }
        // A quantized RNN's packed cells: tensors of this state dict, as `state_dict()` lists
        // them.
        let cells = self.packed_among(&entries)?;
        // An object opens a state dict for everything beneath it; a dict or list only for its
        // own tensors (`{"state_dict": sd, "best_acc": tensor}` keeps `sd` its own).
        let here = Group {
            start: self.path.len(),
            from_object: is_object,
        };
        let group = match group {
            Some(g) if g.from_object => Some(g),
            _ if is_object || !tensors.is_empty() || !cells.is_empty() => Some(here),
            _ => None,
        };
        let inherited = group.filter(|g| g.from_object);
        self.ancestors.push(id);
        let mut next_tensor = tensors.into_iter().peekable();
        let mut next_cell = cells.into_iter().peekable();
        for (i, (key, v)) in entries.into_iter().enumerate() {
            self.path.push(key);
            if next_tensor.peek().is_some_and(|(j, _)| *j == i) {
                let (_, t) = next_tensor.next().expect("peeked");
                let start = group.expect("a tensor opens a state dict").start;
                self.emit(start, t)?;
            } else if next_cell.peek().is_some_and(|(j, _)| *j == i) {
                let (_, c) = next_cell.next().expect("peeked");
                let start = group.expect("a cell opens a state dict").start;
                self.emit_packed(c, start)?;
            } else {
                self.walk(v, inherited)?;
            }
            self.path.pop();
        }
        self.ancestors.pop();
        Ok(())
    }
}

/// Whether the last three segments of a module path are `parametrizations.{w}.{n}` with
/// `n >= 1`: a second (or later) parametrization of `w`.
fn is_chain_link(last3: [&str; 3]) -> bool {
    last3[0] == "parametrizations" && last3[2].parse::<usize>().is_ok_and(|n| n >= 1)
}

/// `a.parametrizations.w` for the dotted module path of a second (or later) parametrization of
/// `a.w` (`a.parametrizations.w.1`); a path longer than a name may be is none. Only the last
/// segments are looked at.
pub(crate) fn chained_list(path: &str) -> Option<&str> {
    if path.len() > MAX_NAME_LEN {
        return None;
    }
    let mut parts = path.rsplitn(3, '.');
    let (index, w, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let list_end = path.len() - index.len() - 1;
    let head = match rest.rsplit_once('.') {
        Some((_, last)) => last,
        None => rest,
    };
    is_chain_link([head, w, index]).then(|| &path[..list_end])
}

/// What the walk found: every tensor, and the parametrization lists holding a chain.
pub(crate) struct Tensors {
    pub found: Vec<Found>,
    pub chained: Vec<String>,
    pub packed: PackedRnns,
}

/// Every tensor reachable from the pickle's root, with its name and state dict.
#[cfg(test)]
pub(crate) fn find_tensors(p: &Pickle) -> Result<Vec<Found>, String> {
    Ok(walk_tensors(p)?.found)
}

/// `find_tensors`, with the parametrization chains seen on the way.
pub(crate) fn walk_tensors(p: &Pickle) -> Result<Tensors, String> {
    let mut w = Walk {
        p,
        out: Vec::new(),
        chained: HashSet::new(),
        packed: PackedRnns::default(),
        path: Vec::new(),
        ancestors: Vec::new(),
        work: p.len().saturating_mul(WORK_PER_OBJECT).max(MIN_WORK),
        name_bytes: MAX_NAME_BYTES,
    };
    if let Some(t) = tensor(p, p.root)? {
        // `torch.save(tensor, path)`: one tensor without a name (""), e.g. an input to run on.
        w.emit(0, t)?;
    } else {
        w.walk(p.root, None)?;
    }
    let mut chained: Vec<String> = w.chained.into_iter().collect();
    chained.sort();
    Ok(Tensors {
        found: w.out,
        chained,
        packed: w.packed,
    })
}

#[cfg(test)]
mod chains {
    use super::chained_list;

    #[test]
    fn a_chain_link_names_its_list() {
        assert_eq!(
            chained_list("a.b.parametrizations.weight.1"),
            Some("a.b.parametrizations.weight")
        );
        assert_eq!(
            chained_list("parametrizations.w.2"),
            Some("parametrizations.w")
        );
        assert_eq!(chained_list("a.parametrizations.w.0"), None);
        assert_eq!(chained_list("a.parametrizations.w"), None);
        assert_eq!(chained_list("a.notparametrizations.w.1"), None);
        assert_eq!(chained_list("w.1"), None);
        let long = format!("{}.parametrizations.w.1", "x".repeat(MAX_NAME_LEN));
        assert_eq!(chained_list(&long), None);
    }

    use super::MAX_NAME_LEN;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickle::{parse, Limits};

    /// `_rebuild_tensor_v2` of 4 f32 at storage `key` of type `storage`.
    fn tensor_bytes(key: &str, storage: &str) -> Vec<u8> {
        let mut t =
            b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\n".to_vec();
        t.extend_from_slice(storage.as_bytes());
        t.extend_from_slice(b"\nX");
        t.extend_from_slice(&(key.len() as u32).to_le_bytes());
        t.extend_from_slice(key.as_bytes());
        t.extend_from_slice(b"X\x03\x00\x00\x00cpuK\x04tQK\x00K\x04\x85K\x01\x85\x89");
        t.extend_from_slice(b"ccollections\nOrderedDict\n)RtR");
        t
    }

    fn key(k: &str) -> Vec<u8> {
        let mut v = b"X".to_vec();
        v.extend_from_slice(&(k.len() as u32).to_le_bytes());
        v.extend_from_slice(k.as_bytes());
        v
    }

    fn found(data: &[u8]) -> Result<Vec<Found>, String> {
        let (p, _) = parse(data, Limits::default()).map_err(|e| e.to_string())?;
        find_tensors(&p)
    }

    #[test]
    fn a_memo_doubling_bomb_is_refused_quickly() {
        // [x, x] nested 48 times: 2^48 paths to one dict, in ~300 bytes.
        refused_as_too_much_walking(&crate::pickle::tests::memo_doubling(b'}', 48), 20);
    }

    /// The walk of `data` stops at its budget, within `max_secs`.
    fn refused_as_too_much_walking(data: &[u8], max_secs: u64) {
        let (p, _) = parse(data, Limits::default()).unwrap();
        let start = std::time::Instant::now();
        let e = find_tensors(&p).unwrap_err();
        assert!(e.contains("references to walk"), "{e}");
        assert!(start.elapsed().as_secs() < max_secs);
    }

    #[test]
    fn shared_references_cannot_multiply_the_output() {
        // T shared; X = [T] * K; Y = [X] * K: K + 1 containers, K^2 tensor paths.
        let k = 20_000u32;
        let mut d = b"\x80\x02".to_vec();
        d.extend_from_slice(&tensor_bytes("0", "FloatStorage"));
        d.extend_from_slice(b"q\x00](");
        for _ in 0..k {
            d.extend_from_slice(b"h\x00");
        }
        d.extend_from_slice(b"eq\x01](");
        for _ in 0..k {
            d.extend_from_slice(b"h\x01");
        }
        d.extend_from_slice(b"e.");
        refused_as_too_much_walking(&d, 10);
    }

    #[test]
    fn a_long_global_name_is_refused_and_a_shared_key_not_copied() {
        let long = "m".repeat(2000);
        let mut d = b"\x80\x04".to_vec();
        d.extend_from_slice(&key(&long));
        d.extend_from_slice(&key("x"));
        d.extend_from_slice(b"\x93.");
        assert!(found(&d).unwrap_err().contains("module or class name"));
        // One 1 MB key memo'd and given to 100,000 entries: Python keeps the last one.
        let mut d = b"\x80\x02}(".to_vec();
        d.extend_from_slice(&key(&"k".repeat(1 << 20)));
        d.extend_from_slice(b"q\x00");
        d.extend_from_slice(&tensor_bytes("0", "FloatStorage"));
        for _ in 0..100_000 {
            d.extend_from_slice(b"h\x00N");
        }
        d.extend_from_slice(b"u.");
        assert!(found(&d).unwrap().is_empty());
    }

    #[test]
    fn a_long_key_in_a_shared_dict_is_work() {
        // D = {1 MB key: None}, reached 100,000 times from one list.
        let mut d = b"\x80\x02}".to_vec();
        d.extend_from_slice(&key(&"k".repeat(1 << 20)));
        d.extend_from_slice(b"Nsq\x00](");
        for _ in 0..100_000 {
            d.extend_from_slice(b"h\x00");
        }
        d.extend_from_slice(b"e.");
        refused_as_too_much_walking(&d, 10);
    }

    #[test]
    fn python2_ordered_dicts_keep_their_items() {
        // OrderedDict(([['w', T]],)): how Python 2.7 pickles one.
        let mut d = b"\x80\x02ccollections\nOrderedDict\n(((".to_vec();
        d.extend_from_slice(&key("w"));
        d.extend_from_slice(&tensor_bytes("0", "FloatStorage"));
        d.extend_from_slice(b"lltR.");
        let f = found(&d).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].name.as_str(), f[0].state_dict.as_str()), ("w", ""));
    }

    #[test]
    fn a_tensor_beside_a_state_dict_does_not_swallow_it() {
        // {'state_dict': {'rnn.w': T0}, 'best_acc1': T1}: two state dicts.
        let mut d = b"\x80\x02}(".to_vec();
        d.extend_from_slice(&key("state_dict"));
        d.extend_from_slice(b"}(");
        d.extend_from_slice(&key("rnn.w"));
        d.extend_from_slice(&tensor_bytes("0", "FloatStorage"));
        d.extend_from_slice(b"u");
        d.extend_from_slice(&key("best_acc1"));
        d.extend_from_slice(&tensor_bytes("1", "FloatStorage"));
        d.extend_from_slice(b"u.");
        let mut f: Vec<(String, String)> = found(&d)
            .unwrap()
            .into_iter()
            .map(|f| (f.name, f.state_dict))
            .collect();
        f.sort();
        assert_eq!(
            f,
            [
                ("best_acc1".to_string(), String::new()),
                ("state_dict.rnn.w".to_string(), "state_dict".to_string())
            ]
        );
    }

    #[test]
    fn unknown_storage_types_are_listed_not_fatal() {
        let mut d = b"\x80\x02}(".to_vec();
        d.extend_from_slice(&key("u16"));
        d.extend_from_slice(&tensor_bytes("0", "UInt16Storage"));
        d.extend_from_slice(&key("new"));
        d.extend_from_slice(&tensor_bytes("1", "Float4_e2m1fn_x2Storage"));
        d.extend_from_slice(&key("w"));
        d.extend_from_slice(&tensor_bytes("2", "FloatStorage"));
        d.extend_from_slice(b"u.");
        let f = found(&d).unwrap();
        let dtypes: Vec<_> = f
            .iter()
            .map(|f| (f.tensor.storage.dtype, f.tensor.storage.elem_size))
            .collect();
        assert_eq!(
            dtypes,
            [(None, 2), (None, 0), (Some(candle_core::DType::F32), 4)]
        );
    }
}
