//! The store views' keeper (`ksbuild __sandbox-views <ksbuild pid>`): a small,
//! single-threaded process that keeps, for a series of builds, the inputs of each build's
//! store directory mounted, so that a build whose closure is mostly its predecessor's
//! mounts only what changed rather than its whole closure. Does syscalls.
//!
//! Binding a closure of N paths into a sandbox costs N detached bind mounts, their N
//! mount points and N attaches — about 10 µs each here, 10 ms for 1,000 paths, on every
//! build (Nix pays the same). The keeper pays that once per path per series instead:
//!
//! - It lives in a mount namespace of its own (owned by a user namespace of its own when
//!   ksbuild is not root), whose mounts are all private: nothing it mounts is seen by the
//!   host, by ksbuild or by any build, but through the clones it hands out.
//! - A *view* is a build's root directory on disk (the directory that is the store
//!   directory inside the sandbox), in which the keeper has created a mount point for each
//!   input and bound the input on it read-only, `nosuid`, `nodev` (a symlink input is
//!   recreated as the same symlink). ksbuild keeps one view per build that runs at once.
//! - For each build, ksbuild sends the view's delta: the inputs to remove (their mounts
//!   detached, their mount points removed) and to add. The keeper then answers with a
//!   recursive detached clone of the view (`open_tree(OPEN_TREE_CLONE|AT_RECURSIVE)`,
//!   about 1 µs per mount), which ksbuild hands to the build's PID 1 with its other
//!   descriptors; PID 1 attaches it at the store directory with one `move_mount`.
//! - The clone is the build's own: what the keeper changes afterwards in the view is not
//!   seen by it, and the view is changed only between the builds that use it (ksbuild
//!   sends a view's next delta only once its last build is over).
//!
//! A build still sees exactly its closure: ksbuild sends the delta that makes the view's
//! entries its closure, and the sandbox refuses a root directory holding anything else
//! (see `check_directories`). Its outputs are written in the root directory on disk, as
//! without a view, beside the mount points (which on the host are only empty
//! directories and files; ksbuild leaves them there between builds).
//!
//! Requests (JSON, one `SOCK_SEQPACKET` message each, on stdin) and answers (4 bytes: 0 or
//! the `errno` of what failed; with a clone, its descriptor as `SCM_RIGHTS`): see
//! [`ViewRequest`]. The keeper exits when ksbuild closes its end, or dies with the
//! thread that started it (`PR_SET_PDEATHSIG`); its namespace, and every mount of the
//! views, goes with it.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use super::plan::InputKind;
use super::sys;

/// The argument that makes the `ksbuild` binary run [`views_main`].
pub const VIEWS_ARG: &str = "__sandbox-views";

/// How long the keeper may take to answer a request before it is given up (a first
/// request may mount thousands of inputs).
const ANSWER_LIMIT: Duration = Duration::from_secs(60);

/// Most names one request carries: a request is one message, which must fit in the
/// socket's buffer; a larger delta is sent in several.
const NAMES_PER_REQUEST: usize = 1000;

/// The largest request the keeper reads.
const MAX_REQUEST: usize = 256 * 1024;

/// A request to the keeper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum ViewRequest {
    /// View `view`, in the directory `root` (given on every request; a view's directory
    /// never changes): detach and remove the entries named in `remove`, then bind each
    /// entry named in `add` of the directory `source` on an entry of the same name; with
    /// `clone`, answer with a recursive detached clone of the view. The mount points of
    /// files are hard links to an empty file in `anchor`, a directory beside `root` (see
    /// [`sys::reuse_mount_points`]).
    Update {
        view: u64,
        root: PathBuf,
        anchor: PathBuf,
        source: PathBuf,
        remove: Vec<String>,
        add: Vec<String>,
        clone: bool,
    },
    /// Forget view `view`, detaching every mount of it (its directory stays).
    Forget { view: u64 },
}

/// A view in the keeper.
struct View {
    root: PathBuf,
    dir: OwnedFd,
    /// The directory of the empty file whose links are the mount points of files, if it
    /// could be opened.
    anchor: Option<OwnedFd>,
    /// The names of its entries.
    entries: std::collections::HashSet<String>,
}

/// Entry point of the keeper; `main` calls it when `argv[1]` is [`VIEWS_ARG`]. Never
/// returns.
pub fn views_main() -> ! {
    let code = match serve() {
        Ok(()) => 0,
        Err(_) => 1,
    };
    std::process::exit(code)
}

