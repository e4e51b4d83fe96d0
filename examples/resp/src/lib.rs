//! RESP2, the Redis serialization protocol, as far as a server needs it:
//! an incremental request [`Parser`], kept per connection, and reply
//! writers.
//!
//! Requests are arrays of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\na\r\n`), as
//! redis-cli and redis-benchmark send them, or inline commands (`PING\r\n`,
//! words separated by spaces, with Redis's quoting: `SET "a b" '\x'`), as
//! people type them over telnet. A request may arrive split across reads and
//! one read may hold many (pipelining).
//!
//! # The parser's contract
//! A connection owns one [`Parser`]: it [`Parser::feed`]s each read, then
//! calls [`Parser::next_request`] until it answers `Ok(None)`.
//! - Every byte is examined once: a partly received request is never parsed
//!   again from its start. The parser remembers where it stopped (the header
//!   line it was searching, the bulk string it waits for, the arguments
//!   found so far as ranges of its buffer).
//! - Every byte is copied once into the parser's buffers (a read that
//!   starts a request becomes the buffer, with no copy), plus their growth,
//!   which doubles (never past the end of the bulk string awaited), so a
//!   bulk string of up to [`MAX_BULK`] bytes costs O(n) however it is cut.
//!   Buffers are allocated as bytes arrive, not as a header announces them:
//!   a client that announces 512 MB and sends nothing holds nothing.
//! - A bulk string of [`BIG_ARG`] bytes or more that has not arrived whole
//!   is read into a buffer of its own, which [`Request::take`] hands over:
//!   a large value is copied once, as in Redis, not twice.
//! - Arguments are borrowed from the buffers ([`Request`]); bytes of
//!   requests handed out are dropped at the next [`Parser::feed`], and a
//!   buffer left empty is freed, so a connection that sent a large value
//!   does not keep its memory.
//! - What is accepted and refused, and the words of each refusal, are
//!   Redis 7's (networking.c: `processInlineBuffer`,
//!   `processMultibulkBuffer`; sds.c: `sdssplitargs`; util.c: `string2ll`),
//!   with this library's limit on arguments ([`MAX_ARGS`]). After an error
//!   the caller answers it ([`ProtocolError::reply`]) and closes the
//!   connection, as Redis does; the parser answers the same error again if
//!   asked.
//! - Across an upgrade a parser is kept as its unconsumed bytes (its serde
//!   form is those bytes, [`Parser::pending`]); the next version parses them
//!   once more.
//!
//! [`parse`] is the one-shot form over a caller's buffer (the kv versions
//! before 2.1.0 keep their own buffers), with the same rules.

use std::borrow::Cow;
use std::fmt;
use std::ops::{Index, Range};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest inline command, and the longest header line or buffered
/// partial inline command, as in Redis (64 KiB, `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE: usize = 64 * 1024;
/// The most arguments one request may have (Redis allows `INT_MAX`; kv
/// takes 1024 * 1024).
pub const MAX_ARGS: i64 = 1024 * 1024;
/// The longest bulk string (Redis: `proto-max-bulk-len`, 512 MiB).
pub const MAX_BULK: i64 = 512 * 1024 * 1024;
/// Bulk strings from this size on, when not whole in the buffer, are read
/// into a buffer of their own (Redis: `PROTO_MBULK_BIG_ARG`, 32 KiB).
pub const BIG_ARG: usize = 32 * 1024;
/// Arguments reserved up front for an array, whatever its header says (as
/// Redis): a header cannot make the parser allocate much.
const ARGS_UP_FRONT: usize = 1024;
/// A buffer at least this large, holding a quarter of it or less in
/// unconsumed bytes, is replaced by a fitting one rather than compacted.
const SHRINK_ABOVE: usize = 64 * 1024;

/// Why bytes are not RESP; the Redis words are its [`fmt::Display`]
/// (`Protocol error: invalid bulk length`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// No newline in the first [`MAX_INLINE`] bytes of an inline command.
    TooBigInlineRequest,
    /// An inline command with an unclosed quote, or a closing quote
    /// followed by something other than a space.
    UnbalancedQuotes,
    /// No line end in the first [`MAX_INLINE`] bytes of a `*N` header.
    TooBigMultibulkCount,
    /// A `*N` header that is not a decimal integer up to [`MAX_ARGS`].
    InvalidMultibulkLength,
    /// No line end in the first [`MAX_INLINE`] bytes of a `$N` header.
    TooBigBulkCount,
    /// An array element that is not a bulk string: the byte found.
    ExpectedDollar(u8),
    /// A `$N` header that is not a decimal integer from 0 to [`MAX_BULK`].
    InvalidBulkLength,
}

impl ProtocolError {
    /// What follows `Protocol error: `, as Redis words it.
    fn detail(&self) -> String {
        match self {
            ProtocolError::TooBigInlineRequest => "too big inline request".into(),
            ProtocolError::UnbalancedQuotes => "unbalanced quotes in request".into(),
            ProtocolError::TooBigMultibulkCount => "too big mbulk count string".into(),
            ProtocolError::InvalidMultibulkLength => "invalid multibulk length".into(),
            ProtocolError::TooBigBulkCount => "too big bulk count string".into(),
            ProtocolError::ExpectedDollar(byte) => format!("expected '$', got '{}'", char::from(*byte)),
            ProtocolError::InvalidBulkLength => "invalid bulk length".into(),
        }
    }

