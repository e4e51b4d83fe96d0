//! Erlang terms: a bounds check of the external term format before any
//! decoding, pids and exit reasons, and the documented mapping between
//! terms and the MessagePack that module processes speak
//! (docs/distribution.md).
//!
//! # Why a check before eetf
//!
//! eetf trusts lengths: a 10-byte frame that claims a list of 4 billion
//! elements makes it reserve that much memory (an allocation failure
//! aborts the node), an atom-cache reference or a distribution header
//! panics (`unimplemented!`), and a term nested a million deep overflows
//! its recursion. [`check`] walks the bytes once, without recursion: every
//! length must fit in what is left of the frame, nesting is capped at
//! [`MAX_DEPTH`], and the tags eetf cannot read are refused, so that what
//! reaches eetf is well-formed and bounded by the frame's size.

use std::collections::HashMap;
use std::sync::Arc;

use eetf::{Atom, BigInteger, Binary, FixInteger, Float, List, Map, Term, Tuple};
use num_traits::ToPrimitive;
use relive_runtime::{ExitReason, ExternalPid, Pid};

/// The MessagePack extension type of a pid (relive_abi::erlang_pid).
const PID_EXT: i8 = 0x50;

/// Deepest nesting of a term accepted from the wire.
pub const MAX_DEPTH: usize = 512;

const VERSION: u8 = 131;

/// A term that could not be read or has no MessagePack (or Erlang) form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TermError(pub String);

