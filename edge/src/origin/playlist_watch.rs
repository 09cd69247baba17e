//! One watcher per playlist file, shared by every blocking playlist reload held on it.
//!
//! A held reload (draft-pantos-hls-rfc8216bis §6.2.5.2) waits for the playlist on disk to list its
//! part. Each hold once polled the file itself, so a client that made its requests distinct (any extra
//! query parameter defeats coalescing) multiplied the polls by the number of connections it held:
//! 10,000 holds were a million `stat` calls a second. Here the polls are per file: the first hold on
//! a file starts one poller, later holds subscribe to what it reads, and the poller stops when the
//! last hold on the file lets go (a guard's drop, on every path). The number of pollers is bounded by
//! the playlists in the origin's folder, never by the clients.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::dir::blocking;

/// How often a watched playlist file is looked at: one `stat` (a packager publishes by renaming a new
/// file into place, which changes the inode), and a read only when it changed. This is latency added
/// to each part at most; inotify would save it for a dependency and a watch per folder.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Playlists larger than this are served but never held: reading one every change would cost more
/// than it is worth, and no live window is this long.
const MAX_WATCHED_PLAYLIST: u64 = 4 << 20;

/// What the poller last saw of the file.
#[derive(Clone, Debug)]
pub enum Snapshot {
    /// Not looked at yet.
    Pending,
    /// The playlist as it is on disk now.
    Read(Arc<blocking::Playlist>),
    /// Missing, unreadable or too large: the holds serve the request at once and let the answer say
    /// what is wrong (404 and the like), rather than wait on it.
    Unwatchable,
}

/// The watchers of one origin's playlist files.
#[derive(Default)]
pub struct PlaylistWatchers {
    by_file: Mutex<HashMap<PathBuf, Weak<Watched>>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    /// Pollers running now.
    live: AtomicU64,
    /// Looks at a playlist file (`stat` calls) since start.
    polls: AtomicU64,
}

/// A hold's subscription to one file's watcher; the watcher lives while any subscription does.
pub struct Subscription {
    /// Held for its drop: the poller stops when the last subscription to it goes.
    _watcher: Arc<Watched>,
    pub snapshots: watch::Receiver<Snapshot>,
}

