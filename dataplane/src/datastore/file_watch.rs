//! The file datastore's watcher: inotify on the file's directory, so that a rename over the
//! file, a write in place, a delete and a create are each seen the moment they happen.
//!
//! The directory is watched, not the file: a watch on the file follows its inode, which a rename
//! over it (how editors, `kubectl cp` and ConfigMap volumes replace a file) leaves behind, and a
//! missing file cannot be watched at all. A file that cannot be used (missing, unreadable, not
//! YAML) is reported at once and again every [`REPORT_EVERY`] while it stays so, the connection
//! is marked down, and the last good snapshot stays programmed.

use std::{
    ffi::OsStr,
    fs, io,
    os::{
        fd::{AsFd as _, AsRawFd, RawFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::{io::unix::AsyncFd, sync::watch};
use tracing::{error, info, warn};

use super::{file, Connection, Snapshot};

/// How often a problem with the datastore file is logged again while it lasts.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);
/// How often the file is looked at without an event: a safety net for what inotify on the
/// directory cannot see (a writer that never closes the file, a symlink into another directory),
/// not the way changes are found. A file in trouble is read again on each.
pub const RECHECK: Duration = Duration::from_secs(10);
/// How often a missing directory is looked for: it has no watch until it exists.
pub const DIRECTORY_RETRY: Duration = Duration::from_secs(1);

/// The events watched on the directory: everything that can change what the path leads to.
fn watch_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// What the watcher does after a batch of events on the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing: no event could have changed what the file holds.
    Ignore,
    /// Read the file: it was written and closed, renamed into place or had its mode changed (or
    /// events were lost).
    Read,
    /// The file was created: a symlink is complete at once and is read; a regular file is read
    /// when its writer closes it (reading it now could see half of it).
    Created,
    /// The file was deleted or renamed away: report it missing unless something already took
    /// its place.
    Gone,
    /// Another entry of the directory changed: read the file if what its path leads to changed
    /// (a ConfigMap volume swaps its `..data` symlink, through which the file's path goes).
    ReadIfChanged,
    /// The directory itself was deleted or moved, and its watch with it: watch it anew.
    Rewatch,
}

/// What a batch of events (mask, entry name) means for the file `name`: the last event on the
/// file itself decides, since it tells its latest state; other entries only ask for a look;
/// losing the directory's watch or events overrides everything.
pub fn decide<'a>(events: impl IntoIterator<Item = (AddWatchFlags, Option<&'a OsStr>)>, name: &OsStr) -> Action {
    let mut on_file = None;
    let mut elsewhere = false;
    let mut overflow = false;
    for (mask, entry) in events {
        if mask.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_IGNORED) {
            return Action::Rewatch;
        }
        if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            overflow = true;
            continue;
        }
        let changes = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM;
        match entry {
            Some(entry) if entry == name => {
                if mask
                    .intersects(AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ATTRIB)
                {
                    on_file = Some(Action::Read);
                } else if mask.contains(AddWatchFlags::IN_CREATE) {
                    on_file = Some(Action::Created);
                } else if mask.intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM) {
                    on_file = Some(Action::Gone);
                }
            }
            Some(_) if mask.intersects(changes) => elsewhere = true,
            _ => {}
        }
    }
    match (overflow, on_file, elsewhere) {
        (true, _, _) => Action::Read,
        (false, Some(action), _) => action,
        (false, None, true) => Action::ReadIfChanged,
        (false, None, false) => Action::Ignore,
    }
}

/// Decides when a problem is logged: at once when it starts or changes, then every `every`
/// while it lasts; and whether its end is worth a line.
#[derive(Debug)]
pub struct Reporter {
    every: Duration,
    last: Option<(String, Instant)>,
}

impl Reporter {
    /// Reports a lasting problem again every `every`.
    pub fn new(every: Duration) -> Self {
        Reporter { every, last: None }
    }

    /// The problem `what` is seen at `now`: whether to log it.
    pub fn trouble(&mut self, what: &str, now: Instant) -> bool {
        let due = match &self.last {
            Some((last, at)) => last != what || now.saturating_duration_since(*at) >= self.every,
            None => true,
        };
        if due {
            self.last = Some((what.to_owned(), now));
        }
        due
    }