fn err<T>(text: impl Into<String>) -> Result<T, TermError> {
    Err(TermError(text.into()))
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&[u8], TermError> {
        if n > self.left() {
            return err(format!(
                "term truncated: {n} bytes needed at offset {}, {} left",
                self.at,
                self.left()
            ));
        }
        let slice = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, TermError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, TermError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    fn u32(&mut self) -> Result<usize, TermError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    /// A count of items that each take at least one byte.
    fn items(&mut self, count: usize) -> Result<usize, TermError> {
        if count > self.left() {
            return err(format!("a term claims {count} elements with only {} bytes left", self.left()));
        }
        Ok(count)
    }
}

/// Checks that `bytes` start with one well-formed term in the external
/// term format (version byte included) that eetf can decode; returns its
/// length in bytes.
///
/// # Errors
/// What is wrong and where: truncation, a length past the end, nesting
/// deeper than [`MAX_DEPTH`], an atom-cache reference, a distribution
/// header, a compressed term, or an unknown tag.
pub fn check(bytes: &[u8]) -> Result<usize, TermError> {
    let mut c = Cursor { bytes, at: 0 };
    if c.u8()? != VERSION {
        return err(format!("not an external term: the first byte is {}, not 131", bytes[0]));
    }
    // Items still to read at each open level.
    let mut pending: Vec<usize> = vec![1];
    while let Some(top) = pending.last_mut() {
        if *top == 0 {
            pending.pop();
            continue;
        }
        *top -= 1;
        let tag = c.u8()?;
        let children = match tag {
            70 => c.take(8).map(|_| 0)?, // NEW_FLOAT
            77 => {
                let n = c.u32()?;
                c.take(1 + n).map(|_| 0)? // BIT_BINARY
            }
            97 => c.take(1).map(|_| 0)?,  // SMALL_INTEGER
            98 => c.take(4).map(|_| 0)?,  // INTEGER
            99 => c.take(31).map(|_| 0)?, // FLOAT (text)
            100 | 118 => {
                let n = c.u16()?;
                c.take(n).map(|_| 0)? // ATOM, ATOM_UTF8
            }
            115 | 119 => {
                let n = c.u8()? as usize;
                c.take(n).map(|_| 0)? // SMALL_ATOM(_UTF8)
            }
            // REFERENCE, PORT, NEW_PORT, V4_PORT, PID, NEW_PID: a node atom,
            // then fixed bytes (read after the atom).
            101 | 102 | 89 | 120 | 103 | 88 => {
                let tail = match tag {
                    101 | 102 => 5,
                    89 => 8,
                    120 => 12,
                    103 => 9,
                    _ => 12,
                };
                pending.push(0);
                check_atom(&mut c)?;
                c.take(tail)?;
                0
            }
            104 => {
                let n = c.u8()? as usize;
                c.items(n)? // SMALL_TUPLE
            }
            105 => {
                let n = c.u32()?;
                c.items(n)? // LARGE_TUPLE
            }
            106 => 0, // NIL
            107 => {
                let n = c.u16()?;
                c.take(n).map(|_| 0)? // STRING
            }
            108 => {
                let n = c.u32()?;
                c.items(n)?.checked_add(1).expect("bounded by the frame") // LIST + tail
            }
            109 => {
                let n = c.u32()?;
                c.take(n).map(|_| 0)? // BINARY
            }
            110 => {
                let n = c.u8()? as usize;
                c.take(1 + n).map(|_| 0)? // SMALL_BIG
            }
            111 => {
                let n = c.u32()?;
                c.take(1 + n).map(|_| 0)? // LARGE_BIG
            }
            114 | 90 => {
                let words = c.u16()?;
                if words > 5 {
                    return err(format!("a reference with {words} id words (at most 5)"));
                }
                check_atom(&mut c)?;
                c.take(if tag == 114 { 1 } else { 4 } + 4 * words)?;
                0
            }
            116 => {
                let n = c.u32()?;
                c.items(n)?;
                c.items(2 * n)? // MAP
            }
            112 => {
                // NEW_FUN: its total size (including the size field) first.
                let size = c.u32()?;
                if size < 4 {
                    return err("a fun with a size below its own header");
                }
                c.take(size - 4).map(|_| 0)?
            }
            113 => 3, // EXPORT: module, function, arity
            82 => return err("an atom-cache reference, but no atom cache was negotiated"),
            68 => return err("a distribution header inside a term"),
            80 => return err("a compressed term (refused: its size is unknown until inflated)"),
            other => return err(format!("unknown term tag {other} at offset {}", c.at - 1)),
        };
        if children > 0 {
            if pending.len() >= MAX_DEPTH {
                return err(format!("a term nested deeper than {MAX_DEPTH} levels"));
            }
            pending.push(children);
        }
    }
    Ok(c.at)
}

fn check_atom(c: &mut Cursor<'_>) -> Result<(), TermError> {
    match c.u8()? {
        100 | 118 => {
            let n = c.u16()?;
            c.take(n)?;
        }
        115 | 119 => {
            let n = c.u8()? as usize;
            c.take(n)?;
        }
        82 => return err("an atom-cache reference, but no atom cache was negotiated"),
        other => return err(format!("expected an atom for a node name, found tag {other}")),
    }
    Ok(())
}

/// Checks and decodes one term at the start of `bytes`; returns it and its
/// length.
///
/// # Errors
/// As [`check`], or eetf's error.
pub fn decode(bytes: &[u8]) -> Result<(Term, usize), TermError> {
    let len = check(bytes)?;
    let term = Term::decode(&bytes[..len]).map_err(|e| TermError(format!("decoding a term: {e}")))?;
    Ok((term, len))
}

/// The external term format of `term` (version byte first).
pub fn encode(term: &Term) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    // Writing to a Vec fails only for terms eetf cannot represent (none we
    // build); an empty list stands in rather than panicking.
    if term.encode(&mut out).is_err() {
        out.clear();
        out.extend_from_slice(&[VERSION, 106]);
    }
    out
}

/// An atom.
pub fn atom(name: &str) -> Term {
    Term::from(Atom::from(name))
}

/// A tuple.
pub fn tuple(elements: Vec<Term>) -> Term {
    Term::from(Tuple::from(elements))
}

/// A binary.
pub fn binary(bytes: impl Into<Vec<u8>>) -> Term {
    Term::from(Binary::from(bytes.into()))
}

/// The name of an atom term.
pub fn atom_name(term: &Term) -> Option<&str> {
    match term {
        Term::Atom(atom) => Some(&atom.name),
        _ => None,
    }
}

/// How this node writes and reads pids: its own as NEW_PID_EXT with its
/// name and creation, other nodes' through the runtime's external pids.
#[derive(Clone, Debug)]
pub struct Pids {
    /// This node's full name.
    pub node: Arc<str>,
    /// This node's creation.
    pub creation: u32,
}