struct Watched {
    snapshots: watch::Receiver<Snapshot>,
    poller: AbortHandle,
    counters: Arc<Counters>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.poller.abort();
        self.counters.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PlaylistWatchers {
    /// Subscribes to `file`'s watcher, starting it if no hold is watching that file. Needs a Tokio
    /// runtime (the poller is a task).
    pub fn subscribe(&self, file: &Path) -> Subscription {
        // A poisoned map is still a valid map: the worst a panic mid-insert leaves is a dead entry.
        let mut by_file = self.by_file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(watched) = by_file.get(file).and_then(Weak::upgrade) {
            let snapshots = watched.snapshots.clone();
            return Subscription { _watcher: watched, snapshots };
        }
        // Entries whose watcher stopped are dropped here, so the map holds at most the files watched
        // now plus the one being added.
        by_file.retain(|_, watched| watched.strong_count() > 0);
        let (sender, snapshots) = watch::channel(Snapshot::Pending);
        let poller = tokio::spawn(poll(file.to_path_buf(), sender, self.counters.clone())).abort_handle();
        self.counters.live.fetch_add(1, Ordering::Relaxed);
        let watched = Arc::new(Watched { snapshots: snapshots.clone(), poller, counters: self.counters.clone() });
        by_file.insert(file.to_path_buf(), Arc::downgrade(&watched));
        Subscription { _watcher: watched, snapshots }
    }

    /// Playlist files being watched now.
    pub fn live(&self) -> u64 {
        self.counters.live.load(Ordering::Relaxed)
    }

    /// Looks at playlist files since start.
    pub fn polls(&self) -> u64 {
        self.counters.polls.load(Ordering::Relaxed)
    }
}

impl Subscription {
    /// Whether another hold shares this watcher (for tests).
    #[cfg(test)]
    fn shared(&self) -> bool {
        Arc::strong_count(&self._watcher) > 1
    }
}

/// Looks at `file` every [`POLL_INTERVAL`] and publishes what it holds whenever it changes, until
/// aborted by the last subscription's drop.
async fn poll(file: PathBuf, sender: watch::Sender<Snapshot>, counters: Arc<Counters>) {
    let mut seen: Option<FileStamp> = None;
    loop {
        counters.polls.fetch_add(1, Ordering::Relaxed);
        match tokio::fs::metadata(&file).await {
            Ok(metadata) if metadata.is_file() && metadata.len() <= MAX_WATCHED_PLAYLIST => {
                let stamp = FileStamp::of(&metadata);
                if seen.as_ref() != Some(&stamp) {
                    match read_bounded(&file).await {
                        Some(text) => {
                            sender.send_replace(Snapshot::Read(Arc::new(blocking::Playlist::read(&text))));
                            seen = Some(stamp);
                        }
                        // Read again at the next look: a passing error (out of file descriptors) must
                        // not stand for the file until the packager rewrites it.
                        None => {
                            sender.send_replace(Snapshot::Unwatchable);
                            seen = None;
                        }
                    }
                }
            }
            _ => {
                sender.send_replace(Snapshot::Unwatchable);
                seen = None;
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The file's text, read through a handle that is checked to be a regular file and never past
/// [`MAX_WATCHED_PLAYLIST`]: the name may have been replaced since it was looked at (by a FIFO, which
/// would block a read, or a link to a device without end).
async fn read_bounded(file: &Path) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let handle = tokio::fs::File::open(file).await.ok()?;
    if !handle.metadata().await.ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    handle.take(MAX_WATCHED_PLAYLIST + 1).read_to_end(&mut bytes).await.ok()?;
    if bytes.len() as u64 > MAX_WATCHED_PLAYLIST {
        return None;
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// What tells one version of a file from the next: a packager renames a new file into place (a new
/// inode); size and modification time catch an edit in place.
#[derive(Debug, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> FileStamp {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(metadata);
        #[cfg(not(unix))]
        let inode = 0;
        FileStamp { len: metadata.len(), modified: metadata.modified().ok(), inode }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn until_read(subscription: &mut Subscription) -> Arc<blocking::Playlist> {
        loop {
            if let Snapshot::Read(playlist) = subscription.snapshots.borrow_and_update().clone() {
                return playlist;
            }
            subscription.snapshots.changed().await.expect("poller runs while subscribed");
        }
    }

    #[tokio::test]
    async fn holds_on_one_file_share_one_poller_which_stops_with_the_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("index.m3u8");
        std::fs::write(&file, "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:7\n").expect("write");
        let watchers = PlaylistWatchers::default();
        let mut subscriptions: Vec<Subscription> = (0..500).map(|_| watchers.subscribe(&file)).collect();
        assert_eq!(watchers.live(), 1, "500 holds on one file, one poller");
        assert!(subscriptions[0].shared());
        assert_eq!(until_read(&mut subscriptions[0]).await.media_sequence, 7);
        // Another file has its own.
        let other = dir.path().join("other.m3u8");
        std::fs::write(&other, "#EXTM3U\n").expect("write");
        let elsewhere = watchers.subscribe(&other);
        assert_eq!(watchers.live(), 2);
        drop(elsewhere);
        assert_eq!(watchers.live(), 1);
        subscriptions.truncate(1);
        assert_eq!(watchers.live(), 1, "still watched while one hold is");
        drop(subscriptions);
        assert_eq!(watchers.live(), 0, "the last hold's drop stops the poller");
        // Watching again starts afresh, and the map kept no dead entries beyond the new one.
        let again = watchers.subscribe(&file);
        assert_eq!(watchers.live(), 1);
        assert_eq!(watchers.by_file.lock().expect("lock").len(), 1);
        drop(again);
    }

    #[tokio::test]
    async fn a_rewrite_is_seen_and_a_missing_file_is_unwatchable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("index.m3u8");
        std::fs::write(&file, "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:1\n").expect("write");
        let watchers = PlaylistWatchers::default();
        let mut subscription = watchers.subscribe(&file);
        assert_eq!(until_read(&mut subscription).await.media_sequence, 1);
        std::fs::write(dir.path().join("new.m3u8"), "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:2\n").expect("write");
        std::fs::rename(dir.path().join("new.m3u8"), &file).expect("rename");
        loop {
            subscription.snapshots.changed().await.expect("poller runs");
            if let Snapshot::Read(playlist) = subscription.snapshots.borrow_and_update().clone() {
                if playlist.media_sequence == 2 {
                    break;
                }
            }
        }
        // A FIFO put in its place (a read would block a thread for ever): unwatchable, at once.
        std::fs::remove_file(&file).expect("remove");
        let made = std::process::Command::new("mkfifo").arg(&file).status().expect("mkfifo");
        assert!(made.success());
        loop {
            subscription.snapshots.changed().await.expect("poller runs");
            if matches!(*subscription.snapshots.borrow_and_update(), Snapshot::Unwatchable) {
                break;
            }
        }
        assert!(watchers.polls() >= 3);
    }
}