    /// Appends the error reply Redis sends before it closes the connection
    /// (`-ERR Protocol error: ...`), byte for byte: the byte of
    /// [`ProtocolError::ExpectedDollar`] goes out as it came.
    pub fn reply(&self, out: &mut Vec<u8>) {
        match self {
            ProtocolError::ExpectedDollar(byte) => {
                out.extend_from_slice(b"-ERR Protocol error: expected '$', got '");
                out.push(if matches!(byte, b'\r' | b'\n') { b' ' } else { *byte });
                out.extend_from_slice(b"'\r\n");
            }
            other => error(out, &format!("ERR {other}")),
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol error: {}", self.detail())
    }
}

impl std::error::Error for ProtocolError {}

/// Where an argument of the request under way is.
#[derive(Debug, Clone)]
enum Arg {
    /// In the buffer (or, for an inline command, in its unquoted bytes).
    In(Range<usize>),
    /// A large bulk string in a buffer of its own: `Progress::big[i]`.
    Big(usize),
}

/// One request (the first argument is the command; never empty),
/// borrowed from the parser until the next [`Parser::next_request`] or
/// [`Parser::feed`].
pub struct Request<'a> {
    source: &'a [u8],
    args: &'a [Arg],
    big: &'a mut [Vec<u8>],
}

impl<'a> Request<'a> {
    /// How many arguments, the command included.
    pub fn len(&self) -> usize {
        self.args.len()
    }

    /// Never true for a request a parser hands out.
    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }

    /// Argument `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.args.get(i).map(|arg| match arg {
            Arg::In(range) => &self.source[range.clone()],
            Arg::Big(k) => self.big[*k].as_slice(),
        })
    }

    /// Every argument, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.args.len()).map(|i| &self[i])
    }

    /// Owned copies of every argument.
    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }

    /// Argument `i`, owned: a large bulk string read into its own buffer
    /// is moved out without a copy (it reads as empty afterwards); any
    /// other argument is copied.
    ///
    /// # Panics
    /// If there is no argument `i`.
    pub fn take(&mut self, i: usize) -> Vec<u8> {
        match &self.args[i] {
            Arg::In(range) => self.source[range.clone()].to_vec(),
            Arg::Big(k) => std::mem::take(&mut self.big[*k]),
        }
    }
}

impl Index<usize> for Request<'_> {
    type Output = [u8];

    fn index(&self, i: usize) -> &[u8] {
        match &self.args[i] {
            Arg::In(range) => &self.source[range.clone()],
            Arg::Big(k) => &self.big[*k],
        }
    }
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().map(lossy)).finish()
    }
}

/// Where the parse of the request under way stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Between requests.
    #[default]
    Start,
    /// In an inline command, searching for its `\n`.
    Inline,
    /// In a `*N` header, searching for its `\r`.
    Count,
    /// In an array: `remaining` bulk strings to go; `len` is the length of
    /// the current one once its `$N` header has come.
    Bulks { remaining: usize, len: Option<usize> },
    /// In an array, reading a large bulk string of `len` bytes into
    /// `Progress::filling` (the parser moved it there: [`BIG_ARG`]).
    BigBulk { remaining: usize, len: usize },
}

/// What one step of the parse found.
enum Step {
    /// A whole request: its arguments are in `Progress::args`, in the
    /// buffer (or in `Progress::inline` if `inline`) and `Progress::big`.
    Request { inline: bool },
    /// Bytes with nothing to run (an empty line, an array of zero or fewer
    /// elements): they are consumed.
    Skip,
    /// More bytes are needed.
    Incomplete,
    /// Not RESP.
    Error(ProtocolError),
}

/// The parse of one request, over a buffer that only grows at its end
/// while the request is under way. Positions are the buffer's.
#[derive(Debug, Default)]
struct Progress {
    /// The next byte to parse.
    at: usize,
    /// How far the search for the current line's end has looked (at least
    /// `at`): a line that arrives a byte at a time is searched once.
    scanned: usize,
    stage: Stage,
    /// The arguments found so far.
    args: Vec<Arg>,
    /// An inline command's arguments, unquoted (`args` are its ranges).
    inline: Vec<u8>,
    /// The large bulk strings of the request under way.
    big: Vec<Vec<u8>>,
    /// The large bulk string being read, with its line end
    /// ([`Stage::BigBulk`]).
    filling: Vec<u8>,
    /// Bytes searched for a line end, over the parser's life (tests check
    /// that each byte is searched once).
    #[cfg(test)]
    searched: usize,
}

impl Progress {
    /// Parses from `at` until a request, a skip, the end of `buf`, or an
    /// error.
    fn step(&mut self, buf: &[u8]) -> Step {
        loop {
            match self.stage {
                Stage::Start => {
                    let Some(&first) = buf.get(self.at) else { return Step::Incomplete };
                    self.scanned = self.at;
                    self.args.clear();
                    self.big.clear();
                    self.stage = if first == b'*' { Stage::Count } else { Stage::Inline };
                }
                Stage::Inline => {
                    let Some(newline) = self.find(buf, b'\n') else {
                        return if buf.len() - self.at > MAX_INLINE {
                            Step::Error(ProtocolError::TooBigInlineRequest)
                        } else {
                            Step::Incomplete
                        };
                    };
                    let line = &buf[self.at..newline];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let split = split_inline(line, &mut self.inline, &mut self.args);
                    self.advance(newline + 1);
                    self.stage = Stage::Start;
                    return match split {
                        Err(error) => Step::Error(error),
                        Ok(()) if self.args.is_empty() => Step::Skip,
                        Ok(()) => Step::Request { inline: true },
                    };
                }
                Stage::Count => {
                    let cr = match self.header(buf, ProtocolError::TooBigMultibulkCount) {
                        Ok(Some(cr)) => cr,
                        Ok(None) => return Step::Incomplete,
                        Err(error) => return Step::Error(error),
                    };
                    let count = match parse_i64(&buf[self.at + 1..cr]) {
                        Some(n) if n <= MAX_ARGS => n,
                        _ => return Step::Error(ProtocolError::InvalidMultibulkLength),
                    };
                    self.advance(cr + 2);
                    if count <= 0 {
                        self.stage = Stage::Start;
                        return Step::Skip;
                    }
                    let count = count as usize;
                    self.args.reserve(count.min(ARGS_UP_FRONT));
                    self.stage = Stage::Bulks { remaining: count, len: None };
                }
                Stage::Bulks { remaining, len: None } => {
                    let cr = match self.header(buf, ProtocolError::TooBigBulkCount) {
                        Ok(Some(cr)) => cr,
                        Ok(None) => return Step::Incomplete,
                        Err(error) => return Step::Error(error),
                    };
                    if buf[self.at] != b'$' {
                        return Step::Error(ProtocolError::ExpectedDollar(buf[self.at]));
                    }
                    let len = match parse_i64(&buf[self.at + 1..cr]) {
                        Some(n) if (0..=MAX_BULK).contains(&n) => n as usize,
                        _ => return Step::Error(ProtocolError::InvalidBulkLength),
                    };
                    self.advance(cr + 2);
                    self.stage = Stage::Bulks { remaining, len: Some(len) };
                }
                Stage::Bulks { remaining, len: Some(len) } => {
                    // The two bytes after a bulk string are not checked, as
                    // in Redis.
                    if buf.len() - self.at < len + 2 {
                        return Step::Incomplete;
                    }
                    self.args.push(Arg::In(self.at..self.at + len));
                    self.advance(self.at + len + 2);
                    if let Some(step) = self.bulk_done(remaining) {
                        return step;
                    }
                }
                Stage::BigBulk { remaining, len } => {
                    if self.filling.len() < len + 2 {
                        return Step::Incomplete;
                    }
                    self.filling.truncate(len);
                    self.args.push(Arg::Big(self.big.len()));
                    self.big.push(std::mem::take(&mut self.filling));
                    if let Some(step) = self.bulk_done(remaining) {
                        return step;
                    }
                }
            }
        }
    }

