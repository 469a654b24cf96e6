//! The desired state as an edge holds it: every site, app and certificate record at one store
//! revision. Built from a snapshot, advanced by watch batches, persisted in `edge.dataDir` so an
//! edge restarted while the store is down serves what it had.
//!
//! The maps are persistent (`imbl`): a clone is O(1) and shares structure, so publishing a new
//! state per watch batch costs the same with 10 sites or 10,000. A [`ChangeLog`] of recently
//! changed keys lets a consumer that applied an earlier state apply only what changed since.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use statiko_common::keys::{Key, KeySchema};
use statiko_common::model::{
    self, AcmeOrderRecord, AppRecord, AppRef, CertificateRecord, ChallengeRecord, DeploymentRecord,
    DeploymentState, SiteRecord,
};
use statiko_common::private_files;
use statiko_common::store::{KeyValue, Snapshot, WatchBatch, WatchEvent};

/// A persistent map by record name.
pub type Map<V> = imbl::OrdMap<String, V>;

/// Changes kept in the log; a consumer further behind applies the whole state instead.
const CHANGE_LOG_MAX: usize = 4096;

/// The desired-state records this edge follows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Desired {
    /// Revision of the last desired-state change applied (node status writes do not count).
    pub revision: i64,
    /// Store revision the edge has read up to; a watch resumes from `seen_revision + 1`.
    pub seen_revision: i64,
    pub sites: Map<SiteRecord>,
    /// Keyed by `name@version`.
    pub apps: Map<AppRecord>,
    pub certificates: Map<CertificateRecord>,
    /// ACME HTTP-01 responses the leader stored, by token (every edge answers them).
    #[serde(default)]
    pub challenges: Map<ChallengeRecord>,
    /// ACME orders in flight, by site (their last error shows in the node status).
    #[serde(default)]
    pub acme_orders: Map<AcmeOrderRecord>,
    /// Deployments in `staging` state, by id: every live edge stages their bundles, and the
    /// leader cuts them over (other deployment records are not kept here).
    #[serde(default)]
    pub staging: Map<DeploymentRecord>,
    /// Previews (deployments in `preview` state), by id: every edge stages them and serves each
    /// at its own host until it expires.
    #[serde(default)]
    pub previews: Map<DeploymentRecord>,
    /// Store `mod_revision` of each site and certificate record, by store key, for writes that
    /// compare against the record they replace (the leader's certificate jobs).
    #[serde(default)]
    pub revisions: Map<i64>,
    /// Recent changes (not persisted: a loaded state starts a new lineage).
    #[serde(skip)]
    changes: ChangeLog,
    /// Whether this state was read from the store in this process (a persisted state was not).
    #[serde(skip)]
    synced: bool,
    /// Whether a state import is being written (`meta/import` exists): the records are then
    /// part old, part new, and must not be published until the import ends.
    #[serde(skip)]
    importing: bool,
}

impl PartialEq for Desired {
    /// Equal records at equal revisions; the change log is bookkeeping and does not count.
    fn eq(&self, other: &Self) -> bool {
        self.revision == other.revision
            && self.seen_revision == other.seen_revision
            && self.sites == other.sites
            && self.apps == other.apps
            && self.certificates == other.certificates
            && self.challenges == other.challenges
            && self.acme_orders == other.acme_orders
            && self.staging == other.staging
            && self.previews == other.previews
            && self.revisions == other.revisions
    }
}

/// One changed record, by the name the maps of [`Desired`] use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Changed {
    Site(String),
    /// `name@version`.
    App(String),
    Certificate(String),
    Challenge(String),
    AcmeOrder(String),
    /// A preview, by deployment id.
    Preview(String),
}

/// Where a consumer is: the lineage and revision of the last state it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    lineage: u64,
    revision: i64,
}

/// The keys changed by recent revisions of one lineage of states. A lineage starts with a
/// snapshot or a persisted load and continues through watch batches; positions in two lineages
/// cannot be compared (a reload may have missed deletes), so crossing one means applying all.
#[derive(Debug, Clone, Default)]
struct ChangeLog {
    lineage: u64,
    /// The log is complete for revisions above this.
    floor: i64,
    /// `(revision, key)` in revision order.
    entries: imbl::Vector<(i64, Changed)>,
}