    /// The file is usable again: whether there was a problem to say is over.
    pub fn cleared(&mut self) -> bool {
        self.last.take().is_some()
    }

    /// Whether a problem is current.
    pub fn troubled(&self) -> bool {
        self.last.is_some()
    }
}

/// What tells whether the path leads to other contents without reading them: the file it
/// resolves to (device, inode), its length and its modification and change times. Used only
/// when an event elsewhere in the directory asks for a look; events on the file itself always
/// read it (a same-size rewrite within one timestamp tick leaves this unchanged).
type Stamp = (u64, u64, u64, i64, i64, i64, i64);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ctime(), meta.ctime_nsec()))
}

/// The inotify descriptor, for tokio's reactor (nix's type offers `AsFd` only).
struct Descriptor(Inotify);

impl AsRawFd for Descriptor {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// One datastore file and what the watcher knows of it.
struct Watcher {
    path: PathBuf,
    dir: PathBuf,
    name: PathBuf,
    snapshots: watch::Sender<Option<Snapshot>>,
    connection: Connection,
    reporter: Reporter,
    /// The stamp of the contents last read, usable or not (None: nothing there to read).
    loaded: Option<Stamp>,
    /// Whether a snapshot was ever sent (a last good state exists).
    sent: bool,
}

/// Whether the watcher goes on: false when the agent no longer listens.
type Continue = bool;

impl Watcher {
    /// The watcher of `path`; None (reported) when the path names no file.
    fn new(path: PathBuf, snapshots: watch::Sender<Option<Snapshot>>, connection: Connection) -> Option<Self> {
        let path = std::path::absolute(&path).unwrap_or(path);
        let Some((dir, name)) = path.parent().zip(path.file_name()) else {
            error!("--datastore file:{} names no file: the datastore stays down", path.display());
            connection.fail(format!("--datastore file:{} names no file", path.display()));
            return None;
        };
        let (dir, name) = (dir.to_owned(), PathBuf::from(name));
        let reporter = Reporter::new(REPORT_EVERY);
        Some(Watcher { path, dir, name, snapshots, connection, reporter, loaded: None, sent: false })
    }

    /// Logs `what` (throttled by the reporter) and marks the datastore down.
    fn trouble(&mut self, what: String) {
        if self.reporter.trouble(&what, Instant::now()) {
            error!("{what}");
        }
        self.connection.fail(what);
    }

    /// Reads and parses the file off the runtime's thread; sends the snapshot or reports why not.
    async fn read(&mut self) -> Continue {
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || (stamp(&path), file::load(&path))).await;
        if let Ok((stamp, _)) = &read {
            self.loaded = *stamp;
        }
        match read.map(|(_, loaded)| loaded) {
            Ok(Ok((model, problems))) => {
                if self.reporter.cleared() {
                    info!(path = %self.path.display(), "datastore file usable again");
                }
                self.sent = true;
                self.connection.up();
                self.snapshots.send(Some(Snapshot { model, problems })).is_ok()
            }
            Ok(Err(error)) => {
                let kept = if self.sent { "keeping the last good state" } else { "nothing programmed yet" };
                let what = match error.downcast_ref::<io::Error>().map(io::Error::kind) {
                    Some(io::ErrorKind::NotFound) => format!(
                        "datastore file {} does not exist (deleted, or not written yet): {kept}; it is read the \
                         moment it appears",
                        self.path.display()
                    ),
                    _ => format!("datastore file unusable, {kept}: {error:#}"),
                };
                self.trouble(what);
                true
            }
            Err(error) => {
                self.trouble(format!("reading the datastore file {} failed: {error}", self.path.display()));
                true
            }
        }
    }

