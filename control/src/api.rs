//! The gRPC service implementations, one file per `statiko.v1` service, all on one [`Api`] value.

mod apps;
mod certificates;
mod cluster;
mod deployments;
mod sites;
mod state;
mod tokens;

use std::path::PathBuf;
use std::sync::Arc;

use statiko_common::config::{DeployConfig, LimitsConfig, PreviewsConfig};
use statiko_common::crypto::SecretBox;
use statiko_common::repo::BundleRepo;

use crate::auth::{AuthLayer, StoredTokens};
use crate::state::StateStore;

/// Everything a handler needs. Nothing in here is state that matters: the store is the truth.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) state: StateStore,
    /// The token checks (config token names) and the watched cache of stored tokens.
    pub(crate) auth: AuthLayer,
    pub(crate) tokens: StoredTokens,
    pub(crate) repo: BundleRepo,
    pub(crate) secrets: Option<SecretBox>,
    /// Ed25519 public key for bundle signatures.
    pub(crate) codesign_key: Option<[u8; 32]>,
    pub(crate) codesign_required: bool,
    pub(crate) limits: LimitsConfig,
    /// `deploy`: history length and stage deadline.
    pub(crate) deploy: DeployConfig,
    /// `previews`: the domain previews are served under and their certificate.
    pub(crate) previews: PreviewsConfig,
    /// Where uploads are spooled before they are verified and stored.
    pub(crate) upload_dir: PathBuf,
}

/// Implements every management service; cheap to clone.
#[derive(Debug, Clone)]
pub struct Api {
    pub(crate) ctx: Arc<Context>,
}

impl Api {
    pub(crate) fn new(ctx: Context) -> Self {
        Self { ctx: Arc::new(ctx) }
    }
}
