//! Who a job runs as: user lookup by uid (for socket peers) or by name (root's `--user`), with
//! gid, home and supplementary groups computed up front, because the child between fork and
//! exec may only make async-signal-safe calls (initgroups is not one).
//!
//! Lookups go through the C library (NSS: LDAP and friends work), and fall back to reading
//! `passwd` and `group` files directly: a statically linked binary in a minimal system may have
//! no working NSS.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User, getgrouplist};
use serde::{Deserialize, Serialize};

/// Why a user could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("no user named {}", super::text::quoted(.name))]
    NoSuchName { name: String },
    #[error("no user with uid {uid}")]
    NoSuchUid { uid: u32 },
    #[error("bad user name {}", super::text::quoted(.name))]
    BadName { name: String },
}

/// A user and everything needed to become them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, the primary group included.
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub shell: PathBuf,
}

impl Credentials {
    /// The user with `uid` (e.g. a socket peer's SO_PEERCRED uid).
    pub fn by_uid(uid: u32) -> Result<Self, CredentialsError> {
        Self::by_uid_in(uid, Path::new("/etc"))
    }

    /// The user called `name` (root submitting `--user NAME`).
    pub fn by_name(name: &str) -> Result<Self, CredentialsError> {
        Self::by_name_in(name, Path::new("/etc"))
    }

    /// As [`Self::by_uid`], falling back to `<etc>/passwd` and `<etc>/group`.
    pub fn by_uid_in(uid: u32, etc: &Path) -> Result<Self, CredentialsError> {
        if let Ok(Some(u)) = User::from_uid(Uid::from_raw(uid)) {
            return Ok(Self::from_nss(u));
        }
        files::passwd(etc, |e| e.uid == uid)
            .map(|e| e.into_credentials(etc))
            .ok_or(CredentialsError::NoSuchUid { uid })
    }

    /// As [`Self::by_name`], falling back to `<etc>/passwd` and `<etc>/group`.
    pub fn by_name_in(name: &str, etc: &Path) -> Result<Self, CredentialsError> {
        if name.is_empty() || name.contains(['\0', ':', '\n']) {
            return Err(CredentialsError::BadName { name: name.into() });
        }
        if let Ok(Some(u)) = User::from_name(name) {
            return Ok(Self::from_nss(u));
        }
        files::passwd(etc, |e| e.name == name)
            .map(|e| e.into_credentials(etc))
            .ok_or_else(|| CredentialsError::NoSuchName { name: name.into() })
    }

    /// A user known only by numbers (no passwd entry): its own gid as the only group, `/` as
    /// home.
    pub fn from_ids(uid: u32, gid: u32) -> Self {
        Self {
            name: uid.to_string(),
            uid,
            gid,
            groups: vec![gid],
            home: PathBuf::from("/"),
            shell: PathBuf::from("/bin/sh"),
        }
    }

    /// Who a process with these ids runs as: the user's passwd entry and groups where one
    /// exists (else only the numbers), with `gid` as the effective group, as SO_PEERCRED
    /// reports it for a socket peer and as the journal keeps it for a job's owner.
    pub fn of_ids(uid: u32, gid: u32) -> Self {
        Self::of_ids_in(uid, gid, Path::new("/etc"))
    }

    /// As [`Self::of_ids`], falling back to `<etc>/passwd` and `<etc>/group`.
    pub fn of_ids_in(uid: u32, gid: u32, etc: &Path) -> Self {
        let mut c = Self::by_uid_in(uid, etc).unwrap_or_else(|_| Self::from_ids(uid, gid));
        c.gid = gid;
        if !c.groups.contains(&gid) {
            c.groups.push(gid);
        }
        c
    }

    fn from_nss(u: User) -> Self {
        let gid = u.gid.as_raw();
        let groups = CString::new(u.name.clone())
            .ok()
            .and_then(|n| getgrouplist(&n, Gid::from_raw(gid)).ok())
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|| files::groups_of(Path::new("/etc"), &u.name, gid));
        Self {
            name: u.name,
            uid: u.uid.as_raw(),
            gid,
            groups,
            home: u.dir,
            shell: u.shell,
        }
    }
}

mod files {
    //! Plain parsing of passwd(5) and group(5).

    use std::path::{Path, PathBuf};

    use super::Credentials;

