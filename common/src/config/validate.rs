//! Validation of a loaded configuration: every value checked, the error naming the key.

use super::*;

impl Config {
    /// Checks every value the types do not; the error names the key and never prints a secret.
    /// The keys are checked by [`Config::build_and_validate`], which parses them.
    ///
    /// An empty `nodeName` passes here: [`NodeConfig::load`] resolves it to the hostname first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| Err(ConfigError::invalid(key, reason));

        if !self.node_name.is_empty() {
            crate::ids::node_name("nodeName", &self.node_name)
                .map_err(|err| ConfigError::invalid("nodeName", err.reason))?;
        }

        // state
        let etcd = &self.state.etcd;
        let endpoints = etcd.endpoints();
        if self.state.store == StoreKind::Etcd && endpoints.is_empty() {
            return bad("state.etcd.address", "required when state.store is etcd");
        }
        for endpoint in &endpoints {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            match rest {
                Some(host) if !host.is_empty() => {}
                _ => {
                    return Err(ConfigError::invalid(
                        "state.etcd.address",
                        format!("endpoint {endpoint:?} must start with http:// or https://"),
                    ));
                }
            }
        }
        if etcd.timeout.is_zero() {
            return bad("state.etcd.timeout", "must be greater than 0");
        }
        if self.state.store == StoreKind::File && self.state.file.path.as_os_str().is_empty() {
            return bad("state.file.path", "required when state.store is file");
        }

        // control
        let tls = &self.control.tls;
        if tls.enabled {
            match (tls.certificate.is_empty(), tls.key.is_empty()) {
                (false, true) => {
                    return bad("control.tls.key", "required with control.tls.certificate");
                }
                (true, false) => {
                    return bad("control.tls.certificate", "required with control.tls.key");
                }
                (true, true) if tls.self_signed_dir.as_os_str().is_empty() => {
                    return bad(
                        "control.tls.selfSignedDir",
                        "required when control.tls is enabled without a certificate",
                    );
                }
                _ => {}
            }
        }

        let console = &self.control.console;
        if console.listen.is_some() && !tls.enabled {
            return bad(
                "control.console.listen",
                "needs control.tls.enabled: the console is HTTPS only (its session cookie is Secure)",
            );
        }
        if !CONSOLE_SESSION_LIFETIME_RANGE.contains(&console.session_lifetime) {
            return bad(
                "control.console.sessionLifetime",
                "must be between 1 and 2592000 seconds (30 days)",
            );
        }

        // auth
        let mut names = std::collections::HashSet::new();
        for (i, token) in self.auth.tokens.iter().enumerate() {
            if token.name.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("auth.tokens[{i}].name"),
                    "required",
                ));
            }
            if !names.insert(token.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("auth.tokens[{i}].name"),
                    format!("duplicate token name {:?}", token.name),
                ));
            }
            if token.token.is_empty() {
                return Err(ConfigError::invalid(
                    format!("auth.tokens[{i}].token"),
                    "required: set token or tokenFile",
                ));
            }
            if token.token.chars().count() < MIN_TOKEN_LEN {
                return Err(ConfigError::invalid(
                    format!("auth.tokens[{i}].token"),
                    format!("must be at least {MIN_TOKEN_LEN} characters"),
                ));
            }
        }

        // repo
        match self.repo.kind {
            RepoKind::Local if self.repo.local.path.as_os_str().is_empty() => {
                return bad("repo.local.path", "required when repo.type is local");
            }
            RepoKind::S3 if self.repo.s3.bucket.is_empty() => {
                return bad("repo.s3.bucket", "required when repo.type is s3");
            }
            RepoKind::Azure if self.repo.azure.account.is_empty() => {
                return bad("repo.azure.account", "required when repo.type is azure");
            }
            RepoKind::Azure if self.repo.azure.container.is_empty() => {
                return bad("repo.azure.container", "required when repo.type is azure");
            }
            RepoKind::Gcs if self.repo.gcs.bucket.is_empty() => {
                return bad("repo.gcs.bucket", "required when repo.type is gcs");
            }
            _ => {}
        }

        // edge
        if self.edge.data_dir.as_os_str().is_empty() {
            return bad("edge.dataDir", "required");
        }
        if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&self.edge.lease_ttl) {
            return Err(ConfigError::invalid(
                "edge.leaseTtl",
                format!(
                    "must be between {} and {} seconds",
                    MIN_LEASE_TTL.as_secs(),
                    MAX_LEASE_TTL.as_secs()
                ),
            ));
        }

        net::validate(
            &self.edge.limits,
            &self.edge.proxy_protocol,
            &self.control.limits,
        )?;

        // acme and notifications
        if !is_http_url(&self.acme.directory) {
            return bad("acme.directory", "must be an http:// or https:// URL");
        }
        if !self.notifications.webhook.url.is_empty()
            && !is_http_url(&self.notifications.webhook.url)
        {
            return bad(
                "notifications.webhook.url",
                "must be an http:// or https:// URL",
            );
        }
        if self.notifications.webhook.payload_key.is_empty() {
            return bad("notifications.webhook.payloadKey", "required");
        }

        // limits
        let limits = [
            ("limits.maxBundleSize", self.limits.max_bundle_size == 0),
            ("limits.maxUnpackedSize", self.limits.max_unpacked_size == 0),
            (
                "limits.maxBundleEntries",
                self.limits.max_bundle_entries == 0,
            ),
            (
                "limits.uploadIdleTimeout",
                self.limits.upload_idle_timeout.is_zero(),
            ),
            ("limits.uploadTimeout", self.limits.upload_timeout.is_zero()),
        ];
        for (key, zero) in limits {
            if zero {
                return bad(key, "must be greater than 0");
            }
        }

        if self.edge.retain_deployments == 0 {
            return bad(
                "edge.retainDeployments",
                "must be at least 1 (the live deployment)",
            );
        }

        if self.edge.worker_threads > 1024 {
            return bad(
                "edge.workerThreads",
                "must be at most 1024 (0: one per CPU core)",
            );
        }

        // deploy
        if self.deploy.history < 2 {
            return bad(
                "deploy.history",
                "must be at least 2 (the live deployment and one to roll back to)",
            );
        }
        if self.deploy.stage_timeout.is_zero() {
            return bad("deploy.stageTimeout", "must be greater than 0");
        }

        // previews
        if !self.previews.domain.is_empty() {
            match crate::ids::domain("previews.domain", &self.previews.domain) {
                // A preview label (up to 63 characters and a dot) must still fit in a name.
                Ok(domain) if domain.len() > 253 - 64 => {
                    return bad(
                        "previews.domain",
                        "too long: at most 189 characters, so a preview host fits in 253",
                    );
                }
                Ok(_) => {}
                Err(err) => return Err(ConfigError::invalid("previews.domain", err.reason)),
            }
        }
        if !self.previews.certificate.is_empty() {
            if self.previews.domain.is_empty() {
                return bad(
                    "previews.certificate",
                    "set previews.domain too (previews are off without it)",
                );
            }
            if let Err(err) = crate::ids::name("previews.certificate", &self.previews.certificate) {
                return Err(ConfigError::invalid("previews.certificate", err.reason));
            }
        }

        // log
        if self.log.level.trim().is_empty() {
            return bad("log.level", "required");
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::invalid(
                "log.level",
                format!("invalid filter directive: {err}"),
            ));
        }
        Ok(())
    }
}

fn is_http_url(url: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        url.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty())
    })
}