    /// A bulk string of the array was read, `remaining` counting it: the
    /// request, or on to the next.
    fn bulk_done(&mut self, remaining: usize) -> Option<Step> {
        if remaining == 1 {
            self.stage = Stage::Start;
            return Some(Step::Request { inline: false });
        }
        self.stage = Stage::Bulks { remaining: remaining - 1, len: None };
        None
    }

    fn advance(&mut self, to: usize) {
        self.at = to;
        self.scanned = to;
    }

    /// The first `byte` at or after `at`, searching only what was not
    /// searched before.
    fn find(&mut self, buf: &[u8], byte: u8) -> Option<usize> {
        let from = self.scanned.max(self.at);
        let found = buf[from..].iter().position(|&b| b == byte).map(|offset| from + offset);
        // A found byte is where the next search starts (the line may still
        // wait for the byte after it).
        self.scanned = found.unwrap_or(buf.len());
        #[cfg(test)]
        {
            self.searched += found.map_or(buf.len(), |at| at + 1) - from;
        }
        found
    }

    /// The `\r` ending the header line at `at`, once the byte after it has
    /// come too (Redis takes that byte as the `\n` without looking).
    fn header(&mut self, buf: &[u8], too_big: ProtocolError) -> Result<Option<usize>, ProtocolError> {
        match self.find(buf, b'\r') {
            None if buf.len() - self.at > MAX_INLINE => Err(too_big),
            Some(cr) if cr + 1 < buf.len() => Ok(Some(cr)),
            _ => Ok(None),
        }
    }

    /// The request just found, over `buf`.
    fn request<'a>(&'a mut self, buf: &'a [u8], inline: bool) -> Request<'a> {
        let source = if inline { &self.inline[..] } else { buf };
        Request { source, args: &self.args, big: &mut self.big }
    }

    /// The buffer lost its first `by` bytes (all before `at`).
    fn shift(&mut self, by: usize) {
        self.at -= by;
        self.scanned -= by;
        // Only an array under way has ranges of the buffer (those of a
        // request handed out are stale, and an inline command's are not
        // the buffer's).
        if let Stage::Bulks { .. } | Stage::BigBulk { .. } = self.stage {
            for arg in &mut self.args {
                if let Arg::In(range) = arg {
                    *range = range.start - by..range.end - by;
                }
            }
        }
    }

    /// Frees what a large request left (called between requests).
    fn release(&mut self) {
        if self.args.capacity() > ARGS_UP_FRONT {
            self.args = Vec::new();
        }
        // Large bulk strings not taken go now.
        self.big = Vec::new();
        if self.inline.capacity() > SHRINK_ABOVE {
            self.inline = Vec::new();
        }
    }

    /// Where the bulk string being read in the buffer ends (with its line
    /// end), if one is.
    fn bulk_end(&self) -> Option<usize> {
        match self.stage {
            Stage::Bulks { len: Some(len), .. } => Some(self.at + len + 2),
            _ => None,
        }
    }

    /// Moves the large bulk string being read out of `buf` (where only its
    /// first bytes are, and nothing after them) into a buffer of its own.
    fn go_big(&mut self, buf: &mut Vec<u8>) {
        let Stage::Bulks { remaining, len: Some(len) } = self.stage else { return };
        if len < BIG_ARG {
            return;
        }
        let mut filling = Vec::new();
        append_capped(&mut filling, &buf[self.at..], Some(len + 2));
        buf.truncate(self.at);
        self.filling = filling;
        self.stage = Stage::BigBulk { remaining, len };
    }

    /// How many bytes the large bulk string being read still needs.
    fn filling_needs(&self) -> usize {
        match self.stage {
            Stage::BigBulk { len, .. } => len + 2 - self.filling.len(),
            _ => 0,
        }
    }
}

