//! Text-protocol encoding and parsing. The parser is incremental: it reports "need more bytes"
//! for a partial reply (split reads), and a clear error for garbage, after which the stream is out
//! of sync and the connection must be dropped.

/// Longest reply line accepted (a `VALUE` header with a 250-byte key fits easily).
pub const MAX_LINE: usize = 4096;
/// Largest value accepted in a reply (memcached's item limit is 1 MiB by default).
pub const MAX_VALUE: usize = 128 << 20;
/// Longest key memcached accepts.
pub const MAX_KEY: usize = 250;

/// One complete reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A `get`'s answer: how many keys were found before `END`.
    Values {
        hits: u32,
    },
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    /// `ERROR`, `CLIENT_ERROR …` or `SERVER_ERROR …`: the request failed, the stream is in sync.
    Failed {
        server: bool,
    },
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Values { hits } => write!(f, "VALUE ({hits} found)"),
            Reply::Stored => f.write_str("STORED"),
            Reply::NotStored => f.write_str("NOT_STORED"),
            Reply::Exists => f.write_str("EXISTS"),
            Reply::NotFound => f.write_str("NOT_FOUND"),
            Reply::Deleted => f.write_str("DELETED"),
            Reply::Failed { server: true } => f.write_str("SERVER_ERROR"),
            Reply::Failed { server: false } => f.write_str("ERROR"),
        }
    }
}

/// The stream cannot be parsed any further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("memcached sent garbage: {}", crate::model::text::quoted(.line))]
    Garbage { line: String },
    #[error("memcached sent a line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("memcached announced a {len}-byte value, more than the {MAX_VALUE} accepted")]
    ValueTooLarge { len: usize },
    #[error("bad key {}: 1 to {MAX_KEY} bytes, no spaces or control characters", crate::model::text::quoted(.key))]
    BadKey { key: String },
}

fn garbage(line: &[u8]) -> ProtoError {
    ProtoError::Garbage {
        line: String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned(),
    }
}

/// The next line of `buf` without its `\r\n`, and the offset after it; `None` if incomplete.
fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ProtoError> {
    match memchr::memchr(b'\n', buf) {
        Some(i) => {
            let l = &buf[..i];
            Ok(Some((l.strip_suffix(b"\r").unwrap_or(l), i + 1)))
        }
        None if buf.len() > MAX_LINE => Err(ProtoError::LineTooLong),
        None => Ok(None),
    }
}

/// Parses one reply from the front of `buf`: the reply and the bytes it used, `None` when more
/// bytes are needed.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtoError> {
    let mut at = 0;
    let mut hits = 0u32;
    loop {
        let Some((l, next)) = line(&buf[at..])? else {
            return Ok(None);
        };
        if let Some(header) = l.strip_prefix(b"VALUE ") {
            // VALUE <key> <flags> <bytes> [<cas>]
            let mut tokens = header.split(|&b| b == b' ').filter(|t| !t.is_empty());
            let len = tokens
                .nth(2)
                .and_then(parse_usize)
                .ok_or_else(|| garbage(l))?;
            if len > MAX_VALUE {
                return Err(ProtoError::ValueTooLarge { len });
            }
            let data = at + next;
            let end = data + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(garbage(&buf[end..(end + 16).min(buf.len())]));
            }
            hits += 1;
            at = end + 2;
            continue;
        }
        let reply = match l {
            b"END" => Reply::Values { hits },
            _ if hits > 0 => return Err(garbage(l)),
            b"STORED" => Reply::Stored,
            b"NOT_STORED" => Reply::NotStored,
            b"EXISTS" => Reply::Exists,
            b"NOT_FOUND" => Reply::NotFound,
            b"DELETED" => Reply::Deleted,
            b"ERROR" => Reply::Failed { server: false },
            _ if l.starts_with(b"CLIENT_ERROR") => Reply::Failed { server: false },
            _ if l.starts_with(b"SERVER_ERROR") => Reply::Failed { server: true },
            _ => return Err(garbage(l)),
        };
        return Ok(Some((reply, at + next)));
    }
}

fn parse_usize(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0usize, |v, &b| {
        v.checked_mul(10)?.checked_add(usize::from(b - b'0'))
    })
}

/// The counters of a `stats` reply that lowsched uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub pid: u64,
    pub uptime: u64,
    pub cmd_get: u64,
    pub cmd_set: u64,
    pub get_hits: u64,
    pub get_misses: u64,
    pub curr_connections: u64,
    pub threads: u64,
}

/// Parses a whole `stats` reply (`STAT name value` lines up to `END`).
pub fn parse_stats(buf: &[u8]) -> Result<Option<(Stats, usize)>, ProtoError> {
    let mut at = 0;
    let mut s = Stats::default();
    loop {
        let Some((l, next)) = line(&buf[at..])? else {
            return Ok(None);
        };
        at += next;
        if l == b"END" {
            return Ok(Some((s, at)));
        }
        let Some(rest) = l.strip_prefix(b"STAT ") else {
            return Err(garbage(l));
        };
        let Some(sp) = memchr::memchr(b' ', rest) else {
            return Err(garbage(l));
        };
        let (name, value) = (&rest[..sp], &rest[sp + 1..]);
        let field = match name {
            b"pid" => &mut s.pid,
            b"uptime" => &mut s.uptime,
            b"cmd_get" => &mut s.cmd_get,
            b"cmd_set" => &mut s.cmd_set,
            b"get_hits" => &mut s.get_hits,
            b"get_misses" => &mut s.get_misses,
            b"curr_connections" => &mut s.curr_connections,
            b"threads" => &mut s.threads,
            _ => continue,
        };
        *field = parse_usize(value).ok_or_else(|| garbage(l))? as u64;
    }
}

/// Checks a key against memcached's rules.
pub fn check_key(key: &str) -> Result<(), ProtoError> {
    let ok = !key.is_empty() && key.len() <= MAX_KEY && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ProtoError::BadKey { key: key.into() })
    }
}

/// Appends `get <key>\r\n`.
pub fn encode_get(out: &mut Vec<u8>, key: &[u8]) {
    out.extend_from_slice(b"get ");
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\n");
}

/// Appends `set <key> 0 0 <len>\r\n<value>\r\n`.
pub fn encode_set(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    use std::io::Write;
    out.extend_from_slice(b"set ");
    out.extend_from_slice(key);
    let _ = write!(out, " 0 0 {}\r\n", value.len()); // writing to a Vec cannot fail
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
