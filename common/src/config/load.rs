//! Loading the configuration: defaults, the YAML file merged key by key, `STATIKO_*` environment
//! overrides and `*File` secrets, then deserialization with `deny_unknown_fields`.

use super::*;

/// Formats ` at line L, column C` when known.
pub(super) struct Position(pub(super) Option<u64>, pub(super) Option<u64>);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(line), Some(column)) => write!(f, " at line {line}, column {column}"),
            (Some(line), None) => write!(f, " at line {line}"),
            _ => Ok(()),
        }
    }
}

impl Config {
    pub(super) fn load_with_default_path(
        path: Option<&Path>,
        env: &HashMap<String, String>,
        default_path: &Path,
    ) -> Result<NodeConfig, ConfigError> {
        let file = match (path, env.get(CONFIG_PATH_ENV).filter(|p| !p.is_empty())) {
            (Some(path), _) => Some(path.to_path_buf()),
            (None, Some(path)) => Some(PathBuf::from(path)),
            (None, None) => default_path.exists().then(|| default_path.to_path_buf()),
        };
        let defaults = serde_json::to_value(Config::default())
            .map_err(|err| ConfigError::invalid("config", format!("serialize defaults: {err}")))?;
        let mut merged = defaults.clone();
        if let Some(file) = file {
            merge(&mut merged, read_yaml_file(&file)?);
        }
        apply_env(&mut merged, &defaults, env)?;
        let mut config: Config = serde_path_to_error::deserialize(merged).map_err(value_error)?;
        config.read_secret_files()?;
        if config.node_name.is_empty() {
            config.node_name = hostname().ok_or_else(|| {
                ConfigError::invalid("nodeName", "empty and the hostname could not be read")
            })?;
        }
        config.build_and_validate()
    }

    /// Every environment variable that maps to a key, with the key path (`state.etcd.address`).
    pub fn env_keys() -> Vec<(String, String)> {
        let defaults = serde_json::to_value(Config::default()).unwrap_or(Value::Null);
        let mut out: Vec<(String, String)> = env_paths(&defaults)
            .into_iter()
            .map(|path| (env_name(&path), path.join(".")))
            .collect();
        out.sort();
        out
    }

    /// Reads every `*File` secret into its inline key; both given is an error.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        read_secret(
            "secretsEncryptionKey",
            &mut self.secrets_encryption_key,
            self.secrets_encryption_key_file.as_deref(),
        )?;
        for (i, token) in self.auth.tokens.iter_mut().enumerate() {
            read_secret(
                &format!("auth.tokens[{i}].token"),
                &mut token.token,
                token.token_file.as_deref(),
            )?;
        }
        read_secret(
            "repo.s3.secretAccessKey",
            &mut self.repo.s3.secret_access_key,
            self.repo.s3.secret_access_key_file.as_deref(),
        )?;
        read_secret(
            "repo.azure.accessKey",
            &mut self.repo.azure.access_key,
            self.repo.azure.access_key_file.as_deref(),
        )?;
        read_secret(
            "codesign.publicKey",
            &mut self.codesign.public_key,
            self.codesign.public_key_file.as_deref(),
        )?;
        Ok(())
    }
}

/// Names the key in the config's spelling (`auth.tokens[0].role`); an unknown field is reported
/// on the section that does not know it (`state.etcd: unknown field ...`), the top level as
/// `config`.
fn value_error(err: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    use serde_path_to_error::Segment;

    let message = err.inner().to_string();
    let mut segments: Vec<&Segment> = err.path().iter().collect();
    if message.starts_with("unknown field") {
        segments.pop();
    }
    let mut key = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
            }
            Segment::Unknown => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push('?');
            }
        }
    }
    if key.is_empty() {
        key = "config".into();
    }
    ConfigError::Value { key, message }
}

/// Reads a `*File` secret into `inline`, trimming trailing whitespace.
fn read_secret(key: &str, inline: &mut String, file: Option<&Path>) -> Result<(), ConfigError> {
    let Some(file) = file.filter(|f| !f.as_os_str().is_empty()) else {
        return Ok(());
    };
    if !inline.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("set either {key} or {key}File, not both"),
        ));
    }
    let text = std::fs::read_to_string(file).map_err(|error| ConfigError::SecretFile {
        key: format!("{key}File"),
        path: file.to_path_buf(),
        error,
    })?;
    *inline = text.trim_end().to_owned();
    Ok(())
}

