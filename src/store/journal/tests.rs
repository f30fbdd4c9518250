//! Journal tests: replay, torn tails and corrupt lines, group commit, compaction, a full disk.

use super::*;
use crate::model::job::JobSpec;
use crate::model::jobstate::JobState;

fn owner() -> Owner {
    Owner {
        uid: 1000,
        gid: 1000,
        user: "alice".into(),
    }
}

fn submitted(id: u64) -> Record {
    Record::Submitted {
        id: JobId(id),
        spec: Box::new(JobSpec::new(vec!["true".into()])),
        owner: owner(),
        submitted: Timestamp(id * 10),
    }
}

fn ended(id: u64, at: u64) -> Record {
    Record::Ended {
        id: JobId(id),
        ending: Ending {
            state: JobState::Succeeded,
            exit_code: Some(0),
            signal: None,
            reason: None,
            at: Timestamp(at),
        },
    }
}

#[test]
fn the_journal_is_private_to_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let mode = || fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    // An older, world-readable journal is tightened on open.
    fs::write(&path, "").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let (j, _) = Journal::open(dir.path()).unwrap();
    assert_eq!(mode(), 0o600);
    j.append_sync(&submitted(1)).unwrap();
    j.compact(10).unwrap();
    assert_eq!(mode(), 0o600);
    drop(j);
    fs::remove_file(&path).unwrap();
    let _ = Journal::open(dir.path()).unwrap();
    assert_eq!(mode(), 0o600);
}

#[test]
fn crc_matches_the_standard_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn appended_records_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (j, r) = Journal::open(dir.path()).unwrap();
    assert!(r.jobs.is_empty());
    for id in 1..=3 {
        j.append_sync(&submitted(id)).unwrap();
    }
    j.append_sync(&Record::Held {
        id: JobId(2),
        held: true,
    })
    .unwrap();
    j.append_sync(&ended(3, 99)).unwrap();
    drop(j);
    let r = read(&dir.path().join(JOURNAL_FILE)).unwrap();
    assert_eq!(r.jobs.len(), 3);
    assert_eq!(r.next_id, 4);
    assert!(r.jobs[&JobId(2)].held);
    assert_eq!(
        r.jobs[&JobId(3)].ending.as_ref().unwrap().state,
        JobState::Succeeded
    );
    assert!(r.corrupt.is_empty());
}

#[test]
fn torn_tail_is_dropped_and_corruption_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let mut bytes = encode(&submitted(1)).unwrap();
    let mut bad = encode(&submitted(2)).unwrap();
    bad[20] ^= 1; // flip a bit in the body
    bytes.extend_from_slice(&bad);
    bytes.extend_from_slice(&encode(&submitted(3)).unwrap());
    let torn = encode(&submitted(4)).unwrap();
    bytes.extend_from_slice(&torn[..torn.len() / 2]);
    fs::write(&path, &bytes).unwrap();
    let (j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(
        r.jobs.keys().copied().collect::<Vec<_>>(),
        vec![JobId(1), JobId(3)]
    );
    assert_eq!(r.corrupt.len(), 1);
    assert_eq!(r.corrupt[0].0, 2);
    // The file was rewritten, so the next record starts on a line of its own.
    j.append_sync(&submitted(5)).unwrap();
    let r = read(&path).unwrap();
    assert!(r.corrupt.is_empty());
    assert!(r.jobs.contains_key(&JobId(5)));
}

#[test]
fn compaction_keeps_live_and_recent_jobs_and_ids_advance() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path()).unwrap();
    for id in 1..=10 {
        j.append_sync(&submitted(id)).unwrap();
    }
    for id in 1..=8 {
        j.append_sync(&ended(id, 100 + id)).unwrap();
    }
    j.compact(3).unwrap();
    j.append_sync(&submitted(11)).unwrap();
    drop(j);
    let r = read(&dir.path().join(JOURNAL_FILE)).unwrap();
    let ids: Vec<u64> = r.jobs.keys().map(|k| k.0).collect();
    assert_eq!(ids, vec![6, 7, 8, 9, 10, 11]);
    assert_eq!(r.next_id, 12);
    // Everything finished was dropped: the id counter still survives via the header.
    let (j, _) = Journal::open(dir.path()).unwrap();
    for id in 9..=11 {
        j.append_sync(&ended(id, 200)).unwrap();
    }
    j.compact(0).unwrap();
    drop(j);
    let r = read(&dir.path().join(JOURNAL_FILE)).unwrap();
    assert!(r.jobs.is_empty());
    assert_eq!(r.next_id, 12);
}

