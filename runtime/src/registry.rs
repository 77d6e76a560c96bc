//! `DriverRegistry`: the known driver kinds (`dlog`, `ox`, `wasm`, …) and the
//! initialisation of a config's numbered drivers.

use std::path::PathBuf;
use std::sync::Arc;

use mailpush_core::args::redact_text;
use mailpush_core::{BreakerConfig, DriverFactory, DriverInit, MetadataLookup};

pub use crate::pipeline::LoadedDriver;
use crate::pipeline::{panic_message, DeliveryPolicy};
use crate::wasm::{Engines, TenantDrivers, WasmFactory};
use mailpush_config::{Config, ConfigError, DovecotSyntax, DriverSetting, Location};

/// The registered driver factories, looked up case-insensitively by name.
pub struct DriverRegistry {
    factories: Vec<Arc<dyn DriverFactory>>,
    background_load: bool,
    check_only: bool,
}

impl Default for DriverRegistry {
    /// The built-in drivers.
    fn default() -> Self {
        let mut r = DriverRegistry::empty();
        r.register(Arc::new(mailpush_dlog::DlogFactory));
        r.register(Arc::new(mailpush_ox::OxFactory));
        r.register(Arc::new(WasmFactory::default()));
        r.register(Arc::new(crate::lua::LuaFactory::default()));
        r
    }
}

impl DriverRegistry {
    /// A registry with no drivers.
    pub fn empty() -> Self {
        DriverRegistry {
            factories: Vec::new(),
            background_load: false,
            check_only: false,
        }
    }

    /// Lets slow driver loads finish in the background ([`DriverInit::background_load`]):
    /// for a runtime that serves while they load. Off by default.
    pub fn load_in_background(&mut self, yes: bool) {
        self.background_load = yes;
    }

    /// Initialises drivers only to check them ([`DriverInit::check_only`]): for
    /// `mailpush check`. Off by default.
    pub fn only_check(&mut self, yes: bool) {
        self.check_only = yes;
    }

    /// Adds a driver kind. A later registration of the same name replaces the earlier.
    pub fn register(&mut self, factory: Arc<dyn DriverFactory>) {
        self.factories
            .retain(|f| !f.name().eq_ignore_ascii_case(factory.name()));
        self.factories.push(factory);
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.factories.iter().map(|f| f.name()).collect();
        names.sort_unstable();
        names
    }