    pub(super) struct Entry {
        pub name: String,
        pub uid: u32,
        pub gid: u32,
        pub home: PathBuf,
        pub shell: PathBuf,
    }

    impl Entry {
        pub fn into_credentials(self, etc: &Path) -> Credentials {
            let groups = groups_of(etc, &self.name, self.gid);
            Credentials {
                name: self.name,
                uid: self.uid,
                gid: self.gid,
                groups,
                home: self.home,
                shell: self.shell,
            }
        }
    }

    /// The first passwd entry matching `want`. Malformed lines are skipped.
    pub fn passwd(etc: &Path, want: impl Fn(&Entry) -> bool) -> Option<Entry> {
        let text = std::fs::read_to_string(etc.join("passwd")).ok()?;
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                if f.len() < 7 {
                    return None;
                }
                Some(Entry {
                    name: f[0].to_string(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                    home: PathBuf::from(f[5]),
                    shell: PathBuf::from(f[6]),
                })
            })
            .find(|e| want(e))
    }

    /// `gid` plus every group listing `user` as a member.
    pub fn groups_of(etc: &Path, user: &str, gid: u32) -> Vec<u32> {
        let mut groups = vec![gid];
        let text = std::fs::read_to_string(etc.join("group")).unwrap_or_default();
        for line in text.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || !f[3].split(',').any(|m| m == user) {
                continue;
            }
            if let Ok(g) = f[2].parse() {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_both_ways() {
        let by_uid = Credentials::by_uid(0).unwrap();
        assert_eq!(by_uid.name, "root");
        assert_eq!(by_uid.gid, 0);
        assert!(by_uid.groups.contains(&0));
        assert_eq!(Credentials::by_name("root").unwrap().uid, 0);
    }

    #[test]
    fn unknown_users_are_errors_naming_them() {
        let err = Credentials::by_name("no-such-user-lowsched").unwrap_err();
        assert!(err.to_string().contains("no-such-user-lowsched"));
        assert!(Credentials::by_name("a:b").is_err());
        assert_eq!(
            Credentials::by_uid(3_999_999_999).unwrap_err(),
            CredentialsError::NoSuchUid { uid: 3_999_999_999 }
        );
    }

    #[test]
    fn falls_back_to_files() {
        let etc = tempfile::tempdir().unwrap();
        std::fs::write(
            etc.path().join("passwd"),
            "broken line\nzed-lowsched:x:3999999:3999998:Z:/home/zed:/bin/zsh\n",
        )
        .unwrap();
        std::fs::write(
            etc.path().join("group"),
            "zed:x:3999998:\nvideo:x:44:a,zed-lowsched\naudio:x:29:b\n",
        )
        .unwrap();
        let c = Credentials::by_name_in("zed-lowsched", etc.path()).unwrap();
        assert_eq!((c.uid, c.gid), (3_999_999, 3_999_998));
        assert_eq!(c.groups, vec![3_999_998, 44]);
        assert_eq!(c.home, PathBuf::from("/home/zed"));
        assert_eq!(Credentials::by_uid_in(3_999_999, etc.path()).unwrap(), c);
        assert!(Credentials::by_uid_in(3_999_997, etc.path()).is_err());
    }

    #[test]
    fn an_owner_runs_with_the_group_it_came_with() {
        let etc = tempfile::tempdir().unwrap();
        std::fs::write(
            etc.path().join("passwd"),
            "zed-lowsched:x:3999999:3999998:Z:/home/zed:/bin/zsh\n",
        )
        .unwrap();
        std::fs::write(etc.path().join("group"), "video:x:44:zed-lowsched\n").unwrap();
        let c = Credentials::of_ids_in(3_999_999, 44, etc.path());
        assert_eq!((c.name.as_str(), c.gid), ("zed-lowsched", 44));
        assert_eq!(c.home, PathBuf::from("/home/zed"));
        assert!(
            c.groups.contains(&44) && c.groups.contains(&3_999_998),
            "{c:?}"
        );
        let d = Credentials::of_ids_in(3_999_997, 55, etc.path());
        assert_eq!(d, Credentials::from_ids(3_999_997, 55));
        let e = Credentials::of_ids_in(3_999_999, 66, etc.path());
        assert_eq!(e.groups.iter().filter(|g| **g == 66).count(), 1);
        assert_eq!(e.gid, 66);
    }
}
