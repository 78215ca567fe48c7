//! Reads the three facts the mesh needs out of an X.509 certificate (the URI
//! SANs, the end of validity and the serial) straight from its DER encoding.
//!
//! A general X.509 parser decodes every field into owned structures; this
//! walks the certificate's outer structure, skips what it does not need and
//! stops there. It runs at start-up (our own SVID, before the first request)
//! and on every handshake (the peer's SPIFFE ID), so the code it does not run,
//! and does not page in, matters more than its instruction count.
//!
//! It checks the structure it walks (tags, lengths within their parent, the
//! extension list) and refuses anything else; whether the certificate is
//! *valid* (signatures, a well-formed everything) is webpki's job, which runs
//! on every certificate this reads.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

/// DER tags this reader meets (universal class unless noted).
mod tag {
    pub(super) const BOOLEAN: u8 = 0x01;
    pub(super) const INTEGER: u8 = 0x02;
    pub(super) const OCTET_STRING: u8 = 0x04;
    pub(super) const OID: u8 = 0x06;
    pub(super) const UTC_TIME: u8 = 0x17;
    pub(super) const GENERALIZED_TIME: u8 = 0x18;
    pub(super) const SEQUENCE: u8 = 0x30;
    /// `[0] EXPLICIT`: the TBS certificate's version.
    pub(super) const VERSION: u8 = 0xa0;
    /// `[1] IMPLICIT`: issuerUniqueID.
    pub(super) const ISSUER_UID: u8 = 0x81;
    /// `[2] IMPLICIT`: subjectUniqueID.
    pub(super) const SUBJECT_UID: u8 = 0x82;
    /// `[3] EXPLICIT`: the extensions.
    pub(super) const EXTENSIONS: u8 = 0xa3;
    /// `[6] IMPLICIT IA5String`: a GeneralName's uniformResourceIdentifier.
    pub(super) const URI: u8 = 0x86;
    /// The constructed form of `[6]`: not DER for a string, but lenient
    /// parsers read it as a URI, so it must not be skipped as another name.
    pub(super) const URI_CONSTRUCTED: u8 = 0xa6;
}

/// The DER encoding of the subjectAltName extension's OID, 2.5.29.17.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// What was read out of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertFields<'a> {
    /// The URI SANs, in order (none when there is no subjectAltName extension).
    pub(crate) uris: Vec<&'a str>,
    /// The end of the validity period; the Unix epoch for a date before it.
    pub(crate) not_after: SystemTime,
    /// The serial number's DER content bytes, as lower-case hex.
    pub(crate) serial: String,
}

/// Reads only the URI SANs (the per-handshake path).
pub(crate) fn uri_sans(der: &[u8]) -> Result<Vec<&str>, &'static str> {
    let tbs = Tbs::read(der)?;
    tbs.uris()
}

/// Reads the URI SANs, the end of validity and the serial.
pub(crate) fn cert_fields(der: &[u8]) -> Result<CertFields<'_>, &'static str> {
    let tbs = Tbs::read(der)?;
    Ok(CertFields {
        uris: tbs.uris()?,
        not_after: time(tbs.not_after)?,
        serial: tbs.serial.iter().fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        }),
    })
}

/// The parts of a TBS certificate this module reads, still encoded.
struct Tbs<'a> {
    serial: &'a [u8],
    /// The `notAfter` Time, tag included.
    not_after: (u8, &'a [u8]),
    /// The content of the `[3]` extensions wrapper, if present.
    extensions: Option<&'a [u8]>,
}