/// Splits an inline command as Redis's `sdssplitargs` does: words separated
/// by spaces; `"..."` with `\n \r \t \b \a \\ \"` and `\xHH` escapes;
/// `'...'` with `\'`; a closing quote must be followed by a space or the
/// end; a NUL byte ends the line.
fn split_inline(line: &[u8], out: &mut Vec<u8>, ranges: &mut Vec<Arg>) -> Result<(), ProtocolError> {
    out.clear();
    ranges.clear();
    let line = line.iter().position(|&b| b == 0).map_or(line, |nul| &line[..nul]);
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
    let ends_word = |i: usize| line.get(i + 1).is_none_or(|&b| is_space(b));
    let mut i = 0;
    loop {
        while line.get(i).is_some_and(|&b| is_space(b)) {
            i += 1;
        }
        if i == line.len() {
            return Ok(());
        }
        let start = out.len();
        let (mut in_double, mut in_single, mut done) = (false, false, false);
        while !done {
            let c = line.get(i).copied();
            if in_double {
                match c {
                    Some(b'\\') if line.get(i + 1) == Some(&b'x') => {
                        match (hex(line.get(i + 2)), hex(line.get(i + 3))) {
                            (Some(high), Some(low)) => {
                                out.push((high * 16 + low) as u8);
                                i += 3;
                            }
                            _ => {
                                i += 1;
                                out.push(b'x');
                            }
                        }
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        out.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    Some(b'"') if ends_word(i) => done = true,
                    Some(b'"') | None => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b) => out.push(b),
                }
            } else if in_single {
                match c {
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        out.push(b'\'');
                    }
                    Some(b'\'') if ends_word(i) => done = true,
                    Some(b'\'') | None => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b) => out.push(b),
                }
            } else {
                match c {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => done = true,
                    Some(b'"') => in_double = true,
                    Some(b'\'') => in_single = true,
                    Some(b) => out.push(b),
                }
            }
            if i < line.len() {
                i += 1;
            }
        }
        ranges.push(Arg::In(start..out.len()));
    }
}

/// A connection's request parser: see the crate doc for its contract.
///
/// ```
/// let mut parser = resp::Parser::new();
/// parser.feed(b"*2\r\n$3\r\nGET\r\n$1".to_vec());
/// assert!(parser.next_request().unwrap().is_none());
/// parser.feed(b"\r\na\r\nPING\r\n".to_vec());
/// assert_eq!(parser.next_request().unwrap().unwrap().to_vecs(), [b"GET".to_vec(), b"a".to_vec()]);
/// assert_eq!(&parser.next_request().unwrap().unwrap()[0], b"PING");
/// assert!(parser.next_request().unwrap().is_none());
/// ```
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes received: those before `start` were handed out as requests.
    buf: Vec<u8>,
    /// Where the request under way starts.
    start: usize,
    progress: Progress,
    /// The error found, answered again if asked.
    failed: Option<ProtocolError>,
}

impl Parser {
    /// A parser with nothing received.
    pub fn new() -> Parser {
        Parser::default()
    }

    /// A parser that received `bytes` and parsed none of them (the form a
    /// parser is kept in across an upgrade).
    pub fn from_pending(bytes: Vec<u8>) -> Parser {
        Parser { buf: bytes, ..Parser::default() }
    }

    /// Bytes received and not handed out as requests yet, as a client
    /// would send them: the bytes themselves, or, once large bulk strings
    /// of the request under way were moved to their own buffers, the same
    /// request written again (canonical RESP, which parses the same).
    pub fn pending(&self) -> Cow<'_, [u8]> {
        let progress = &self.progress;
        let remaining = match progress.stage {
            Stage::BigBulk { remaining, .. } => remaining,
            Stage::Bulks { remaining, .. } if !progress.big.is_empty() => remaining,
            _ => return Cow::Borrowed(&self.buf[self.start..]),
        };
        let mut out = Vec::new();
        array(&mut out, progress.args.len() + remaining);
        for arg in &progress.args {
            bulk(
                &mut out,
                Some(match arg {
                    Arg::In(range) => &self.buf[range.clone()],
                    Arg::Big(k) => &progress.big[*k],
                }),
            );
        }
        match progress.stage {
            Stage::Bulks { len: Some(len), .. } | Stage::BigBulk { len, .. } => {
                out.push(b'$');
                decimal(&mut out, len as i64);
                out.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        out.extend_from_slice(&progress.filling);
        out.extend_from_slice(&self.buf[progress.at..]);
        Cow::Owned(out)
    }

    /// Bytes this parser holds in memory (its buffers' capacity).
    pub fn capacity(&self) -> usize {
        let progress = &self.progress;
        self.buf.capacity()
            + progress.inline.capacity()
            + progress.filling.capacity()
            + progress.big.iter().map(Vec::capacity).sum::<usize>()
            + progress.args.capacity() * std::mem::size_of::<Arg>()
    }

    /// Appends the bytes of a read.
    pub fn feed(&mut self, bytes: Vec<u8>) {
        if self.start == self.buf.len() {
            // Nothing pending: the read becomes the buffer.
            self.progress.shift(self.start);
            self.buf = bytes;
            self.start = 0;
            return;
        }
        self.feed_slice(&bytes);
    }

    /// As [`Parser::feed`], from a slice.
    pub fn feed_slice(&mut self, mut bytes: &[u8]) {
        let needs = self.progress.filling_needs();
        if needs > 0 {
            let (into_big, rest) = bytes.split_at(needs.min(bytes.len()));
            let Stage::BigBulk { len, .. } = self.progress.stage else { unreachable!("needs bytes") };
            append_capped(&mut self.progress.filling, into_big, Some(len + 2));
            bytes = rest;
            if bytes.is_empty() {
                return;
            }
        }
        self.compact(bytes.len());
        let end = self.progress.bulk_end();
        append_capped(&mut self.buf, bytes, end);
    }

    /// Drops the bytes handed out, before `incoming` more bytes arrive.
    fn compact(&mut self, incoming: usize) {
        if self.start == 0 {
            return;
        }
        let keep = self.buf.len() - self.start;
        if self.buf.capacity() > SHRINK_ABOVE && (keep + incoming) * 4 <= self.buf.capacity() {
            let mut fresh = Vec::with_capacity(keep + incoming);
            fresh.extend_from_slice(&self.buf[self.start..]);
            self.buf = fresh;
        } else {
            self.buf.drain(..self.start);
        }
        self.progress.shift(self.start);
        self.start = 0;
    }

    /// The next whole request in what was fed, if there is one. Errors are
    /// Redis's; after one, answer it and close the connection.
    ///
    /// # Errors
    /// [`ProtocolError`]: the bytes are not RESP.
    pub fn next_request(&mut self) -> Result<Option<Request<'_>>, ProtocolError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        loop {
            match self.progress.step(&self.buf) {
                Step::Request { inline } => {
                    self.start = self.progress.at;
                    return Ok(Some(self.progress.request(&self.buf, inline)));
                }
                Step::Skip => self.start = self.progress.at,
                Step::Incomplete => {
                    if self.start == self.buf.len() {
                        // All handed out: the memory goes back now, not at
                        // the next read.
                        self.progress.shift(self.start);
                        self.buf = Vec::new();
                        self.start = 0;
                        self.progress.release();
                    } else {
                        self.progress.go_big(&mut self.buf);
                    }
                    return Ok(None);
                }
                Step::Error(error) => {
                    self.failed = Some(error);
                    return Err(error);
                }
            }
        }
    }
}

