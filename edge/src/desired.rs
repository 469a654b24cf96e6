//! The desired state as an edge holds it: every site, app and certificate record at one store
//! revision. Built from a snapshot, advanced by watch batches, persisted in `edge.dataDir` so an
//! edge restarted while the store is down serves what it had.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use statiko_common::keys::{Key, KeySchema};
use statiko_common::model::{
    self, AcmeOrderRecord, AppRecord, AppRef, CertificateRecord, ChallengeRecord, SiteRecord,
};
use statiko_common::store::{KeyValue, Snapshot, WatchBatch, WatchEvent};

/// The desired-state records this edge follows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Desired {
    /// Revision of the last desired-state change applied (node status writes do not count).
    pub revision: i64,
    /// Store revision the edge has read up to; a watch resumes from `seen_revision + 1`.
    pub seen_revision: i64,
    pub sites: BTreeMap<String, SiteRecord>,
    /// Keyed by `name@version`.
    pub apps: BTreeMap<String, AppRecord>,
    pub certificates: BTreeMap<String, CertificateRecord>,
    /// ACME HTTP-01 responses the leader stored, by token (every edge answers them).
    #[serde(default)]
    pub challenges: BTreeMap<String, ChallengeRecord>,
    /// ACME orders in flight, by site (their last error shows in the node status).
    #[serde(default)]
    pub acme_orders: BTreeMap<String, AcmeOrderRecord>,
}

impl Desired {
    /// Builds the state from a snapshot of the whole key root.
    pub fn from_snapshot(keys: &KeySchema, snapshot: &Snapshot) -> Self {
        let mut desired = Self {
            seen_revision: snapshot.revision,
            ..Self::default()
        };
        for kv in &snapshot.kvs {
            if desired.put(keys, kv) {
                desired.revision = desired.revision.max(kv.mod_revision);
            }
        }
        desired
    }

    /// Applies one watch batch. Returns whether any desired-state record changed.
    pub fn apply(&mut self, keys: &KeySchema, batch: &WatchBatch) -> bool {
        let mut changed = false;
        for event in &batch.events {
            changed |= match event {
                WatchEvent::Put(kv) => self.put(keys, kv),
                WatchEvent::Delete { key, .. } => self.delete(keys, key),
            };
        }
        self.seen_revision = self.seen_revision.max(batch.revision);
        if changed {
            self.revision = batch.revision;
        }
        changed
    }

    /// The app record a site should serve, if it has one and the record exists.
    pub fn app_for(&self, site: &SiteRecord) -> Option<&AppRecord> {
        site.app
            .as_ref()
            .and_then(|app| self.apps.get(&app_key(app)))
    }

    fn put(&mut self, keys: &KeySchema, kv: &KeyValue) -> bool {
        let decoded = match keys.parse(&kv.key) {
            Some(Key::Site(_)) => model::decode(&kv.value).map(|s: SiteRecord| {
                self.sites.insert(s.domain.clone(), s);
            }),
            Some(Key::App { .. }) => model::decode(&kv.value).map(|a: AppRecord| {
                self.apps.insert(app_key(&a.app_ref()), a);
            }),
            Some(Key::Certificate(_)) => model::decode(&kv.value).map(|c: CertificateRecord| {
                self.certificates.insert(c.name.clone(), c);
            }),
            Some(Key::AcmeChallenge(token)) => {
                model::decode(&kv.value).map(|c: ChallengeRecord| {
                    self.challenges.insert(token, c);
                })
            }
            Some(Key::AcmeOrder(site)) => model::decode(&kv.value).map(|o: AcmeOrderRecord| {
                self.acme_orders.insert(site, o);
            }),
            _ => return kv.key == keys.meta_state(),
        };
        if let Err(err) = decoded {
            tracing::warn!(key = %kv.key, error = %err, "ignoring an unreadable record");
        }
        true
    }

    fn delete(&mut self, keys: &KeySchema, key: &str) -> bool {
        match keys.parse(key) {
            Some(Key::Site(domain)) => self.sites.remove(&domain).is_some(),
            Some(Key::App { name, version }) => {
                self.apps.remove(&format!("{name}@{version}")).is_some()
            }
            Some(Key::Certificate(name)) => self.certificates.remove(&name).is_some(),
            Some(Key::AcmeChallenge(token)) => self.challenges.remove(&token).is_some(),
            Some(Key::AcmeOrder(site)) => self.acme_orders.remove(&site).is_some(),
            _ => false,
        }
    }

    /// Where the last applied state is kept.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("applied").join("desired.json")
    }

    /// Loads the persisted state, if any.
    pub fn load(data_dir: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(Self::path(data_dir)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Persists the state atomically (write, fsync, rename).
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        let path = Self::path(data_dir);
        let dir = path.parent().unwrap_or(data_dir);
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
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
