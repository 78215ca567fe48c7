use std::time::Duration;

use super::*;
use crate::balance::BalancerKind;
use crate::discovery::{DiscoverySource, HostPort};

fn err(env: &[(&str, &str)]) -> ConfigError {
    MeshConfig::from_source(env).expect_err("configuration must be rejected")
}

#[test]
fn static_endpoints_define_a_service_with_documented_defaults() {
    let config = MeshConfig::from_source(&[
        ("MESH_SERVICE_NAME", "checkout"),
        (
            "MESH_SERVICE_MY_API_ENDPOINTS",
            "127.0.0.1:8080, [::1]:9090",
        ),
    ])
    .unwrap();
    assert_eq!(config.service_name(), "checkout");
    let svc = config
        .service_for_host("my-api")
        .expect("host matched after normalization");
    assert_eq!(svc.name, "my_api");
    assert_eq!(
        svc.discovery,
        DiscoverySource::Static(vec![
            HostPort {
                host: "127.0.0.1".into(),
                port: 8080
            },
            HostPort {
                host: "::1".into(),
                port: 9090
            },
        ])
    );
    assert_eq!(svc.connect_timeout, Duration::from_secs(1));
    assert_eq!(svc.timeout, Some(Duration::from_secs(15)));
    assert_eq!(svc.balancer.kind, BalancerKind::P2cPeakEwma);
    assert_eq!(svc.balancer.panic_threshold, 0.5);
    assert_eq!(svc.max_connections, None);
    assert!(config.service_for_host("my.api").is_some());
    assert!(config.service_for_host("MY_API").is_some());
    assert!(config.service_for_host("other").is_none());
}

#[test]
fn service_name_falls_back_to_otel_service_name() {
    let config = MeshConfig::from_source(&[("OTEL_SERVICE_NAME", "from-otel")]).unwrap();
    assert_eq!(config.service_name(), "from-otel");
    let config = MeshConfig::from_source(&[] as &[(&str, &str)]).unwrap();
    assert_eq!(config.service_name(), "unknown_service");
}

#[test]
fn longest_suffix_decides_the_setting_and_the_service() {
    let config = MeshConfig::from_source(&[
        ("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1"),
        ("MESH_SERVICE_API_CONNECT_TIMEOUT", "250ms"),
        ("MESH_SERVICE_API_TIMEOUT", "3s"),
    ])
    .unwrap();
    assert_eq!(config.services().len(), 1);
    let svc = &config.services()[0];
    assert_eq!(svc.connect_timeout, Duration::from_millis(250));
    assert_eq!(svc.timeout, Some(Duration::from_secs(3)));
}

#[test]
fn service_settings_beat_defaults_which_beat_built_ins() {
    let config = MeshConfig::from_source(&[
        ("MESH_DEFAULT_TIMEOUT", "5s"),
        ("MESH_DEFAULT_BALANCER", "round-robin"),
        ("MESH_SERVICE_A_ENDPOINTS", "127.0.0.1:1"),
        ("MESH_SERVICE_B_ENDPOINTS", "127.0.0.1:2"),
        ("MESH_SERVICE_B_TIMEOUT", "off"),
    ])
    .unwrap();
    let a = config.service_for_host("a").unwrap();
    let b = config.service_for_host("b").unwrap();
    assert_eq!(a.timeout, Some(Duration::from_secs(5)));
    assert_eq!(b.timeout, None);
    assert_eq!(b.balancer.kind, BalancerKind::RoundRobin);
}

#[test]
fn unknown_mesh_variable_is_an_error_naming_it() {
    let e = err(&[("MESH_NOT_A_SETTING", "1")]);
    assert!(e.names_variable("MESH_NOT_A_SETTING"), "{e}");
    assert!(e.to_string().contains("MESH_NOT_A_SETTING"));
    let e = err(&[("MESH_SERVCE_NAME", "x")]);
    assert!(
        e.to_string().contains("did you mean MESH_SERVICE_NAME"),
        "{e}"
    );
    let e = err(&[("MESH_SERVICE_API_TIMEOUTS", "1s")]);
    assert!(e.names_variable("MESH_SERVICE_API_TIMEOUTS"), "{e}");
}

#[test]
fn bad_values_name_variable_value_and_expectation() {
    let e = err(&[
        ("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1"),
        ("MESH_SERVICE_API_TIMEOUT", "abc"),
    ]);
    let text = e.to_string();
    assert!(text.contains("MESH_SERVICE_API_TIMEOUT=\"abc\""), "{text}");
    assert!(text.contains("expected a duration"), "{text}");

    let e = err(&[
        ("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1"),
        ("MESH_SERVICE_API_BALANCER", "fastest"),
    ]);
    assert!(e.names_variable("MESH_SERVICE_API_BALANCER"));
    assert!(e.to_string().contains("p2c-ewma"), "{e}");

    for bad in ["127.0.0.1", "127.0.0.1:99999", "", ":80", "a:b"] {
        let e = err(&[("MESH_SERVICE_API_ENDPOINTS", bad)]);
        assert!(
            e.names_variable("MESH_SERVICE_API_ENDPOINTS"),
            "{bad:?}: {e}"
        );
        assert!(e.to_string().contains("host:port"), "{e}");
    }
    let e = err(&[("MESH_DEFAULT_PANIC_THRESHOLD", "150%")]);
    assert!(e.names_variable("MESH_DEFAULT_PANIC_THRESHOLD"));
    let e = err(&[("MESH_EGRESS", "maybe")]);
    assert!(e.names_variable("MESH_EGRESS"));
    let e = err(&[("MESH_DNS_MIN_TTL", "10m"), ("MESH_DNS_MAX_TTL", "1m")]);
    assert!(e.to_string().contains("MESH_DNS_MIN_TTL"), "{e}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = err(&[
        ("MESH_NOT_A_SETTING", "1"),
        ("MESH_EGRESS", "maybe"),
        ("MESH_DEFAULT_TIMEOUT", "soon"),
    ]);
    assert_eq!(e.problems().len(), 3, "{e}");
}

