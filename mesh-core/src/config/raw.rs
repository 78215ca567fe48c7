//! The first pass: gather every `MESH_` setting from the file and the variables into
//! one place, by scope, with where each came from. Typing happens afterwards.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value;

use super::error::{Origin, Problem, ProblemKind};
use super::settings::{self, Scope, SettingDef, Status, SETTINGS};
use super::Source;
use crate::authz::{parse_action, Rule};

/// Settings by name. A B-tree rather than a hash map: these maps hold a handful
/// of entries and are looked up once per setting at start-up, where comparing a
/// few names costs less than hashing each one (and an empty map costs nothing).
pub(crate) type SettingMap = BTreeMap<&'static str, Entry>;

/// A setting's value and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) value: String,
    pub(crate) origin: Origin,
}

/// Settings of one service, by setting name.
#[derive(Debug, Default)]
pub(crate) struct RawService {
    /// The name as the user wrote it (the file keeps case and dots; variables
    /// only carry the normalized form, shown in lower case).
    pub(crate) name: String,
    pub(crate) settings: SettingMap,
    /// `[[services.<name>.routes]]` of the file, in order.
    pub(crate) routes: Vec<RawRoute>,
}

/// One `[[services.<name>.routes]]` table, its fields untyped.
#[derive(Debug, Clone)]
pub(crate) struct RawRoute {
    /// `name`, `methods`, `path` and `path_prefix`, by key.
    pub(crate) matching: SettingMap,
    /// The settings it overrides, by setting name.
    pub(crate) settings: SettingMap,
}

/// The keys of a route that say what it matches.
pub(crate) const ROUTE_MATCH_KEYS: [&str; 4] = ["name", "methods", "path", "path_prefix"];

/// The settings a route may override.
pub(crate) const ROUTE_SETTINGS: [&str; 9] = [
    "TIMEOUT",
    "PER_TRY_TIMEOUT",
    "RETRY_MAX_ATTEMPTS",
    "RETRY_ON",
    "RETRY_METHODS",
    "RETRY_BACKOFF",
    "HEDGE_DELAY",
    "FAULT_DELAY",
    "FAULT_ABORT",
];

/// Everything gathered, variables already laid over the file.
#[derive(Debug, Default)]
pub(crate) struct RawSettings {
    pub(crate) global: SettingMap,
    pub(crate) defaults: SettingMap,
    /// By normalized name.
    pub(crate) services: BTreeMap<String, RawService>,
    /// `[[authz.rules]]` of the file, already parsed, with the key they came from.
    pub(crate) authz_file_rules: Option<(Vec<Rule>, Origin)>,
}

/// `my-api.prod` → `MY_API_PROD`: the form a service name takes in a variable.
pub fn normalize_service_name(name: &str) -> String {
    name.bytes()
        .map(|b| char::from(normalize_byte(b)))
        .collect()
}

pub(crate) fn normalize_byte(b: u8) -> u8 {
    match b {
        b'-' | b'.' => b'_',
        other => other.to_ascii_uppercase(),
    }
}

fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

impl RawSettings {
    fn insert(
        &mut self,
        scope: Scope,
        service: Option<(&str, String)>,
        def: &'static SettingDef,
        entry: Entry,
        problems: &mut Vec<Problem>,
    ) {
        if def.status == Status::Planned {
            problems.push(Problem::new(entry.origin, ProblemKind::NotSupportedYet));
            return;
        }
        let map = match (scope, service) {
            (Scope::Global, _) => &mut self.global,
            (_, None) => &mut self.defaults,
            (_, Some((key, name))) => {
                let svc = self.services.entry(key.to_string()).or_default();
                if svc.name.is_empty() || matches!(entry.origin, Origin::File { .. }) {
                    svc.name = name;
                }
                &mut svc.settings
            }
        };
        map.insert(def.name, entry);
    }