    /// Carries out `action`.
    async fn act(&mut self, action: Action) -> Continue {
        match action {
            Action::Ignore | Action::Rewatch => true,
            Action::Read => self.read().await,
            Action::Created => {
                let symlink = fs::symlink_metadata(&self.path).is_ok_and(|meta| meta.file_type().is_symlink());
                if symlink {
                    self.read().await
                } else {
                    true
                }
            }
            Action::Gone => {
                if fs::symlink_metadata(&self.path).is_err() {
                    self.read().await
                } else {
                    true
                }
            }
            Action::ReadIfChanged => {
                if self.reporter.troubled() || stamp(&self.path) != self.loaded {
                    self.read().await
                } else {
                    true
                }
            }
        }
    }

    /// Without a watch: looks at the file every [`DIRECTORY_RETRY`] for `period`, reading it when
    /// what its path leads to changed; at the start also when it is in trouble or was never read,
    /// which reports it (again, when due).
    async fn poll(&mut self, period: Duration) -> Continue {
        let look = self.reporter.troubled() || !self.sent || stamp(&self.path) != self.loaded;
        if look && !self.read().await {
            return false;
        }
        let end = Instant::now() + period;
        while Instant::now() < end {
            tokio::time::sleep(DIRECTORY_RETRY).await;
            if stamp(&self.path) != self.loaded && !self.read().await {
                return false;
            }
        }
        true
    }

    /// Watches the directory until it is missing or unwatchable.
    async fn watch_directory(&mut self, inotify: &AsyncFd<Descriptor>) -> Result<Continue, Unwatched> {
        let wd = inotify.get_ref().0.add_watch(&self.dir, watch_mask()).map_err(|errno| match errno {
            nix::errno::Errno::ENOENT => Unwatched::Missing(format!(
                "the directory {} of --datastore file:{} does not exist: keeping the last good state; the \
                 file is read as soon as the directory and the file appear",
                self.dir.display(),
                self.path.display()
            )),
            errno => Unwatched::Refused(format!(
                "cannot watch the directory {} of --datastore file:{}: {}",
                self.dir.display(),
                self.path.display(),
                io::Error::from(errno)
            )),
        })?;
        // The file may have changed while the directory was not watched.
        if !self.read().await {
            return Ok(false);
        }
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        recheck.tick().await;
        loop {
            let action = tokio::select! {
                events = read_events(inotify, wd) => match events {
                    Ok(events) => {
                        decide(events.iter().map(|(mask, entry)| (*mask, entry.as_deref())), self.name.as_os_str())
                    }
                    Err(error) => {
                        let _ = inotify.get_ref().0.rm_watch(wd);
                        return Err(Unwatched::Refused(format!("reading inotify events on {}: {error}", self.dir.display())));
                    }
                },
                _ = recheck.tick() => Action::ReadIfChanged,
            };
            if action == Action::Rewatch {
                // The old descriptor is dead or about to be; a failure here changes nothing.
                let _ = inotify.get_ref().0.rm_watch(wd);
                return Ok(true);
            }
            if !self.act(action).await {
                return Ok(false);
            }
        }
    }
}

/// Why the directory is not watched.
enum Unwatched {
    /// It does not exist: the datastore is down until it and the file appear.
    Missing(String),
    /// inotify refused (out of instances or watches, no permission): the file is polled meanwhile.
    Refused(String),
}

