//! Before the timed run: the settings checked, the server resolved, the keys made, memcached
//! preloaded, and the generating thread placed (pinned, real-time, fine timer slack).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::engine::CONNECT_TIMEOUT;
use super::{LoadgenConfig, LoadgenError};
use crate::sense::memcache::Conn;
use crate::sense::memcache::proto::{self, Reply};
use crate::sys::clock::monotonic_ns;
use crate::sys::epoll::{Epoll, Interest};

const MAX_CONNECTIONS: usize = 1024;
const MAX_KEYS: u64 = 50_000_000;

/// Refuses settings the generator cannot honour, naming the flag.
pub(super) fn check(cfg: &LoadgenConfig) -> Result<(), LoadgenError> {
    let bad = |s: String| Err(LoadgenError::Config(s));
    if cfg.connections == 0 || cfg.connections > MAX_CONNECTIONS {
        return bad(format!(
            "--connections {} must be 1..={MAX_CONNECTIONS}",
            cfg.connections
        ));
    }
    if cfg.keys == 0 || cfg.keys > MAX_KEYS {
        return bad(format!("--keys {} must be 1..={MAX_KEYS}", cfg.keys));
    }
    let digits = cfg.keys.to_string().len();
    if cfg.key_size < digits + 1 || cfg.key_size > proto::MAX_KEY {
        return bad(format!(
            "--key-size {} must be {}..={} for {} keys",
            cfg.key_size,
            digits + 1,
            proto::MAX_KEY,
            cfg.keys
        ));
    }
    if cfg.value_size > 1 << 20 {
        return bad(format!("--value-size {} is above 1 MiB", cfg.value_size));
    }
    if !(0.0..=1.0).contains(&cfg.set_ratio) {
        return bad(format!("--set-ratio {} must be in [0, 1]", cfg.set_ratio));
    }
    if cfg.duration.is_zero() || cfg.interval < Duration::from_millis(10) {
        return bad("duration must be positive and the interval at least 10 ms".into());
    }
    if cfg.tick > Duration::from_millis(100) {
        return bad("tick must be at most 100 ms".into());
    }
    Ok(())
}

pub(super) fn resolve(server: &str) -> Result<SocketAddr, LoadgenError> {
    let why = |why: String| LoadgenError::Resolve {
        server: server.into(),
        why,
    };
    server
        .to_socket_addrs()
        .map_err(|e| why(e.to_string()))?
        .next()
        .ok_or_else(|| why("no address".into()))
}

/// Keys `k000…0042`, all `key_size` long, in one flat buffer.
pub(super) fn make_keys(n: u64, size: usize) -> Vec<u8> {
    let mut keys = Vec::with_capacity(n as usize * size);
    for i in 0..n {
        let s = format!("k{:0width$}", i, width = size - 1);
        keys.extend_from_slice(s.as_bytes());
    }
    keys
}

/// Sets every key once, pipelined in batches, before the timed run.
pub(super) fn preload(
    addr: SocketAddr,
    cfg: &LoadgenConfig,
    keys: &[u8],
    value: &[u8],
) -> Result<(), LoadgenError> {
    const BATCH: u64 = 512;
    let err = |s: String| LoadgenError::Preload(s);
    let mut c = Conn::connect(&addr, CONNECT_TIMEOUT)
        .map_err(|source| LoadgenError::Connect { addr, source })?;
    let mut epoll = Epoll::new(1).map_err(LoadgenError::Epoll)?;
    epoll
        .add(c.fd(), 0, Interest::READ)
        .map_err(LoadgenError::Epoll)?;
    let deadline = monotonic_ns() + 120_000_000_000;
    let mut k = 0u64;
    while k < cfg.keys {
        let n = BATCH.min(cfg.keys - k);
        for i in k..k + n {
            let off = i as usize * cfg.key_size;
            proto::encode_set(c.out(), &keys[off..off + cfg.key_size], value);
        }
        let mut stored = 0;
        while stored < n {
            if monotonic_ns() > deadline {
                return Err(err("memcached did not answer within 120 s".into()));
            }
            c.flush().map_err(|e| err(format!("write: {e}")))?;
            let wait = if c.unsent() > 0 { 1 } else { 100 };
            epoll
                .wait(Some(Duration::from_millis(wait)), |_| {})
                .map_err(LoadgenError::Epoll)?;
            c.fill().map_err(|e| err(format!("read: {e}")))?;
            let mut used = 0;
            while let Some((reply, m)) =
                proto::parse_reply(&c.pending()[used..]).map_err(|e| err(e.to_string()))?
            {
                used += m;
                if reply != Reply::Stored {
                    return Err(err(format!("memcached answered {reply} to a set")));
                }
                stored += 1;
            }
            c.consume(used);
        }
        k += n;
    }
    Ok(())
}

/// Pins the calling thread to `cfg.cpu` and switches it to `SCHED_FIFO` when asked, and asks
/// for 1 µs timer slack (best effort) so that sends leave on time.
pub(super) fn place_thread(cfg: &LoadgenConfig) -> Result<(), LoadgenError> {
    if let Some(cpu) = cfg.cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            return Err(LoadgenError::Sched {
                what: "pin to the requested CPU",
                source: std::io::Error::other(format!("CPU {cpu} is not available")),
            });
        }
    }
    if let Some(prio) = cfg.realtime {
        crate::sys::sched::set_fifo(prio).map_err(|source| LoadgenError::Sched {
            what: "switch to SCHED_FIFO (needs root or CAP_SYS_NICE)",
            source,
        })?;
    }
    let _ = crate::sys::sched::set_timer_slack_ns(1_000);
    Ok(())
}
