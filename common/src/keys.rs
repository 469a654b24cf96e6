//! The store key schema: the only place key strings are built or parsed.
//!
//! ```text
//! {root}/v1/sites/{domain}              SiteRecord
//! {root}/v1/domains/{domain}            DomainRecord: owner of a primary domain or alias
//! {root}/v1/apps/{name}/{version}       AppRecord
//! {root}/v1/certificates/{name}         CertificateRecord (private key sealed)
//! {root}/v1/deployments/{site}/{id}     DeploymentRecord: one deploy of an app to a site
//! {root}/v1/election/edge-leader/leader the leader's node name, on the leader's lease
//! {root}/v1/acme/account                AcmeAccountRecord (credentials sealed)
//! {root}/v1/acme/orders/{domain}        AcmeOrderRecord: the order in flight for a site
//! {root}/v1/acme/challenges/{token}     ChallengeRecord: an HTTP-01 response any edge serves
//! {root}/v1/acme/reminders/{name}       ReminderRecord: last expiry reminder sent for a cert
//! {root}/v1/tokens/{name}              TokenRecord: an API token (its secret's digest only)
//! {root}/v1/previews/{id}               PreviewIndexRecord: the site of preview `id`
//! {root}/v1/meta/state                  touched by every desired-state write (its revision)
//! {root}/v1/meta/secrets-check          a value sealed with secretsEncryptionKey (key check)
//! {root}/v1/meta/import                 present while a state import is being written
//!
//! {root}/status/v1/nodes/{node}         NodeStatusRecord, on the node's lease
//! {root}/console/v1/sessions/{digest}   ConsoleSessionRecord: a console sign-in, on its own lease
//! ```
//!
//! Node records live outside `{root}/v1/`, the range every edge watches: each edge rewrites its
//! record about twice per deploy, and inside the watched range every write would reach every
//! edge (N edges x 2 writes x N watchers per deploy). Outside it, only their readers see them
//! (`stk cluster status`, deploy waits, the leader's cutover). Console sessions are outside it
//! too: no edge has any use for them, and they are not desired state (export leaves them out).
//!
//! Every name in a key is validated by `ids.rs`, so names never contain `/`, and every prefix ends
//! in `/`, so `sites/a/` never matches `sites/ab`.

/// Builds and parses keys under one root prefix (default `/statiko`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchema {
    root: String,
    /// `{root}/status/v1/`: node records, outside the watched `root`.
    status: String,
    /// `{root}/console/v1/`: console sessions, outside the watched `root`.
    console: String,
}

/// Kinds of desired-state records, for the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Site(String),
    Domain(String),
    App {
        name: String,
        version: String,
    },
    Certificate(String),
    Node(String),
    /// `deployments/{site}/{id}`.
    Deployment {
        site: String,
        id: String,
    },
    /// `acme/challenges/{token}`.
    AcmeChallenge(String),
    /// `acme/orders/{domain}`.
    AcmeOrder(String),
    Other(String),
}

impl KeySchema {
    /// `root` is `state.etcd.keyPrefix`; a trailing `/` is ignored.
    pub fn new(root: &str) -> Self {
        let root = root.trim_end_matches('/');
        Self {
            root: format!("{root}/v1/"),
            status: format!("{root}/status/v1/"),
            console: format!("{root}/console/v1/"),
        }
    }