#[test]
fn kubernetes_variables_for_a_service_named_mesh_are_accepted() {
    let config = MeshConfig::from_source(&[
        ("MESH_SERVICE_HOST", "10.0.0.1"),
        ("MESH_SERVICE_PORT", "80"),
        ("MESH_SERVICE_PORT_HTTP", "80"),
        ("MESH_PORT", "tcp://10.0.0.1:80"),
        ("MESH_PORT_80_TCP", "tcp://10.0.0.1:80"),
        ("MESH_PORT_80_TCP_PROTO", "tcp"),
        ("MESH_PORT_80_TCP_PORT", "80"),
        ("MESH_PORT_80_TCP_ADDR", "10.0.0.1"),
        ("MESH_API_SERVICE_HOST", "10.0.0.2"),
    ])
    .unwrap();
    assert!(config.services().is_empty());
}

#[test]
fn grpc_service_config_maps_onto_routes_budget_and_balancer() {
    let doc = r#"{"methodConfig": [{"name": [{"service": "pkg.Greeter", "method": "Hello"}],
        "timeout": "0.5s",
        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["RESOURCE_EXHAUSTED"]}}],
        "retryThrottling": {"maxTokens": 20, "tokenRatio": 0.3},
        "loadBalancingConfig": [{"round_robin": {}}]}"#;
    let config = MeshConfig::from_source(&[
        ("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1"),
        ("MESH_SERVICE_API_GRPC_SERVICE_CONFIG", doc),
        ("MESH_SERVICE_API_RETRY_MIN_PER_SECOND", "3"),
    ])
    .unwrap();
    let svc = config.service_for_host("api").unwrap();
    assert_eq!(svc.routes.len(), 1);
    let route = &svc.routes[0];
    assert_eq!(
        route.matches.path,
        crate::route::PathMatch::Exact("/pkg.Greeter/Hello".into())
    );
    assert_eq!(route.overrides.max_attempts, Some(4));
    assert_eq!(
        route.overrides.timeout,
        Some(Some(Duration::from_millis(500)))
    );
    assert!((svc.retry_budget.ratio - 0.3).abs() < 1e-9);
    assert_eq!(
        svc.retry_budget.min_per_second, 3,
        "a variable beats retryThrottling"
    );
    assert_eq!(svc.balancer.kind, BalancerKind::RoundRobin);
}

#[test]
fn bad_grpc_service_configs_name_the_variable_and_the_field() {
    let policy = |fields: &str| {
        format!(
            r#"{{"methodConfig": [{{"name": [{{}}], "retryPolicy": {{"initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2, {fields}}}}}]}}"#
        )
    };
    let cases = [
        ("{\"methodConfig\": [", "`$`".to_string()),
        (
            &*policy(r#""maxAttempts": 1, "retryableStatusCodes": ["UNAVAILABLE"]"#),
            "`methodConfig[0].retryPolicy.maxAttempts`".to_string(),
        ),
        (
            &*policy(r#""maxAttempts": 3, "retryableStatusCodes": ["NOT_A_CODE"]"#),
            "`methodConfig[0].retryPolicy.retryableStatusCodes[0]`".to_string(),
        ),
    ];
    for (doc, field) in cases {
        let name = "MESH_SERVICE_API_GRPC_SERVICE_CONFIG";
        let e = err(&[("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1"), (name, doc)]);
        assert!(e.names_variable(name), "{doc}: {e}");
        assert!(e.to_string().contains(&field), "{doc}: {e}");
    }
}

#[test]
fn routes_come_from_the_config_file_in_order_with_their_overrides() {
    let path = temp_file(
        "routes.toml",
        r#"
[services.api]
endpoints = "127.0.0.1:1"
retry_backoff = "10ms..1s"

[[services.api.routes]]
name = "pay"
methods = ["POST"]
path = "/pay"
retry_max_attempts = 1

[[services.api.routes]]
path_prefix = "/items/"
timeout = "250ms"
retry_on = "503,resource-exhausted"
retry_backoff = "50ms..500ms,multiplier=3"
"#,
    );
    let config = MeshConfig::from_source(&[("MESH_CONFIG_FILE", path.to_str().unwrap())]).unwrap();
    let svc = config.service_for_host("api").unwrap();
    assert_eq!(svc.retry.backoff.base, Duration::from_millis(10));
    let [pay, items] = svc.routes.as_slice() else {
        panic!("two routes: {:?}", svc.routes)
    };
    assert_eq!(pay.name, "pay");
    assert_eq!(pay.matches.methods, Some(vec![http::Method::POST]));
    assert_eq!(pay.overrides.max_attempts, Some(1));
    assert_eq!(
        items.name, "/items/",
        "an unnamed route is named by its path"
    );
    assert_eq!(
        items.overrides.timeout,
        Some(Some(Duration::from_millis(250)))
    );
    assert_eq!(items.overrides.backoff.unwrap().multiplier, 3.0);
    assert!(items
        .overrides
        .retry_on
        .unwrap()
        .grpc_codes()
        .contains(crate::classify::GrpcCode::ResourceExhausted as u16));
}

#[test]
fn bad_routes_name_the_file_key_and_value() {
    let path = temp_file(
        "bad-routes.json",
        r#"{"services": {"api": {"endpoints": "127.0.0.1:1", "routes": [
            {"path": "pay", "retry_max_attempts": 9},
            {"methods": "GET,FETCH", "colour": "blue"},
            {"path": "/a", "path_prefix": "/b"},
            {"retry_backoff": "1s..10ms"}
        ]}}, "defaults": {"routes": []}}"#,
    );
    let e = err(&[("MESH_CONFIG_FILE", path.to_str().unwrap())]);
    let text = e.to_string();
    for needle in [
        "key `services.api.routes[0].path`=\"pay\"",
        "key `services.api.routes[0].retry_max_attempts`=\"9\"",
        "key `services.api.routes[1].methods`",
        "key `services.api.routes[1].colour`",
        "key `services.api.routes[2].path_prefix`",
        "key `services.api.routes[3].retry_backoff`=\"1s..10ms\"",
        "key `defaults.routes`",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
}

