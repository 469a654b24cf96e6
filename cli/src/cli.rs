//! Command-line syntax of `stk`: global flags (each also read from a `STATIKO_*` variable),
//! subcommands, and the value parsers for `--tls`, `NAME@VERSION` and durations.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// `stk`: the Statiko command-line client.
#[derive(Debug, Parser)]
#[command(name = "stk", version, about = "Manage a Statiko cluster")]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags that every command takes; they may appear before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub(crate) struct GlobalArgs {
    /// Control API endpoint (http:// for plaintext, https:// for TLS).
    #[arg(
        long,
        global = true,
        env = "STATIKO_ENDPOINT",
        default_value = "https://127.0.0.1:2265"
    )]
    pub(crate) endpoint: String,
    /// Bearer token sent with every call.
    #[arg(long, global = true, env = "STATIKO_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// File holding the bearer token (trailing whitespace trimmed), e.g. a CI secret file;
    /// used when no token is given.
    #[arg(long, global = true, env = "STATIKO_TOKEN_FILE", value_name = "PATH")]
    pub(crate) token_file: Option<PathBuf>,
    /// PEM file with the CA (or the certificate itself) to trust for the control endpoint.
    #[arg(long, global = true, env = "STATIKO_CA", value_name = "PEM")]
    pub(crate) ca: Option<PathBuf>,
    /// Skip verification of the server certificate (dangerous; prints a warning).
    #[arg(
        long,
        global = true,
        env = "STATIKO_INSECURE",
        action = ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub(crate) insecure: bool,
    /// Output format.
    #[arg(
        long,
        global = true,
        env = "STATIKO_OUTPUT",
        value_enum,
        default_value_t = OutputFormat::Table
    )]
    pub(crate) output: OutputFormat,
    /// Timeout of each call (uploads have none), e.g. 30s, 2m.
    #[arg(
        long,
        global = true,
        env = "STATIKO_TIMEOUT",
        value_parser = parse_duration,
        default_value = "30s"
    )]
    pub(crate) timeout: Duration,
}