/// The hostname from procfs, else `/etc/hostname`.
pub(super) fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .find(|name| !name.is_empty())
}

fn read_yaml_file(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let syntax = |line, column, message: String| ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        message,
    };
    let value: Value =
        parse_yaml(&text).map_err(|(line, column, message)| syntax(line, column, message))?;
    match value {
        Value::Null => Ok(Value::Object(serde_json::Map::new())),
        Value::Object(_) => Ok(value),
        _ => Err(syntax(None, None, "the top level must be a mapping".into())),
    }
}

/// Parses YAML into JSON values; the error carries line, column and a one-line message.
fn parse_yaml(text: &str) -> Result<Value, (Option<u64>, Option<u64>, String)> {
    serde_saphyr::from_str::<Value>(text).map_err(|err| {
        let location = err.location();
        let line = location.map(|l| l.line()).filter(|&l| l > 0);
        let column = location.map(|l| l.column()).filter(|&c| c > 0);
        let message = err.without_snippet().to_string();
        let mut message = message.lines().next().unwrap_or_default().to_owned();
        if let (Some(line), Some(column)) = (line, column) {
            let suffix = format!(" at line {line}, column {column}");
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_owned();
            }
        }
        (line, column, message)
    })
}

/// Merges `overlay` into `base`: mappings key by key, anything else replaces, except that a
/// null never replaces a section (`state:` with nothing under it keeps the defaults).
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (Value::Object(_), Value::Null) => {}
        (base, overlay) => *base = overlay,
    }
}

/// Every object and leaf path of the defaults (arrays are leaves).
fn env_paths(defaults: &Value) -> Vec<Vec<String>> {
    fn walk(value: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if !path.is_empty() {
            out.push(path.clone());
        }
        if let Value::Object(map) = value {
            for (key, child) in map {
                path.push(key.clone());
                walk(child, path, out);
                path.pop();
            }
        }
    }
    let mut out = Vec::new();
    walk(defaults, &mut Vec::new(), &mut out);
    out
}

/// `["state", "etcd", "tlsSkipVerify"]` -> `STATIKO_STATE_ETCD_TLS_SKIP_VERIFY`.
fn env_name(path: &[String]) -> String {
    let mut name = ENV_PREFIX.to_owned();
    for (i, segment) in path.iter().enumerate() {
        if i > 0 {
            name.push('_');
        }
        let mut prev_lower = false;
        for c in segment.chars() {
            if c.is_ascii_uppercase() && prev_lower {
                name.push('_');
            }
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            name.push(c.to_ascii_uppercase());
        }
    }
    name
}

fn pointer(path: &[String]) -> String {
    path.iter().fold(String::new(), |mut acc, segment| {
        acc.push('/');
        acc.push_str(segment);
        acc
    })
}

/// Applies `STATIKO_*` overrides, sections before the keys inside them.
fn apply_env(
    merged: &mut Value,
    defaults: &Value,
    env: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    let mut paths = env_paths(defaults);
    paths.sort_by_key(Vec::len);
    for path in paths {
        let var = env_name(&path);
        let Some(raw) = env.get(&var) else { continue };
        let default = defaults.pointer(&pointer(&path)).unwrap_or(&Value::Null);
        let value = match default {
            Value::String(_) | Value::Null => Value::String(raw.clone()),
            _ => parse_yaml(raw).map_err(|(_, _, message)| ConfigError::Env {
                var: var.clone(),
                key: path.join("."),
                message,
            })?,
        };
        set_path(merged, &path, value);
    }
    Ok(())
}

/// Sets (merging sections) the value at `path`, creating mappings on the way.
fn set_path(root: &mut Value, path: &[String], value: Value) {
    let mut slot = root;
    for segment in path {
        if !slot.is_object() {
            *slot = Value::Object(serde_json::Map::new());
        }
        let Value::Object(map) = slot else { return };
        slot = map.entry(segment.clone()).or_insert(Value::Null);
    }
    if slot.is_object() && value.is_object() {
        merge(slot, value);
    } else {
        *slot = value;
    }
}
