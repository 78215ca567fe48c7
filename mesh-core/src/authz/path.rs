//! Request paths in the one form authorization rules are matched against.
//!
//! Why: a rule that denies `/admin/*` is worthless if `/%61dmin/x`, `//admin/x`
//! or `/api/../admin/x` reach the same handler unmatched. The path is brought to
//! one canonical form first, and the server then hands that same form to the
//! application, so the rule and the router see one path.
//!
//! The canonical form:
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded
//!   (`%61` → `a`, `%2e` → `.`); other escapes are kept, with upper-case hex;
//! - runs of `/` become one `/`;
//! - `.` segments are removed and `..` removes the segment before it.
//!
//! A path that cannot be brought to that form safely is refused instead: an
//! encoded `/` or `\` (`%2F`, `%5C`: routers disagree on whether it separates
//! segments), an encoded NUL, a literal `\`, a broken escape (`%zz`), a `..`
//! that climbs above the root, or a path that does not start with `/`.

use std::borrow::Cow;
use std::fmt;

/// Why a path was refused (the server answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/` (e.g. the asterisk form `*`).
    NotAbsolute,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` or `%5C`: an encoded separator.
    EncodedSeparator,
    /// `%00`.
    EncodedNul,
    /// A literal `\`, which some servers treat as `/`.
    Backslash,
    /// A `..` segment above the root.
    AboveRoot,
}

impl PathError {
    /// A fixed word for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            PathError::NotAbsolute => "not_absolute",
            PathError::BadEscape => "bad_escape",
            PathError::EncodedSeparator => "encoded_separator",
            PathError::EncodedNul => "encoded_nul",
            PathError::Backslash => "backslash",
            PathError::AboveRoot => "above_root",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path does not start with '/'",
            PathError::BadEscape => "the path has a '%' not followed by two hex digits",
            PathError::EncodedSeparator => "the path has an encoded '/' or '\\' (%2F, %5C)",
            PathError::EncodedNul => "the path has an encoded NUL (%00)",
            PathError::Backslash => "the path has a '\\'",
            PathError::AboveRoot => "the path's '..' segments climb above the root",
        })
    }
}

impl std::error::Error for PathError {}

/// Brings `path` (without its query) to canonical form; borrows when it already is.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(bytes)? {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    let mut segments: Vec<&str> = Vec::new();
    // Splitting on '/' and skipping empty segments merges duplicate slashes;
    // a trailing slash is kept, since `/a/` and `/a` may be different routes.
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Whether `path` is already canonical (the common case, checked without
/// allocating); errors for characters no rewrite can make safe.
fn is_canonical(bytes: &[u8]) -> Result<bool, PathError> {
    let mut canonical = true;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(PathError::Backslash),
            b'%' => canonical = false,
            b'/' => {
                let next = &bytes[i + 1..];
                if next.first() == Some(&b'/')
                    || next == b"."
                    || next.starts_with(b"./")
                    || next == b".."
                    || next.starts_with(b"../")
                {
                    canonical = false;
                }
            }
            _ => {}
        }
    }
    Ok(canonical)
}

/// Decodes escapes of unreserved characters, upper-cases the hex of the others
/// and refuses the dangerous ones.
fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // Non-ASCII bytes cannot occur: `path` is a &str and http::Uri only
            // admits ASCII, but push the char through anyway to stay UTF-8.
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let hex = |j: usize| bytes.get(j).and_then(|&h| char::from(h).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
            return Err(PathError::BadEscape);
        };
        let value = u8::try_from(hi * 16 + lo).expect("two hex digits fit a byte");
        match value {
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            0 => return Err(PathError::EncodedNul),
            v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                out.push(char::from(v));
            }
            v => {
                out.push('%');
                out.push_str(&format!("{v:02X}"));
            }
        }
        i += 3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        normalize(path).map(Cow::into_owned)
    }

    #[test]
    fn canonical_paths_are_borrowed_unchanged() {
        for path in ["/", "/api/users", "/api/users/", "/a.b/c..d/.e", "/~x"] {
            assert!(
                matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(norm("/%61dmin").unwrap(), "/admin");
        assert_eq!(norm("/%7Euser/%2D").unwrap(), "/~user/-");
        assert_eq!(norm("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(norm("/a%20b").unwrap(), "/a%20b");
    }

    #[test]
    fn duplicate_slashes_are_merged() {
        assert_eq!(norm("//admin").unwrap(), "/admin");
        assert_eq!(norm("/api///v1//x/").unwrap(), "/api/v1/x/");
    }

    #[test]
    fn dot_segments_are_resolved_including_encoded_ones() {
        assert_eq!(norm("/api/../admin").unwrap(), "/admin");
        assert_eq!(norm("/api/./v1/.").unwrap(), "/api/v1/");
        assert_eq!(norm("/api/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/api/%2E/x").unwrap(), "/api/x");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/..").unwrap(), "/");
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(norm("/admin%2Fx"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/admin%2fx"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/admin%5cx"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/a%00"), Err(PathError::EncodedNul));
        assert_eq!(norm("/a\\b"), Err(PathError::Backslash));
        assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%4"), Err(PathError::BadEscape));
        assert_eq!(norm("/../admin"), Err(PathError::AboveRoot));
        assert_eq!(norm("/%2e%2e/admin"), Err(PathError::AboveRoot));
        assert_eq!(norm("*"), Err(PathError::NotAbsolute));
        assert_eq!(norm(""), Err(PathError::NotAbsolute));
    }
}