    /// Every key Statiko writes starts with this (it ends in `/`), except the node records
    /// ([`KeySchema::nodes`]) and the console sessions ([`KeySchema::console_sessions`]).
    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn sites(&self) -> String {
        format!("{}sites/", self.root)
    }
    pub fn site(&self, domain: &str) -> String {
        format!("{}sites/{domain}", self.root)
    }
    pub fn domains(&self) -> String {
        format!("{}domains/", self.root)
    }
    pub fn domain(&self, domain: &str) -> String {
        format!("{}domains/{domain}", self.root)
    }
    pub fn apps(&self) -> String {
        format!("{}apps/", self.root)
    }
    pub fn app_versions(&self, name: &str) -> String {
        format!("{}apps/{name}/", self.root)
    }
    pub fn app(&self, name: &str, version: &str) -> String {
        format!("{}apps/{name}/{version}", self.root)
    }
    pub fn certificates(&self) -> String {
        format!("{}certificates/", self.root)
    }
    pub fn certificate(&self, name: &str) -> String {
        format!("{}certificates/{name}", self.root)
    }
    /// Node records: not under [`KeySchema::root`], so the edges' watch does not carry them.
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.status)
    }
    pub fn node(&self, name: &str) -> String {
        format!("{}nodes/{name}", self.status)
    }
    /// Every deployment record of every site.
    pub fn all_deployments(&self) -> String {
        format!("{}deployments/", self.root)
    }
    /// The deployment records of site `domain` (ids sort by creation time).
    pub fn deployments(&self, domain: &str) -> String {
        format!("{}deployments/{domain}/", self.root)
    }
    pub fn deployment(&self, domain: &str, id: &str) -> String {
        format!("{}deployments/{domain}/{id}", self.root)
    }
    pub fn election(&self) -> String {
        format!("{}election/edge-leader/", self.root)
    }
    /// The one key of the election: the leader's node name, attached to its lease.
    pub fn leader(&self) -> String {
        format!("{}election/edge-leader/leader", self.root)
    }
    /// Everything the ACME work keeps (account, orders, challenges, reminders).
    pub fn acme(&self) -> String {
        format!("{}acme/", self.root)
    }
    pub fn acme_account(&self) -> String {
        format!("{}acme/account", self.root)
    }
    pub fn acme_orders(&self) -> String {
        format!("{}acme/orders/", self.root)
    }
    /// The order in flight for the site whose primary domain is `domain`.
    pub fn acme_order(&self, domain: &str) -> String {
        format!("{}acme/orders/{domain}", self.root)
    }
    pub fn acme_challenges(&self) -> String {
        format!("{}acme/challenges/", self.root)
    }
    /// An HTTP-01 challenge response; ACME tokens are base64url, so never contain `/`.
    pub fn acme_challenge(&self, token: &str) -> String {
        format!("{}acme/challenges/{token}", self.root)
    }
    pub fn reminders(&self) -> String {
        format!("{}acme/reminders/", self.root)
    }
    /// The last expiry reminder sent for certificate `name`.
    pub fn reminder(&self, name: &str) -> String {
        format!("{}acme/reminders/{name}", self.root)
    }
    /// API tokens made through `TokenService` (not desired state: edges ignore them).
    pub fn tokens(&self) -> String {
        format!("{}tokens/", self.root)
    }
    pub fn token(&self, name: &str) -> String {
        format!("{}tokens/{name}", self.root)
    }
    /// Console sessions (control's web console), by the hex SHA-256 of the session id: not under
    /// [`KeySchema::root`], so no edge sees them.
    pub fn console_sessions(&self) -> String {
        format!("{}sessions/", self.console)
    }
    pub fn console_session(&self, id_digest: &str) -> String {
        format!("{}sessions/{id_digest}", self.console)
    }
    /// The preview index: which site each preview id belongs to.
    pub fn previews(&self) -> String {
        format!("{}previews/", self.root)
    }
    pub fn preview(&self, id: &str) -> String {
        format!("{}previews/{id}", self.root)
    }
    /// A constant sealed with `secretsEncryptionKey` at first start, opened at every start.
    pub fn secrets_check(&self) -> String {
        format!("{}meta/secrets-check", self.root)
    }
    /// Present while a state import is written in several transactions: edges hold the state
    /// they serve until it is gone, and other desired-state writes are refused meanwhile.
    pub fn meta_import(&self) -> String {
        format!("{}meta/import", self.root)
    }
    /// Touched by every desired-state transaction, so its `mod_revision` is the revision of the
    /// last desired-state change (node status writes do not count).
    pub fn meta_state(&self) -> String {
        format!("{}meta/state", self.root)
    }

    /// The prefixes that hold desired state (what export/import covers).
    pub fn desired_state_prefixes(&self) -> [String; 4] {
        [
            self.sites(),
            self.domains(),
            self.apps(),
            self.certificates(),
        ]
    }

    /// Parses a key written under this schema.
    pub fn parse(&self, key: &str) -> Option<Key> {
        if let Some(node) = key
            .strip_prefix(&self.status)
            .and_then(|rest| rest.strip_prefix("nodes/"))
        {
            return (!node.is_empty() && !node.contains('/')).then(|| Key::Node(node.to_owned()));
        }
        let rest = key.strip_prefix(&self.root)?;
        let (collection, id) = rest.split_once('/')?;
        let single = |id: &str| (!id.is_empty() && !id.contains('/')).then(|| id.to_owned());
        Some(match collection {
            "sites" => Key::Site(single(id)?),
            "domains" => Key::Domain(single(id)?),
            "certificates" => Key::Certificate(single(id)?),
            "acme" => match id.split_once('/') {
                Some(("challenges", token)) => Key::AcmeChallenge(single(token)?),
                Some(("orders", domain)) => Key::AcmeOrder(single(domain)?),
                _ => Key::Other(rest.to_owned()),
            },
            "apps" => {
                let (name, version) = id.split_once('/')?;
                Key::App {
                    name: single(name)?,
                    version: single(version)?,
                }
            }
            "deployments" => {
                let (site, id) = id.split_once('/')?;
                Key::Deployment {
                    site: single(site)?,
                    id: single(id)?,
                }
            }
            _ => Key::Other(rest.to_owned()),
        })
    }
}

