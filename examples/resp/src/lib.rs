//! RESP2, the Redis serialization protocol, as far as a server needs it:
//! an incremental request parser ([`parse`]) and reply writers.
//!
//! Requests are arrays of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\na\r\n`), as
//! redis-cli and redis-benchmark send them, or inline commands (`PING\r\n`,
//! words separated by spaces), as people type them over telnet. A request
//! may arrive split across reads and one read may hold many (pipelining):
//! the caller keeps a buffer per connection, appends what it reads, and
//! calls [`parse`] until it answers [`Parsed::Incomplete`].

/// The longest inline command, and the longest buffered partial one, as in
/// Redis (64 KiB).
pub const MAX_INLINE: usize = 64 * 1024;
/// The most arguments one request may have (Redis: 1024 * 1024).
pub const MAX_ARGS: i64 = 1024 * 1024;
/// The longest bulk string (Redis: 512 MiB).
pub const MAX_BULK: i64 = 512 * 1024 * 1024;
/// The longest `*N` or `$N` header line.
const MAX_HEADER: usize = 32;

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
    /// The bytes are not RESP; answer the error (`Protocol error: ...`) and
    /// close the connection, as Redis does.
    Error(String),
}

/// Parses the request at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    match buf.first() {
        None => Parsed::Incomplete,
        Some(b'*') => parse_array(buf),
        Some(_) => parse_inline(buf),
    }
}

/// The line starting at `from` (without its `\r\n`) and where the next
/// starts, or `None` if no `\r\n` came yet. Header lines are short: a longer
/// one is an error.
fn header(buf: &[u8], from: usize) -> Result<Option<(&[u8], usize)>, String> {
    let rest = &buf[from..];
    let window = &rest[..rest.len().min(MAX_HEADER + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(at) => Ok(Some((&rest[..at], from + at + 2))),
        None if window.len() > MAX_HEADER => Err("too big header line".to_string()),
        None => Ok(None),
    }
}

fn number(text: &[u8]) -> Option<i64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn parse_array(buf: &[u8]) -> Parsed {
    let (line, mut at) = match header(buf, 0) {
        Ok(Some(found)) => found,
        Ok(None) => return Parsed::Incomplete,
        Err(e) => return Parsed::Error(e),
    };
    let count = match number(&line[1..]) {
        Some(n) if n <= MAX_ARGS => n,
        _ => return Parsed::Error("invalid multibulk length".to_string()),
    };
    if count <= 0 {
        return Parsed::Skip { consumed: at };
    }
    let mut args = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let Some(&first) = buf.get(at) else { return Parsed::Incomplete };
        if first != b'$' {
            return Parsed::Error(format!("expected '$', got '{}'", first as char));
        }
        let (line, start) = match header(buf, at) {
            Ok(Some(found)) => found,
            Ok(None) => return Parsed::Incomplete,
            Err(e) => return Parsed::Error(e),
        };
        let len = match number(&line[1..]) {
            Some(n) if (0..=MAX_BULK).contains(&n) => n as usize,
            _ => return Parsed::Error("invalid bulk length".to_string()),
        };
        let end = start + len;
        if buf.len() < end + 2 {
            return Parsed::Incomplete;
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Parsed::Error("bulk string not followed by CRLF".to_string());
        }
        args.push(buf[start..end].to_vec());
        at = end + 2;
    }
    Parsed::Request { args, consumed: at }
}

fn parse_inline(buf: &[u8]) -> Parsed {
    let Some(newline) = buf.iter().take(MAX_INLINE + 1).position(|&b| b == b'\n') else {
        return if buf.len() > MAX_INLINE {
            Parsed::Error("too big inline request".to_string())
        } else {
            Parsed::Incomplete
        };
    };
    let mut line = &buf[..newline];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    let args: Vec<Vec<u8>> =
        line.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()).map(<[u8]>::to_vec).collect();
    if args.is_empty() {
        Parsed::Skip { consumed: newline + 1 }
    } else {
        Parsed::Request { args, consumed: newline + 1 }
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
    out.push(b'-');
    // An error is one line.
    out.extend(text.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

/// Appends an integer (`:3`).
pub fn integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string, or the null bulk string (`$-1`) for `None`.
pub fn bulk(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.extend_from_slice(b"$-1\r\n"),
        Some(bytes) => {
            out.push(b'$');
            out.extend_from_slice(bytes.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends an array header (`*n`); its `n` elements follow.
pub fn array(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The error Redis gives for a command it does not know.
pub fn unknown_command(out: &mut Vec<u8>, args: &[Vec<u8>]) {
    let mut text = format!("ERR unknown command '{}', with args beginning with:", lossy(&args[0]));
    for arg in args[1..].iter().take(4) {
        text.push_str(&format!(" '{}'", lossy(arg)));
    }
    error(out, &text);
}

/// The error Redis gives for a wrong number of arguments.
pub fn wrong_arity(out: &mut Vec<u8>, command: &str) {
    error(out, &format!("ERR wrong number of arguments for '{command}' command"));
}

/// Bytes as text, for messages.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An argument as a decimal integer (RESP sends numbers as text).
pub fn int_arg(bytes: &[u8]) -> Option<i64> {
    number(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(args: &[&str], consumed: usize) -> Parsed {
        Parsed::Request { args: args.iter().map(|a| a.as_bytes().to_vec()).collect(), consumed }
    }

    #[test]
    fn arrays_inline_and_partial() {
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
    }

    #[test]
    fn protocol_errors() {
        assert!(matches!(parse(b"*x\r\n"), Parsed::Error(_)));
        assert!(matches!(parse(b"*1\r\n+a\r\n"), Parsed::Error(_)));
        assert!(matches!(parse(b"*1\r\n$-3\r\n"), Parsed::Error(_)));
        assert!(matches!(parse(b"*1\r\n$1\r\nabc"), Parsed::Error(_)));
        assert!(matches!(parse(&[b'*'; 100]), Parsed::Error(_)));
        assert!(matches!(parse(&vec![b'a'; MAX_INLINE + 1]), Parsed::Error(_)));
    }

    #[test]
    fn replies() {
        let mut out = Vec::new();
        simple(&mut out, "OK");
        integer(&mut out, -2);
        bulk(&mut out, Some(b"hi"));
        bulk(&mut out, None);
        array(&mut out, 0);
        unknown_command(&mut out, &[b"foo".to_vec(), b"x".to_vec()]);
        assert_eq!(
            out,
            b"+OK\r\n:-2\r\n$2\r\nhi\r\n$-1\r\n*0\r\n-ERR unknown command 'foo', with args beginning with: 'x'\r\n"
        );
    }
}