impl<'a> Tbs<'a> {
    fn read(der: &'a [u8]) -> Result<Self, &'static str> {
        let mut outer = Reader::new(der);
        let cert = outer.expect(tag::SEQUENCE, "expected a certificate (a SEQUENCE)")?;
        if !outer.is_empty() {
            return Err("trailing data after the certificate");
        }
        let mut cert = Reader::new(cert);
        let mut tbs = Reader::new(cert.expect(tag::SEQUENCE, "expected a TBS certificate")?);
        if tbs.peek() == Some(tag::VERSION) {
            tbs.read()?;
        }
        let serial = tbs.expect(tag::INTEGER, "expected the serial number")?;
        tbs.expect(tag::SEQUENCE, "expected the signature algorithm")?;
        tbs.expect(tag::SEQUENCE, "expected the issuer")?;
        let mut validity = Reader::new(tbs.expect(tag::SEQUENCE, "expected the validity")?);
        validity.read()?; // notBefore
        let not_after = validity.read()?;
        if !validity.is_empty() {
            return Err("unexpected data in the validity");
        }
        tbs.expect(tag::SEQUENCE, "expected the subject")?;
        tbs.expect(tag::SEQUENCE, "expected the subject public key")?;
        for optional in [tag::ISSUER_UID, tag::SUBJECT_UID] {
            if tbs.peek() == Some(optional) {
                tbs.read()?;
            }
        }
        let extensions = match tbs.peek() {
            Some(tag::EXTENSIONS) => Some(tbs.read()?.1),
            _ => None,
        };
        if !tbs.is_empty() {
            return Err("unexpected data after the extensions");
        }
        Ok(Tbs {
            serial,
            not_after,
            extensions,
        })
    }

    /// The URI SANs of the one subjectAltName extension, if any.
    fn uris(&self) -> Result<Vec<&'a str>, &'static str> {
        let Some(wrapper) = self.extensions else {
            return Ok(Vec::new());
        };
        let mut wrapper = Reader::new(wrapper);
        let mut list = Reader::new(wrapper.expect(tag::SEQUENCE, "expected the extension list")?);
        if !wrapper.is_empty() {
            return Err("unexpected data after the extension list");
        }
        let mut san = None;
        while !list.is_empty() {
            let mut ext = Reader::new(list.expect(tag::SEQUENCE, "expected an extension")?);
            let oid = ext.expect(tag::OID, "expected an extension's OID")?;
            if ext.peek() == Some(tag::BOOLEAN) {
                ext.read()?;
            }
            let value = ext.expect(tag::OCTET_STRING, "expected an extension's value")?;
            if !ext.is_empty() {
                return Err("unexpected data in an extension");
            }
            if oid == SUBJECT_ALT_NAME {
                if san.is_some() {
                    return Err("more than one subjectAltName extension");
                }
                san = Some(value);
            }
        }
        let Some(san) = san else {
            return Ok(Vec::new());
        };
        let mut value = Reader::new(san);
        let mut names =
            Reader::new(value.expect(tag::SEQUENCE, "expected the subject alternative names")?);
        if !value.is_empty() {
            return Err("unexpected data after the subject alternative names");
        }
        let mut uris = Vec::new();
        while !names.is_empty() {
            let (tag, content) = names.read()?;
            if tag == tag::URI_CONSTRUCTED {
                return Err("a URI SAN in constructed form");
            }
            if tag == tag::URI {
                let uri = std::str::from_utf8(content)
                    .ok()
                    .filter(|s| s.is_ascii())
                    .ok_or("a URI SAN is not an IA5String")?;
                uris.push(uri);
            }
        }
        Ok(uris)
    }
}

/// Reads one DER element after another out of a slice.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(der: &'a [u8]) -> Self {
        Reader { rest: der }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next element's tag and content.
    fn read(&mut self) -> Result<(u8, &'a [u8]), &'static str> {
        const TRUNCATED: &str = "truncated DER";
        let (&tag, rest) = self.rest.split_first().ok_or(TRUNCATED)?;
        if tag & 0x1f == 0x1f {
            return Err("a multi-byte DER tag");
        }
        let (&first, mut rest) = rest.split_first().ok_or(TRUNCATED)?;
        let len = match first {
            short @ 0..=0x7f => usize::from(short),
            // Long form: the low bits count the length bytes that follow; four
            // are more than any certificate needs.
            long @ 0x81..=0x84 => {
                let count = usize::from(long & 0x7f);
                if rest.len() < count {
                    return Err(TRUNCATED);
                }
                let (bytes, after) = rest.split_at(count);
                rest = after;
                let len = bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
                if len < 0x80 || bytes[0] == 0 {
                    return Err("a DER length not in its shortest form");
                }
                len
            }
            _ => return Err("an indefinite or oversized DER length"),
        };
        if rest.len() < len {
            return Err(TRUNCATED);
        }
        let (content, rest) = rest.split_at(len);
        self.rest = rest;
        Ok((tag, content))
    }

    /// The next element's content, which must carry `want`.
    fn expect(&mut self, want: u8, otherwise: &'static str) -> Result<&'a [u8], &'static str> {
        match self.read()? {
            (tag, content) if tag == want => Ok(content),
            _ => Err(otherwise),
        }
    }
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`), the two forms RFC 5280 allows, as a `SystemTime`.
fn time((tag, text): (u8, &[u8])) -> Result<SystemTime, &'static str> {
    const BAD: &str = "a validity time not in RFC 5280's form";
    let (year, rest) = match (tag, text.len()) {
        (tag::UTC_TIME, 13) => {
            let yy = digits(&text[..2]).ok_or(BAD)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (tag::GENERALIZED_TIME, 15) => (digits(&text[..4]).ok_or(BAD)?, &text[4..]),
        _ => return Err(BAD),
    };
    if rest[10] != b'Z' {
        return Err(BAD);
    }
    let field = |i: usize| digits(&rest[i..i + 2]).ok_or(BAD);
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(BAD);
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Ok(match u64::try_from(secs) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH,
    })
}

/// ASCII digits as a number; `None` for anything else.
fn digits(text: &[u8]) -> Option<u32> {
    text.iter().try_fold(0u32, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
    })
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar
/// (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: u32, month: u32, day: u32) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let m = i64::from(month);
    let day_of_year = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType, SerialNumber};
    use x509_parser::extensions::GeneralName;

    /// A fixed Ed25519 key: its signatures are deterministic, so the same
    /// parameters give the same DER on every run (a fresh ECDSA key and
    /// signature would move every byte after them, and with them which bytes
    /// the mutation test below hits).
    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEILll6CzirsdsB+yjpa4qHP65yM9qRd8+W9ivyh3bMfqw
-----END PRIVATE KEY-----
";

    /// A self-signed certificate with these SANs, validity end and serial.
    fn cert(sans: Vec<SanType>, not_after: (i32, u8, u8), serial: &[u8]) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        params.serial_number = Some(SerialNumber::from_slice(serial));
        let key = KeyPair::from_pem(KEY).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    /// What x509-parser, a full X.509 parser, reads from the same DER.
    fn reference(der: &[u8]) -> CertFields<'_> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let uris = reference_uris(der).expect("x509-parser reads the certificate");
        let secs = cert.validity().not_after.timestamp();
        CertFields {
            uris,
            not_after: unix(u64::try_from(secs).unwrap()),
            serial: cert.raw_serial_as_string().replace(':', ""),
        }
    }

    /// x509-parser's URI SANs, or `None` where it refuses the certificate.
    fn reference_uris(der: &[u8]) -> Option<Vec<&str>> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        if !rest.is_empty() {
            return None;
        }
        let san = cert.subject_alternative_name().ok()?;
        Some(
            san.map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some(*u),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        )
    }

    #[test]
    fn fields_agree_with_a_full_x509_parser() {
        let certs = [
            cert(vec![uri("spiffe://example.org/web")], (2030, 6, 1), &[1]),
            // After 2049: a GeneralizedTime. A serial with its high bit set
            // carries a leading zero byte.
            cert(
                vec![
                    SanType::DnsName("web.example.org".try_into().unwrap()),
                    uri("spiffe://example.org/a"),
                    uri("spiffe://example.org/b"),
                ],
                (2070, 12, 31),
                &[0x80, 0x01, 0xff],
            ),
            cert(
                vec![SanType::DnsName("only.dns".try_into().unwrap())],
                (2026, 2, 28),
                &[0x7f; 16],
            ),
            cert(Vec::new(), (1999, 1, 1), &[0x42]),
        ];
        for der in &certs {
            let read = cert_fields(der).unwrap();
            assert_eq!(read, reference(der));
            assert_eq!(uri_sans(der).unwrap(), read.uris);
        }
        assert_eq!(
            cert_fields(&certs[0]).unwrap().uris,
            ["spiffe://example.org/web"]
        );
        assert_eq!(cert_fields(&certs[1]).unwrap().serial, "008001ff");
        assert!(cert_fields(&certs[3]).unwrap().uris.is_empty());
    }

    #[test]
    fn a_cut_or_padded_certificate_is_an_error_not_a_panic() {
        let der = cert(vec![uri("spiffe://example.org/web")], (2030, 6, 1), &[1]);
        for len in 0..der.len() {
            assert!(cert_fields(&der[..len]).is_err(), "cut at {len}");
            assert!(uri_sans(&der[..len]).is_err(), "cut at {len}");
        }
        let mut padded = der.clone();
        padded.push(0);
        assert_eq!(
            cert_fields(&padded),
            Err("trailing data after the certificate")
        );
        // Any single corrupted byte either still reads or is an error.
        for i in 0..der.len() {
            let mut bad = der.clone();
            bad[i] ^= 0xff;
            let _ = cert_fields(&bad);
        }
    }

    /// `[6]` in constructed form is not DER for a URI, but x509-parser reads
    /// it as one: skipping it as some other name would hide an identity the
    /// certificate claims (the mutation test below found this).
    #[test]
    fn a_uri_san_in_constructed_form_is_refused_not_skipped() {
        let der = cert(
            vec![uri("spiffe://example.org/a"), uri("spiffe://example.org/b")],
            (2030, 6, 1),
            &[1],
        );
        let second = der
            .windows(2)
            .rposition(|w| w == [tag::URI, 22])
            .expect("the second URI SAN");
        let mut bad = der.clone();
        bad[second] = tag::URI_CONSTRUCTED;
        assert_eq!(
            reference_uris(&bad),
            Some(vec!["spiffe://example.org/a", "spiffe://example.org/b"])
        );
        assert_eq!(uri_sans(&bad), Err("a URI SAN in constructed form"));
        assert!(cert_fields(&bad).is_err());
    }

    /// A peer's certificate is read before its chain is verified (its SPIFFE
    /// ID picks the bundle), so any bytes at all must give an answer.
    #[test]
    fn mutated_certificates_never_panic_and_read_as_x509_parser_reads_them() {
        let der = cert(
            vec![uri("spiffe://example.org/a"), uri("spiffe://example.org/b")],
            (2070, 1, 1),
            &[0x80, 1],
        );
        // A fixed-seed xorshift: the same mutations on every run.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut read, mut refused, mut agreed) = (0, 0, 0);
        for _ in 0..20_000 {
            let mut bad = der.clone();
            for _ in 0..=next() % 4 {
                let i = (next() % bad.len() as u64) as usize;
                bad[i] = next() as u8;
            }
            match (cert_fields(&bad), uri_sans(&bad)) {
                (Ok(fields), Ok(uris)) => {
                    assert_eq!(fields.uris, uris);
                    // Where the full parser reads the mutant too, it finds the
                    // same identities: a mutation never makes this reader see
                    // a URI SAN that is not there, or miss one that is.
                    if let Some(expected) = reference_uris(&bad) {
                        assert_eq!(uris, expected, "mutant {bad:02x?}");
                        agreed += 1;
                    }
                    read += 1;
                }
                _ => refused += 1,
            }
        }
        assert!(
            read > 0 && refused > 0 && agreed > 0,
            "read {read}, refused {refused}, checked against x509-parser {agreed}"
        );
    }

    fn unix(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn validity_times_in_both_forms_convert_to_unix_time() {
        assert_eq!(time((tag::UTC_TIME, b"700101000000Z")), Ok(unix(0)));
        assert_eq!(
            time((tag::UTC_TIME, b"491231235959Z")),
            Ok(unix(2_524_607_999))
        );
        assert_eq!(
            time((tag::UTC_TIME, b"500101000000Z")),
            Ok(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(
            time((tag::GENERALIZED_TIME, b"20240229120000Z")),
            Ok(unix(1_709_208_000))
        );
        assert_eq!(
            time((tag::GENERALIZED_TIME, b"99991231235959Z")),
            Ok(unix(253_402_300_799))
        );
        for bad in [
            (tag::UTC_TIME, &b"7001010000Z"[..]),
            (tag::UTC_TIME, b"700101000000+"),
            (tag::UTC_TIME, b"701301000000Z"),
            (tag::UTC_TIME, b"7001010000a0Z"),
            (tag::GENERALIZED_TIME, b"700101000000Z"),
            (tag::INTEGER, b"700101000000Z"),
        ] {
            assert!(time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lengths_must_fit_and_be_minimal() {
        assert_eq!(
            Reader::new(&[0x04, 0x01, 0xaa]).read(),
            Ok((0x04, &[0xaa][..]))
        );
        let long: Vec<u8> = [0x04, 0x81, 0x80].into_iter().chain([0; 0x80]).collect();
        assert_eq!(Reader::new(&long).read().map(|(_, c)| c.len()), Ok(0x80));
        for bad in [
            &[0x04, 0x02, 0xaa][..],
            &[0x04, 0x81, 0x01, 0xaa],
            &[0x04, 0x82, 0x00, 0x80],
            &[0x04, 0x80, 0x00, 0x00],
            &[0x04, 0x85, 1, 0, 0, 0, 0],
            &[0x1f, 0x01, 0x00],
            &[0x04],
        ] {
            assert!(Reader::new(bad).read().is_err(), "{bad:02x?}");
        }
    }
}
