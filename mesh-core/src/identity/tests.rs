use std::path::Path;
use std::time::Duration;

use super::dev::{DevCa, SvidOptions};
use super::*;

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

fn files_in(dir: &Path, ca: &DevCa, sid: &str) -> IdentityFiles {
    ca.write_identity(dir, "svid", &id(sid)).unwrap()
}

#[test]
fn good_files_load_into_identity_with_id_serial_and_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("example.org").unwrap();
    let other = DevCa::new("other.org").unwrap();
    let files = files_in(dir.path(), &ca, "spiffe://example.org/web");
    let svid = ca.issue(&id("spiffe://example.org/web")).unwrap();
    svid.write(&files.cert, &files.key).unwrap();
    other.write_bundle(&dir.path().join("other.pem")).unwrap();
    let files = files.with_federated(
        TrustDomain::new("other.org").unwrap(),
        dir.path().join("other.pem"),
    );

    let identity = files.load().unwrap();
    assert_eq!(identity.spiffe_id().as_str(), "spiffe://example.org/web");
    assert_eq!(identity.serial(), svid.serial);
    let mut domains: Vec<_> = identity.trust_domains().map(|t| t.to_string()).collect();
    domains.sort();
    assert_eq!(domains, ["example.org", "other.org"]);
    assert!(identity.not_after() > std::time::SystemTime::now());
}

#[test]
fn malformed_pem_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("example.org").unwrap();
    let files = files_in(dir.path(), &ca, "spiffe://example.org/web");
    // A write cut off half-way: BEGIN without END.
    let pem = std::fs::read_to_string(&files.cert).unwrap();
    std::fs::write(&files.cert, &pem[..pem.len() / 2]).unwrap();
    let err = files.load().unwrap_err();
    assert!(matches!(err, IdentityError::MalformedPem { .. }), "{err:?}");
    assert_eq!(err.path(), Some(files.cert.as_path()));
    assert!(err.to_string().contains(&files.cert.display().to_string()));
}

#[test]
fn a_key_of_another_certificate_is_a_mismatch_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("example.org").unwrap();
    let files = files_in(dir.path(), &ca, "spiffe://example.org/web");
    let stranger = ca.issue(&id("spiffe://example.org/web")).unwrap();
    std::fs::write(&files.key, stranger.key_pem).unwrap();
    let err = files.load().unwrap_err();
    assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&files.key.display().to_string()), "{msg}");
    assert!(msg.contains(&files.cert.display().to_string()), "{msg}");
}

#[test]
fn an_empty_bundle_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("example.org").unwrap();
    let files = files_in(dir.path(), &ca, "spiffe://example.org/web");
    std::fs::write(&files.bundle, "").unwrap();
    let err = files.load().unwrap_err();
    assert!(matches!(err, IdentityError::EmptyBundle { .. }), "{err:?}");
    assert_eq!(err.path(), Some(files.bundle.as_path()));
}

#[test]
fn missing_key_and_missing_certificate_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("example.org").unwrap();
    let files = files_in(dir.path(), &ca, "spiffe://example.org/web");
    std::fs::write(&files.key, "").unwrap();
    assert!(matches!(
        files.load().unwrap_err(),
        IdentityError::NoPrivateKey { .. }
    ));
    std::fs::write(&files.cert, "").unwrap();
    assert!(matches!(
        files.load().unwrap_err(),
        IdentityError::NoCertificate { .. }
    ));
    let gone = IdentityFiles::new(dir.path().join("nope.pem"), &files.key, &files.bundle);
    let err = gone.load().unwrap_err();
    assert!(matches!(err, IdentityError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.pem"));
}

#[test]
fn a_certificate_without_a_valid_spiffe_id_is_not_an_svid() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("example.org").unwrap();
    let files = files_in(dir.path(), &ca, "spiffe://example.org/web");
    type IsExpected = fn(&SvidError) -> bool;
    let cases: [(Vec<&str>, IsExpected); 3] = [
        (vec![], |e| matches!(e, SvidError::NoSpiffeId)),
        (vec!["spiffe://example.org/a/../b"], |e| {
            matches!(e, SvidError::InvalidId(_))
        }),
        (
            vec!["spiffe://example.org/a", "spiffe://example.org/b"],
            |e| matches!(e, SvidError::MultipleUris(2)),
        ),
    ];
    for (uris, expected) in cases {
        let mut options = SvidOptions::new("unused").dns_name("web.example.org");
        options.uris = uris.iter().map(|u| u.to_string()).collect();
        ca.issue_with(options)
            .unwrap()
            .write(&files.cert, &files.key)
            .unwrap();
        match files.load() {
            Err(IdentityError::NotAnSvid { path, source }) => {
                assert_eq!(path, files.cert);
                assert!(expected(&source), "{uris:?}: {source:?}");
            }
            other => panic!("{uris:?}: {other:?}"),
        }
    }
}