    /// The factory for a driver name (case-insensitive).
    pub fn factory(&self, name: &str) -> Option<&Arc<dyn DriverFactory>> {
        self.factories
            .iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// The factory of a driver setting, or the error naming the known drivers.
    pub fn factory_for(
        &self,
        setting: &DriverSetting,
    ) -> Result<&Arc<dyn DriverFactory>, ConfigError> {
        self.factory(&setting.name).ok_or_else(|| ConfigError {
            location: Some(setting.location.clone()),
            text: quoted(setting),
            message: format!(
                "driver {} ({}): unknown push notification driver `{}`; known drivers: {}{}",
                setting.number,
                setting.setting,
                setting.name,
                self.names().join(", "),
                if named_after_block(setting) {
                    format!(
                        ". A Dovecot 2.4 block without `driver =` is the driver its name says: add `driver = {}` (or another) to the block",
                        self.names().first().copied().unwrap_or("dlog")
                    )
                } else if setting.name.starts_with(['"', '\'']) {
                    ". The value begins with a quote that does not end it: close the quote at the end of the value".to_string()
                } else if let Some(known) = setting.name.split_once(' ').and_then(|(head, _)| {
                    self.names().into_iter().find(|n| n.eq_ignore_ascii_case(head))
                }) {
                    format!(". A driver's arguments follow a colon: `{known}:ARGS`")
                } else {
                    mailpush_config::suggest::nearest(
                        &setting.name.to_ascii_lowercase(),
                        &self.names(),
                    )
                    .map(|n| format!(". Did you mean {n}?"))
                    .unwrap_or_default()
                }
            ),
        })
    }

    /// Initialises one driver setting.
    pub async fn init_one(
        &self,
        setting: &DriverSetting,
        config: &Config,
        metadata: Arc<dyn MetadataLookup>,
    ) -> Result<LoadedDriver, ConfigError> {
        let fail = |message: String| ConfigError {
            location: Some(setting.location.clone()),
            text: quoted(setting),
            message,
        };
        // An error about one argument points at the line that set it, where a 2.4 block
        // gives it one.
        let fail_at = |arg: &Option<String>, message: String| match arg
            .as_ref()
            .and_then(|a| setting.arg_lines.get(a))
        {
            Some(line) => ConfigError {
                location: Some(line.location.clone()),
                text: line.text.clone(),
                message,
            },
            None => fail(message),
        };
        let factory = self.factory_for(setting)?;
        let mut args = setting.args.clone();
        let policy = DeliveryPolicy::from_args(&mut args).map_err(|e| {
            fail_at(
                &e.arg,
                format!(
                    "driver {} ({}): {}",
                    setting.number, setting.name, e.message
                ),
            )
        })?;
        let init = DriverInit {
            number: setting.number,
            name: setting.name.clone(),
            args,
            raw: setting.raw.clone(),
            config_dir: setting
                .location
                .file
                .parent()
                .map(PathBuf::from)
                .unwrap_or_default(),
            state_dir: config.settings.state_dir.clone(),
            metadata,
            breaker: policy.breaker.clone(),
            plugin_env: Arc::new(config.plugin_env.clone()),
            background_load: self.background_load,
            check_only: self.check_only,
        };
        // A panicking init must not take the process down: report it like a failed init.
        let result =
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(factory.init(&init)))
                .await;
        let initialised = match result {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => {
                // An init error may quote the arguments (a URL that did not parse): a
                // ConfigError is redacted where it is displayed.
                return Err(fail_at(
                    &e.arg,
                    format!(
                        "driver {} ({}) failed to initialise: {e}",
                        setting.number, setting.name
                    ),
                ));
            }
            Err(panic) => {
                return Err(fail(format!(
                    "driver {} ({}) panicked during init: {}",
                    setting.number,
                    setting.name,
                    panic_message(&panic)
                )))
            }
        };
        let hashes: Vec<&str> = initialised
            .details
            .iter()
            .filter(|l| l.starts_with("sha256:"))
            .map(String::as_str)
            .collect();
        Ok(LoadedDriver {
            number: setting.number,
            name: setting.name.clone(),
            kind: factory.kind(),
            args_display: setting.args.redacted(),
            location: setting.location.clone(),
            fingerprint: format!(
                "{}|{}|{}|{}",
                setting.number,
                setting.name.to_ascii_lowercase(),
                args_digest(&setting.args),
                hashes.join(",")
            ),
            policy: policy.with_driver_defaults(initialised.driver.freshness()),
            driver: initialised.driver,
            // A driver's own words may quote its arguments: passwords in URLs are
            // hidden here, once, for `check`, the start-up log and `status`.
            warnings: initialised
                .warnings
                .iter()
                .map(|w| redact_text(w))
                .collect(),
            details: initialised.details.iter().map(|d| redact_text(d)).collect(),
        })
    }

    /// Initialises every driver of a config, concurrently, reported in number order.
    /// Unlike Dovecot — which
    /// silently drops a failing driver and every later-numbered one — all failures are
    /// collected and returned, so the caller can refuse to start and say why.
    pub async fn init_all(
        &self,
        config: &Config,
        metadata: Arc<dyn MetadataLookup>,
    ) -> Result<Vec<LoadedDriver>, (Vec<LoadedDriver>, Vec<ConfigError>)> {
        // All at once: one driver's slow init (a big component compiling, a wasm init
        // taking its init_timeout_msecs) does not add to the others'.
        let inits = config
            .drivers
            .iter()
            .map(|setting| self.init_one(setting, config, metadata.clone()));
        let tenants = async {
            match &config.settings.tenant_drivers {
                Some(dir) => Some(tenant_lane(config, dir, metadata.clone()).await),
                None => None,
            }
        };
        let (results, tenants) = futures::join!(futures::future::join_all(inits), tenants);
        let mut loaded = Vec::new();
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(d) => loaded.push(d),
                Err(e) => errors.push(e),
            }
        }
        loaded.extend(tenants);
        if errors.is_empty() {
            Ok(loaded)
        } else {
            Err((loaded, errors))
        }
    }
}

