//! Environment overrides `FERROMQ_<SECTION>__<KEY>` as a figment provider fed from an explicit
//! list of (name, value) pairs, so tests need not touch the process environment.
//!
//! - The prefix is matched case-insensitively; the rest is lower-cased and split on `__`:
//!   `FERROMQ_REPLICATION__ZK_ADDRESS` sets `replication.zk_address`, and
//!   `FERROMQ_BROKER__USERS__ADMIN` sets `broker.users.admin` (logins from the environment are
//!   therefore lower-case).
//! - Variables without `__` are not overrides and are ignored (the configuration file comes
//!   only from `--config`, the log filter from `RUST_LOG`); one that looks like a misspelt
//!   override (`FERROMQ_STORE_SYNC`, `FERROMQ_ADMIN_BIND`) is logged as a warning.
//! - Values of string keys are taken verbatim (a token `007` stays `007`); other values are
//!   parsed by figment as typed values (`3`, `true`, `[a, b]`).

use figment::value::{Dict, Map, Value};
use figment::{Error, Metadata, Profile, Provider};

/// The prefix of every override.
pub const ENV_PREFIX: &str = "FERROMQ_";

/// The name given to this provider's values in error messages.
pub(crate) const ENV_SOURCE_NAME: &str = "environment variable";

const SECTIONS: [&str; 5] = ["broker", "transport", "store", "replication", "admin"];

/// The environment variable that sets the dotted `key` (`replication.zk_address` gives
/// `FERROMQ_REPLICATION__ZK_ADDRESS`).
pub fn env_var_name<S: AsRef<str>>(key_parts: &[S]) -> String {
    let parts: Vec<String> = key_parts
        .iter()
        .map(|p| p.as_ref().to_ascii_uppercase())
        .collect();
    format!("{ENV_PREFIX}{}", parts.join("__"))
}

/// Keys whose environment values are strings, never re-typed.
fn is_string_key(parts: &[String]) -> bool {
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    matches!(
        parts.as_slice(),
        [
            "broker",
            "name"
                | "dead_letter_strategy"
                | "dead_letter_queue_prefix"
                | "dead_letter_queue_suffix"
                | "dead_letter_topic_prefix"
                | "dead_letter_topic_suffix"
                | "virtual_topic_name"
                | "virtual_topic_prefix"
                | "virtual_topic_postfix"
        ] | ["broker", "users", _]
            | ["store", "directory"]
            | ["store", "sync"]
            | [
                "replication",
                "bind"
                    | "zk_address"
                    | "zk_password"
                    | "zk_path"
                    | "hostname"
                    | "security_token"
                    | "container"
            ]
            | ["admin", "bind" | "token"]
    )
}

/// The `FERROMQ_*__*` overrides found in a list of environment variables.
#[derive(Debug, Clone, Default)]
pub(crate) struct EnvOverrides {
    /// (key path, value), in the order given.
    vars: Vec<(Vec<String>, String)>,
}

impl EnvOverrides {
    pub(crate) fn from_pairs<I, K, V>(pairs: I) -> EnvOverrides
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let mut vars = Vec::new();
        for (name, value) in pairs {
            let name = name.as_ref().trim();
            let Some(rest) = strip_prefix_ignore_case(name, ENV_PREFIX) else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            if !rest.contains("__") {
                if let Some(section) = SECTIONS
                    .iter()
                    .find(|s| rest.strip_prefix(*s).is_some_and(|r| r.starts_with('_')))
                {
                    tracing::warn!(
                        "ignoring environment variable {name}: overrides are written \
                         {ENV_PREFIX}{}__<KEY> (two underscores after the section)",
                        section.to_ascii_uppercase()
                    );
                }
                continue;
            }
            let parts: Vec<String> = rest.split("__").map(str::to_owned).collect();
            if parts.iter().any(|p| p.is_empty()) {
                tracing::warn!("ignoring environment variable {name}: empty key segment");
                continue;
            }
            vars.push((parts, value.into()));
        }
        EnvOverrides { vars }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn insert(dict: &mut Dict, parts: &[String], value: Value) {
    let Some((first, rest)) = parts.split_first() else {
        return;
    };
    if rest.is_empty() {
        dict.insert(first.clone(), value);
        return;
    }
    let entry = dict
        .entry(first.clone())
        .or_insert_with(|| Value::from(Dict::new()));
    if !matches!(entry, Value::Dict(..)) {
        *entry = Value::from(Dict::new());
    }
    if let Value::Dict(_, inner) = entry {
        insert(inner, rest, value);
    }
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_SOURCE_NAME)
            .interpolater(|_: &Profile, keys: &[&str]| env_var_name(keys))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut dict = Dict::new();
        for (parts, raw) in &self.vars {
            let value = if is_string_key(parts) {
                Value::from(raw.clone())
            } else {
                raw.parse::<Value>().expect("infallible")
            };
            insert(&mut dict, parts, value);
        }
        let mut map = Map::new();
        map.insert(Profile::Default, dict);
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values() {
        assert_eq!(
            env_var_name(&["replication", "zk_address"]),
            "FERROMQ_REPLICATION__ZK_ADDRESS"
        );
        let env = EnvOverrides::from_pairs([
            ("FERROMQ_REPLICATION__SECURITY_TOKEN", "007"),
            ("ferromq_replication__replicas", "5"),
            ("FERROMQ_BROKER__USERS__ADMIN", "123"),
            ("FERROMQ_CONFIG", "/etc/ferromq.toml"),
            ("FERROMQ_STORE_SYNC", "local_mem"),
            ("FERROMQ_STORE__", "x"),
            ("PATH", "/bin"),
        ]);
        let data = env.data().unwrap();
        let dict = &data[&Profile::Default];
        assert_eq!(dict.len(), 2, "{dict:?}");
        let repl = dict["replication"].as_dict().unwrap();
        assert_eq!(repl["security_token"].as_str(), Some("007"));
        assert_eq!(repl["replicas"].to_u128(), Some(5));
        let users = dict["broker"].as_dict().unwrap()["users"]
            .as_dict()
            .unwrap();
        assert_eq!(users["admin"].as_str(), Some("123"));
    }
}