#[test]
fn a_service_needs_exactly_one_endpoint_source() {
    let e = err(&[("MESH_SERVICE_API_TIMEOUT", "1s")]);
    assert!(e.to_string().contains("no endpoints"), "{e}");
    let e = err(&[
        ("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1"),
        ("MESH_SERVICE_API_DNS", "api:80"),
    ]);
    assert!(
        e.to_string().contains("more than one endpoint source"),
        "{e}"
    );
    let e = err(&[("MESH_DEFAULT_ENDPOINTS", "127.0.0.1:1")]);
    assert!(e.names_variable("MESH_DEFAULT_ENDPOINTS"));
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-config-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn config_file_in_toml_is_read_and_variables_override_it() {
    let path = temp_file(
        "mesh.toml",
        r#"
service_name = "from-file"
egress = "allow"
[defaults]
timeout = "4s"
[services."my-api.prod"]
endpoints = ["127.0.0.1:1", "127.0.0.1:2"]
connect_timeout = "300ms"
max_pending = 10
"#,
    );
    let path_str = path.to_str().unwrap();
    let config = MeshConfig::from_source(&[
        ("MESH_CONFIG_FILE", path_str),
        ("MESH_SERVICE_NAME", "from-env"),
        ("MESH_SERVICE_MY_API_PROD_CONNECT_TIMEOUT", "2s"),
    ])
    .unwrap();
    assert_eq!(config.service_name(), "from-env");
    assert_eq!(config.egress(), Egress::Allow);
    let svc = config.service_for_host("my-api.prod").unwrap();
    assert_eq!(svc.name, "my-api.prod", "the file keeps the real name");
    assert_eq!(svc.connect_timeout, Duration::from_secs(2));
    assert_eq!(svc.timeout, Some(Duration::from_secs(4)));
    assert_eq!(svc.balancer.max_pending, 10);
}

#[test]
fn config_file_errors_name_the_file_and_key() {
    let path = temp_file(
        "bad.json",
        r#"{"services": {"api": {"endpoints": "127.0.0.1:1", "timeout": "abc", "colour": "blue"}}, "zone": "z"}"#,
    );
    let e = err(&[("MESH_CONFIG_FILE", path.to_str().unwrap())]);
    let text = e.to_string();
    assert!(
        text.contains("bad.json: key `services.api.timeout`=\"abc\""),
        "{text}"
    );
    assert!(text.contains("services.api.colour"), "{text}");

    let path = temp_file("twins.toml", "[services.a-b]\nendpoints = \"127.0.0.1:1\"\n[services.\"a.b\"]\nendpoints = \"127.0.0.1:2\"\n");
    let e = err(&[("MESH_CONFIG_FILE", path.to_str().unwrap())]);
    assert!(e.to_string().contains("both normalize to `A_B`"), "{e}");

    let e = err(&[("MESH_CONFIG_FILE", "/nonexistent/mesh.toml")]);
    assert!(e.names_variable("MESH_CONFIG_FILE"), "{e}");

    let path = temp_file("broken.toml", "service_name = \n");
    let e = err(&[("MESH_CONFIG_FILE", path.to_str().unwrap())]);
    assert!(e.to_string().contains("cannot parse"), "{e}");
}

#[test]
fn every_service_is_found_by_any_spelling_of_its_name_among_many() {
    let discovery = || DiscoverySource::Static(vec!["127.0.0.1:1".parse().unwrap()]);
    let names: Vec<String> = (0..40).rev().map(|i| format!("svc-{i}.ns")).collect();
    let config = names
        .iter()
        .fold(MeshConfig::builder("me"), |b, name| {
            b.service(ServiceConfig::new(name, discovery()))
        })
        .build()
        .unwrap();
    for (i, name) in names.iter().enumerate() {
        for spelling in [
            name.clone(),
            name.to_uppercase(),
            name.replace(['-', '.'], "_"),
        ] {
            assert_eq!(config.service_index(&spelling), Some(i), "{spelling}");
        }
    }
    for unknown in ["svc-40.ns", "svc-1", "svc-1.nsx", "", "SVC_1_N"] {
        assert_eq!(config.service_index(unknown), None, "{unknown}");
    }
}

#[test]
fn builder_rejects_services_that_normalize_alike() {
    let discovery = || DiscoverySource::Static(vec!["127.0.0.1:1".parse().unwrap()]);
    let e = MeshConfig::builder("me")
        .service(ServiceConfig::new("a-b", discovery()))
        .service(ServiceConfig::new("a.b", discovery()))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("both normalize"), "{e}");
    let mut svc = ServiceConfig::new("api", discovery());
    svc.timeout = Some(Duration::from_millis(100));
    let config = MeshConfig::builder("me").service(svc).build().unwrap();
    assert_eq!(
        config.service_for_host("api").unwrap().timeout,
        Some(Duration::from_millis(100))
    );
}