/// The tenant-drivers lane, numbered after the numbered drivers.
async fn tenant_lane(
    config: &Config,
    dir: &std::path::Path,
    metadata: Arc<dyn MetadataLookup>,
) -> LoadedDriver {
    let number = config.drivers.last().map(|d| d.number + 1).unwrap_or(1);
    // The same engines as the numbered wasm drivers (one pooling allocator, one epoch
    // thread per process and cache dir).
    let engines = Engines::shared(Some(config.settings.state_dir.join("wasm-cache")));
    let lane = TenantDrivers::new(dir.to_path_buf(), number, engines, metadata);
    let (details, warnings) = lane.scan().await;
    LoadedDriver {
        number,
        name: "tenant_drivers".to_string(),
        kind: "wasm",
        args_display: format!("dir={}", dir.display()),
        fingerprint: format!("{number}|tenant_drivers|{}", dir.display()),
        location: config
            .settings
            .at
            .get("tenant_drivers")
            .cloned()
            .unwrap_or(Location {
                file: config.path.clone(),
                line: 0,
            }),
        driver: Arc::new(lane),
        warnings,
        details,
        // No driver-wide breaker: it would hold back every tenant for one tenant's dead
        // endpoint. Each tenant's endpoints have their own breakers (see tenants.rs).
        policy: DeliveryPolicy {
            breaker: BreakerConfig {
                min: usize::MAX,
                ..Default::default()
            },
            ..Default::default()
        },
    }
}

/// Deinitialises drivers that were loaded but will not run (`check`, a refused start).
pub async fn shutdown_drivers(loaded: Vec<LoadedDriver>) {
    for d in loaded {
        d.driver.deinit().await;
    }
}

/// The setting as the config has it, for an error to quote: the line (Dovecot 2.3),
/// or the block's head with its driver (2.4).
fn quoted(setting: &DriverSetting) -> String {
    match setting.syntax {
        DovecotSyntax::V23 => format!("{} = {}", setting.setting, display_value(setting)),
        DovecotSyntax::V24 if named_after_block(setting) => format!("{} {{ … }}", setting.setting),
        DovecotSyntax::V24 => format!("{} {{ driver = {} … }}", setting.setting, setting.name),
    }
}

/// A Dovecot 2.4 block whose driver is its NAME (no `driver =`, or the same).
fn named_after_block(setting: &DriverSetting) -> bool {
    setting.syntax == DovecotSyntax::V24
        && setting
            .setting
            .strip_prefix("push_notification ")
            .is_some_and(|n| n.eq_ignore_ascii_case(&setting.name))
}

fn display_value(setting: &DriverSetting) -> String {
    match &setting.raw {
        Some(_) if setting.args.is_empty() => format!("{}:", setting.name),
        Some(_) => format!("{}:{}", setting.name, setting.args.redacted()),
        None => setting.name.clone(),
    }
}

