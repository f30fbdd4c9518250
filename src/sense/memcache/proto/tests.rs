//! Protocol parser tests on captured replies, split reads and garbage.

use super::*;

const HIT: &[u8] = include_bytes!("../../../../tests/fixtures/memcache/get_hit.bin");
const MULTI: &[u8] = include_bytes!("../../../../tests/fixtures/memcache/get_multi_cas.bin");
const STATS: &[u8] = include_bytes!("../../../../tests/fixtures/memcache/stats.txt");

#[test]
fn parses_real_replies() {
    assert_eq!(
        parse_reply(HIT).unwrap(),
        Some((Reply::Values { hits: 1 }, HIT.len()))
    );
    assert_eq!(
        parse_reply(MULTI).unwrap(),
        Some((Reply::Values { hits: 2 }, MULTI.len()))
    );
    assert_eq!(
        parse_reply(b"END\r\n").unwrap(),
        Some((Reply::Values { hits: 0 }, 5))
    );
    for (text, reply) in [
        (&b"STORED\r\n"[..], Reply::Stored),
        (b"NOT_STORED\r\n", Reply::NotStored),
        (b"EXISTS\r\n", Reply::Exists),
        (b"NOT_FOUND\r\n", Reply::NotFound),
        (b"DELETED\r\n", Reply::Deleted),
        (b"ERROR\r\n", Reply::Failed { server: false }),
        (
            b"CLIENT_ERROR bad data chunk\r\n",
            Reply::Failed { server: false },
        ),
        (
            b"SERVER_ERROR out of memory storing object\r\n",
            Reply::Failed { server: true },
        ),
    ] {
        assert_eq!(parse_reply(text).unwrap(), Some((reply, text.len())));
    }
}

#[test]
fn every_split_point_needs_more_bytes_then_parses() {
    let mut stream = Vec::new();
    stream.extend_from_slice(MULTI);
    stream.extend_from_slice(b"END\r\n");
    stream.extend_from_slice(HIT);
    for cut in 0..MULTI.len() {
        assert_eq!(parse_reply(&MULTI[..cut]).unwrap(), None, "cut at {cut}");
    }
    // Pipelined replies in one buffer come out one by one.
    let mut at = 0;
    let mut got = Vec::new();
    while let Some((r, used)) = parse_reply(&stream[at..]).unwrap() {
        got.push(r);
        at += used;
    }
    assert_eq!(at, stream.len());
    assert_eq!(
        got,
        vec![
            Reply::Values { hits: 2 },
            Reply::Values { hits: 0 },
            Reply::Values { hits: 1 }
        ]
    );
}

#[test]
fn a_value_containing_end_is_data_not_a_terminator() {
    let r = b"VALUE k 0 7\r\nEND\r\nxy\r\nEND\r\n";
    assert_eq!(
        parse_reply(r).unwrap(),
        Some((Reply::Values { hits: 1 }, r.len()))
    );
}

#[test]
fn garbage_is_reported_not_panicked_on() {
    for bad in [
        &b"HTTP/1.1 400 Bad Request\r\n"[..],
        b"VALUE k 0 notanumber\r\n",
        b"VALUE k 0\r\n",
        b"VALUE k 0 3\r\nabcXY",
        b"VALUE k 0 1\r\na\r\nSTORED\r\n",
        b"\r\n",
    ] {
        assert!(
            matches!(parse_reply(bad), Err(ProtoError::Garbage { .. })),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        parse_reply(&[b'x'; MAX_LINE + 1]),
        Err(ProtoError::LineTooLong)
    );
    assert_eq!(
        parse_reply(&[b'x'; 100]).unwrap(),
        None,
        "a short partial line may still end"
    );
    assert!(matches!(
        parse_reply(b"VALUE k 0 999999999999\r\n"),
        Err(ProtoError::ValueTooLarge { .. })
    ));
}

#[test]
fn parses_stats_and_splits() {
    let (s, used) = parse_stats(STATS).unwrap().unwrap();
    assert_eq!(used, STATS.len());
    assert!(s.pid > 0);
    assert_eq!(s.threads, 1);
    assert!(s.cmd_get >= 2 && s.cmd_set >= 1, "{s:?}");
    for cut in [0, 10, STATS.len() / 2, STATS.len() - 1] {
        assert_eq!(parse_stats(&STATS[..cut]).unwrap(), None);
    }
    assert!(parse_stats(b"STAT cmd_get lots\r\nEND\r\n").is_err());
    assert!(parse_stats(b"VALUE x 0 1\r\n").is_err());
}

#[test]
fn encodes_requests_and_checks_keys() {
    let mut out = Vec::new();
    encode_get(&mut out, b"k1");
    encode_set(&mut out, b"k2", b"hello");
    assert_eq!(out, b"get k1\r\nset k2 0 0 5\r\nhello\r\n");
    assert!(check_key("lowsched:probe").is_ok());
    for bad in ["", "has space", "ctl\u{1}", &"k".repeat(251)] {
        assert!(check_key(bad).is_err(), "{bad:?}");
    }
}

proptest::proptest! {
    #[test]
    fn never_panics_on_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let _ = parse_reply(&bytes);
        let _ = parse_stats(&bytes);
    }
}