/// Appends `bytes` to `vec`, growing it geometrically but never past
/// `end` if the bytes do not cross it (the end of the bulk string awaited).
fn append_capped(vec: &mut Vec<u8>, bytes: &[u8], end: Option<usize>) {
    let needed = vec.len() + bytes.len();
    if needed > vec.capacity() {
        let doubled = (vec.capacity() * 2).max(needed).max(64);
        let target = match end {
            Some(end) if end >= needed => doubled.min(end),
            _ => doubled,
        };
        vec.reserve_exact(target - vec.len());
    }
    vec.extend_from_slice(bytes);
}

/// Kept as its unconsumed bytes (MessagePack `bin`).
impl Serialize for Parser {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.pending())
    }
}

/// Reads the bytes [`Parser`]'s `Serialize` wrote (or a sequence of
/// integers, or text: any form of bytes).
impl<'de> Deserialize<'de> for Parser {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Parser, D::Error> {
        bytes::deserialize::<D, Vec<u8>>(deserializer).map(Parser::from_pending)
    }
}

/// Byte strings as MessagePack `bin` (`#[serde(with = "resp::bytes")]`):
/// relive-abi's, for the keys, values and parsers kv keeps in its state.
pub use relive_abi::bytes;

/// What [`parse`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A request (its arguments; the first is the command) that used the
    /// first `consumed` bytes.
    Request {
        /// The command and its arguments (never empty).
        args: Vec<Vec<u8>>,
        /// Bytes of the buffer it took.
        consumed: usize,
    },
    /// Nothing to run in the first `consumed` bytes (an empty line or an
    /// empty array): drop them.
    Skip {
        /// Bytes to drop.
        consumed: usize,
    },
    /// Not a whole request yet: read more.
    Incomplete,
    /// The bytes are not RESP; answer the error (`ERR Protocol error: ` and
    /// this text) and close the connection, as Redis does.
    Error(String),
}

/// Parses the request at the start of `buf`, from its first byte whatever
/// earlier calls saw (the one-shot form; a connection should keep a
/// [`Parser`]).
pub fn parse(buf: &[u8]) -> Parsed {
    let mut progress = Progress::default();
    match progress.step(buf) {
        Step::Request { inline } => {
            let args = progress.request(buf, inline).to_vecs();
            Parsed::Request { args, consumed: progress.at }
        }
        Step::Skip => Parsed::Skip { consumed: progress.at },
        Step::Incomplete => Parsed::Incomplete,
        Step::Error(error) => Parsed::Error(error.detail()),
    }
}

/// A decimal integer as Redis's `string2ll` reads one: an optional `-`,
/// then digits without leading zeros (`0` alone is zero), no sign `+`, no
/// spaces, within i64.
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'0'] => return Some(0),
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut value: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
    }
    if negative {
        if value > i64::MAX as u64 + 1 { None } else { Some((value as i64).wrapping_neg()) }
    } else {
        i64::try_from(value).ok()
    }
}

