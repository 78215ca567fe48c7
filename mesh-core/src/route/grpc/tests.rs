use super::*;
use crate::route::PathMatch;

const GOOD: &str = r#"{
  "methodConfig": [
    {"name": [{}], "timeout": "10s"},
    {"name": [{"service": "mesh.test.greeter.Greeter"}], "timeout": "1.5s",
     "retryPolicy": {"maxAttempts": 9, "initialBackoff": "0.1s", "maxBackoff": "1s",
                     "backoffMultiplier": 1.5, "retryableStatusCodes": ["UNAVAILABLE", 8]}},
    {"name": [{"service": "mesh.test.greeter.Greeter", "method": "SayHelloStream"}],
     "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.05s",
                       "nonFatalStatusCodes": ["RESOURCE_EXHAUSTED"]}}
  ],
  "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
  "loadBalancingConfig": [{"pick_first": {}}, {"round_robin": {}}]
}"#;

#[test]
fn a_service_config_parses_timeouts_retry_and_hedging_policies() {
    let config = GrpcServiceConfig::from_json(GOOD).unwrap();
    let greeter = config
        .for_method("mesh.test.greeter.Greeter", "SayHello")
        .unwrap();
    assert_eq!(greeter.timeout, Some(Duration::from_millis(1500)));
    let retry = greeter.retry.as_ref().unwrap();
    assert_eq!(retry.max_attempts, 5, "clamped to gRPC's cap");
    assert!(retry.retryable_codes.contains(14) && retry.retryable_codes.contains(8));
    assert_eq!(retry.backoff.base, Duration::from_millis(100));
    assert_eq!(retry.backoff.multiplier, 1.5);
    let other = config.for_method("other.Service", "Call").unwrap();
    assert_eq!(other.timeout, Some(Duration::from_secs(10)));
    assert_eq!(config.retry_throttling.unwrap().max_tokens, 10);
    assert_eq!(config.balancer, Some(BalancerKind::RoundRobin));
    assert!(
        config.ignored.iter().any(|w| w.contains("pick_first")),
        "{:?}",
        config.ignored
    );
}

#[test]
fn routes_follow_grpc_precedence_whatever_the_document_order() {
    let config = GrpcServiceConfig::from_json(GOOD).unwrap();
    let routes = config.routes(RetryOn::default());
    let paths: Vec<&PathMatch> = routes.iter().map(|r| &r.matches.path).collect();
    assert_eq!(
        paths,
        [
            &PathMatch::Exact("/mesh.test.greeter.Greeter/SayHelloStream".into()),
            &PathMatch::Prefix("/mesh.test.greeter.Greeter/".into()),
            &PathMatch::Any,
        ]
    );
    let hedged = &routes[0].overrides;
    assert_eq!(hedged.max_attempts, Some(3));
    assert_eq!(
        hedged.hedge_delay,
        Some(Some(HedgeDelay::Fixed(Duration::from_millis(50))))
    );
    let retry_on = hedged.retry_on.unwrap();
    assert!(retry_on.grpc_codes().contains(8) && !retry_on.grpc_codes().contains(14));
    // The service's HTTP conditions stay.
    assert!(retry_on.contains(RetryOn::UNAVAILABLE_503));
    let service = &routes[1].overrides;
    assert_eq!(service.max_attempts, Some(5));
    assert_eq!(service.timeout, Some(Some(Duration::from_millis(1500))));
    let default = &routes[2].overrides;
    assert_eq!(
        default.max_attempts, None,
        "no retryPolicy keeps the service's"
    );
}

fn error(doc: &str) -> ServiceConfigError {
    GrpcServiceConfig::from_json(doc).unwrap_err()
}

fn policy(fields: &str) -> String {
    format!(r#"{{"methodConfig": [{{"name": [{{}}], "retryPolicy": {{{fields}}}}}]}}"#)
}

#[test]
fn max_attempts_below_two_is_an_error_pointing_at_the_field() {
    let e = error(&policy(
        r#""maxAttempts": 1, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]"#,
    ));
    assert_eq!(e.path(), "methodConfig[0].retryPolicy.maxAttempts");
    assert!(e.to_string().contains("below 2"), "{e}");
    let e = error(r#"{"methodConfig": [{"name": [{}], "hedgingPolicy": {"maxAttempts": 1}}]}"#);
    assert_eq!(e.path(), "methodConfig[0].hedgingPolicy.maxAttempts");
}

#[test]
fn unknown_status_codes_are_errors_naming_the_code() {
    let e = error(&policy(
        r#""maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABEL"]"#,
    ));
    assert_eq!(
        e.path(),
        "methodConfig[0].retryPolicy.retryableStatusCodes[0]"
    );
    assert!(e.to_string().contains("\"UNAVAILABEL\" is not"), "{e}");
}

#[test]
fn malformed_documents_and_fields_are_errors() {
    assert_eq!(error("{").path(), "$");
    assert_eq!(error("[]").path(), "$");
    assert_eq!(
        error(r#"{"methodConfig": [{"name": [{}], "timeout": "soon"}]}"#).path(),
        "methodConfig[0].timeout"
    );
    assert_eq!(
        error(r#"{"methodConfig": [{"timeout": "1s"}]}"#).path(),
        "methodConfig[0].name"
    );
    assert_eq!(
        error(&policy(r#""maxAttempts": 3"#)).path(),
        "methodConfig[0].retryPolicy.initialBackoff"
    );
    assert_eq!(
        error(r#"{"retryThrottling": {"maxTokens": 0, "tokenRatio": 1}}"#).path(),
        "retryThrottling.maxTokens"
    );
    assert_eq!(
        error(r#"{"methodConfig": [{"name": [{"service": "a"}]}, {"name": [{"service": "a"}]}]}"#)
            .path(),
        "methodConfig[1].name[0]"
    );
    let both = r#"{"methodConfig": [{"name": [{}],
        "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0.1s", "maxBackoff": "1s",
                        "backoffMultiplier": 2, "retryableStatusCodes": [14]},
        "hedgingPolicy": {"maxAttempts": 2}}]}"#;
    assert_eq!(error(both).path(), "methodConfig[0].hedgingPolicy");
    assert_eq!(
        error(r#"{"loadBalancingConfig": [{"round_robin": {}, "pick_first": {}}]}"#).path(),
        "loadBalancingConfig[0]"
    );
}