impl Pids {
    /// A pid of this node (local) or of another (external) as a term.
    pub fn to_term(&self, pid: Pid) -> eetf::Pid {
        match pid.external() {
            Some(external) => {
                eetf::Pid::new(&*external.node, external.id, external.serial, external.creation)
            }
            None => eetf::Pid::new(&*self.node, pid.index(), pid.serial(), self.creation),
        }
    }

    /// The runtime pid of a pid term. A pid of this node's earlier life
    /// (another creation) stays external: it names no process here, as in
    /// Erlang.
    pub fn from_term(&self, pid: &eetf::Pid) -> Pid {
        if *pid.node.name == *self.node && pid.creation == self.creation {
            let raw = (u64::from(pid.serial) << 32) | u64::from(pid.id);
            if let Some(local) = Pid::from_u64(raw).filter(|p| !p.is_external()) {
                return local;
            }
        }
        Pid::from_external(&ExternalPid {
            node: pid.node.name.as_str().into(),
            id: pid.id,
            serial: pid.serial,
            creation: pid.creation,
        })
    }

    /// Whether `pid` stands for a pid of this node's earlier life (see
    /// [`Pids::from_term`]).
    pub fn is_own_stale(&self, pid: Pid) -> bool {
        pid.external().is_some_and(|e| *e.node == *self.node)
    }
}

/// An exit reason as Erlang writes it: the atoms Erlang uses, a panic as
/// `{panic, <<Message>>}`, any other text as an atom when it reads as one
/// (`noconnection`), else a binary.
pub fn reason_to_term(reason: &ExitReason) -> Term {
    match reason {
        ExitReason::Normal => atom("normal"),
        ExitReason::Shutdown => atom("shutdown"),
        ExitReason::Kill => atom("kill"),
        ExitReason::Killed => atom("killed"),
        ExitReason::NoProc => atom("noproc"),
        ExitReason::Panic(message) => tuple(vec![atom("panic"), binary(message.as_bytes())]),
        ExitReason::Error(text) if is_plain_atom(text) => atom(text),
        ExitReason::Error(text) => binary(text.as_bytes()),
    }
}

fn is_plain_atom(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@')
        && text.len() < 256
}

/// An exit reason from the wire: Erlang's atoms as the runtime's reasons,
/// anything else as its text in Erlang syntax.
pub fn term_to_reason(term: &Term) -> ExitReason {
    match atom_name(term) {
        Some("normal") => ExitReason::Normal,
        Some("shutdown") => ExitReason::Shutdown,
        Some("kill") => ExitReason::Kill,
        Some("killed") => ExitReason::Killed,
        Some("noproc") => ExitReason::NoProc,
        Some(other) => ExitReason::error(other),
        None => match term {
            Term::Binary(b) => ExitReason::error(String::from_utf8_lossy(&b.bytes).into_owned()),
            other => ExitReason::error(other.to_string()),
        },
    }
}

// ------------------------------------------------------------ MessagePack

/// A term as the MessagePack a module process reads (see
/// docs/distribution.md for the table).
///
/// # Errors
/// The first part of the term with no MessagePack form, named.
pub fn to_msgpack(term: &Term, pids: &Pids) -> Result<Vec<u8>, TermError> {
    let mut out = Vec::with_capacity(64);
    write_msgpack(term, pids, &mut out, 0)?;
    Ok(out)
}