#[test]
fn tls_files_turn_on_mtls_together_or_not_at_all() {
    let config = MeshConfig::from_source(&[
        ("MESH_TLS_CERT", "/run/svid.pem"),
        ("MESH_TLS_KEY", "/run/svid.key"),
        ("MESH_TLS_BUNDLE", "/run/bundle.pem"),
        ("MESH_TLS_FEDERATED_BUNDLES", "partner.org=/run/partner.pem"),
        ("MESH_INBOUND_ADDR", "127.0.0.1:8443"),
        ("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1"),
        ("MESH_SERVICE_API_IDENTITY", "spiffe://example.org/api"),
        ("MESH_SERVICE_WEB_ENDPOINTS", "127.0.0.1:2"),
    ])
    .unwrap();
    let files = config.identity().expect("mTLS on");
    assert_eq!(files.cert, std::path::PathBuf::from("/run/svid.pem"));
    assert_eq!(files.federated.len(), 1);
    assert_eq!(
        config.inbound_addr(),
        Some("127.0.0.1:8443".parse().unwrap())
    );
    let api = config.service_for_host("api").unwrap();
    assert_eq!(
        api.identity,
        Some("spiffe://example.org/api".parse().unwrap())
    );
    assert_eq!(config.service_for_host("web").unwrap().identity, None);

    let e = err(&[
        ("MESH_TLS_CERT", "/run/svid.pem"),
        ("MESH_TLS_BUNDLE", "/b.pem"),
    ]);
    assert!(e.names_variable("MESH_TLS_CERT"), "{e}");
    assert!(e.to_string().contains("missing MESH_TLS_KEY"), "{e}");
}

#[test]
fn spiffe_endpoint_socket_alone_selects_the_workload_api_with_its_timeout() {
    let config = MeshConfig::from_source(&[
        ("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/agent.sock"),
        ("MESH_INBOUND_ADDR", "127.0.0.1:8443"),
        ("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1"),
        ("MESH_SERVICE_API_IDENTITY", "spiffe://example.org/api"),
    ])
    .expect("the Workload API is an identity for inbound and expectations");
    assert!(config.identity().is_none());
    assert!(config.has_identity());
    let api = config.workload_api().expect("Workload API selected");
    assert_eq!(api.socket, "unix:///run/spire/agent.sock");
    assert_eq!(
        api.startup_timeout,
        Duration::from_secs(30),
        "the documented default"
    );

    let config = MeshConfig::from_source(&[
        ("SPIFFE_ENDPOINT_SOCKET", "unix:/tmp/agent.sock"),
        ("MESH_WORKLOAD_API_TIMEOUT", "2s"),
    ])
    .unwrap();
    assert_eq!(
        config.workload_api().unwrap().startup_timeout,
        Duration::from_secs(2)
    );
    assert!(MeshConfig::from_source(&[("MESH_SERVICE_NAME", "x")])
        .unwrap()
        .workload_api()
        .is_none());
}

#[test]
fn spiffe_endpoint_socket_with_tls_files_is_an_error_saying_what_to_remove() {
    let e = err(&[
        ("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/agent.sock"),
        ("MESH_TLS_CERT", "/c"),
        ("MESH_TLS_KEY", "/k"),
        ("MESH_TLS_BUNDLE", "/b"),
    ]);
    assert!(e.names_variable("SPIFFE_ENDPOINT_SOCKET"), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("unset SPIFFE_ENDPOINT_SOCKET")
            && text.contains("remove MESH_TLS_CERT, MESH_TLS_KEY, MESH_TLS_BUNDLE"),
        "{text}"
    );

    let e = err(&[
        ("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/agent.sock"),
        ("MESH_TLS_FEDERATED_BUNDLES", "partner.org=/p.pem"),
    ]);
    assert!(e.names_variable("MESH_TLS_FEDERATED_BUNDLES"), "{e}");
    assert!(e.to_string().contains("delivers federated bundles"), "{e}");

    let e = MeshConfig::builder("x")
        .identity(crate::identity::IdentityFiles::new("/c", "/k", "/b"))
        .workload_api(WorkloadApiConfig::new("unix:/a.sock"))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("choose one"), "{e}");
}

#[test]
fn bad_workload_api_values_are_refused_naming_the_variable() {
    let e = err(&[("SPIFFE_ENDPOINT_SOCKET", "/run/spire/agent.sock")]);
    assert!(e.names_variable("SPIFFE_ENDPOINT_SOCKET"), "{e}");
    assert!(e.to_string().contains("unix:///path/to/agent.sock"), "{e}");

    let e = err(&[("MESH_WORKLOAD_API_TIMEOUT", "soon")]);
    assert!(e.names_variable("MESH_WORKLOAD_API_TIMEOUT"), "{e}");
}

#[test]
fn identity_settings_without_mtls_or_with_bad_values_are_refused() {
    let e = err(&[
        ("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1"),
        ("MESH_SERVICE_API_IDENTITY", "spiffe://example.org/api"),
    ]);
    assert!(e.names_variable("MESH_SERVICE_API_IDENTITY"), "{e}");
    assert!(e.to_string().contains("mTLS is off"), "{e}");

    let e = err(&[("MESH_INBOUND_ADDR", "127.0.0.1:8443")]);
    assert!(e.names_variable("MESH_INBOUND_ADDR"), "{e}");
    assert!(e.to_string().contains("needs an identity"), "{e}");

    let tls = [
        ("MESH_TLS_CERT", "/c"),
        ("MESH_TLS_KEY", "/k"),
        ("MESH_TLS_BUNDLE", "/b"),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut env = tls.to_vec();
        env.push(("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1"));
        env.push(extra);
        MeshConfig::from_source(env.as_slice()).unwrap_err()
    };
    for bad in [
        ("MESH_SERVICE_API_IDENTITY", "spiffe://Example.org/api"),
        ("MESH_SERVICE_API_IDENTITY", "spiffe://example.org/../api"),
        ("MESH_TLS_FEDERATED_BUNDLES", "partner.org"),
        ("MESH_INBOUND_ADDR", "everywhere"),
        ("MESH_INBOUND_MODE", "permissive"),
    ] {
        let e = with(bad);
        assert!(e.names_variable(bad.0), "{bad:?}: {e}");
    }
}