/// The next batch of events of watch `wd`: everything readable now, so that a burst (create,
/// write, close) is decided at once.
async fn read_events(
    inotify: &AsyncFd<Descriptor>,
    wd: WatchDescriptor,
) -> io::Result<Vec<(AddWatchFlags, Option<std::ffi::OsString>)>> {
    loop {
        let mut guard = inotify.readable().await?;
        let read = guard.try_io(|fd| {
            let mut batch = Vec::new();
            loop {
                match fd.get_ref().0.read_events() {
                    Ok(events) => batch.extend(
                        events
                            .into_iter()
                            // An overflow has no watch; a removed watch's last events are not ours.
                            .filter(|e| e.wd == wd || e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW))
                            .map(|e| (e.mask, e.name)),
                    ),
                    Err(nix::errno::Errno::EAGAIN) if !batch.is_empty() => return Ok(batch),
                    Err(errno) => return Err(io::Error::from(errno)),
                }
            }
        });
        match read {
            Ok(Ok(batch)) if batch.is_empty() => continue,
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Watches the YAML file at `path`: sends a snapshot at start and whenever the file changes. A
/// file or directory that is missing or unusable is reported at once and every
/// [`REPORT_EVERY`], `connection` is marked down, and the previous snapshot stays.
pub async fn watch_file(path: PathBuf, snapshots: watch::Sender<Option<Snapshot>>, connection: Connection) {
    let Some(mut watcher) = Watcher::new(path, snapshots, connection) else { return };
    let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(io::Error::from).and_then(
        |inotify| {
            // SAFETY: the Descriptor owns the inotify fd, which stays open and the same until the
            // AsyncFd (its only owner) is dropped.
            unsafe { AsyncFd::register_with_interest(Descriptor(inotify), tokio::io::Interest::READABLE) }
                .map_err(|error| io::Error::other(error.to_string()))
        },
    ) {
        Ok(inotify) => Some(inotify),
        Err(error) => {
            warn!("cannot start inotify ({error}): the datastore file is looked at every {DIRECTORY_RETRY:?} instead");
            None
        }
    };
    let mut refused = Reporter::new(REPORT_EVERY);
    loop {
        let watched = match &inotify {
            Some(inotify) => watcher.watch_directory(inotify).await,
            None => Err(Unwatched::Refused("inotify is unavailable".to_owned())),
        };
        match watched {
            Ok(true) => {}
            Ok(false) => return,
            Err(Unwatched::Missing(what)) => {
                watcher.trouble(what);
                tokio::time::sleep(DIRECTORY_RETRY).await;
            }
            Err(Unwatched::Refused(what)) => {
                if refused.trouble(&what, Instant::now()) {
                    warn!("{what}: looking at the file every {DIRECTORY_RETRY:?} instead until it can be watched");
                }
                if !watcher.poll(RECHECK).await {
                    return;
                }
            }
        }
        if watcher.snapshots.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "cluster.yaml";

    fn on(events: &[(AddWatchFlags, Option<&str>)]) -> Action {
        decide(events.iter().map(|(mask, name)| (*mask, name.map(OsStr::new))), OsStr::new(FILE))
    }

    #[test]
    fn a_write_in_place_is_read_when_closed_not_while_written() {
        let name = Some(FILE);
        assert_eq!(on(&[(AddWatchFlags::IN_CREATE, name)]), Action::Created, "a new file is only looked at");
        assert_eq!(on(&[(AddWatchFlags::IN_CLOSE_WRITE, name)]), Action::Read);
        assert_eq!(
            on(&[(AddWatchFlags::IN_CREATE, name), (AddWatchFlags::IN_CLOSE_WRITE, name)]),
            Action::Read,
            "created and written in one batch"
        );
        assert_eq!(on(&[(AddWatchFlags::IN_ATTRIB, name)]), Action::Read, "chmod: it may have become (un)readable");
    }

    #[test]
    fn a_rename_over_the_file_is_read_and_a_rename_away_is_gone() {
        let renamed =
            [(AddWatchFlags::IN_MOVED_FROM, Some("cluster.yaml.tmp")), (AddWatchFlags::IN_MOVED_TO, Some(FILE))];
        assert_eq!(on(&renamed), Action::Read);
        assert_eq!(on(&[(AddWatchFlags::IN_MOVED_FROM, Some(FILE))]), Action::Gone);
        assert_eq!(on(&[(AddWatchFlags::IN_DELETE, Some(FILE))]), Action::Gone);
        assert_eq!(
            on(&[(AddWatchFlags::IN_DELETE, Some(FILE)), (AddWatchFlags::IN_CREATE, Some(FILE))]),
            Action::Created,
            "deleted and created again: the last event on the file decides"
        );
        assert_eq!(
            on(&[(AddWatchFlags::IN_CLOSE_WRITE, Some(FILE)), (AddWatchFlags::IN_DELETE, Some(FILE))]),
            Action::Gone
        );
    }

    #[test]
    fn other_entries_ask_for_a_look_and_never_outvote_the_file() {
        // A ConfigMap volume: the new ..data symlink is renamed into place.
        let configmap = [
            (AddWatchFlags::IN_CREATE, Some("..2026_12_04_18_00_00.1")),
            (AddWatchFlags::IN_MOVED_TO, Some("..data")),
            (AddWatchFlags::IN_DELETE, Some("..2026_12_04_17_00_00.1")),
        ];
        assert_eq!(on(&configmap), Action::ReadIfChanged);
        // Written in place, then an unrelated file appears: the write must not become a stat
        // comparison, which a same-size rewrite within one timestamp tick passes.
        let written = [(AddWatchFlags::IN_CLOSE_WRITE, Some(FILE)), (AddWatchFlags::IN_CREATE, Some("notes.txt"))];
        assert_eq!(on(&written), Action::Read);
        // Half written when a neighbour changed: still wait for the close.
        let half = [(AddWatchFlags::IN_CREATE, Some(FILE)), (AddWatchFlags::IN_CLOSE_WRITE, Some("other"))];
        assert_eq!(on(&half), Action::Created);
        assert_eq!(on(&[]), Action::Ignore);
        assert_eq!(on(&[(AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_ISDIR, None)]), Action::Ignore);
    }

    #[test]
    fn losing_the_directory_or_events_overrides_everything() {
        let lost = [(AddWatchFlags::IN_CLOSE_WRITE, Some(FILE)), (AddWatchFlags::IN_DELETE_SELF, None)];
        assert_eq!(on(&lost), Action::Rewatch);
        assert_eq!(on(&[(AddWatchFlags::IN_IGNORED, None)]), Action::Rewatch);
        assert_eq!(on(&[(AddWatchFlags::IN_MOVE_SELF, None)]), Action::Rewatch);
        let overflow = [(AddWatchFlags::IN_DELETE, Some(FILE)), (AddWatchFlags::IN_Q_OVERFLOW, None)];
        assert_eq!(on(&overflow), Action::Read, "events were lost: read whatever is there");
    }

    #[test]
    fn a_problem_is_reported_at_once_when_it_changes_and_every_period_while_it_lasts() {
        let start = Instant::now();
        let mut reporter = Reporter::new(Duration::from_secs(30));
        assert!(!reporter.cleared(), "nothing to clear yet");
        assert!(reporter.trouble("missing", start), "reported at once");
        assert!(!reporter.trouble("missing", start + Duration::from_secs(1)), "not on every look");
        assert!(!reporter.trouble("missing", start + Duration::from_secs(29)));
        assert!(reporter.trouble("missing", start + Duration::from_secs(30)), "again after the period");
        assert!(reporter.trouble("not YAML", start + Duration::from_secs(31)), "a new problem at once");
        assert!(reporter.troubled());
        assert!(reporter.cleared(), "the end of a problem is said");
        assert!(!reporter.troubled());
        assert!(reporter.trouble("not YAML", start + Duration::from_secs(32)), "the same problem again is news");
    }

    /// The watcher on a real directory (no root needed): a missing file is reported and read the
    /// moment it is written, a deleted file marks the datastore down and keeps the last snapshot,
    /// and a same-length rewrite in place is seen.
    #[tokio::test]
    async fn the_watcher_follows_a_real_directory() {
        let dir = std::env::temp_dir().join(format!("dataplane-file-watch-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(FILE);
        let (sender, mut snapshots) = watch::channel(None);
        let connection = Connection::default();
        let task = tokio::spawn(watch_file(path.clone(), sender, connection.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!connection.is_up(), "a missing file is down");
        assert!(connection.reason().is_some_and(|r| r.contains("does not exist")), "{:?}", connection.reason());

        let yaml = |pool: &str| {
            format!(
                "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: {pool}\nspec:\n  cidr: 10.244.0.0/16\n"
            )
        };
        fs::write(&path, yaml("pool-a")).expect("write");
        tokio::time::timeout(Duration::from_secs(2), snapshots.changed()).await.expect("read at once").expect("open");
        let names = |snapshots: &mut watch::Receiver<Option<Snapshot>>| -> Vec<String> {
            let snapshot = snapshots.borrow_and_update().clone().expect("a snapshot");
            snapshot.model.pools.iter().map(|p| p.name.clone()).collect()
        };
        assert_eq!(names(&mut snapshots), ["pool-a"]);
        assert!(connection.is_up(), "up after the write");

        // The same length, rewritten in place at once: an event, not a timestamp, tells.
        fs::write(&path, yaml("pool-b")).expect("rewrite");
        tokio::time::timeout(Duration::from_secs(2), snapshots.changed()).await.expect("rewrite seen").expect("open");
        assert_eq!(names(&mut snapshots), ["pool-b"]);

        fs::remove_file(&path).expect("delete");
        let deadline = Instant::now() + Duration::from_secs(2);
        while connection.is_up() {
            assert!(Instant::now() < deadline, "the delete was not seen");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(names(&mut snapshots), ["pool-b"], "the last good snapshot stays");

        // Replaced by a rename, as editors and ConfigMaps do.
        let staged = dir.join("staged.tmp");
        fs::write(&staged, yaml("pool-c")).expect("stage");
        fs::rename(&staged, &path).expect("rename");
        tokio::time::timeout(Duration::from_secs(2), snapshots.changed()).await.expect("rename seen").expect("open");
        assert_eq!(names(&mut snapshots), ["pool-c"]);
        task.abort();
        let _ = fs::remove_dir_all(&dir);
    }

    /// Without inotify the file is looked at every second: read when it appears or changes, and
    /// not again while it stays the same.
    #[tokio::test]
    async fn without_a_watch_the_file_is_polled() {
        let dir = std::env::temp_dir().join(format!("dataplane-file-poll-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(FILE);
        let (sender, mut snapshots) = watch::channel(None);
        let connection = Connection::default();
        let mut watcher = Watcher::new(path.clone(), sender, connection.clone()).expect("names a file");
        let task = tokio::spawn(async move { watcher.poll(Duration::from_secs(4)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(connection.reason().is_some_and(|r| r.contains("does not exist")), "{:?}", connection.reason());
        let yaml =
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: 10.244.0.0/16\n";
        fs::write(&path, yaml).expect("write");
        let wait = DIRECTORY_RETRY + Duration::from_secs(1);
        tokio::time::timeout(wait, snapshots.changed()).await.expect("read when it appears").expect("open");
        assert!(connection.is_up());
        let unchanged = tokio::time::timeout(wait, snapshots.changed()).await;
        assert!(unchanged.is_err(), "read again although the file stayed the same");
        assert!(task.await.expect("poll ran"), "the receiver is still there");
        let _ = fs::remove_dir_all(&dir);
    }

    /// A directory that does not exist is reported as such, then watched once it appears; one
    /// deleted under the watcher is reported and watched again when it is back.
    #[tokio::test]
    async fn a_missing_directory_is_reported_and_watched_once_it_appears() {
        let dir = std::env::temp_dir().join(format!("dataplane-file-watch-dir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join(FILE);
        let (sender, mut snapshots) = watch::channel(None);
        let connection = Connection::default();
        let task = tokio::spawn(watch_file(path.clone(), sender, connection.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reason = connection.reason().unwrap_or_default();
        assert!(reason.contains(&format!("the directory {} ", dir.display())), "{reason}");
        assert!(reason.contains("does not exist"), "{reason}");

        let yaml =
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: 10.244.0.0/16\n";
        fs::create_dir_all(&dir).expect("dir");
        fs::write(&path, yaml).expect("write");
        let wait = DIRECTORY_RETRY + Duration::from_secs(2);
        tokio::time::timeout(wait, snapshots.changed()).await.expect("read once the directory exists").expect("open");
        assert!(connection.is_up());

        fs::remove_dir_all(&dir).expect("remove the directory");
        let deadline = Instant::now() + Duration::from_secs(2);
        while connection.is_up() {
            assert!(Instant::now() < deadline, "the deleted directory was not seen");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        fs::create_dir_all(&dir).expect("dir again");
        fs::write(&path, yaml).expect("write again");
        tokio::time::timeout(wait, snapshots.changed()).await.expect("watched again").expect("open");
        assert!(connection.is_up());
        task.abort();
        let _ = fs::remove_dir_all(&dir);
    }
}