fn write_msgpack(term: &Term, pids: &Pids, out: &mut Vec<u8>, depth: usize) -> Result<(), TermError> {
    if depth > MAX_DEPTH {
        return err(format!("a term nested deeper than {MAX_DEPTH} levels"));
    }
    match term {
        Term::Atom(a) => match a.name.as_str() {
            "true" => out.push(0xc3),
            "false" => out.push(0xc2),
            "nil" | "undefined" => out.push(0xc0),
            name => mp_str(out, name),
        },
        Term::FixInteger(i) => mp_int(out, i64::from(i.value)),
        Term::BigInteger(b) => {
            if let Some(v) = b.value.to_i64() {
                mp_int(out, v)
            } else if let Some(v) = b.value.to_u64() {
                out.push(0xcf);
                out.extend_from_slice(&v.to_be_bytes());
            } else {
                return err(format!("the integer {} does not fit in 64 bits", b.value));
            }
        }
        Term::Float(f) => {
            out.push(0xcb);
            out.extend_from_slice(&f.value.to_be_bytes());
        }
        Term::Binary(b) => match std::str::from_utf8(&b.bytes) {
            Ok(text) => mp_str(out, text),
            Err(_) => mp_bin(out, &b.bytes),
        },
        Term::ByteList(l) => {
            mp_array_header(out, l.bytes.len());
            for byte in &l.bytes {
                mp_int(out, i64::from(*byte));
            }
        }
        Term::List(l) => {
            mp_array_header(out, l.elements.len());
            for element in &l.elements {
                write_msgpack(element, pids, out, depth + 1)?;
            }
        }
        Term::Tuple(t) => match t.elements.split_first() {
            // A tuple tagged by an atom is an enum variant: {Tag, V} is the
            // map {"Tag": V}, {Tag, A, B, ...} is {"Tag": [A, B, ...]}.
            Some((Term::Atom(tag), rest)) if !rest.is_empty() && !is_special_atom(&tag.name) => {
                mp_map_header(out, 1);
                mp_str(out, &tag.name);
                if let [only] = rest {
                    write_msgpack(only, pids, out, depth + 1)?;
                } else {
                    mp_array_header(out, rest.len());
                    for element in rest {
                        write_msgpack(element, pids, out, depth + 1)?;
                    }
                }
            }
            _ => {
                mp_array_header(out, t.elements.len());
                for element in &t.elements {
                    write_msgpack(element, pids, out, depth + 1)?;
                }
            }
        },
        Term::Map(m) => {
            mp_map_header(out, m.map.len());
            for (key, value) in &m.map {
                write_msgpack(key, pids, out, depth + 1)?;
                write_msgpack(value, pids, out, depth + 1)?;
            }
        }
        Term::Pid(p) => {
            let pid = pids.from_term(p);
            out.push(0xcf);
            out.extend_from_slice(&pid.as_u64().to_be_bytes());
        }
        Term::Reference(_) => return err(format!("a reference ({term}) has no MessagePack form")),
        Term::Port(_) => return err(format!("a port ({term}) has no MessagePack form")),
        Term::ExternalFun(_) | Term::InternalFun(_) => return err("a fun has no MessagePack form"),
        Term::BitBinary(_) => return err("a bitstring that is not whole bytes has no MessagePack form"),
        Term::ImproperList(_) => return err(format!("an improper list ({term}) has no MessagePack form")),
    }
    Ok(())
}

fn is_special_atom(name: &str) -> bool {
    matches!(name, "true" | "false" | "nil" | "undefined")
}