/// A new lineage number, unique in this process.
fn next_lineage() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Desired {
    /// Builds the state from a snapshot of the whole key root.
    pub fn from_snapshot(keys: &KeySchema, snapshot: &Snapshot) -> Self {
        let mut desired = Self {
            seen_revision: snapshot.revision,
            ..Self::default()
        };
        for kv in &snapshot.kvs {
            if desired.put(keys, kv).is_some() {
                desired.revision = desired.revision.max(kv.mod_revision);
            }
        }
        desired.new_lineage();
        desired.synced = true;
        desired
    }

    /// Whether this state came from the store in this process, rather than from the state
    /// persisted by an earlier run (which may be far behind).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Starts a new lineage at the current revision: consumers of an earlier one apply all.
    fn new_lineage(&mut self) {
        self.changes = ChangeLog {
            lineage: next_lineage(),
            floor: self.revision,
            entries: imbl::Vector::new(),
        };
    }

    /// Whether a state import is in the middle of being written: such a state is never
    /// published (the edge keeps serving the last complete one).
    pub fn importing(&self) -> bool {
        self.importing
    }

    /// This state's position, to remember as applied.
    pub fn position(&self) -> Position {
        Position {
            lineage: self.changes.lineage,
            revision: self.revision,
        }
    }

    /// The records changed since `applied`, or `None` when they are not known (another lineage,
    /// or further back than the log reaches): then the consumer applies the whole state.
    pub fn changes_since(&self, applied: Position) -> Option<HashSet<Changed>> {
        let log = &self.changes;
        if applied.lineage != log.lineage || applied.revision < log.floor {
            return None;
        }
        // Entries are in revision order: skip what `applied` already has.
        let start = log
            .entries
            .binary_search_by(|(revision, _)| {
                if *revision <= applied.revision {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Greater
                }
            })
            .unwrap_or_else(|i| i);
        Some(
            log.entries
                .skip(start)
                .into_iter()
                .map(|(_, key)| key)
                .collect(),
        )
    }

    /// Applies one watch batch. Returns whether any desired-state record changed.
    pub fn apply(&mut self, keys: &KeySchema, batch: &WatchBatch) -> bool {
        let mut changed = false;
        for event in &batch.events {
            let key = match event {
                WatchEvent::Put(kv) => self.put(keys, kv),
                WatchEvent::Delete { key, .. } => self.delete(keys, key),
            };
            match key {
                Some(Some(key)) => {
                    self.log(batch.revision, key);
                    changed = true;
                }
                Some(None) => changed = true,
                None => {}
            }
        }
        self.seen_revision = self.seen_revision.max(batch.revision);
        if changed {
            self.revision = batch.revision;
        }
        changed
    }

    fn log(&mut self, revision: i64, key: Changed) {
        let log = &mut self.changes;
        log.entries.push_back((revision, key));
        while log.entries.len() > CHANGE_LOG_MAX {
            if let Some((dropped, _)) = log.entries.pop_front() {
                log.floor = log.floor.max(dropped);
            }
        }
    }

    /// The app record a site should serve, if it has one and the record exists.
    pub fn app_for(&self, site: &SiteRecord) -> Option<&AppRecord> {
        site.app
            .as_ref()
            .and_then(|app| self.apps.get(&app_key(app)))
    }

    /// Stores one record. `None`: not desired state; `Some(None)`: desired state but no record
    /// changed (the `meta/state` marker, or an unreadable record, which is ignored).
    fn put(&mut self, keys: &KeySchema, kv: &KeyValue) -> Option<Option<Changed>> {
        let decoded = match keys.parse(&kv.key) {
            Some(Key::Site(_)) => model::decode(&kv.value).map(|s: SiteRecord| {
                let name = s.domain.clone();
                self.sites.insert(name.clone(), s);
                self.revisions.insert(kv.key.clone(), kv.mod_revision);
                Changed::Site(name)
            }),
            Some(Key::App { .. }) => model::decode(&kv.value).map(|a: AppRecord| {
                let name = app_key(&a.app_ref());
                self.apps.insert(name.clone(), a);
                Changed::App(name)
            }),
            Some(Key::Certificate(_)) => model::decode(&kv.value).map(|c: CertificateRecord| {
                let name = c.name.clone();
                self.certificates.insert(name.clone(), c);
                self.revisions.insert(kv.key.clone(), kv.mod_revision);
                Changed::Certificate(name)
            }),
            Some(Key::AcmeChallenge(token)) => {
                model::decode(&kv.value).map(|c: ChallengeRecord| {
                    self.challenges.insert(token.clone(), c);
                    Changed::Challenge(token)
                })
            }
            Some(Key::AcmeOrder(site)) => model::decode(&kv.value).map(|o: AcmeOrderRecord| {
                self.acme_orders.insert(site.clone(), o);
                Changed::AcmeOrder(site)
            }),
            _ if kv.key == keys.meta_import() => {
                self.importing = true;
                return Some(None);
            }
            Some(Key::Deployment { id, .. }) => {
                return Some(match model::decode::<DeploymentRecord>(&kv.value) {
                    Ok(d) if d.state == DeploymentState::Staging => {
                        self.staging.insert(id, d);
                        None
                    }
                    Ok(d) if d.state == DeploymentState::Preview && d.preview.is_some() => {
                        self.previews.insert(id.clone(), d);
                        Some(Changed::Preview(id))
                    }
                    Ok(_) => {
                        self.staging.remove(&id);
                        self.previews.remove(&id).map(|_| Changed::Preview(id))
                    }
                    Err(err) => {
                        tracing::warn!(key = %kv.key, error = %err, "ignoring an unreadable record");
                        None
                    }
                });
            }
            _ => return (kv.key == keys.meta_state()).then_some(None),
        };
        match decoded {
            Ok(changed) => Some(Some(changed)),
            Err(err) => {
                tracing::warn!(key = %kv.key, error = %err, "ignoring an unreadable record");
                Some(None)
            }
        }
    }

    /// Removes one record; like [`Self::put`], but nothing changed when it was not there.
    fn delete(&mut self, keys: &KeySchema, key: &str) -> Option<Option<Changed>> {
        if key == keys.meta_import() {
            self.importing = false;
            return Some(None);
        }
        self.revisions.remove(key);
        let changed = match keys.parse(key) {
            Some(Key::Site(domain)) => self.sites.remove(&domain).map(|_| Changed::Site(domain)),
            Some(Key::App { name, version }) => {
                let name = format!("{name}@{version}");
                self.apps.remove(&name).map(|_| Changed::App(name))
            }
            Some(Key::Certificate(name)) => self
                .certificates
                .remove(&name)
                .map(|_| Changed::Certificate(name)),
            Some(Key::AcmeChallenge(token)) => self
                .challenges
                .remove(&token)
                .map(|_| Changed::Challenge(token)),
            Some(Key::AcmeOrder(site)) => self
                .acme_orders
                .remove(&site)
                .map(|_| Changed::AcmeOrder(site)),
            Some(Key::Deployment { id, .. }) => {
                if self.previews.remove(&id).is_some() {
                    return Some(Some(Changed::Preview(id)));
                }
                return self.staging.remove(&id).map(|_| None);
            }
            _ => None,
        };
        changed.map(Some)
    }

    /// Where the last applied state is kept.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("applied").join("desired.json")
    }

    /// Loads the persisted state, if any (tightening its permissions first if an earlier
    /// version left them wider: it holds the sealed private keys).
    pub fn load(data_dir: &Path) -> std::io::Result<Option<Self>> {
        let path = Self::path(data_dir);
        if let Some(dir) = path.parent() {
            private_files::tighten(dir, private_files::DIR_MODE)?;
        }
        private_files::tighten(&path, private_files::FILE_MODE)?;
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(|mut desired: Self| {
                    desired.new_lineage();
                    Some(desired)
                })
                .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Persists the state atomically (write, fsync, rename).
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        private_files::write_atomic(&Self::path(data_dir), &bytes)
    }
}