#[test]
fn retry_settings_have_documented_defaults_and_can_be_set() {
    let config = MeshConfig::from_source(&[
        ("MESH_SERVICE_A_ENDPOINTS", "127.0.0.1:1"),
        ("MESH_SERVICE_B_ENDPOINTS", "127.0.0.1:2"),
        ("MESH_SERVICE_B_RETRY_BUDGET", "50%"),
        ("MESH_SERVICE_B_RETRY_MIN_PER_SECOND", "0"),
        ("MESH_SERVICE_B_RETRY_WINDOW", "30s"),
        ("MESH_SERVICE_B_RETRY_MAX_ATTEMPTS", "5"),
        ("MESH_SERVICE_B_RETRY_ON", "5xx,reset"),
        ("MESH_SERVICE_B_RETRY_METHODS", "GET,POST"),
        ("MESH_SERVICE_B_REPLAY_BUFFER", "1MiB"),
        ("MESH_SERVICE_B_PER_TRY_TIMEOUT", "300ms"),
        ("MESH_SERVICE_B_HEDGE_DELAY", "50ms"),
    ])
    .unwrap();
    let a = config.service_for_host("a").unwrap();
    assert_eq!(a.retry, crate::retry::RetryPolicy::default());
    assert_eq!(a.retry_budget, crate::retry::RetryBudgetSettings::default());
    let b = config.service_for_host("b").unwrap();
    assert_eq!(b.retry_budget.ratio, 0.5);
    assert_eq!(b.retry_budget.min_per_second, 0);
    assert_eq!(b.retry_budget.window, Duration::from_secs(30));
    assert_eq!(b.retry.max_attempts, 5);
    assert!(b.retry.methods.contains(&http::Method::POST));
    assert!(b
        .retry
        .retry_on
        .contains(crate::retry::RetryOn::SERVER_ERROR));
    assert_eq!(b.retry.replay_buffer, 1 << 20);
    assert_eq!(b.retry.per_try_timeout, Some(Duration::from_millis(300)));
    assert_eq!(
        b.retry.hedge_delay,
        Some(crate::retry::HedgeDelay::Fixed(Duration::from_millis(50)))
    );
    let c = MeshConfig::from_source(&[
        ("MESH_SERVICE_C_ENDPOINTS", "127.0.0.1:1"),
        ("MESH_SERVICE_C_HEDGE_DELAY", "p95"),
    ])
    .unwrap();
    assert_eq!(
        c.services()[0].retry.hedge_delay,
        Some(crate::retry::HedgeDelay::Percentile(0.95))
    );
}

#[test]
fn bad_retry_settings_are_start_up_errors_naming_the_variable() {
    let cases = [
        ("MESH_SERVICE_API_RETRY_BUDGET", "150%", "percentage"),
        ("MESH_SERVICE_API_RETRY_BUDGET", "20", "percentage"),
        ("MESH_SERVICE_API_PER_TRY_TIMEOUT", "-1s", "duration"),
        ("MESH_SERVICE_API_HEDGE_DELAY", "soon", "duration"),
        ("MESH_SERVICE_API_HEDGE_DELAY", "p100", "percentile"),
        ("MESH_SERVICE_API_RETRY_WINDOW", "ten", "duration"),
        (
            "MESH_SERVICE_API_RETRY_MAX_ATTEMPTS",
            "0",
            "1 (no retries) to 5",
        ),
        (
            "MESH_SERVICE_API_RETRY_MAX_ATTEMPTS",
            "6",
            "1 (no retries) to 5",
        ),
        (
            "MESH_SERVICE_API_RETRY_METHODS",
            "GET,FETCH",
            "HTTP methods",
        ),
        ("MESH_SERVICE_API_RETRY_ON", "503,teapot", "5xx"),
        (
            "MESH_SERVICE_API_RETRY_MIN_PER_SECOND",
            "-3",
            "whole number",
        ),
        ("MESH_SERVICE_API_REPLAY_BUFFER", "64kb", "64KiB"),
        (
            "MESH_SERVICE_API_RETRY_BACKOFF",
            "250ms..25ms",
            "<base>..<max>",
        ),
        (
            "MESH_SERVICE_API_RETRY_BACKOFF",
            "0ms..1s",
            "base above zero",
        ),
        (
            "MESH_SERVICE_API_RETRY_BACKOFF",
            "25ms..1s,multiplier=0",
            "multiplier",
        ),
        ("MESH_SERVICE_API_RETRY_ON", "ok", "gRPC status names"),
        (
            "MESH_DEFAULT_RETRY_MAX_ATTEMPTS",
            "9",
            "1 (no retries) to 5",
        ),
    ];
    for (name, value, expected) in cases {
        let e = err(&[("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1"), (name, value)]);
        assert!(e.names_variable(name), "{name}={value}: {e}");
        let text = e.to_string();
        assert!(text.contains(value), "{name}={value}: {text}");
        assert!(text.contains(expected), "{name}={value}: {text}");
    }
}