fn serve() -> Result<(), Errno> {
    super::zygote::start_helper(c"ksbuild-views")?;
    let stdin = std::io::stdin();
    let socket = stdin.as_fd();
    let entered = sys::enter_view_namespaces();
    let mut views: HashMap<u64, View> = HashMap::new();
    let mut request = vec![0u8; MAX_REQUEST];
    loop {
        let (n, _) = sys::recv_with_fds(socket, &mut request)?;
        if n == 0 {
            return Ok(());
        }
        let answer = match (
            &entered,
            serde_json::from_slice::<ViewRequest>(&request[..n]),
        ) {
            (Err(e), _) => Err(*e),
            (_, Err(_)) => Err(Errno::EINVAL),
            (Ok(()), Ok(ViewRequest::Forget { view })) => {
                forget(&mut views, view);
                Ok(None)
            }
            (
                Ok(()),
                Ok(ViewRequest::Update {
                    view,
                    root,
                    anchor,
                    source,
                    remove,
                    add,
                    clone,
                }),
            ) => {
                let (paths, delta) = (
                    (root, anchor.as_path()),
                    (source.as_path(), &remove[..], &add[..]),
                );
                update(&mut views, view, paths, delta, clone)
            }
        };
        let _ = match &answer {
            Ok(None) => sys::send_with_fds(socket, &0i32.to_le_bytes(), &[]),
            Ok(Some(tree)) => sys::send_with_fds(socket, &0i32.to_le_bytes(), &[tree.as_fd()]),
            Err(e) => sys::send_with_fds(socket, &(*e as i32).to_le_bytes(), &[]),
        };
    }
}

/// Applies an [`ViewRequest::Update`]. A view whose update failed is forgotten (its
/// mounts detached): ksbuild does not use it again.
fn update(
    views: &mut HashMap<u64, View>,
    id: u64,
    (root, anchor): (PathBuf, &Path),
    (source, remove, add): (&Path, &[String], &[String]),
    clone: bool,
) -> Result<Option<OwnedFd>, Errno> {
    let view = match views.entry(id) {
        std::collections::hash_map::Entry::Occupied(v) if v.get().root == root => v.into_mut(),
        std::collections::hash_map::Entry::Occupied(_) => return Err(Errno::EINVAL),
        std::collections::hash_map::Entry::Vacant(v) => v.insert(View {
            dir: sys::open_directory(&root)?,
            anchor: sys::open_directory(anchor).ok(),
            root,
            entries: Default::default(),
        }),
    };
    let result = apply(view, source, remove, add, clone);
    if result.is_err() {
        forget(views, id);
    }
    result
}

/// Forgets view `id`, detaching its mounts and removing their mount points.
fn forget(views: &mut HashMap<u64, View>, id: u64) {
    if let Some(v) = views.remove(&id) {
        for name in &v.entries {
            let _ = sys::remove_mount_point(v.dir.as_fd(), &v.root, name);
        }
    }
}

fn apply(
    view: &mut View,
    source: &Path,
    remove: &[String],
    add: &[String],
    clone: bool,
) -> Result<Option<OwnedFd>, Errno> {
    for name in remove {
        sys::remove_mount_point(view.dir.as_fd(), &view.root, name)?;
        view.entries.remove(name);
    }
    if !add.is_empty() {
        let source_dir = sys::open_directory(source)?;
        let mut bound = Vec::new();
        for name in add {
            if !is_plain_name(name) {
                return Err(Errno::EINVAL);
            }
            match sys::inspect_entry(source_dir.as_fd(), name.as_ref())? {
                InputKind::Symlink(target) => {
                    sys::replace_symlink(view.dir.as_fd(), name, &target)?;
                    view.entries.insert(name.clone());
                }
                InputKind::Directory => bound.push((name.clone(), true)),
                InputKind::File => bound.push((name.clone(), false)),
            }
        }
        let anchor = view.anchor.as_ref().map(|a| a.as_fd());
        sys::reuse_mount_points(view.dir.as_fd(), &bound, anchor).map_err(|(_, e)| e)?;
        let names: Vec<String> = bound.iter().map(|(n, _)| n.clone()).collect();
        let batch = sys::detach_trees(source, &names, None).map_err(|(_, e)| e)?;
        // Each entry counts as the view's from its mount point on, so that a failure
        // part-way detaches what was attached.
        view.entries.extend(names);
        sys::attach_trees(&batch, &view.root, super::plan::INPUT_FLAGS, true)
            .map_err(|(_, e)| e)?;
    }
    match clone {
        true => sys::clone_tree_recursive(view.dir.as_fd()).map(Some),
        false => Ok(None),
    }
}