/// Appends a simple string (`+OK`).
pub fn simple(out: &mut Vec<u8>, text: &str) {
    out.push(b'+');
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends an error (`-ERR ...`); `text` starts with its kind (`ERR`).
pub fn error(out: &mut Vec<u8>, text: &str) {
    error_bytes(out, text.as_bytes());
}

/// Appends an error whose text is bytes (as Redis quotes arguments in
/// errors: as they came).
pub fn error_bytes(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'-');
    // An error is one line.
    out.extend(text.iter().map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal.
fn decimal(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends an integer (`:3`).
pub fn integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string, or the null bulk string (`$-1`) for `None`.
pub fn bulk(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.extend_from_slice(b"$-1\r\n"),
        Some(bytes) => {
            out.push(b'$');
            decimal(out, bytes.len() as i64);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends an array header (`*n`); its `n` elements follow.
pub fn array(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    decimal(out, n as i64);
    out.extend_from_slice(b"\r\n");
}

/// The error Redis 7 gives for a command it does not know (`args` from the
/// command on), byte for byte: the command and the first arguments quoted,
/// each cut at a NUL byte, 128 bytes of each at most.
pub fn unknown_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: impl IntoIterator<Item = A>) {
    const ROOM: usize = 128;
    let c_string = |bytes: &[u8]| -> Vec<u8> { bytes.iter().copied().take_while(|&b| b != 0).collect() };
    let mut args = args.into_iter();
    let mut text = b"ERR unknown command '".to_vec();
    if let Some(command) = args.next() {
        text.extend(c_string(command.as_ref()).into_iter().take(ROOM));
    }
    text.extend_from_slice(b"', with args beginning with: ");
    let mut listed = Vec::new();
    for arg in args {
        if listed.len() >= ROOM {
            break;
        }
        let room = ROOM - listed.len();
        listed.push(b'\'');
        listed.extend(c_string(arg.as_ref()).into_iter().take(room));
        listed.extend_from_slice(b"' ");
    }
    text.extend_from_slice(&listed);
    error_bytes(out, &text);
}

/// The error Redis gives for a wrong number of arguments.
pub fn wrong_arity(out: &mut Vec<u8>, command: &str) {
    error(out, &format!("ERR wrong number of arguments for '{command}' command"));
}

/// Bytes as text, for messages.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Bytes as Redis quotes them in messages and redis-cli shows them
/// (`sdscatrepr`): printable ASCII as is, `\n \r \t \a \b \\ \"` escaped,
/// anything else as `\xHH`, in double quotes.
pub fn quoted(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() + 2);
    text.push('"');
    for &b in bytes {
        match b {
            b'\\' => text.push_str("\\\\"),
            b'"' => text.push_str("\\\""),
            b'\n' => text.push_str("\\n"),
            b'\r' => text.push_str("\\r"),
            b'\t' => text.push_str("\\t"),
            0x07 => text.push_str("\\a"),
            0x08 => text.push_str("\\b"),
            b if b.is_ascii_graphic() || b == b' ' => text.push(b as char),
            b => text.push_str(&format!("\\x{b:02x}")),
        }
    }
    text.push('"');
    text
}

/// An argument as a decimal integer (RESP sends numbers as text), read as
/// Redis reads one ([`parse_i64`]).
pub fn int_arg(bytes: &[u8]) -> Option<i64> {
    parse_i64(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(args: &[&str], consumed: usize) -> Parsed {
        Parsed::Request { args: args.iter().map(|a| a.as_bytes().to_vec()).collect(), consumed }
    }

    fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Every request `parser` has whole now, or the error.
    fn drain(parser: &mut Parser, into: &mut Vec<Vec<Vec<u8>>>) -> Result<(), ProtocolError> {
        while let Some(args) = parser.next_request()? {
            into.push(args.to_vecs());
        }
        Ok(())
    }

    /// The requests in `stream`, fed in pieces cut at `cuts`.
    fn requests_cut_at(stream: &[u8], cuts: &[usize]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut parser = Parser::new();
        let mut found = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([&stream.len()]) {
            parser.feed(stream[from..cut].to_vec());
            drain(&mut parser, &mut found)?;
            from = cut;
        }
        Ok(found)
    }

    /// A stream of every kind of request: arrays, inline commands with
    /// quotes and escapes, empty lines and arrays, binary bulk strings.
    fn mixed_stream() -> (Vec<u8>, Vec<Vec<Vec<u8>>>) {
        let big = [b'x'; 300];
        let arrays: [&[&[u8]]; 3] =
            [&[b"SET", b"a", b"10"], &[b"GET", b"\xff\xfe\r\n\0"], &[b"SET", b"", &big]];
        let mut stream = encode(arrays[0]);
        stream.extend_from_slice(b"PING\r\n");
        stream.extend_from_slice(b"\r\n*0\r\n*-1\r\n\n");
        stream.extend_from_slice(b"set \"two words\" 'it\\'s' \"\\xff\\x00\\n\"\n");
        stream.extend_from_slice(&encode(arrays[1]));
        stream.extend_from_slice(&encode(arrays[2]));
        let owned = |args: &[&[u8]]| args.iter().map(|a| a.to_vec()).collect::<Vec<_>>();
        let expected = vec![
            owned(arrays[0]),
            owned(&[b"PING"]),
            owned(&[b"set", b"two words", b"it's", b"\xff\x00\n"]),
            owned(arrays[1]),
            owned(arrays[2]),
        ];
        (stream, expected)
    }

    #[test]
    fn a_stream_split_at_every_offset_gives_the_same_requests() {
        let (stream, expected) = mixed_stream();
        assert_eq!(requests_cut_at(&stream, &[]).unwrap(), expected);
        for cut in 0..=stream.len() {
            assert_eq!(requests_cut_at(&stream, &[cut]).unwrap(), expected, "cut at {cut}");
        }
        for a in (0..=stream.len()).step_by(7) {
            for b in a..=stream.len() {
                assert_eq!(requests_cut_at(&stream, &[a, b]).unwrap(), expected, "cut at {a} and {b}");
            }
        }
        let every_byte: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(requests_cut_at(&stream, &every_byte).unwrap(), expected);
    }

    #[test]
    fn each_byte_is_searched_once_however_the_request_is_cut() {
        // The hostile case of issue 15: a million-element array in 4 KiB
        // reads. Parsed again from its start at each read, it would search
        // about 900 times its 6 MiB.
        let count = MAX_ARGS as usize;
        let mut stream = format!("*{count}\r\n").into_bytes();
        for _ in 0..count {
            stream.extend_from_slice(b"$1\r\nx\r\n");
        }
        let mut parser = Parser::new();
        let mut found = None;
        for chunk in stream.chunks(4096) {
            parser.feed(chunk.to_vec());
            if let Some(args) = parser.next_request().unwrap() {
                found = Some((args.len(), args.iter().all(|a| a == b"x")));
            }
        }
        assert_eq!(found, Some((count, true)));
        assert!(
            parser.progress.searched <= stream.len(),
            "searched {} bytes of {}",
            parser.progress.searched,
            stream.len()
        );

        // A long inline command a byte at a time.
        let mut parser = Parser::new();
        let line = [&[b'a'; 60_000][..], b"\r\n"].concat();
        for &b in &line {
            parser.feed(vec![b]);
            if let Some(args) = parser.next_request().unwrap() {
                assert_eq!(args[0].len(), 60_000);
            }
        }
        assert!(parser.progress.searched <= line.len(), "searched {}", parser.progress.searched);
    }

    #[test]
    fn a_huge_bulk_string_is_read_into_its_own_buffer_and_handed_over_without_a_copy() {
        let len = 16 * 1024 * 1024 + 3;
        let header = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${len}\r\n");
        let mut parser = Parser::new();
        // The header and the first bytes of the value in one read.
        parser.feed([header.as_bytes(), &[b'v'; 100]].concat());
        assert!(parser.next_request().unwrap().is_none());
        let chunk = vec![b'v'; 65_536];
        let mut sent = 100;
        while sent < len {
            let n = chunk.len().min(len - sent);
            parser.feed_slice(&chunk[..n]);
            assert!(parser.next_request().unwrap().is_none());
            sent += n;
        }
        assert_eq!(parser.progress.filling.capacity(), len + 2, "grown to the value's size and no further");
        assert!(parser.buf.capacity() < 1024, "the buffer holds the header only: {}", parser.buf.capacity());
        // The line end, and the next request, in one read.
        parser.feed(b"\r\nPING\r\n".to_vec());
        let mut request = parser.next_request().unwrap().expect("the SET, whole");
        assert_eq!(request.len(), 3);
        assert_eq!(&request[1], b"k");
        let value = request.take(2);
        assert_eq!(value.len(), len);
        assert_eq!(value.capacity(), len + 2, "the parser's own buffer, not a copy");
        assert!(value.iter().all(|&b| b == b'v'));
        assert_eq!(&parser.next_request().unwrap().expect("the PING")[0], b"PING");
        assert!(parser.next_request().unwrap().is_none());
        let progress = &parser.progress;
        assert_eq!(
            (parser.buf.capacity(), progress.filling.capacity(), progress.big.capacity()),
            (0, 0, 0),
            "every buffer is freed once handed out"
        );

        // Announcing the largest bulk string allocates nothing.
        let mut parser = Parser::new();
        parser.feed(format!("*1\r\n${MAX_BULK}\r\n").into_bytes());
        assert!(parser.next_request().unwrap().is_none());
        assert!(parser.capacity() < 1024, "{}", parser.capacity());
        let mut parser = Parser::new();
        parser.feed(format!("*1\r\n${}\r\n", MAX_BULK + 1).into_bytes());
        assert_eq!(parser.next_request().unwrap_err(), ProtocolError::InvalidBulkLength);
    }

    #[test]
    fn large_arguments_split_anywhere_and_kept_as_pending_bytes_give_the_same_requests() {
        let big_a = vec![b'a'; BIG_ARG + 5];
        let big_b: Vec<u8> = (0..BIG_ARG * 2).map(|i| i as u8).collect();
        let arrays: [&[&[u8]]; 3] = [
            &[b"MSET", b"k1", &big_a, b"k2", b"small", b"k3", &big_b],
            &[b"GET", b"k1"],
            &[b"SET", b"k", &big_a],
        ];
        let stream: Vec<u8> = arrays.iter().flat_map(|args| encode(args)).collect();
        let expected: Vec<Vec<Vec<u8>>> =
            arrays.iter().map(|args| args.iter().map(|a| a.to_vec()).collect()).collect();
        let interesting: Vec<usize> = (0..=stream.len())
            .filter(|&at| {
                at < 200 || at % 997 == 0 || stream.len() - at < 200 || (BIG_ARG..BIG_ARG + 64).contains(&at)
            })
            .collect();
        for &cut in &interesting {
            assert_eq!(requests_cut_at(&stream, &[cut]).unwrap(), expected, "cut at {cut}");
            // Kept as its pending bytes at the cut (as across an upgrade),
            // then fed the rest in 4 KiB reads.
            let mut parser = Parser::new();
            let mut found = Vec::new();
            parser.feed(stream[..cut].to_vec());
            drain(&mut parser, &mut found).unwrap();
            let mut kept = Parser::from_pending(parser.pending().into_owned());
            for chunk in stream[cut..].chunks(4096) {
                kept.feed(chunk.to_vec());
                drain(&mut kept, &mut found).unwrap();
            }
            drain(&mut kept, &mut found).unwrap();
            assert_eq!(found, expected, "kept at {cut}");
        }
    }

    #[test]
    fn consumed_bytes_are_dropped_and_large_buffers_given_back() {
        let mut parser = Parser::new();
        let big = encode(&[b"SET", b"k", &vec![b'v'; 1 << 20]]);
        let mut stream = big.clone();
        stream.extend_from_slice(b"*2\r\n$3\r\nGET");
        parser.feed(stream);
        assert_eq!(parser.next_request().unwrap().unwrap()[2].len(), 1 << 20);
        assert!(parser.next_request().unwrap().is_none());
        assert_eq!(&*parser.pending(), b"*2\r\n$3\r\nGET");
        parser.feed(b"\r\n$1\r\nk\r\n".to_vec());
        assert!(parser.capacity() < 1024, "the 1 MiB buffer was replaced: {}", parser.capacity());
        assert_eq!(parser.next_request().unwrap().unwrap().to_vecs(), [b"GET".to_vec(), b"k".to_vec()]);
    }

    #[test]
    fn a_parser_is_kept_as_its_pending_bytes() {
        let mut parser = Parser::new();
        parser.feed(b"PING\r\n*2\r\n$3\r\nGET\r\n$1\r\n".to_vec());
        assert_eq!(&parser.next_request().unwrap().unwrap()[0], b"PING");
        assert!(parser.next_request().unwrap().is_none());
        let mut kept = Parser::from_pending(parser.pending().to_vec());
        kept.feed(b"k\r\n".to_vec());
        assert_eq!(kept.next_request().unwrap().unwrap().to_vecs(), [b"GET".to_vec(), b"k".to_vec()]);
    }

    #[test]
    fn protocol_errors_are_redis_words() {
        let error = |bytes: &[u8]| {
            let mut parser = Parser::new();
            parser.feed(bytes.to_vec());
            loop {
                match parser.next_request() {
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(error) => {
                        assert_eq!(parser.next_request().unwrap_err(), error, "the error sticks");
                        let mut out = Vec::new();
                        error.reply(&mut out);
                        return Some(String::from_utf8_lossy(&out).into_owned());
                    }
                }
            }
        };
        let reply = |text: &str| Some(format!("-ERR Protocol error: {text}\r\n"));
        // Each as redis-server 7.0 answers it.
        assert_eq!(error(b"*x\r\n"), reply("invalid multibulk length"));
        assert_eq!(error(b"*+1\r\n"), reply("invalid multibulk length"));
        assert_eq!(error(b"*01\r\n"), reply("invalid multibulk length"));
        assert_eq!(error(b"*1 \r\n"), reply("invalid multibulk length"));
        assert_eq!(error(b"*3000000000\r\n"), reply("invalid multibulk length"));
        assert_eq!(error(b"*1\r\n+a\r\n"), reply("expected '$', got '+'"));
        assert_eq!(error(b"*1\r\n$-3\r\n"), reply("invalid bulk length"));
        assert_eq!(error(b"*1\r\n$-1\r\n"), reply("invalid bulk length"));
        assert_eq!(error(b"*1\r\n$+4\r\n"), reply("invalid bulk length"));
        assert_eq!(error(b"*1\r\n$600000000\r\n"), reply("invalid bulk length"));
        assert_eq!(
            error(&[b"*".as_slice(), &[b'1'; MAX_INLINE + 1]].concat()),
            reply("too big mbulk count string")
        );
        assert_eq!(
            error(&[b"*1\r\n$".as_slice(), &[b'1'; MAX_INLINE]].concat()),
            reply("too big bulk count string")
        );
        assert_eq!(error(&[b'a'; MAX_INLINE + 1]), reply("too big inline request"));
        assert_eq!(error(b"SET \"a b c\r\n"), reply("unbalanced quotes in request"));
        assert_eq!(error(b"SET \"a\"b c\r\n"), reply("unbalanced quotes in request"));
        assert_eq!(error(b"GET 'a\r\n"), reply("unbalanced quotes in request"));
        // Not errors: waiting for more, or what Redis accepts.
        assert_eq!(error(&[b'a'; MAX_INLINE]), None);
        assert_eq!(error(b"*1\r\n$4\r\nPINGxx"), None, "the bulk string's line end is not checked");
        assert_eq!(error(b"*1\r"), None, "the byte after \\r is awaited");
        let mut out = Vec::new();
        ProtocolError::ExpectedDollar(0xff).reply(&mut out);
        assert_eq!(out, b"-ERR Protocol error: expected '$', got '\xff'\r\n");
    }

    #[test]
    fn one_shot_parse() {
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$2\r\n10\r\n";
        assert_eq!(parse(set), request(&["SET", "a", "10"], set.len()));
        for cut in 0..set.len() {
            assert_eq!(parse(&set[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        assert_eq!(parse(b"PING\r\n"), request(&["PING"], 6));
        assert_eq!(parse(b"set  a b\n"), request(&["set", "a", "b"], 9));
        assert_eq!(parse(b"PIN"), Parsed::Incomplete);
        assert_eq!(parse(b"\r\n"), Parsed::Skip { consumed: 2 });
        assert_eq!(parse(b"*0\r\n"), Parsed::Skip { consumed: 4 });
        let mut two = set.to_vec();
        two.extend_from_slice(b"PING\r\n");
        assert_eq!(parse(&two), request(&["SET", "a", "10"], set.len()));
        assert_eq!(parse(&two[set.len()..]), request(&["PING"], 6));
        assert_eq!(parse(b"*1\r\n+a\r\n"), Parsed::Error("expected '$', got '+'".into()));
    }

    #[test]
    fn integers_as_redis_reads_them() {
        for (text, value) in [
            ("0", Some(0)),
            ("-1", Some(-1)),
            ("42", Some(42)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("99999999999999999999", None),
            ("01", None),
            ("-0", None),
            ("+1", None),
            (" 1", None),
            ("1 ", None),
            ("", None),
            ("-", None),
            ("1.5", None),
        ] {
            assert_eq!(parse_i64(text.as_bytes()), value, "{text:?}");
        }
    }

    #[test]
    fn replies() {
        let mut out = Vec::new();
        simple(&mut out, "OK");
        integer(&mut out, -2);
        integer(&mut out, i64::MIN);
        bulk(&mut out, Some(b"hi"));
        bulk(&mut out, None);
        array(&mut out, 0);
        unknown_command(&mut out, [b"foo".as_slice(), b"x"]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+OK\r\n:-2\r\n:-9223372036854775808\r\n$2\r\nhi\r\n$-1\r\n*0\r\n-ERR unknown command 'foo', with args beginning with: 'x' \r\n"
        );
        assert_eq!(quoted(b"a \"b\"\xff\n\\"), r#""a \"b\"\xff\n\\""#);
        let mut out = Vec::new();
        unknown_command(&mut out, [b"nosuch".as_slice()]);
        let long = [b'a'; 200];
        unknown_command(&mut out, [b"x\0y".as_slice(), &long[..100], &long[..100], b"never"]);
        let expected = format!(
            "-ERR unknown command 'nosuch', with args beginning with: \r\n\
             -ERR unknown command 'x', with args beginning with: '{}' '{}' \r\n",
            "a".repeat(100),
            "a".repeat(25)
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected, "as redis-server 7.0 words them");
    }
}