    /// Reads `MESH_CONFIG_FILE` (TOML or JSON, by extension).
    pub(crate) fn read_file(&mut self, path: &Path, problems: &mut Vec<Problem>) {
        let origin = |key: &str| Origin::File {
            path: path.to_path_buf(),
            key: key.to_string(),
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                let origin = Origin::Variable("MESH_CONFIG_FILE".into());
                problems.push(Problem::other(
                    origin,
                    format!("cannot read {}: {e}", path.display()),
                ));
                return;
            }
        };
        let parsed: Result<Value, String> = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => serde_json::from_str(&text).map_err(|e| e.to_string()),
            Some("toml") => toml::from_str::<toml::Table>(&text)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::to_value(t).map_err(|e| e.to_string())),
            _ => Err("expected a file ending in .toml or .json".into()),
        };
        let root = match parsed {
            Ok(Value::Object(root)) => root,
            Ok(_) => {
                problems.push(Problem::other(
                    origin(""),
                    "expected a table of settings at the top",
                ));
                return;
            }
            Err(e) => {
                problems.push(Problem::other(origin(""), format!("cannot parse: {e}")));
                return;
            }
        };
        let mut names_by_key: HashMap<String, String> = HashMap::new();
        for (key, value) in &root {
            match (key.as_str(), value) {
                ("defaults", Value::Object(table)) => {
                    for (k, v) in table {
                        let dotted = format!("defaults.{k}");
                        if k == "routes" {
                            problems.push(Problem::other(
                                origin(&dotted),
                                "routes are set per service, as `[[services.<name>.routes]]`",
                            ));
                            continue;
                        }
                        self.file_entry(Scope::Service, None, k, v, origin(&dotted), problems);
                    }
                }
                ("services", Value::Object(services)) => {
                    for (name, table) in services {
                        let key = normalize_service_name(name);
                        if !valid_service_name(name) {
                            problems.push(Problem::other(
                                origin(&format!("services.{name}")),
                                "a service name may hold only letters, digits, `-`, `.` and `_`",
                            ));
                            continue;
                        }
                        if let Some(other) = names_by_key.insert(key.clone(), name.clone()) {
                            problems.push(Problem::other(origin(&format!("services.{name}")), format!("services `{other}` and `{name}` both normalize to `{key}`; rename one")));
                            continue;
                        }
                        let Value::Object(table) = table else {
                            problems.push(Problem::other(
                                origin(&format!("services.{name}")),
                                "expected a table of settings",
                            ));
                            continue;
                        };
                        for (k, v) in table {
                            let dotted = format!("services.{name}.{k}");
                            if k == "routes" {
                                self.file_routes(&key, name, v, &origin, problems);
                                continue;
                            }
                            self.file_entry(
                                Scope::Service,
                                Some((&key, name.clone())),
                                k,
                                v,
                                origin(&dotted),
                                problems,
                            );
                        }
                    }
                }
                ("authz", Value::Object(table)) => {
                    for (k, v) in table {
                        match (k.as_str(), v) {
                            ("rules", Value::Array(rules)) => {
                                self.file_authz_rules(rules, &origin, problems);
                            }
                            ("default", v) => self.file_entry(
                                Scope::Global,
                                None,
                                "authz_default",
                                v,
                                origin("authz.default"),
                                problems,
                            ),
                            (k, v) => problems.push(Problem::new(
                                origin(&format!("authz.{k}")),
                                ProblemKind::Unknown {
                                    value: v.to_string(),
                                    hint: "the [authz] table holds `default` and `[[authz.rules]]`"
                                        .into(),
                                },
                            )),
                        }
                    }
                }
                ("config_file", _) => problems.push(Problem::other(
                    origin(key),
                    "the file cannot name another file; set MESH_CONFIG_FILE",
                )),
                (k, v) => self.file_entry(Scope::Global, None, k, v, origin(k), problems),
            }
        }
    }

    /// Parses `[[authz.rules]]`: tables of `action`, `peer`, `methods` (a string
    /// or list) and `path`; `peer`, `methods` and `path` default to `*`.
    fn file_authz_rules(
        &mut self,
        rules: &[Value],
        origin: &dyn Fn(&str) -> Origin,
        problems: &mut Vec<Problem>,
    ) {
        let mut parsed = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let key = format!("authz.rules[{i}]");
            let Value::Object(table) = rule else {
                problems.push(Problem::invalid(
                    origin(&key),
                    &rule.to_string(),
                    "a table with `action`, `peer`, `methods` and `path`",
                ));
                continue;
            };
            if let Some(extra) = table
                .keys()
                .find(|k| !matches!(k.as_str(), "action" | "peer" | "methods" | "path"))
            {
                problems.push(Problem::other(
                    origin(&format!("{key}.{extra}")),
                    "unknown key; a rule has `action`, `peer`, `methods` and `path`",
                ));
                continue;
            }
            let text = |field: &str| -> Option<String> {
                match table.get(field) {
                    None => Some("*".into()),
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Array(items)) if field == "methods" => items
                        .iter()
                        .map(|m| m.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                        .map(|list| list.join(",")),
                    Some(_) => None,
                }
            };
            let fields = ["action", "peer", "methods", "path"].map(|f| (f, text(f)));
            if let Some((field, _)) = fields.iter().find(|(_, v)| v.is_none()) {
                let value = table.get(*field).map(Value::to_string).unwrap_or_default();
                problems.push(Problem::invalid(
                    origin(&format!("{key}.{field}")),
                    &value,
                    "a string (`methods` may also be a list of strings)",
                ));
                continue;
            }
            let [action, peer, methods, path] = fields.map(|(_, v)| v.unwrap_or_default());
            let field_origin = |f: &str| origin(&format!("{key}.{f}"));
            if !table.contains_key("action") {
                problems.push(Problem::other(
                    field_origin("action"),
                    "a rule needs `action = \"allow\"` or `\"deny\"`",
                ));
                continue;
            }
            let rule = parse_action(&action).and_then(|a| Rule::new(a, &peer, &methods, &path));
            match rule {
                Ok(rule) => parsed.push(rule),
                Err(e) => {
                    // Name the field that holds the offending part.
                    let field = [
                        ("action", &action),
                        ("peer", &peer),
                        ("methods", &methods),
                        ("path", &path),
                    ]
                    .into_iter()
                    .find(|(_, v)| *v == e.part() || v.split(',').any(|p| p == e.part()))
                    .map_or("", |(f, _)| f);
                    let o = if field.is_empty() {
                        origin(&key)
                    } else {
                        field_origin(field)
                    };
                    problems.push(Problem::other(o, format!("bad authorization rule: {e}")));
                }
            }
        }
        self.authz_file_rules = Some((parsed, origin("authz.rules")));
    }

    /// Parses `[[services.<name>.routes]]`: tables of what a route matches and the
    /// settings it overrides, each kept with its key for error messages.
    fn file_routes(
        &mut self,
        key: &str,
        name: &str,
        value: &Value,
        origin: &dyn Fn(&str) -> Origin,
        problems: &mut Vec<Problem>,
    ) {
        let base = format!("services.{name}.routes");
        let Value::Array(list) = value else {
            problems.push(Problem::invalid(
                origin(&base),
                &value.to_string(),
                "a list of route tables (`[[services.<name>.routes]]`)",
            ));
            return;
        };
        let svc = self.services.entry(key.to_string()).or_default();
        svc.name = name.to_string();
        for (i, route) in list.iter().enumerate() {
            let route_key = format!("{base}[{i}]");
            let Value::Object(table) = route else {
                problems.push(Problem::invalid(
                    origin(&route_key),
                    &route.to_string(),
                    "a table with `path` or `path_prefix`, `methods`, `name` and the settings it overrides",
                ));
                continue;
            };
            let mut raw = RawRoute {
                matching: SettingMap::new(),
                settings: SettingMap::new(),
            };
            for (k, v) in table {
                let field_origin = origin(&format!("{route_key}.{k}"));
                let Some(text) = value_text(v) else {
                    problems.push(Problem::invalid(
                        field_origin,
                        &v.to_string(),
                        "a string, number, boolean or list of strings",
                    ));
                    continue;
                };
                let entry = Entry {
                    value: text,
                    origin: field_origin,
                };
                if let Some(m) = ROUTE_MATCH_KEYS.iter().find(|m| **m == k) {
                    raw.matching.insert(m, entry);
                } else if let Some(setting) =
                    ROUTE_SETTINGS.iter().find(|s| s.to_ascii_lowercase() == *k)
                {
                    raw.settings.insert(setting, entry);
                } else {
                    let settings: Vec<String> = ROUTE_SETTINGS
                        .iter()
                        .map(|s| s.to_ascii_lowercase())
                        .collect();
                    problems.push(Problem::new(
                        entry.origin,
                        ProblemKind::Unknown {
                            value: entry.value,
                            hint: format!(
                                "a route holds `name`, `methods`, `path` or `path_prefix`, and overrides {}",
                                settings.join(", ")
                            ),
                        },
                    ));
                }
            }
            svc.routes.push(raw);
        }
    }

    fn file_entry(
        &mut self,
        scope: Scope,
        service: Option<(&str, String)>,
        key: &str,
        value: &Value,
        origin: Origin,
        problems: &mut Vec<Problem>,
    ) {
        let name = key.to_ascii_uppercase();
        let def = settings::find(scope, &name).filter(|_| key == key.to_ascii_lowercase());
        let Some(def) = def else {
            let hint = suggest(scope, &name).map_or_else(
                || "see the README's table of settings".to_string(),
                |s| format!("did you mean `{}`?", s.to_ascii_lowercase()),
            );
            problems.push(Problem::new(
                origin,
                ProblemKind::Unknown {
                    value: value.to_string(),
                    hint,
                },
            ));
            return;
        };
        if def.scope == Scope::Discovery && service.is_none() {
            problems.push(Problem::other(
                origin,
                "endpoint sources are set per service, not as a default",
            ));
            return;
        }
        let text = match value {
            // A gRPC service config may be written as the JSON (or TOML) table itself.
            Value::Object(_) if def.name == "GRPC_SERVICE_CONFIG" => value.to_string(),
            other => match value_text(other) {
                Some(text) => text,
                None => {
                    problems.push(Problem::invalid(
                        origin,
                        &other.to_string(),
                        "a string, number, boolean or list of strings",
                    ));
                    return;
                }
            },
        };
        self.insert(
            def.scope,
            service,
            def,
            Entry {
                value: text,
                origin,
            },
            problems,
        );
    }

    /// Reads every `MESH_` variable of `source`, over what the file set.
    pub(crate) fn read_variables(
        &mut self,
        source: &(impl Source + ?Sized),
        problems: &mut Vec<Problem>,
    ) {
        for (var, value) in source.vars_with_prefix("MESH_") {
            let rest = &var["MESH_".len()..];
            let entry = Entry {
                value: value.clone(),
                origin: Origin::Variable(var.clone()),
            };
            if let Some(def) = settings::find(Scope::Global, rest) {
                self.insert(Scope::Global, None, def, entry, problems);
            } else if let Some(def) = rest
                .strip_prefix("DEFAULT_")
                .and_then(|s| settings::find(Scope::Service, s))
            {
                if def.scope == Scope::Discovery {
                    problems.push(Problem::other(entry.origin, "endpoint sources are set per service (MESH_SERVICE_<NAME>_…), not as a default"));
                } else {
                    self.insert(Scope::Service, None, def, entry, problems);
                }
            } else if let Some((svc, def)) = rest
                .strip_prefix("SERVICE_")
                .and_then(settings::split_service_setting)
            {
                if svc
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                {
                    self.insert(
                        def.scope,
                        Some((svc, svc.to_ascii_lowercase())),
                        def,
                        entry,
                        problems,
                    );
                } else {
                    problems.push(Problem::other(
                        entry.origin,
                        "the service part of the name may hold only A-Z, 0-9 and `_`",
                    ));
                }
            } else if !is_kubernetes_service_variable(&var, &value) {
                problems.push(Problem::new(
                    entry.origin,
                    ProblemKind::Unknown {
                        value,
                        hint: hint_for_variable(rest),
                    },
                ));
            }
        }
    }
}