/// How results are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    /// Aligned, human-readable tables.
    Table,
    /// One JSON document per command (the RPC response, snake_case field names).
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create, list, show, change and delete sites.
    #[command(subcommand)]
    Site(SiteCommand),
    /// Upload, list and delete app versions.
    #[command(subcommand)]
    App(AppCommand),
    /// Deploy an app version to a site (also used to roll back, and to make and promote previews).
    Deploy(DeployArgs),
    /// List and delete preview deploys (`stk deploy SITE NAME@VERSION --preview` makes one).
    #[command(subcommand)]
    Preview(PreviewCommand),
    /// Import, list and delete TLS certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Show the cluster's edges.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Export or import the whole desired state (backup, restore, migration).
    #[command(subcommand)]
    State(StateCommand),
    /// Create, list and revoke API tokens (admin only).
    #[command(subcommand)]
    Token(crate::token::TokenCommand),
    /// Print the version of stk.
    Version,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SiteCommand {
    /// Create a site.
    Create {
        /// Primary domain.
        domain: String,
        /// An alias domain (repeatable).
        #[arg(long = "alias", value_name = "DOMAIN")]
        aliases: Vec<String>,
        /// TLS certificate source: selfsigned (default), acme or imported:<cert-name>.
        #[arg(long, value_name = "TLS")]
        tls: Option<TlsArg>,
        /// How long after a cutover old static assets are still served (default 24h), or off.
        #[arg(long, value_name = "DURATION|off", value_parser = parse_window)]
        skew_protection: Option<Duration>,
    },
    /// List every site.
    List,
    /// Show one site (by primary domain or alias).
    Get {
        /// Primary domain or alias.
        domain: String,
    },
    /// Change the aliases, the TLS choice or the skew protection window of a site.
    #[command(group(
        clap::ArgGroup::new("change")
            .required(true)
            .multiple(true)
            .args(["aliases", "add_aliases", "remove_aliases", "clear_aliases", "tls", "skew_protection"])
    ))]
    Update {
        /// Primary domain or alias.
        domain: String,
        /// Replace every alias with these (repeatable).
        #[arg(
            long = "alias",
            value_name = "DOMAIN",
            conflicts_with = "clear_aliases"
        )]
        aliases: Vec<String>,
        /// Add an alias (repeatable).
        #[arg(long = "add-alias", value_name = "DOMAIN")]
        add_aliases: Vec<String>,
        /// Remove an alias (repeatable).
        #[arg(long = "remove-alias", value_name = "DOMAIN")]
        remove_aliases: Vec<String>,
        /// Remove every alias.
        #[arg(long)]
        clear_aliases: bool,
        /// TLS certificate source: selfsigned, acme or imported:<cert-name>.
        #[arg(long, value_name = "TLS")]
        tls: Option<TlsArg>,
        /// How long after a cutover old static assets are still served (e.g. 24h, 30m), or off.
        #[arg(long, value_name = "DURATION|off", value_parser = parse_window)]
        skew_protection: Option<Duration>,
        /// Apply only if the site's revision still equals N (else ABORTED).
        #[arg(long, value_name = "N")]
        expected_revision: Option<i64>,
    },
    /// Delete a site (by primary domain or alias).
    Delete {
        /// Primary domain or alias.
        domain: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AppCommand {
    /// Upload an app version: a folder (packed on the fly) or a .tar.gz/.tgz/.tar.zst/.zip file.
    Upload {
        /// Folder or archive file.
        path: PathBuf,
        /// App name.
        #[arg(long)]
        name: String,
        /// App version.
        #[arg(long)]
        version: String,
        /// Sign with this Ed25519 private key (PKCS#8 PEM, e.g. from `openssl genpkey -algorithm ed25519`).
        #[arg(long, value_name = "KEY.pem")]
        sign: Option<PathBuf>,
    },
    /// List app versions.
    List {
        /// Only versions of this app.
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete an app version (refused while a site uses it).
    Delete {
        /// App version to delete.
        #[arg(value_name = "NAME@VERSION")]
        app: AppRefArg,
    },
}

/// `stk deploy SITE NAME@VERSION`, or one of the `stk deploy` subcommands.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct DeployArgs {
    #[command(subcommand)]
    pub(crate) command: Option<DeployCommand>,
    /// Primary domain or alias of the site.
    #[arg(required = true)]
    pub(crate) domain: Option<String>,
    /// App version to deploy.
    #[arg(value_name = "NAME@VERSION", required = true)]
    pub(crate) app: Option<AppRefArg>,
    #[command(flatten)]
    pub(crate) wait: WaitArgs,
    /// Switch the site at once and let each edge serve the version as soon as it has it,
    /// instead of the atomic cutover (faster; edges may serve different versions for a moment).
    #[arg(long, conflicts_with = "preview")]
    pub(crate) immediate: bool,
    /// Deploy as a preview: staged on every edge and served at its own URL (printed) under the
    /// cluster's previews domain, without touching the live site.
    #[arg(long)]
    pub(crate) preview: bool,
    /// How long the preview is served, e.g. 72h (the default), 30m, 7d.
    #[arg(long, value_parser = parse_duration, requires = "preview")]
    pub(crate) ttl: Option<Duration>,
    /// Protect the preview with a password (HTTP basic auth, any user name), read from standard
    /// input (one line; never give it as an argument).
    #[arg(long, requires = "preview")]
    pub(crate) password_stdin: bool,
}

/// `stk preview ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum PreviewCommand {
    /// List the previews of a site, or of every site (newest first).
    List {
        /// Primary domain or alias; all sites when left out.
        domain: Option<String>,
    },
    /// Delete a preview: edges stop serving it at once.
    Delete {
        /// The preview's id (see `stk preview list`).
        id: String,
        /// The preview's site (found from the id when left out).
        #[arg(long, value_name = "SITE")]
        site: Option<String>,
    },
}