/// Whether `name` is one plain entry name (not empty, `.`, `..`, nor holding a `/`).
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// A view's clone, ready to be attached at a build's store directory: see
/// [`super::SandboxSpec::store_view`].
#[derive(Debug, Clone)]
pub struct StoreView(std::sync::Arc<OwnedFd>);

impl StoreView {
    pub(crate) fn tree(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl PartialEq for StoreView {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for StoreView {}

/// ksbuild's side of a running keeper.
#[derive(Debug)]
pub struct StoreViews {
    /// The socket, `None` once the keeper failed (it is not asked again).
    socket: Mutex<Option<OwnedFd>>,
    process: Mutex<Child>,
    next: std::sync::atomic::AtomicU64,
}

impl Drop for StoreViews {
    fn drop(&mut self) {
        let process = self.process.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = process.kill();
        let _ = process.wait();
    }
}

impl StoreViews {
    /// Starts a keeper (`program` is a `ksbuild` binary). It dies with the calling thread.
    pub(crate) fn start(program: &Path) -> Option<StoreViews> {
        let (ours, theirs) = sys::seqpacket_pair().ok()?;
        sys::set_receive_timeout(ours.as_fd(), ANSWER_LIMIT).ok()?;
        let process = super::supervisor::spawn_helper(program, VIEWS_ARG, theirs)?;
        Some(StoreViews {
            socket: Mutex::new(Some(ours)),
            process: Mutex::new(process),
            next: Default::default(),
        })
    }

    /// Whether the keeper still answers (one that failed is not asked again).
    pub fn is_working(&self) -> bool {
        self.socket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// A new view's number.
    pub fn new_view(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes view `view` (in the empty or view-holding directory `root`) hold what it held
    /// minus `remove`, plus the entries `add` of the directory `source`, and returns a
    /// clone of it for one build. `anchor` is a directory beside `root`, of the view's
    /// alone, where the keeper keeps the file whose links are its files' mount points. On
    /// failure the keeper has forgotten the view (its mounts are detached; the mount
    /// points left on disk are empty).
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        view: u64,
        root: &Path,
        anchor: &Path,
        source: &Path,
        remove: &[String],
        add: &[String],
    ) -> Result<StoreView, Errno> {
        let mut socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        let mut deltas: Vec<(&[String], &[String])> = remove
            .chunks(NAMES_PER_REQUEST)
            .map(|r| (r, &[][..]))
            .chain(add.chunks(NAMES_PER_REQUEST).map(|a| (&[][..], a)))
            .collect();
        if deltas.is_empty() {
            deltas.push((&[], &[]));
        }
        let last = deltas.len() - 1;
        for (i, (remove, add)) in deltas.into_iter().enumerate() {
            let request = ViewRequest::Update {
                view,
                root: root.to_path_buf(),
                anchor: anchor.to_path_buf(),
                source: source.to_path_buf(),
                remove: remove.to_vec(),
                add: add.to_vec(),
                clone: i == last,
            };
            let mut fds = ask(&mut socket, &request)?;
            if i == last {
                return match (fds.pop(), fds.is_empty()) {
                    (Some(tree), true) => Ok(StoreView(std::sync::Arc::new(tree))),
                    _ => Err(Errno::EBADMSG),
                };
            }
        }
        Err(Errno::EBADMSG)
    }

    /// Forgets view `view`, detaching its mounts (before its directory is removed).
    pub fn forget(&self, view: u64) {
        let mut socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        let _ = ask(&mut socket, &ViewRequest::Forget { view });
    }
}

/// Sends one request and reads its answer; a keeper that does not answer as it should is
/// not asked again.
fn ask(socket: &mut Option<OwnedFd>, request: &ViewRequest) -> Result<Vec<OwnedFd>, Errno> {
    let fd = socket.as_ref().ok_or(Errno::ENOTCONN)?;
    let bytes = serde_json::to_vec(request).map_err(|_| Errno::EINVAL)?;
    let mut answer = [0u8; 4];
    let answered = sys::send_with_fds(fd.as_fd(), &bytes, &[])
        .and_then(|()| sys::recv_with_fds(fd.as_fd(), &mut answer));
    match answered {
        Ok((4, fds)) => match i32::from_le_bytes(answer) {
            0 => Ok(fds),
            e => Err(Errno::from_raw(e)),
        },
        Ok(_) => {
            *socket = None;
            Err(Errno::EBADMSG)
        }
        Err(e) => {
            *socket = None;
            Err(e)
        }
    }
}