/// A digest of a driver's arguments as they take effect, for its fingerprint: a reload
/// keeps a running driver whose fingerprint is unchanged. (The line's text was used: a
/// Dovecot 2.4 block has none, so no change in one, `ox_url` included, restarted its
/// driver; nor did `push_notification_lua_script_file`, which sets an argument.)
fn args_digest(args: &mailpush_core::DriverArgs) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (k, v) in args.iter() {
        h.update(k.as_bytes());
        h.update(b"\0");
        h.update(v.as_bytes());
        h.update(b"\0");
    }
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    //! Initialising the configured drivers: unknown names, case, init failures.

    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use mailpush_core::NoMetadata;

    use super::*;

    const CONF: &str = "/etc/mailpush/mailpush.conf";

    fn parse(text: &str) -> Config {
        Config::parse(Path::new(CONF), text)
            .unwrap_or_else(|e| panic!("rejected:\n{e}\n---\n{text}"))
    }

    /// Wraps settings in a `plugin { }` block: body line N is file line N + 1.
    fn plugin(body: &str) -> String {
        format!("plugin {{\n{body}\n}}\n")
    }

    fn at(line: usize) -> Option<Location> {
        Some(Location {
            file: PathBuf::from(CONF),
            line,
        })
    }

    #[tokio::test]
    async fn unknown_driver_names_number_setting_and_known_drivers() {
        let c = parse(&plugin(
            "push_notification_driver = dlog\npush_notification_driver2 = NoSuch:x=1",
        ));
        let registry = DriverRegistry::default();
        let Err((loaded, errs)) = registry.init_all(&c, Arc::new(NoMetadata)).await else {
            panic!("an unknown driver was accepted");
        };
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].number, 1);
        assert_eq!(errs.len(), 1);
        let e = &errs[0];
        assert_eq!(e.location, at(3));
        assert_eq!(e.text, "push_notification_driver2 = NoSuch:x=1");
        assert!(
            e.message.contains(
                "driver 2 (push_notification_driver2): unknown push notification driver `NoSuch`"
            ),
            "{e}"
        );
        let names = registry.names();
        assert!(names.contains(&"dlog"), "{names:?}");
        assert!(
            e.message
                .contains(&format!("known drivers: {}", names.join(", "))),
            "{e}"
        );
        // What the name probably means: a typo, a missing colon, an unclosed quote.
        for (line, hint) in [
            ("dlgo", ". Did you mean dlog?"),
            (
                "dlog concurrency=5",
                ". A driver's arguments follow a colon: `dlog:ARGS`",
            ),
            (
                "\"ox:url=http://x/",
                "a quote that does not end it: close the quote",
            ),
        ] {
            let c = parse(&plugin(&format!("push_notification_driver = {line}")));
            let Err((_, errs)) = registry.init_all(&c, Arc::new(NoMetadata)).await else {
                panic!("{line} was accepted");
            };
            assert!(errs[0].message.contains(hint), "{line}: {}", errs[0]);
        }
    }

    /// A reload keeps a driver whose fingerprint is unchanged: a change of its arguments
    /// changes it, in a Dovecot 2.4 block too (whose line has no text of arguments: an
    /// `ox_url` changed there kept the old driver, pushing to the old URL); the same
    /// arguments written otherwise do not.
    #[tokio::test]
    async fn a_changed_argument_changes_the_fingerprint_in_24_blocks_too() {
        let registry = DriverRegistry::default();
        let fingerprint = |text: String| {
            let registry = &registry;
            async move {
                let c = parse(&text);
                let Ok(loaded) = registry.init_all(&c, Arc::new(NoMetadata)).await else {
                    panic!("refused: {text}");
                };
                loaded[0].fingerprint.clone()
            }
        };
        let block =
            |url: &str| format!("push_notification ox {{\n  driver = ox\n  ox_url = {url}\n}}\n");
        let old = fingerprint(block("http://user@old.example/push")).await;
        let new = fingerprint(block("http://user@new.example/push")).await;
        assert_ne!(old, new, "a 2.4 block's changed ox_url");
        assert_eq!(
            old,
            fingerprint(block("http://user@old.example/push")).await
        );
        let dir = tempfile::tempdir().unwrap();
        let line = |args: String| plugin(&format!("push_notification_driver = {args}"));
        let log = |name: &str| format!("dlog:file={}", dir.path().join(name).display());
        assert_ne!(
            fingerprint(line(log("a.log"))).await,
            fingerprint(line(log("b.log"))).await
        );
        assert!(
            !old.contains("old.example"),
            "a digest, not the arguments: {old}"
        );
        // A Lua script's text counts as the arguments do (a reload after editing it
        // kept the old script).
        let script = dir.path().join("s.lua");
        let lua = line(format!("lua:file={}", script.display()));
        std::fs::write(
            &script,
            "function dovecot_lua_notify_begin_txn(u) return {} end\n",
        )
        .unwrap();
        let before = fingerprint(lua.clone()).await;
        std::fs::write(
            &script,
            "function dovecot_lua_notify_begin_txn(u) return {1} end\n",
        )
        .unwrap();
        assert_ne!(before, fingerprint(lua).await, "the script changed");
    }

    #[tokio::test]
    async fn driver_names_match_case_insensitively_and_keep_their_case() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dlog.log");
        let c = parse(&plugin(&format!(
            "push_notification_driver = DLOG:file={}",
            file.display()
        )));
        let registry = DriverRegistry::default();
        let Ok(loaded) = registry.init_all(&c, Arc::new(NoMetadata)).await else {
            panic!("DLOG was not accepted");
        };
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].number, 1);
        assert_eq!(loaded[0].name, "DLOG");
        assert_eq!(loaded[0].kind, "native");
        assert_eq!(loaded[0].args_display, format!("file={}", file.display()));
        loaded[0].driver.started();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!(
                "Called init push_notification plugin hook.\n\
                 Config string for dlog push_notification driver: file={}\n",
                file.display()
            )
        );
    }

    #[tokio::test]
    async fn dlog_with_a_file_in_a_missing_directory_fails_init() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("missing/dlog.log");
        let c = parse(&plugin(&format!(
            "push_notification_driver = dlog\npush_notification_driver2 = DLog:file={}",
            file.display()
        )));
        let registry = DriverRegistry::default();
        let Err((loaded, errs)) = registry.init_all(&c, Arc::new(NoMetadata)).await else {
            panic!("init succeeded with {}", file.display());
        };
        assert_eq!(loaded.len(), 1);
        assert_eq!(errs.len(), 1);
        let e = &errs[0];
        assert_eq!(e.location, at(3));
        assert_eq!(
            e.text,
            format!("push_notification_driver2 = DLog:file={}", file.display())
        );
        assert!(
            e.message.contains("driver 2 (DLog) failed to initialise"),
            "{e}"
        );
        assert!(e.message.contains("cannot open"), "{e}");
        assert!(e.message.contains(&file.display().to_string()), "{e}");
    }

    /// A driver's warnings and table lines are its own words and may quote a URL with
    /// its password: the registry hides it, whatever the driver.
    #[tokio::test]
    async fn a_drivers_own_warnings_and_details_never_show_a_password() {
        struct Quoting;
        #[async_trait::async_trait]
        impl DriverFactory for Quoting {
            fn name(&self) -> &'static str {
                "quoting"
            }
            async fn init(
                &self,
                init: &DriverInit,
            ) -> Result<mailpush_core::Initialised, mailpush_core::InitError> {
                let mut out = mailpush_dlog::DlogFactory.init(init).await?;
                out.warnings
                    .push("endpoint http://login:hunter2@h.example/x answers slowly".into());
                out.details
                    .push("endpoint: http://login:hunter2@h.example/x".into());
                Ok(out)
            }
        }
        let mut registry = DriverRegistry::empty();
        registry.register(Arc::new(Quoting));
        let c = parse(&plugin("push_notification_driver = quoting"));
        let Ok(loaded) = registry.init_all(&c, Arc::new(NoMetadata)).await else {
            panic!("the driver did not load");
        };
        let (warnings, details) = (&loaded[0].warnings, &loaded[0].details);
        assert_eq!(
            warnings,
            &["endpoint http://login:***@h.example/x answers slowly"]
        );
        assert_eq!(details, &["endpoint: http://login:***@h.example/x"]);
    }
}