/// `--wait` and `--wait-timeout`.
#[derive(Debug, Clone, Args)]
pub(crate) struct WaitArgs {
    /// Return only when every live edge serves the version (shows per-edge progress).
    #[arg(long)]
    pub(crate) wait: bool,
    /// How long --wait waits, e.g. 60s, 5m.
    #[arg(long, value_parser = parse_duration, default_value = "60s", requires = "wait")]
    pub(crate) wait_timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeployCommand {
    /// List the deployments of a site, newest first.
    History {
        /// Primary domain or alias.
        domain: String,
    },
    /// Make the previous live deployment (or --to ID) live again.
    Rollback {
        /// Primary domain or alias.
        domain: String,
        /// The deployment to go back to (see `stk deploy history`).
        #[arg(long, value_name = "ID")]
        to: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Make a preview the live deployment of its site (atomic cutover).
    Promote {
        /// The preview's id (see `stk preview list`).
        id: String,
        /// The preview's site (found from the id when left out).
        #[arg(long, value_name = "SITE")]
        site: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Import a PEM certificate (leaf first, then intermediates) and its private key.
    Import {
        /// Certificate name, used by `--tls imported:<name>`.
        name: String,
        /// Certificate chain PEM file.
        #[arg(long, value_name = "PEM")]
        cert: PathBuf,
        /// Private key PEM file.
        #[arg(long, value_name = "PEM")]
        key: PathBuf,
        /// Accept a certificate that is not yet valid or expires within 12 hours.
        #[arg(long)]
        force: bool,
        /// Replace an existing imported certificate of the same name (sites using it switch over).
        #[arg(long)]
        replace: bool,
    },
    /// List certificates with their expiry.
    List,
    /// Delete an imported certificate (refused while a site uses it).
    Delete {
        /// Certificate name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Every live edge: leader, applied revision, per-site version and health, certificate expiry.
    Status,
}

#[derive(Debug, Subcommand)]
pub(crate) enum StateCommand {
    /// Write the desired state as a JSON document to stdout (or to a file).
    Get {
        /// Write to this file instead of stdout.
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Replace the whole desired state with a document from `stk state get` (read from stdin or a file).
    Set {
        /// Read from this file instead of stdin.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

/// A `--tls` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsArg {
    SelfSigned,
    Acme,
    Imported(String),
}

impl FromStr for TlsArg {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "selfsigned" | "self-signed" => Ok(Self::SelfSigned),
            "acme" => Ok(Self::Acme),
            other => match other.strip_prefix("imported:") {
                Some(name) if !name.is_empty() => Ok(Self::Imported(name.to_owned())),
                Some(_) => {
                    Err("imported needs a certificate name: imported:<cert-name>".to_owned())
                }
                None => Err(format!(
                    "unknown TLS source {other:?}: expected selfsigned, acme or imported:<cert-name>"
                )),
            },
        }
    }
}

impl fmt::Display for TlsArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SelfSigned => f.write_str("selfsigned"),
            Self::Acme => f.write_str("acme"),
            Self::Imported(name) => write!(f, "imported:{name}"),
        }
    }
}

/// A `NAME@VERSION` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppRefArg {
    pub(crate) name: String,
    pub(crate) version: String,
}

impl FromStr for AppRefArg {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        // Split at the first '@': names never contain one, versions might (e.g. build metadata).
        match value.split_once('@') {
            Some((name, version)) if !name.is_empty() && !version.is_empty() => Ok(Self {
                name: name.to_owned(),
                version: version.to_owned(),
            }),
            _ => Err(format!("expected NAME@VERSION, got {value:?}")),
        }
    }
}

impl fmt::Display for AppRefArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// Parses a duration such as `30s`, `2m`, `1h 30m`, or a bare number of seconds.
pub(crate) fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(value).map_err(|err| format!("invalid duration {value:?}: {err}"))
}

