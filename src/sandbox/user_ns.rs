//! The user namespace of a build: which host uid and gid stand behind the build user
//! (uid 1000, gid 100 inside), and the `uid_map`/`gid_map`/`setgroups` texts. Reads the
//! process's own ids; the maps are written by the init process (`init.rs`).
//!
//! **Why root does not map the build user to itself.** With `uid_map` `1000 0 1` the
//! builder has no capabilities, but its kernel uid is still 0, and `/proc/sys` checks
//! ownership against the *global* uid without asking for a capability: such a builder can
//! write host-wide sysctls (observed here: `echo 60 > /proc/sys/vm/swappiness` succeeds
//! inside an `unshare --map-user=1000` namespace started by root). So when ksbuild runs as
//! root the build user is an unprivileged host uid, as Nix's build users are.

use serde::{Deserialize, Serialize};

use super::error::SandboxError;

/// The host uid (and gid) used for builds when ksbuild runs as root and the spec says
/// [`BuildUser::Auto`]: the first id of Nix's `auto-allocate-uids` range (`start-id`),
/// far above any uid a distribution hands out.
pub const DEFAULT_ROOT_BUILD_ID: u32 = 872_415_232;

/// Which host user the build user (uid 1000, gid 100 inside the sandbox) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum BuildUser {
    /// ksbuild's own uid and gid when it is not root; [`DEFAULT_ROOT_BUILD_ID`] when it is.
    #[default]
    Auto,
    /// These host ids. Only root may choose ids other than its own, and never uid or gid 0.
    Ids {
        /// Host uid.
        uid: u32,
        /// Host gid.
        gid: u32,
    },
}

/// The resolved ids of one build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostIds {
    /// Host uid of the build user.
    pub build_uid: u32,
    /// Host gid of the build group.
    pub build_gid: u32,
    /// Owner of the sandbox's `/` and store directory: root, or the invoking user.
    pub owner_uid: u32,
    /// Whether ksbuild runs as root (and so writes the maps with privilege).
    pub invoker_is_root: bool,
}

impl HostIds {
    /// Resolves `user` for the current process.
    pub(crate) fn resolve(user: BuildUser) -> Result<HostIds, SandboxError> {
        let euid = nix::unistd::geteuid().as_raw();
        let egid = nix::unistd::getegid().as_raw();
        let root = euid == 0;
        let (build_uid, build_gid) = match user {
            BuildUser::Auto if root => (DEFAULT_ROOT_BUILD_ID, DEFAULT_ROOT_BUILD_ID),
            BuildUser::Auto => (euid, egid),
            BuildUser::Ids { uid, gid } => (uid, gid),
        };
        if build_uid == 0 || build_gid == 0 {
            return Err(SandboxError::InvalidSpec {
                field: "build_user",
                reason: "the build user must not be host uid or gid 0: a builder whose kernel \
                         uid is 0 can write host sysctls even without capabilities"
                    .to_string(),
            });
        }
        if !root && (build_uid != euid || build_gid != egid) {
            return Err(SandboxError::InvalidSpec {
                field: "build_user",
                reason: format!(
                    "only root can build as another user (asked for {build_uid}:{build_gid}, \
                     running as {euid}:{egid})"
                ),
            });
        }
        Ok(HostIds {
            build_uid,
            build_gid,
            owner_uid: if root { 0 } else { euid },
            invoker_is_root: root,
        })
    }

    /// The files to write under `/proc/<pid>/`, in order: `setgroups` must say `deny`
    /// before an unprivileged process may write `gid_map`
    /// ([`user_namespaces(7)`](https://man7.org/linux/man-pages/man7/user_namespaces.7.html));
    /// Nix denies it too. The build user is `uid`:`gid` inside (1000:100 but in a check).
    pub(crate) fn map_files(&self, uid: u32, gid: u32) -> Vec<(String, String)> {
        vec![
            ("setgroups".to_string(), "deny".to_string()),
            (
                "uid_map".to_string(),
                format!("{uid} {} 1\n", self.build_uid),
            ),
            (
                "gid_map".to_string(),
                format!("{gid} {} 1\n", self.build_gid),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::{SANDBOX_GID, SANDBOX_UID};
    use super::*;

    #[test]
    fn maps_name_one_id_each() {
        let ids = HostIds {
            build_uid: 872_415_232,
            build_gid: 872_415_232,
            owner_uid: 0,
            invoker_is_root: true,
        };
        assert_eq!(
            ids.map_files(SANDBOX_UID, SANDBOX_GID),
            [
                ("setgroups".to_string(), "deny".to_string()),
                ("uid_map".to_string(), "1000 872415232 1\n".to_string()),
                ("gid_map".to_string(), "100 872415232 1\n".to_string()),
            ]
        );
    }

    #[test]
    fn host_root_is_never_the_build_user() {
        let e = HostIds::resolve(BuildUser::Ids { uid: 0, gid: 5 }).unwrap_err();
        assert!(e.to_string().contains("sysctls"), "{e}");
        let auto = HostIds::resolve(BuildUser::Auto).unwrap();
        assert_ne!(auto.build_uid, 0);
        assert_ne!(auto.build_gid, 0);
    }
}