fn mp_int(out: &mut Vec<u8>, v: i64) {
    if (0..128).contains(&v) {
        out.push(v as u8);
    } else if (-32..0).contains(&v) {
        out.push(v as i8 as u8);
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn mp_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n < 256 {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if n < 65536 {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

fn mp_bin(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len();
    if n < 256 {
        out.extend_from_slice(&[0xc4, n as u8]);
    } else if n < 65536 {
        out.push(0xc5);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xc6);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(b);
}

fn mp_array_header(out: &mut Vec<u8>, n: usize) {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if n < 65536 {
        out.push(0xdc);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

fn mp_map_header(out: &mut Vec<u8>, n: usize) {
    if n < 16 {
        out.push(0x80 | n as u8);
    } else if n < 65536 {
        out.push(0xde);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdf);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// A module's MessagePack as a term (see docs/distribution.md): maps stay
/// maps (keys too are converted: a struct's field names become binaries,
/// never atoms, so no data can fill the peer's atom table), strings and
/// bytes become binaries, `nil` becomes `undefined`.
///
/// # Errors
/// Bytes that are not one MessagePack value, or an extension type.
pub fn from_msgpack(bytes: &[u8], pids: &Pids) -> Result<Term, TermError> {
    let mut c = Cursor { bytes, at: 0 };
    let term = read_msgpack(&mut c, pids, 0)?;
    if c.left() != 0 {
        return err(format!("{} bytes after the MessagePack value", c.left()));
    }
    Ok(term)
}

fn read_msgpack(c: &mut Cursor<'_>, pids: &Pids, depth: usize) -> Result<Term, TermError> {
    if depth > MAX_DEPTH {
        return err(format!("MessagePack nested deeper than {MAX_DEPTH} levels"));
    }
    let marker = c.u8()?;
    let int = |v: i64| integer(i128::from(v));
    Ok(match marker {
        0x00..=0x7f => int(i64::from(marker)),
        0xe0..=0xff => int(i64::from(marker as i8)),
        0x80..=0x8f => read_map(c, (marker & 0x0f) as usize, pids, depth)?,
        0x90..=0x9f => read_array(c, (marker & 0x0f) as usize, pids, depth)?,
        0xa0..=0xbf => read_str(c, (marker & 0x1f) as usize)?,
        0xc0 => atom("undefined"),
        0xc2 => atom("false"),
        0xc3 => atom("true"),
        0xc4 => {
            let n = c.u8()? as usize;
            binary(c.take(n)?)
        }
        0xc5 => {
            let n = c.u16()?;
            binary(c.take(n)?)
        }
        0xc6 => {
            let n = c.u32()?;
            binary(c.take(n)?)
        }
        0xca => {
            let b = c.take(4)?;
            Term::from(Float { value: f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]])) })
        }
        0xcb => {
            let b = c.take(8)?;
            let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
            if !v.is_finite() {
                return err(format!("the float {v} has no Erlang form"));
            }
            Term::from(Float { value: v })
        }
        0xcc => int(i64::from(c.u8()?)),
        0xcd => int(c.u16()? as i64),
        0xce => integer(c.u32()? as i128),
        0xcf => integer(u64::from_be_bytes(c.take(8)?.try_into().expect("8 bytes")) as i128),
        0xd0 => int(i64::from(c.u8()? as i8)),
        0xd1 => int(i64::from(c.u16()? as u16 as i16)),
        0xd2 => int(i64::from(c.u32()? as u32 as i32)),
        0xd3 => integer(i64::from_be_bytes(c.take(8)?.try_into().expect("8 bytes")) as i128),
        0xd9 => {
            let n = c.u8()? as usize;
            read_str(c, n)?
        }
        0xda => {
            let n = c.u16()?;
            read_str(c, n)?
        }
        0xdb => {
            let n = c.u32()?;
            read_str(c, n)?
        }
        0xdc => {
            let n = c.u16()?;
            read_array(c, n, pids, depth)?
        }
        0xdd => {
            let n = c.u32()?;
            read_array(c, n, pids, depth)?
        }
        0xde => {
            let n = c.u16()?;
            read_map(c, n, pids, depth)?
        }
        0xdf => {
            let n = c.u32()?;
            read_map(c, n, pids, depth)?
        }
        // relive_abi::erlang_pid: a pid that is to reach Erlang as a pid.
        0xd7 if c.bytes.get(c.at) == Some(&(PID_EXT as u8)) => {
            c.take(1)?;
            let raw = u64::from_be_bytes(c.take(8)?.try_into().expect("8 bytes"));
            let pid = Pid::from_u64(raw).ok_or_else(|| TermError(format!("{raw} is not a pid")))?;
            Term::from(pids.to_term(pid))
        }
        0xd4..=0xd8 | 0xc7..=0xc9 => {
            return err("a MessagePack extension type (other than a pid, 0x50) has no Erlang form");
        }
        other => return err(format!("not MessagePack: marker 0x{other:02x} at offset {}", c.at - 1)),
    })
}

fn integer(v: i128) -> Term {
    match i32::try_from(v) {
        Ok(small) => Term::from(FixInteger { value: small }),
        Err(_) => Term::from(BigInteger { value: num_bigint::BigInt::from(v) }),
    }
}

fn read_str(c: &mut Cursor<'_>, n: usize) -> Result<Term, TermError> {
    Ok(binary(c.take(n)?))
}

fn read_array(c: &mut Cursor<'_>, n: usize, pids: &Pids, depth: usize) -> Result<Term, TermError> {
    let n = c.items(n)?;
    let mut elements = Vec::with_capacity(n);
    for _ in 0..n {
        elements.push(read_msgpack(c, pids, depth + 1)?);
    }
    Ok(Term::from(List::from(elements)))
}

fn read_map(c: &mut Cursor<'_>, n: usize, pids: &Pids, depth: usize) -> Result<Term, TermError> {
    let n = c.items(n)?;
    let mut map = HashMap::with_capacity(n);
    for _ in 0..n {
        let key = read_msgpack(c, pids, depth + 1)?;
        let value = read_msgpack(c, pids, depth + 1)?;
        map.insert(key, value);
    }
    Ok(Term::from(Map::from(map)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    fn pids() -> Pids {
        Pids { node: "relive@host".into(), creation: 3 }
    }

    /// What Erlang's term_to_binary writes, checked here byte for byte.
    fn etf(term: &Term) -> Vec<u8> {
        encode(term)
    }

    fn via_msgpack<T: serde::de::DeserializeOwned>(term: &Term) -> T {
        rmp_serde::from_slice(&to_msgpack(term, &pids()).unwrap()).unwrap()
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Request {
        Ping,
        Echo(String),
        Add(i64, i64),
        Put { key: String, value: u64 },
    }

    #[test]
    fn tagged_tuples_read_as_enum_variants_and_atoms_as_unit_variants() {
        assert_eq!(via_msgpack::<Request>(&atom("ping")), Request::Ping);
        let echo = tuple(vec![atom("echo"), binary("hi")]);
        assert_eq!(via_msgpack::<Request>(&echo), Request::Echo("hi".into()));
        let add = tuple(vec![
            atom("add"),
            Term::from(FixInteger { value: 2 }),
            Term::from(FixInteger { value: -3 }),
        ]);
        assert_eq!(via_msgpack::<Request>(&add), Request::Add(2, -3));
        let mut fields = HashMap::new();
        fields.insert(atom("key"), binary("k"));
        fields.insert(atom("value"), Term::from(FixInteger { value: 7 }));
        let put = tuple(vec![atom("put"), Term::from(Map::from(fields))]);
        assert_eq!(via_msgpack::<Request>(&put), Request::Put { key: "k".into(), value: 7 });
    }

    #[test]
    fn scalars_lists_and_plain_tuples_map_structurally() {
        assert!(via_msgpack::<bool>(&atom("true")));
        assert_eq!(via_msgpack::<Option<u8>>(&atom("undefined")), None);
        let big = Term::from(BigInteger { value: num_bigint::BigInt::from(u64::MAX) });
        assert_eq!(via_msgpack::<u64>(&big), u64::MAX);
        let huge = Term::from(BigInteger { value: num_bigint::BigInt::from(u64::MAX) * 4 });
        assert!(to_msgpack(&huge, &pids()).unwrap_err().0.contains("64 bits"));
        assert_eq!(via_msgpack::<f64>(&Term::from(Float { value: 1.5 })), 1.5);
        let list = Term::from(List::from(vec![
            Term::from(FixInteger { value: 1 }),
            Term::from(FixInteger { value: 2 }),
        ]));
        assert_eq!(via_msgpack::<Vec<u8>>(&list), vec![1, 2]);
        let pair = tuple(vec![binary("a"), Term::from(FixInteger { value: 1 })]);
        assert_eq!(via_msgpack::<(String, u32)>(&pair), ("a".to_string(), 1));
        // Bytes that are not UTF-8 stay bytes.
        let raw = binary(vec![0xff, 0x00]);
        let bytes: serde_bytes_like::Bytes = via_msgpack(&raw);
        assert_eq!(bytes.0, vec![0xff, 0x00]);
    }

    mod serde_bytes_like {
        #[derive(serde::Deserialize)]
        pub struct Bytes(#[serde(with = "relive_abi_bytes")] pub Vec<u8>);
        mod relive_abi_bytes {
            pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = Vec<u8>;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                        Ok(v.to_vec())
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    }

    #[test]
    fn pids_cross_as_runtime_pids_and_refs_do_not_cross() {
        let remote = eetf::Pid::new("erl@host", 85, 0, 9);
        let pid: u64 = via_msgpack(&Term::from(remote.clone()));
        let pid = Pid::from_u64(pid).unwrap();
        assert!(pid.is_external());
        assert_eq!(pids().to_term(pid), remote);
        let own = eetf::Pid::new("relive@host", 12, 4, 3);
        let local = pids().from_term(&own);
        assert!(!local.is_external());
        assert_eq!(pids().to_term(local), own);
        let stale = eetf::Pid::new("relive@host", 12, 4, 2);
        assert!(pids().is_own_stale(pids().from_term(&stale)), "an older creation names no process here");
        let reference =
            Term::from(eetf::Reference { node: "erl@host".into(), id: vec![1, 2, 3], creation: 1 });
        let error = to_msgpack(&tuple(vec![binary("x"), reference]), &pids()).unwrap_err();
        assert!(error.0.contains("reference"), "{error}");
    }

    #[test]
    fn module_replies_become_terms_with_binary_keys() {
        #[derive(Serialize)]
        struct Reply {
            count: u32,
            name: String,
            tags: Vec<String>,
            none: Option<u8>,
            ok: bool,
            big: u64,
            neg: i64,
        }
        let bytes = rmp_serde::to_vec_named(&Reply {
            count: 3,
            name: "n".into(),
            tags: vec!["a".into()],
            none: None,
            ok: true,
            big: u64::MAX,
            neg: -5,
        })
        .unwrap();
        let Term::Map(map) = from_msgpack(&bytes, &pids()).unwrap() else { panic!("a struct is a map") };
        assert_eq!(map.map[&binary("count")], Term::from(FixInteger { value: 3 }));
        assert_eq!(map.map[&binary("name")], binary("n"));
        assert_eq!(map.map[&binary("tags")], Term::from(List::from(vec![binary("a")])));
        assert_eq!(map.map[&binary("none")], atom("undefined"));
        assert_eq!(map.map[&binary("ok")], atom("true"));
        assert_eq!(map.map[&binary("big")], Term::from(BigInteger { value: u64::MAX.into() }));
        assert_eq!(map.map[&binary("neg")], Term::from(FixInteger { value: -5 }));
        assert!(from_msgpack(&[0xd4, 1, 0], &pids()).unwrap_err().0.contains("extension"));
        assert!(from_msgpack(&[0x92, 1], &pids()).is_err(), "truncated");
        // A pid marked with relive_abi::erlang_pid becomes a real pid.
        let local = Pid::from_u64((5u64 << 32) | 77).unwrap();
        let mut ext = vec![0xd7, 0x50];
        ext.extend_from_slice(&local.as_u64().to_be_bytes());
        assert_eq!(from_msgpack(&ext, &pids()).unwrap(), Term::from(eetf::Pid::new("relive@host", 77, 5, 3)));
    }

    #[test]
    fn the_check_bounds_what_eetf_would_allocate_or_panic_on() {
        let good = etf(&tuple(vec![atom("a"), binary("xyz"), Term::from(List::from(vec![atom("b")]))]));
        assert_eq!(check(&good).unwrap(), good.len());
        // A list claiming 4 billion elements in a few bytes.
        assert!(check(&[131, 108, 0xff, 0xff, 0xff, 0xff, 106]).unwrap_err().0.contains("elements"));
        // An atom-cache reference and a distribution header panic in eetf.
        assert!(check(&[131, 82, 0]).unwrap_err().0.contains("atom-cache"));
        assert!(check(&[131, 68, 0]).unwrap_err().0.contains("distribution header"));
        // Deep nesting.
        let mut deep = vec![131];
        for _ in 0..10_000 {
            deep.extend_from_slice(&[104, 1]);
        }
        deep.push(106);
        assert!(check(&deep).unwrap_err().0.contains("deeper"));
        assert!(check(&[131, 200]).unwrap_err().0.contains("unknown term tag"));
        assert!(check(&[130, 106]).is_err());
        assert!(check(&good[..good.len() - 1]).is_err(), "truncated");
    }

    #[test]
    fn reasons_cross_as_erlang_writes_them() {
        assert_eq!(reason_to_term(&ExitReason::Normal), atom("normal"));
        assert_eq!(reason_to_term(&ExitReason::error("noconnection")), atom("noconnection"));
        assert_eq!(reason_to_term(&ExitReason::error("disk full")), binary("disk full"));
        assert_eq!(term_to_reason(&atom("killed")), ExitReason::Killed);
        assert_eq!(
            term_to_reason(&tuple(vec![atom("bad"), Term::from(FixInteger { value: 1 })])).to_string(),
            "{'bad',1}"
        );
    }
}