/// A skew protection window: a duration, or `off` (zero).
pub(crate) fn parse_window(value: &str) -> Result<Duration, String> {
    if value.trim().eq_ignore_ascii_case("off") {
        return Ok(Duration::ZERO);
    }
    parse_duration(value).map_err(|err| format!("{err} (a duration such as 24h, or off)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn parse(args: &[&str]) -> Cli {
        let mut full = vec!["stk"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).unwrap()
    }

    #[track_caller]
    fn parse_err(args: &[&str]) -> clap::error::ErrorKind {
        let mut full = vec!["stk"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).unwrap_err().kind()
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn tls_values() {
        #[track_caller]
        fn check(input: &str, expected: Result<TlsArg, ()>) {
            assert_eq!(input.parse::<TlsArg>().map_err(|_| ()), expected, "{input}");
        }
        check("selfsigned", Ok(TlsArg::SelfSigned));
        check("self-signed", Ok(TlsArg::SelfSigned));
        check("acme", Ok(TlsArg::Acme));
        check("imported:my-cert", Ok(TlsArg::Imported("my-cert".into())));
        check("imported:", Err(()));
        check("imported", Err(()));
        check("ACME", Err(()));
        check("", Err(()));
        assert_eq!(TlsArg::Imported("c".into()).to_string(), "imported:c");
    }

    #[test]
    fn app_refs() {
        #[track_caller]
        fn check(input: &str, expected: Option<(&str, &str)>) {
            let got = input.parse::<AppRefArg>().ok();
            let got = got.as_ref().map(|r| (r.name.as_str(), r.version.as_str()));
            assert_eq!(got, expected, "{input}");
        }
        check("web@1.4.0", Some(("web", "1.4.0")));
        check("web@1.0.0+build@2", Some(("web", "1.0.0+build@2")));
        check("web", None);
        check("@1.0", None);
        check("web@", None);
        check("", None);
        assert_eq!("web@1".parse::<AppRefArg>().unwrap().to_string(), "web@1");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn global_defaults() {
        // Run only when the environment does not override the defaults.
        let cli = parse(&["site", "list"]);
        if std::env::var_os("STATIKO_ENDPOINT").is_none() {
            assert_eq!(cli.global.endpoint, "https://127.0.0.1:2265");
        }
        if std::env::var_os("STATIKO_OUTPUT").is_none() {
            assert_eq!(cli.global.output, OutputFormat::Table);
        }
        if std::env::var_os("STATIKO_TIMEOUT").is_none() {
            assert_eq!(cli.global.timeout, Duration::from_secs(30));
        }
        assert!(matches!(cli.command, Command::Site(SiteCommand::List)));
    }

    #[test]
    fn global_flags_anywhere() {
        let cli = parse(&[
            "--endpoint",
            "http://10.0.0.1:2265",
            "site",
            "list",
            "--output",
            "json",
            "--token",
            "t0k",
            "--insecure",
            "--ca",
            "ca.pem",
            "--timeout",
            "5s",
        ]);
        assert_eq!(cli.global.endpoint, "http://10.0.0.1:2265");
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.token.as_deref(), Some("t0k"));
        assert!(cli.global.insecure);
        assert_eq!(cli.global.ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(cli.global.timeout, Duration::from_secs(5));
    }

    #[test]
    fn site_create() {
        let cli = parse(&[
            "site",
            "create",
            "example.com",
            "--alias",
            "www.example.com",
            "--alias",
            "ex.com",
            "--tls",
            "imported:main",
        ]);
        let Command::Site(SiteCommand::Create {
            domain,
            aliases,
            tls,
            skew_protection,
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(domain, "example.com");
        assert_eq!(aliases, ["www.example.com", "ex.com"]);
        assert_eq!(tls, Some(TlsArg::Imported("main".into())));
        assert_eq!(skew_protection, None);
        assert_eq!(
            parse_err(&["site", "create", "a.com", "--tls", "bogus"]),
            clap::error::ErrorKind::ValueValidation
        );
    }

    #[test]
    fn skew_protection_window() {
        for (raw, want) in [
            ("24h", Duration::from_secs(86_400)),
            ("90m", Duration::from_secs(5_400)),
            ("2s", Duration::from_secs(2)),
            ("off", Duration::ZERO),
            ("OFF", Duration::ZERO),
        ] {
            let cli = parse(&["site", "update", "a.com", "--skew-protection", raw]);
            let Command::Site(SiteCommand::Update {
                skew_protection, ..
            }) = cli.command
            else {
                panic!("wrong command");
            };
            assert_eq!(skew_protection, Some(want), "{raw}");
        }
        for bad in ["soon", "24x", ""] {
            assert_eq!(
                parse_err(&["site", "update", "a.com", "--skew-protection", bad]),
                clap::error::ErrorKind::ValueValidation,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn site_update() {
        let cli = parse(&[
            "site",
            "update",
            "example.com",
            "--add-alias",
            "a.example.com",
            "--remove-alias",
            "b.example.com",
            "--expected-revision",
            "7",
        ]);
        let Command::Site(SiteCommand::Update {
            add_aliases,
            remove_aliases,
            expected_revision,
            clear_aliases,
            ..
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(add_aliases, ["a.example.com"]);
        assert_eq!(remove_aliases, ["b.example.com"]);
        assert_eq!(expected_revision, Some(7));
        assert!(!clear_aliases);
        // Nothing to change is a usage error, and so is replacing and clearing at once.
        assert_eq!(
            parse_err(&["site", "update", "example.com"]),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse_err(&[
                "site",
                "update",
                "x.com",
                "--alias",
                "a.com",
                "--clear-aliases"
            ]),
            clap::error::ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn deploy() {
        let cli = parse(&[
            "deploy",
            "example.com",
            "web@1.4.0",
            "--wait",
            "--wait-timeout",
            "2m",
        ]);
        let Command::Deploy(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.domain.as_deref(), Some("example.com"));
        assert_eq!(
            args.app.as_ref().map(ToString::to_string).as_deref(),
            Some("web@1.4.0")
        );
        assert!(args.wait.wait);
        assert_eq!(args.wait.wait_timeout, Duration::from_secs(120));
        assert!(!args.immediate && args.command.is_none());

        let cli = parse(&["deploy", "example.com", "web@1", "--immediate"]);
        let Command::Deploy(args) = cli.command else {
            panic!("wrong command");
        };
        assert!(!args.wait.wait);
        assert!(args.immediate);
        assert_eq!(args.wait.wait_timeout, Duration::from_secs(60));
        assert_eq!(
            parse_err(&["deploy", "example.com", "web"]),
            clap::error::ErrorKind::ValueValidation
        );
        assert_eq!(
            parse_err(&["deploy", "example.com"]),
            clap::error::ErrorKind::MissingRequiredArgument
        );

        let cli = parse(&["deploy", "history", "example.com"]);
        let Command::Deploy(DeployArgs {
            command: Some(DeployCommand::History { domain }),
            ..
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(domain, "example.com");
        let cli = parse(&["deploy", "rollback", "example.com", "--to", "d1", "--wait"]);
        let Command::Deploy(DeployArgs {
            command: Some(DeployCommand::Rollback { domain, to, wait }),
            ..
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(
            (domain.as_str(), to.as_deref()),
            ("example.com", Some("d1"))
        );
        assert!(wait.wait);
    }

    #[test]
    fn app_and_state() {
        let cli = parse(&[
            "app",
            "upload",
            "./dist",
            "--name",
            "web",
            "--version",
            "1.4.0",
            "--sign",
            "k.pem",
        ]);
        let Command::App(AppCommand::Upload {
            path,
            name,
            version,
            sign,
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(path, PathBuf::from("./dist"));
        assert_eq!((name.as_str(), version.as_str()), ("web", "1.4.0"));
        assert_eq!(sign, Some(PathBuf::from("k.pem")));
        assert_eq!(
            parse_err(&["app", "upload", "./dist", "--name", "web"]),
            clap::error::ErrorKind::MissingRequiredArgument
        );

        let cli = parse(&["state", "get", "-o", "backup.json"]);
        assert!(matches!(
            cli.command,
            Command::State(StateCommand::Get { out: Some(ref p) }) if p == &PathBuf::from("backup.json")
        ));
        let cli = parse(&["state", "set", "-f", "backup.json"]);
        assert!(matches!(
            cli.command,
            Command::State(StateCommand::Set { file: Some(_) })
        ));
        let cli = parse(&[
            "cert", "import", "main", "--cert", "c.pem", "--key", "k.pem", "--force",
        ]);
        assert!(matches!(
            cli.command,
            Command::Cert(CertCommand::Import {
                force: true,
                replace: false,
                ..
            })
        ));
    }
}