/// The end of the range that holds every key starting with `prefix` (etcd's `GetPrefix` rule).
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    "\0".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let keys = KeySchema::new("/statiko/");
        assert_eq!(keys.site("example.com"), "/statiko/v1/sites/example.com");
        assert_eq!(
            keys.parse(&keys.site("example.com")),
            Some(Key::Site("example.com".into()))
        );
        assert_eq!(
            keys.parse(&keys.domain("www.a.b")),
            Some(Key::Domain("www.a.b".into()))
        );
        assert_eq!(
            keys.parse(&keys.app("web", "1.0.0")),
            Some(Key::App {
                name: "web".into(),
                version: "1.0.0".into()
            })
        );
        assert_eq!(
            keys.parse(&keys.certificate("c")),
            Some(Key::Certificate("c".into()))
        );
        assert_eq!(
            keys.parse(&keys.node("edge-1")),
            Some(Key::Node("edge-1".into()))
        );
        // Outside the root the edges watch, so no edge receives another's status writes.
        assert_eq!(keys.node("edge-1"), "/statiko/status/v1/nodes/edge-1");
        assert!(!keys.nodes().starts_with(keys.root()));
        assert_eq!(keys.parse("/statiko/status/v1/nodes/a/b"), None);
        assert_eq!(keys.parse("/other/v1/sites/x"), None);
        assert_eq!(keys.parse("/statiko/v1/sites/a/b"), None);
        assert_eq!(keys.parse("/statiko/v1/sites/"), None);
        assert!(keys.sites().ends_with('/'));
        assert_eq!(
            keys.parse(&keys.acme_challenge("tok-EN_1")),
            Some(Key::AcmeChallenge("tok-EN_1".into()))
        );
        assert_eq!(
            keys.parse(&keys.acme_order("a.test")),
            Some(Key::AcmeOrder("a.test".into()))
        );
        assert_eq!(
            keys.parse(&keys.acme_account()),
            Some(Key::Other("acme/account".into()))
        );
        assert!(keys.leader().starts_with(&keys.election()));
        assert_eq!(
            keys.parse(&keys.deployment("a.test", "d1")),
            Some(Key::Deployment {
                site: "a.test".into(),
                id: "d1".into()
            })
        );
        assert!(
            keys.deployments("a.test")
                .starts_with(&keys.all_deployments())
        );
        assert!(
            !keys
                .deployment("a.testx", "d1")
                .starts_with(&keys.deployments("a.test"))
        );
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("/statiko/v1/sites/"), "/statiko/v1/sites0");
        assert_eq!(prefix_end("a"), "b");
    }

    #[test]
    fn token_keys() {
        let keys = KeySchema::new("/statiko");
        assert_eq!(keys.token("ci"), "/statiko/v1/tokens/ci");
        assert!(keys.token("ci").starts_with(&keys.tokens()));
        assert!(
            keys.console_session("ab")
                .starts_with(&keys.console_sessions())
        );
        assert!(!keys.console_sessions().starts_with(keys.root()));
    }
}