/// A file value as the text a variable would hold: lists comma-separated.
fn value_text(value: &Value) -> Option<String> {
    Some(match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) if items.iter().all(|i| i.is_string() || i.is_number()) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        _ => return None,
    })
}

fn hint_for_variable(rest: &str) -> String {
    if let Some(tail) = rest.strip_prefix("SERVICE_") {
        let last = tail.rsplit('_').next().unwrap_or(tail);
        return match suggest(Scope::Service, last) {
            Some(s) => format!("per-service settings are MESH_SERVICE_<NAME>_<SETTING>; did you mean a setting ending in `{s}`?"),
            None => "per-service settings are MESH_SERVICE_<NAME>_<SETTING>; see the README's table".into(),
        };
    }
    if let Some(tail) = rest.strip_prefix("DEFAULT_") {
        if let Some(s) = suggest(Scope::Service, tail) {
            return format!("did you mean MESH_DEFAULT_{s}?");
        }
    }
    match suggest(Scope::Global, rest) {
        Some(s) => format!("did you mean MESH_{s}?"),
        None => "see the README's table of MESH_ variables".into(),
    }
}

/// The known setting closest to `name`, if it is close enough to be a typo.
fn suggest(scope: Scope, name: &str) -> Option<&'static str> {
    SETTINGS
        .iter()
        .filter(|d| (d.scope == Scope::Global) == (scope == Scope::Global))
        .map(|d| (edit_distance(d.name, name), d.name))
        .filter(|(dist, known)| *dist <= 2.max(known.len() / 4))
        .min()
        .map(|(_, known)| known)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Kubernetes injects `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT[_<NAME>]`,