/// `name@version`.
pub fn app_key(app: &AppRef) -> String {
    format!("{}@{}", app.name, app.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use statiko_common::model::TlsChoice;

    fn kv(key: String, value: Vec<u8>, revision: i64) -> KeyValue {
        KeyValue {
            key,
            value,
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: 0,
        }
    }

    fn site(domain: &str) -> SiteRecord {
        SiteRecord {
            domain: domain.into(),
            aliases: vec![],
            tls: TlsChoice::SelfSigned,
            app: None,
            created_at: 0,
            updated_at: 0,
            deployed_at: None,
            deployment: None,
            skew_protection_ms: None,
        }
    }

    #[test]
    fn snapshot_then_batches() {
        let keys = KeySchema::new("/statiko");
        let snapshot = Snapshot {
            revision: 9,
            kvs: vec![
                kv(keys.site("a.test"), model::encode(&site("a.test")), 3),
                kv(keys.node("edge-1"), b"{}".to_vec(), 9),
                kv(keys.meta_state(), vec![], 5),
            ],
        };
        let mut desired = Desired::from_snapshot(&keys, &snapshot);
        assert_eq!((desired.revision, desired.seen_revision), (5, 9));
        assert!(desired.sites.contains_key("a.test"));

        // A node status write advances what was seen, not the desired revision.
        let noise = WatchBatch {
            revision: 10,
            events: vec![WatchEvent::Put(kv(keys.node("edge-1"), b"{}".to_vec(), 10))],
        };
        assert!(!desired.apply(&keys, &noise));
        assert_eq!((desired.revision, desired.seen_revision), (5, 10));

        let change = WatchBatch {
            revision: 11,
            events: vec![
                WatchEvent::Delete {
                    key: keys.site("a.test"),
                    mod_revision: 11,
                },
                WatchEvent::Put(kv(keys.site("b.test"), model::encode(&site("b.test")), 11)),
            ],
        };
        assert!(desired.apply(&keys, &change));
        assert_eq!(desired.revision, 11);
        assert_eq!(desired.sites.keys().collect::<Vec<_>>(), ["b.test"]);

        let dir = tempfile::tempdir().unwrap();
        desired.save(dir.path()).unwrap();
        assert_eq!(Desired::load(dir.path()).unwrap(), Some(desired));
        // It holds the sealed keys: owner only, and tightened at load if left wider.
        use std::os::unix::fs::PermissionsExt as _;
        let path = Desired::path(dir.path());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(
            path.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        Desired::load(dir.path()).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }

    fn put(keys: &KeySchema, domain: &str, revision: i64) -> WatchBatch {
        WatchBatch {
            revision,
            events: vec![WatchEvent::Put(kv(
                keys.site(domain),
                model::encode(&site(domain)),
                revision,
            ))],
        }
    }

    #[test]
    fn change_log_names_what_changed_since_a_position() {
        let keys = KeySchema::new("/statiko");
        let mut desired = Desired::from_snapshot(
            &keys,
            &Snapshot {
                revision: 3,
                kvs: vec![kv(keys.site("a.test"), model::encode(&site("a.test")), 3)],
            },
        );
        let start = desired.position();
        assert_eq!(desired.changes_since(start), Some(HashSet::new()));

        desired.apply(&keys, &put(&keys, "b.test", 4));
        let at_4 = desired.position();
        desired.apply(
            &keys,
            &WatchBatch {
                revision: 5,
                events: vec![WatchEvent::Delete {
                    key: keys.site("a.test"),
                    mod_revision: 5,
                }],
            },
        );
        // A copy published to a consumer carries the log with it.
        let published = desired.clone();
        assert_eq!(
            published.changes_since(start),
            Some(HashSet::from([
                Changed::Site("b.test".into()),
                Changed::Site("a.test".into())
            ]))
        );
        assert_eq!(
            published.changes_since(at_4),
            Some(HashSet::from([Changed::Site("a.test".into())]))
        );
        assert_eq!(
            published.changes_since(published.position()),
            Some(HashSet::new())
        );

        // Another lineage (a reload, a persisted state) cannot be diffed against.
        let reloaded = Desired::from_snapshot(
            &keys,
            &Snapshot {
                revision: 5,
                kvs: vec![kv(keys.site("b.test"), model::encode(&site("b.test")), 4)],
            },
        );
        assert_eq!(reloaded.changes_since(at_4), None);
        assert_eq!(reloaded.changes_since(published.position()), None);
    }

    #[test]
    fn change_log_is_bounded() {
        let keys = KeySchema::new("/statiko");
        let mut desired = Desired::from_snapshot(&keys, &Snapshot::default());
        let start = desired.position();
        desired.apply(&keys, &put(&keys, "first.test", 1));
        let after_first = desired.position();
        for i in 0..CHANGE_LOG_MAX {
            desired.apply(&keys, &put(&keys, &format!("s{i}.test"), 2 + i as i64));
        }
        // The first change fell off the log: a consumer from before it applies everything; one
        // just after it still gets the changes.
        assert_eq!(desired.changes_since(start), None);
        assert_eq!(
            desired.changes_since(after_first).map(|c| c.len()),
            Some(CHANGE_LOG_MAX)
        );
    }

    #[test]
    fn an_import_in_progress_is_flagged_until_its_marker_goes() {
        let keys = KeySchema::new("/statiko");
        let marker = kv(keys.meta_import(), b"{}".to_vec(), 6);
        let snapshot = Snapshot {
            revision: 7,
            kvs: vec![
                marker.clone(),
                kv(keys.site("a.test"), model::encode(&site("a.test")), 7),
            ],
        };
        let mut desired = Desired::from_snapshot(&keys, &snapshot);
        assert!(desired.importing());
        assert!(desired.apply(&keys, &put(&keys, "b.test", 8)));
        assert!(desired.importing());
        let commit = WatchBatch {
            revision: 9,
            events: vec![
                WatchEvent::Delete {
                    key: keys.meta_import(),
                    mod_revision: 9,
                },
                WatchEvent::Put(kv(keys.meta_state(), vec![], 9)),
            ],
        };
        assert!(desired.apply(&keys, &commit));
        assert!(!desired.importing());
        assert_eq!(desired.revision, 9);
        assert_eq!(desired.sites.len(), 2);
        // A marker written while following the store flags it again.
        assert!(desired.apply(
            &keys,
            &WatchBatch {
                revision: 10,
                events: vec![WatchEvent::Put(marker)],
            }
        ));
        assert!(desired.importing());
    }

    #[test]
    fn challenges_and_orders_are_desired_state() {
        let keys = KeySchema::new("/statiko");
        let mut desired = Desired::default();
        let challenge = model::ChallengeRecord {
            token: "tok_1-x".into(),
            key_authorization: "tok_1-x.thumb".into(),
            site: "a.test".into(),
            domains: vec!["a.test".into()],
            created_at: 0,
        };
        let put = WatchBatch {
            revision: 4,
            events: vec![
                WatchEvent::Put(kv(
                    keys.acme_challenge("tok_1-x"),
                    model::encode(&challenge),
                    4,
                )),
                WatchEvent::Put(kv(
                    keys.acme_order("a.test"),
                    model::encode(&AcmeOrderRecord::default()),
                    4,
                )),
            ],
        };
        assert!(desired.apply(&keys, &put));
        assert_eq!(desired.challenges.get("tok_1-x"), Some(&challenge));
        assert!(desired.acme_orders.contains_key("a.test"));
        let delete = WatchBatch {
            revision: 5,
            events: vec![WatchEvent::Delete {
                key: keys.acme_challenge("tok_1-x"),
                mod_revision: 5,
            }],
        };
        assert!(desired.apply(&keys, &delete));
        assert!(desired.challenges.is_empty());
        assert_eq!(desired.revision, 5);
    }
}
