//! A wasm driver's sandbox: mailpush's own keys on the driver line, read by each
//! capability that owns them (`wasm:file=… timeout_msecs=200 allow_hosts=…`); every
//! other key goes to the component's `init`. [`Sandbox::from_args`] and
//! [`Sandbox::describe`] run nothing: they are what `mailpush check` validates and shows.

use mailpush_core::{DriverArgs, InitError};

use super::http::HttpSettings;
use super::instance::InstanceSettings;
use super::limits::Limits;
use super::log::LogSettings;

/// Limits and grants of one wasm driver, one part per capability.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sandbox {
    /// CPU time, memory, fuel, event size, transaction wall time.
    pub limits: Limits,
    /// Lines per transaction and per second.
    pub log: LogSettings,
    /// Outbound HTTP grants and timeouts.
    pub http: HttpSettings,
    /// Fresh or reused instances.
    pub instance: InstanceSettings,
    /// Retired keys found on the line ([`RETIRED_KEYS`]): taken, warned about.
    pub retired: Vec<String>,
}

/// Keys of earlier versions that mean nothing any more: a driver that keeps failing is
/// held back by its circuit breaker (`breaker_*` keys, docs/delivery.md), like every
/// driver.
pub const RETIRED_KEYS: &[&str] = &["pause_after", "pause_msecs"];

impl Sandbox {
    /// Takes mailpush's sandbox keys out of `args` (leaving the component's own).
    pub fn from_args(args: &mut DriverArgs) -> Result<Sandbox, InitError> {
        let retired = RETIRED_KEYS
            .iter()
            .filter_map(|k| args.take(k).map(|_| k.to_string()))
            .collect();
        Ok(Sandbox {
            retired,
            limits: Limits::from_args(args)?,
            log: LogSettings::from_args(args)?,
            http: HttpSettings::from_args(args)?,
            instance: InstanceSettings::from_args(args)?,
        })
    }

    /// What `check` warns about, each with the key it is about.
    pub fn warnings(&self) -> Vec<(String, String)> {
        self.retired
            .iter()
            .map(|k| (k.to_string(), format!("{k} is ignored: a driver that keeps failing is held back by its circuit breaker (breaker_* keys)")))
            .collect()
    }

    /// Lines for `mailpush check`.
    pub fn describe(&self) -> Vec<String> {
        vec![
            self.limits.describe(),
            self.log.describe(),
            self.instance.describe(),
            format!(
                "grants: {}; metadata=read-only (own user); stdout/stderr: to the log; filesystem, environment, sockets: none",
                self.http.describe()
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_and_removes_sandbox_keys() {
        let mut args = DriverArgs::parse("file=x.wasm url=https://h/ timeout_msecs=250 memory=8M fuel=1000 allow_hosts=a.example.com,*.example.net allow_private secret=s instance=reuse log_burst=9");
        let s = Sandbox::from_args(&mut args).unwrap();
        assert_eq!(s.limits.timeout, Duration::from_millis(250));
        assert_eq!(s.limits.memory, 8 << 20);
        assert_eq!(s.limits.fuel, Some(1000));
        assert!(s.http.allow_private);
        assert_eq!(
            s.instance.model,
            super::super::instance::InstanceModel::Reuse
        );
        assert_eq!(s.log.log_burst, 9);
        assert_eq!(args.get("url"), Some("https://h/"));
        assert_eq!(args.get("secret"), Some("s"));
        assert!(!args.has("timeout_msecs"));
        // `file` is taken by the factory, not here
        assert!(args.has("file"));
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "memory=lots",
            "memory=1G5",
            "timeout_msecs=0",
            "instance=shared",
            "allow_hosts=a/b",
            "fuel=-1",
            "log_lines_per_sec=fast",
            "log_burst=-5",
        ] {
            let mut args = DriverArgs::parse(bad);
            assert!(Sandbox::from_args(&mut args).is_err(), "{bad}");
        }
    }
}