#[test]
fn an_svid_not_issued_by_our_bundle_or_expired_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("example.org").unwrap();
    let files = files_in(dir.path(), &ca, "spiffe://example.org/web");

    let impostor = DevCa::new("example.org").unwrap();
    impostor
        .issue(&id("spiffe://example.org/web"))
        .unwrap()
        .write(&files.cert, &files.key)
        .unwrap();
    let err = files.load().unwrap_err();
    assert!(matches!(err, IdentityError::Untrusted { .. }), "{err:?}");
    assert!(err.to_string().contains("not issued by a CA"), "{err}");

    ca.issue_with(SvidOptions::new("spiffe://example.org/web").expired())
        .unwrap()
        .write(&files.cert, &files.key)
        .unwrap();
    let err = files.load().unwrap_err();
    assert!(matches!(err, IdentityError::Untrusted { .. }), "{err:?}");
    assert!(err.to_string().contains("it expired"), "{err}");
}

#[test]
fn a_trust_domain_with_two_bundles_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("example.org").unwrap();
    let files = files_in(dir.path(), &ca, "spiffe://example.org/web");
    let dup = files.bundle.clone();
    let files = files.with_federated(TrustDomain::new("example.org").unwrap(), dup);
    assert!(matches!(
        files.load().unwrap_err(),
        IdentityError::DuplicateTrustDomain { .. }
    ));
}

#[test]
fn reload_keeps_the_last_good_identity_when_the_new_files_are_bad() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("example.org").unwrap();
    let files = files_in(dir.path(), &ca, "spiffe://example.org/web");
    let source = IdentitySource::from_files(files.clone()).unwrap();
    let first = source.current().serial().to_owned();
    assert_eq!(source.reload().unwrap(), Reload::Unchanged);

    // Half a rotation: the new certificate is written, the key is still the old one.
    let next = ca.issue(&id("spiffe://example.org/web")).unwrap();
    std::fs::write(&files.cert, &next.cert_pem).unwrap();
    assert!(source.reload().is_err());
    assert_eq!(source.current().serial(), first);
    assert_eq!(source.generation(), 0);

    std::fs::write(&files.key, &next.key_pem).unwrap();
    assert_eq!(source.reload().unwrap(), Reload::Rotated);
    assert_eq!(source.current().serial(), next.serial);
    assert_eq!(source.generation(), 1);
}

#[tokio::test]
async fn watch_picks_up_rewritten_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("example.org").unwrap();
    let files = files_in(dir.path(), &ca, "spiffe://example.org/web");
    let source = IdentitySource::from_files(files.clone()).unwrap();
    let mut rotations = source.subscribe();
    let _watch = source.watch().unwrap();

    let next = ca.issue(&id("spiffe://example.org/web")).unwrap();
    next.write(&files.cert, &files.key).unwrap();
    // Wide bound: the watcher reacts within the debounce (200 ms).
    tokio::time::timeout(Duration::from_secs(20), rotations.changed())
        .await
        .expect("the identity was not reloaded")
        .unwrap();
    assert_eq!(source.current().serial(), next.serial);
}