/// `<SVC>_PORT` and `<SVC>_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR]` for every Service
/// in the namespace; for a Service named `mesh…` those start with `MESH_`. They are
/// recognised by name *and* by the shape of their value, so a misspelled setting
/// that merely ends in `_PORT` is still reported.
fn is_kubernetes_service_variable(name: &str, value: &str) -> bool {
    let is_ip = |v: &str| v.parse::<std::net::IpAddr>().is_ok();
    let is_port = |v: &str| v.parse::<u16>().is_ok();
    let is_proto = |v: &str| matches!(v, "tcp" | "udp" | "sctp");
    let is_url = |v: &str| {
        v.split_once("://").is_some_and(|(proto, addr)| {
            is_proto(proto) && addr.parse::<std::net::SocketAddr>().is_ok()
        })
    };
    // <SVC>_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR], checked first: it too may end in `_PORT`.
    if let Some(idx) = name.rfind("_PORT_") {
        let parts: Vec<&str> = name[idx + "_PORT_".len()..].split('_').collect();
        let numbered =
            |port: &str, proto: &str| is_port(port) && is_proto(&proto.to_ascii_lowercase());
        let matched = match parts.as_slice() {
            [port, proto] if numbered(port, proto) => Some(is_url(value)),
            [port, proto, "PROTO"] if numbered(port, proto) => Some(is_proto(value)),
            [port, proto, "PORT"] if numbered(port, proto) => Some(is_port(value)),
            [port, proto, "ADDR"] if numbered(port, proto) => Some(is_ip(value)),
            _ => None,
        };
        if let Some(matched) = matched {
            return matched;
        }
    }
    if name.ends_with("_SERVICE_HOST") {
        return is_ip(value);
    }
    if name.ends_with("_SERVICE_PORT") || name.contains("_SERVICE_PORT_") {
        return is_port(value);
    }
    name.ends_with("_PORT") && is_url(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_service_variables_are_recognised_by_name_and_value() {
        assert!(is_kubernetes_service_variable(
            "MESH_SERVICE_HOST",
            "10.0.0.1"
        ));
        assert!(is_kubernetes_service_variable("MESH_SERVICE_PORT", "8080"));
        assert!(is_kubernetes_service_variable(
            "MESH_SERVICE_PORT_HTTP",
            "8080"
        ));
        assert!(is_kubernetes_service_variable(
            "MESH_PORT",
            "tcp://10.0.0.1:8080"
        ));
        assert!(is_kubernetes_service_variable(
            "MESH_API_PORT_8080_TCP",
            "tcp://10.0.0.1:8080"
        ));
        assert!(is_kubernetes_service_variable(
            "MESH_API_PORT_8080_TCP_PROTO",
            "tcp"
        ));
        assert!(is_kubernetes_service_variable(
            "MESH_API_PORT_8080_TCP_PORT",
            "8080"
        ));
        assert!(is_kubernetes_service_variable(
            "MESH_API_PORT_8080_TCP_ADDR",
            "10.0.0.1"
        ));
        assert!(!is_kubernetes_service_variable(
            "MESH_SERVICE_HOST",
            "api.example"
        ));
        assert!(!is_kubernetes_service_variable(
            "MESH_SERVICE_API_PORT",
            "8080"
        ));
        assert!(!is_kubernetes_service_variable("MESH_NOT_A_SETTING", "1"));
    }

    #[test]
    fn typos_get_a_suggestion() {
        assert_eq!(suggest(Scope::Global, "SERVCE_NAME"), Some("SERVICE_NAME"));
        assert_eq!(suggest(Scope::Service, "TIMEOUTS"), Some("TIMEOUT"));
        assert_eq!(suggest(Scope::Global, "NOT_A_SETTING"), None);
    }
}