#[test]
fn metrics_addr_and_access_log_default_off_and_parse() {
    let config = MeshConfig::from_source(&[] as &[(&str, &str)]).unwrap();
    assert_eq!(config.metrics_addr(), None);
    assert_eq!(config.access_log(), crate::config::AccessLog::Off);
    let config = MeshConfig::from_source(&[
        ("MESH_METRICS_ADDR", "127.0.0.1:9464"),
        ("MESH_ACCESS_LOG", "json"),
    ])
    .unwrap();
    assert_eq!(
        config.metrics_addr(),
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(config.access_log(), crate::config::AccessLog::Json);
}

#[test]
fn bad_metrics_addr_and_access_log_are_named() {
    let e = err(&[("MESH_METRICS_ADDR", "9464"), ("MESH_ACCESS_LOG", "yes")]);
    let text = e.to_string();
    assert!(text.contains("MESH_METRICS_ADDR=\"9464\""), "{text}");
    assert!(text.contains("ip:port"), "{text}");
    assert!(text.contains("MESH_ACCESS_LOG=\"yes\""), "{text}");
    assert!(text.contains("`off` or `json`"), "{text}");
}

#[test]
fn outlier_and_breaker_settings_have_documented_defaults_and_can_be_set() {
    let config = MeshConfig::from_source(&[("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1")]).unwrap();
    let svc = config.service_for_host("api").unwrap();
    let outlier = svc
        .outlier
        .as_ref()
        .expect("outlier detection is on by default");
    assert_eq!(outlier.consecutive_failures, Some(5));
    assert_eq!(outlier.interval, Duration::from_secs(10));
    assert_eq!(outlier.base_ejection, Duration::from_secs(30));
    assert_eq!(outlier.max_ejection, Duration::from_secs(300));
    assert_eq!(outlier.max_ejected, 0.1);
    assert!(svc.breaker.is_none(), "the breaker is off by default");

    let config = MeshConfig::from_source(&[
        ("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1"),
        ("MESH_SERVICE_API_OUTLIER_CONSECUTIVE_FAILURES", "off"),
        ("MESH_SERVICE_API_OUTLIER_MAX_EJECTED", "50%"),
        ("MESH_SERVICE_API_BREAKER", "on"),
        ("MESH_SERVICE_API_BREAKER_WINDOW", "20"),
        ("MESH_SERVICE_API_BREAKER_OPEN_TIME", "5s"),
        ("MESH_SERVICE_API_BREAKER_SLOW_CALL", "off"),
        ("MESH_SERVICE_OTHER_ENDPOINTS", "127.0.0.1:2"),
        ("MESH_SERVICE_OTHER_OUTLIER_DETECTION", "off"),
    ])
    .unwrap();
    let svc = config.service_for_host("api").unwrap();
    let outlier = svc.outlier.as_ref().unwrap();
    assert_eq!(outlier.consecutive_failures, None);
    assert_eq!(outlier.max_ejected, 0.5);
    let breaker = svc.breaker.as_ref().unwrap();
    assert_eq!(breaker.failure_rate, 0.5);
    assert_eq!((breaker.window, breaker.min_calls), (20, 20));
    assert_eq!(breaker.open_time, Duration::from_secs(5));
    assert_eq!(breaker.slow_call, None);
    assert_eq!(breaker.probes, 10);
    assert!(config.service_for_host("other").unwrap().outlier.is_none());
}

#[test]
fn bad_outlier_and_breaker_settings_are_start_up_errors_naming_the_variable() {
    /// Variables, the one named in the error, the value, what was expected.
    type Case = (
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
        &'static str,
    );
    let cases: &[Case] = &[
        (
            &[("MESH_SERVICE_API_OUTLIER_MAX_EJECTED", "150%")],
            "MESH_SERVICE_API_OUTLIER_MAX_EJECTED",
            "150%",
            "percentage",
        ),
        (
            &[("MESH_SERVICE_API_BREAKER_FAILURE_RATE", "101%")],
            "MESH_SERVICE_API_BREAKER_FAILURE_RATE",
            "101%",
            "percentage",
        ),
        (
            &[("MESH_SERVICE_API_OUTLIER_INTERVAL", "-10s")],
            "MESH_SERVICE_API_OUTLIER_INTERVAL",
            "-10s",
            "duration",
        ),
        (
            &[("MESH_SERVICE_API_OUTLIER_INTERVAL", "0")],
            "MESH_SERVICE_API_OUTLIER_INTERVAL",
            "0",
            "longer than zero",
        ),
        (
            &[("MESH_SERVICE_API_BREAKER_OPEN_TIME", "-1m")],
            "MESH_SERVICE_API_BREAKER_OPEN_TIME",
            "-1m",
            "duration",
        ),
        (
            &[("MESH_SERVICE_API_OUTLIER_CONSECUTIVE_FAILURES", "0")],
            "MESH_SERVICE_API_OUTLIER_CONSECUTIVE_FAILURES",
            "0",
            "at least 1",
        ),
        (
            &[("MESH_SERVICE_API_BREAKER_WINDOW", "0")],
            "MESH_SERVICE_API_BREAKER_WINDOW",
            "0",
            "at least 1",
        ),
        (
            &[("MESH_SERVICE_API_BREAKER", "maybe")],
            "MESH_SERVICE_API_BREAKER",
            "maybe",
            "true or false",
        ),
        (
            &[("MESH_SERVICE_API_RATE_LIMIT", "100")],
            "MESH_SERVICE_API_RATE_LIMIT",
            "100",
            "100/s",
        ),
        (
            &[("MESH_SERVICE_API_RATE_LIMIT", "-5/s")],
            "MESH_SERVICE_API_RATE_LIMIT",
            "-5/s",
            "100/s",
        ),
        (
            &[("MESH_SERVICE_API_CONCURRENCY", "0")],
            "MESH_SERVICE_API_CONCURRENCY",
            "0",
            "adaptive",
        ),
        (
            &[("MESH_SERVICE_API_FAULT_DELAY", "50ms@120%")],
            "MESH_SERVICE_API_FAULT_DELAY",
            "50ms@120%",
            "share from 0% to 100%",
        ),
        (
            &[("MESH_SERVICE_API_FAULT_DELAY", "-50ms@10%")],
            "MESH_SERVICE_API_FAULT_DELAY",
            "-50ms@10%",
            "50ms@10%",
        ),
        (
            &[("MESH_SERVICE_API_FAULT_ABORT", "503@101%")],
            "MESH_SERVICE_API_FAULT_ABORT",
            "503@101%",
            "503@5%",
        ),
        (
            &[
                ("MESH_SERVICE_API_OUTLIER_BASE_EJECTION", "10m"),
                ("MESH_SERVICE_API_OUTLIER_MAX_EJECTION", "1m"),
            ],
            "MESH_SERVICE_API_OUTLIER_BASE_EJECTION",
            "10m",
            "no longer than OUTLIER_MAX_EJECTION",
        ),
        (
            &[("MESH_SERVICE_API_OUTLIER_MAX_EJECTION", "10s")],
            "MESH_SERVICE_API_OUTLIER_MAX_EJECTION",
            "10s",
            "no shorter than OUTLIER_BASE_EJECTION",
        ),
    ];
    for (env, name, value, expected) in cases {
        let mut vars = vec![("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1")];
        vars.extend_from_slice(env);
        let e = err(&vars);
        assert!(e.names_variable(name), "{name}={value}: {e}");
        let text = e.to_string();
        assert!(text.contains(value), "{name}={value}: {text}");
        assert!(text.contains(expected), "{name}={value}: {text}");
    }
}

#[test]
fn authz_is_off_without_rules_or_default_and_deny_by_default_with_rules() {
    let config = MeshConfig::from_source(&[("MESH_SERVICE_NAME", "api")]).unwrap();
    assert_eq!(config.authz(), None);
    let config = MeshConfig::from_source(&[(
        "MESH_AUTHZ_RULES",
        "allow spiffe://example.org/ns/prod/* GET,HEAD /api/*; deny * * /admin/*",
    )])
    .unwrap();
    let authz = config.authz().unwrap();
    assert_eq!(authz.mode, crate::authz::Mode::Deny);
    assert_eq!(authz.rules.len(), 2);
    let config = MeshConfig::from_source(&[("MESH_AUTHZ_DEFAULT", "audit")]).unwrap();
    assert_eq!(config.authz().unwrap().mode, crate::authz::Mode::Audit);
    assert!(config.authz().unwrap().rules.is_empty());
}

#[test]
fn bad_authz_settings_name_the_variable_and_the_offending_part() {
    let e = err(&[("MESH_AUTHZ_DEFAULT", "block")]);
    assert!(e.names_variable("MESH_AUTHZ_DEFAULT"), "{e}");
    assert!(e.to_string().contains("`deny`, `allow` or `audit`"), "{e}");
    let e = err(&[(
        "MESH_AUTHZ_RULES",
        "allow * GET /api/*; allow spiffe://example.org/web get /x",
    )]);
    assert!(e.names_variable("MESH_AUTHZ_RULES"), "{e}");
    assert!(e.to_string().contains("`get`"), "{e}");
    let e = err(&[("MESH_AUTHZ_RULES", "deny * * /api/../admin")]);
    assert!(e.to_string().contains("`/admin`"), "{e}");
}

#[test]
fn authz_rules_come_from_the_file_and_the_variable_replaces_them() {
    let path = temp_file(
        "authz.toml",
        r#"
[authz]
default = "audit"

[[authz.rules]]
action = "deny"
path = "/admin/*"

[[authz.rules]]
action = "allow"
peer = "spiffe://example.org/ns/prod/*"
methods = ["GET", "HEAD"]
path = "/api/*"
"#,
    );
    let file = path.to_str().unwrap();
    let config = MeshConfig::from_source(&[("MESH_CONFIG_FILE", file)]).unwrap();
    let authz = config.authz().unwrap();
    assert_eq!(authz.mode, crate::authz::Mode::Audit);
    let texts: Vec<String> = authz.rules.iter().map(ToString::to_string).collect();
    assert_eq!(
        texts,
        [
            "deny * * /admin/*",
            "allow spiffe://example.org/ns/prod/* GET,HEAD /api/*"
        ]
    );
    let config = MeshConfig::from_source(&[
        ("MESH_CONFIG_FILE", file),
        ("MESH_AUTHZ_RULES", "allow * * *"),
        ("MESH_AUTHZ_DEFAULT", "deny"),
    ])
    .unwrap();
    let authz = config.authz().unwrap();
    assert_eq!(authz.mode, crate::authz::Mode::Deny);
    assert_eq!(authz.rules.len(), 1);
}

#[test]
fn bad_authz_file_rules_name_the_file_key_and_part() {
    let path = temp_file(
        "bad-authz.toml",
        r#"
[[authz.rules]]
action = "allow"
peer = "web"

[[authz.rules]]
action = "deny"
methods = ["GET", 3]

[[authz.rules]]
path = "/x"

[[authz.rules]]
action = "allow"
colour = "blue"
"#,
    );
    let e = err(&[("MESH_CONFIG_FILE", path.to_str().unwrap())]);
    let text = e.to_string();
    assert!(
        text.contains("key `authz.rules[0].peer`: bad authorization rule: `web`"),
        "{text}"
    );
    assert!(text.contains("key `authz.rules[1].methods`"), "{text}");
    assert!(text.contains("key `authz.rules[2].action`"), "{text}");
    assert!(text.contains("key `authz.rules[3].colour`"), "{text}");
}

#[test]
fn health_checks_are_off_by_default_and_take_documented_defaults() {
    let config = MeshConfig::from_source(&[("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1")]).unwrap();
    assert_eq!(config.services()[0].health_check, None);

    let config = MeshConfig::from_source(&[
        ("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1"),
        ("MESH_SERVICE_API_HEALTH_CHECK_PATH", "/healthz?full=1"),
    ])
    .unwrap();
    let check = config.services()[0].health_check.clone().unwrap();
    assert_eq!(
        check.kind,
        crate::health::HealthCheckKind::Http {
            path: "/healthz?full=1".into()
        }
    );
    assert_eq!(
        check.settings,
        crate::health::HealthCheckSettings::default()
    );
    assert_eq!(check.settings.interval, Duration::from_secs(10));
    assert_eq!(check.settings.timeout, Duration::from_secs(1));
    assert_eq!(check.settings.healthy_threshold, 2);
    assert_eq!(check.settings.unhealthy_threshold, 3);
}

#[test]
fn grpc_health_check_keeps_an_empty_service_name_for_the_whole_server() {
    let config = MeshConfig::from_source(&[
        ("MESH_SERVICE_GREETER_ENDPOINTS", "127.0.0.1:1"),
        ("MESH_SERVICE_GREETER_PROTOCOL", "grpc"),
        ("MESH_SERVICE_GREETER_HEALTH_CHECK_GRPC_SERVICE", ""),
        ("MESH_SERVICE_GREETER_HEALTH_CHECK_INTERVAL", "2s"),
        ("MESH_SERVICE_GREETER_HEALTH_CHECK_UNHEALTHY_THRESHOLD", "1"),
    ])
    .unwrap();
    let check = config.services()[0].health_check.clone().unwrap();
    assert_eq!(
        check.kind,
        crate::health::HealthCheckKind::Grpc {
            service: String::new()
        }
    );
    assert_eq!(check.settings.interval, Duration::from_secs(2));
    assert_eq!(check.settings.unhealthy_threshold, 1);
}

#[test]
fn bad_health_check_settings_name_the_variable() {
    let base = ("MESH_SERVICE_API_ENDPOINTS", "127.0.0.1:1");
    let path = ("MESH_SERVICE_API_HEALTH_CHECK_PATH", "/healthz");
    for (variable, bad) in [
        ("MESH_SERVICE_API_HEALTH_CHECK_PATH", "healthz"),
        ("MESH_SERVICE_API_HEALTH_CHECK_INTERVAL", "0s"),
        ("MESH_SERVICE_API_HEALTH_CHECK_INTERVAL", "-1s"),
        ("MESH_SERVICE_API_HEALTH_CHECK_TIMEOUT", "soon"),
        ("MESH_SERVICE_API_HEALTH_CHECK_HEALTHY_THRESHOLD", "0"),
        ("MESH_SERVICE_API_HEALTH_CHECK_UNHEALTHY_THRESHOLD", "-3"),
    ] {
        let e = err(&[base, path, (variable, bad)]);
        assert!(e.names_variable(variable), "{variable}={bad:?}: {e}");
    }

    // The timeout may not exceed the interval.
    let e = err(&[
        base,
        path,
        ("MESH_SERVICE_API_HEALTH_CHECK_INTERVAL", "1s"),
        ("MESH_SERVICE_API_HEALTH_CHECK_TIMEOUT", "2s"),
    ]);
    assert!(
        e.names_variable("MESH_SERVICE_API_HEALTH_CHECK_TIMEOUT"),
        "{e}"
    );
    assert!(e.to_string().contains("HEALTH_CHECK_INTERVAL"), "{e}");

    // One kind of check per service, and gRPC checks only for gRPC services.
    let grpc = ("MESH_SERVICE_API_HEALTH_CHECK_GRPC_SERVICE", "api");
    let e = err(&[base, path, grpc, ("MESH_SERVICE_API_PROTOCOL", "grpc")]);
    assert!(
        e.names_variable("MESH_SERVICE_API_HEALTH_CHECK_GRPC_SERVICE"),
        "{e}"
    );
    let e = err(&[base, grpc]);
    assert!(
        e.names_variable("MESH_SERVICE_API_HEALTH_CHECK_GRPC_SERVICE"),
        "{e}"
    );
    assert!(e.to_string().contains("PROTOCOL"), "{e}");
}

/// Delegates `get` and `names` to the environment but keeps the trait's own
/// `vars_with_prefix`, to compare `Env`'s one-pass version against.
struct EnvByName;

impl Source for EnvByName {
    fn get(&self, name: &str) -> Option<String> {
        Env.get(name)
    }

    fn names(&self) -> Vec<String> {
        Env.names()
    }
}

#[test]
fn env_reads_in_one_pass_what_names_and_get_would_read() {
    // No variable is set here (tests do not mutate the environment): every
    // prefix of what the test process has is compared, the empty one included.
    for prefix in ["", "P", "PATH", "CARGO_", "MESH_", "NO_SUCH_PREFIX_"] {
        assert_eq!(
            Env.vars_with_prefix(prefix),
            EnvByName.vars_with_prefix(prefix),
            "prefix {prefix:?}"
        );
    }
    assert!(Env.vars_with_prefix("").windows(2).all(|w| w[0].0 < w[1].0));
}

#[test]
fn vars_with_prefix_keeps_matching_names_sorted_with_their_values() {
    let env = [
        ("MESH_B", "2"),
        ("OTHER", "x"),
        ("MESH_A", "1"),
        ("MESH_B", "3"),
    ];
    assert_eq!(
        env.vars_with_prefix("MESH_"),
        [
            ("MESH_A".to_string(), "1".to_string()),
            ("MESH_B".to_string(), "3".to_string())
        ]
    );
}