/// A tmpfs of `kib` KiB mounted on a fresh temp dir (root only), unmounted on drop.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(kib: u32) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("LOWSCHED_NO_SKIP").is_none(),
                "needs root to mount a small tmpfs"
            );
            eprintln!("skipped: needs root to mount a small tmpfs");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kib}k,mode=0755"),
                "lowsched-test",
            ])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs");
        Some(Self(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Fills the filesystem; returns the filler's path.
    fn fill(&self) -> PathBuf {
        let p = self.path().join("filler");
        let mut f = File::create(&p).unwrap();
        let chunk = vec![b'x'; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(b"x");
        p
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_full_disk_refuses_only_what_it_must_and_recovers_by_itself() {
    let Some(fs) = SmallFs::mount(256) else {
        return;
    };
    let (j, _) = Journal::open(fs.path()).unwrap();
    j.append_durable(&submitted(1)).unwrap();
    let filler = fs.fill();
    let mut refused = 0;
    let mut want = vec![JobId(1)];
    for id in 2..=40 {
        match j.append_durable(&submitted(id)) {
            Ok(()) => want.push(JobId(id)),
            Err(e) => {
                assert!(e.is_no_space(), "{e}");
                assert!(
                    e.to_string().contains("no space left on the state dir"),
                    "{e}"
                );
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "the filled tmpfs refused nothing");
    // A compaction while full fails cleanly (or fits); neither keeps a refused record.
    let _ = j.compact(usize::MAX);
    fs::remove_file(&filler).unwrap();
    // Space is back: the same journal accepts again, no restart.
    j.append_durable(&submitted(100)).unwrap();
    j.append_durable(&ended(1, 5)).unwrap();
    j.compact(usize::MAX).unwrap();
    j.append_durable(&submitted(101)).unwrap();
    drop(j);
    let r = read(&fs.path().join(JOURNAL_FILE)).unwrap();
    assert!(r.corrupt.is_empty(), "{:?}", r.corrupt);
    let accepted = 40 - refused; // ids 1..=40
    assert_eq!(r.jobs.len() as u64, accepted + 2, "{:?}", r.jobs.keys());
    want.extend([JobId(100), JobId(101)]);
    assert_eq!(r.jobs.keys().copied().collect::<Vec<_>>(), want);
    assert_eq!(r.jobs[&JobId(1)].ending.as_ref().unwrap().at, Timestamp(5));
}

#[test]
fn refused_records_never_reach_the_state_a_compaction_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path()).unwrap();
    j.append_durable(&submitted(1)).unwrap();
    // Queued, never synced: not durable, so a compaction must not write it...
    let t = j.append(&submitted(2)).unwrap();
    j.compact(usize::MAX).unwrap();
    let r = read(&dir.path().join(JOURNAL_FILE)).unwrap();
    assert_eq!(r.jobs.keys().copied().collect::<Vec<_>>(), vec![JobId(1)]);
    // ...but it stays queued and lands with its sync.
    j.sync(t).unwrap();
    let r = read(&dir.path().join(JOURNAL_FILE)).unwrap();
    assert_eq!(r.jobs.len(), 2);
}

#[test]
fn corrupt_lines_are_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let mut bytes = encode(&submitted(1)).unwrap();
    let mut bad = encode(&submitted(2)).unwrap();
    bad[20] ^= 1;
    bytes.extend_from_slice(&bad);
    bytes.extend_from_slice(b"0000 torn");
    fs::write(&path, &bytes).unwrap();
    let (_j, r) = Journal::open(dir.path()).unwrap();
    assert_eq!(r.corrupt.len(), 1);
    let aside = fs::read(dir.path().join(CORRUPT_FILE)).unwrap();
    let text = String::from_utf8_lossy(&aside);
    assert!(text.contains("# line 2 of the journal"), "{text}");
    assert!(
        aside
            .windows(bad.len() - 1)
            .any(|w| w == &bad[..bad.len() - 1])
    );
    assert!(
        text.contains("# line 3") && text.contains("0000 torn"),
        "{text}"
    );
    let mode = fs::metadata(dir.path().join(CORRUPT_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// What a process can show: with group commit, each record is in the file by the time its
/// `append_sync` returns, whoever led the write. That the file is on the disk (the
/// fdatasync) only a crash of the whole machine can show: `.ci/stages/55-vm-crash.sh`.
#[test]
fn concurrent_appenders_find_their_record_in_the_file_when_append_sync_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path()).unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (j, path) = (&j, &path);
            s.spawn(move || {
                for i in 0..50 {
                    let id = 1 + t * 100 + i;
                    j.append_sync(&submitted(id)).unwrap();
                    let r = read(path).unwrap();
                    assert!(r.jobs.contains_key(&JobId(id)), "job {id} not in the file");
                }
            });
        }
    });
    drop(j);
    let r = read(&dir.path().join(JOURNAL_FILE)).unwrap();
    assert_eq!(r.jobs.len(), 200);
}