#[tokio::test]
async fn a_change_written_before_the_watch_is_registered_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("example.org").unwrap();
    let files = files_in(dir.path(), &ca, "spiffe://example.org/web");
    let source = IdentitySource::from_files(files.clone()).unwrap();
    let mut rotations = source.subscribe();

    let next = ca.issue(&id("spiffe://example.org/web")).unwrap();
    let serial = next.serial.clone();
    let (cert, key) = (files.cert.clone(), files.key.clone());
    // Written after `watch` returned but before the directory is registered:
    // no file event can report it, and the minute's re-read is far off.
    let _watch = source
        .watch_with(move || next.write(&cert, &key).unwrap())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), rotations.changed())
        .await
        .expect("the change written before the watch was in place was missed")
        .unwrap();
    assert_eq!(source.current().serial(), serial);
    assert_eq!(source.generation(), 1);
}

/// Registering the watch takes a blocking thread and re-reads the files: not
/// while the service starts, only once start-up is over.
#[tokio::test(start_paused = true)]
async fn the_watch_is_registered_only_once_start_up_is_over() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("example.org").unwrap();
    let files = files_in(dir.path(), &ca, "spiffe://example.org/web");
    let source = IdentitySource::from_files(files).unwrap();
    let (registering, registered) = std::sync::mpsc::channel();
    let _watch = source
        .watch_with(move || registering.send(()).unwrap())
        .unwrap();

    tokio::time::sleep(super::source::REGISTER_AFTER - Duration::from_millis(1)).await;
    assert!(registered.try_recv().is_err(), "registered during start-up");
    tokio::time::sleep(Duration::from_millis(2)).await;
    // On the blocking pool: that keeps paused time from jumping ahead meanwhile.
    tokio::task::spawn_blocking(move || registered.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("registered once start-up was over");
}

#[test]
fn files_hold_the_identity_loaded_from_them_until_one_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("example.org").unwrap();
    let other = DevCa::new("other.org").unwrap();
    other.write_bundle(&dir.path().join("other.pem")).unwrap();
    let files = files_in(dir.path(), &ca, "spiffe://example.org/web").with_federated(
        TrustDomain::new("other.org").unwrap(),
        dir.path().join("other.pem"),
    );
    let identity = files.load().unwrap();
    assert!(files.hold(&identity));

    // Another federated bundle: a change too.
    DevCa::new("other.org")
        .unwrap()
        .write_bundle(&dir.path().join("other.pem"))
        .unwrap();
    assert!(!files.hold(&identity));
    other.write_bundle(&dir.path().join("other.pem")).unwrap();
    assert!(files.hold(&identity));

    let next = ca.issue(&id("spiffe://example.org/web")).unwrap();
    next.write(&files.cert, &files.key).unwrap();
    assert!(!files.hold(&identity));
    std::fs::remove_file(&files.cert).unwrap();
    assert!(
        !files.hold(&identity),
        "an unreadable file counts as a change"
    );
}

#[test]
fn federated_bundle_lists_parse_into_domain_path_pairs() {
    let parsed = parse_federated_bundles(" other.org=/b/other.pem, partner.io=b.pem ,").unwrap();
    assert_eq!(
        parsed,
        [
            (
                TrustDomain::new("other.org").unwrap(),
                "/b/other.pem".into()
            ),
            (TrustDomain::new("partner.io").unwrap(), "b.pem".into()),
        ]
    );
    assert_eq!(parse_federated_bundles("").unwrap(), []);
    assert!(matches!(
        parse_federated_bundles("other.org"),
        Err(FederatedBundlesError::Malformed(_))
    ));
    assert!(matches!(
        parse_federated_bundles("Other.org=/x.pem"),
        Err(FederatedBundlesError::TrustDomain(_))
    ));
}
