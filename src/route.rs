//! The broker's route table: which action a forwarded request needs (`[[route]]` in the
//! config), for web servers that ask `/v1/auth` without naming the action themselves.
//!
//! ```toml
//! [[route]]
//! method = "GET"            # or "*"
//! path = "/articles/**"     # glob on the original path, query string ignored
//! action = "read:articles"
//! ```
//!
//! Routes are tried in the order written; the first match wins; no match is a denial. Paths
//! and globs are both matched percent-decoded (`%3A` is `:`, `%C3%A9` is `é`), as the servers
//! behind read them. A path that the servers behind could read in more than one way (case,
//! path parameters, a segment's trailing dots and spaces) is routed only if every reading
//! reaches the same route.

use anyhow::{Result, bail};
use glob::Pattern;
use unicode_normalization::UnicodeNormalization;

use crate::scope::Action;

/// `text` with every character in one case, as a case-insensitive server compares them: lower
/// case, upper, then lower again (so `É` and `é` are one letter, `Σ`, `σ` and `ς` one, and `ẞ`,
/// `ß` and `ss` one: `ẞ` is `ß` in lower case, whose upper case is `SS`). Glob syntax is ASCII
/// punctuation, which folding leaves alone.
fn fold(text: &str) -> String {
    text.chars()
        .flat_map(char::to_lowercase)
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

/// A route's glob as a request's path is matched: percent-decoded (`%3A` is `:`, `%C3%A9` is
/// `é`) and in Unicode's compatibility form (NFKC: half-width `ｶ` is `カ`), so that a route
/// and a request may each be written either way. A glob that no routed path could match is
/// refused, naming why: one that encodes a glob character or `-` (which would change what a
/// `[...]` class holds: write it as it is, `[*]` for a literal `*`), a separator, a control
/// character or bytes that are not UTF-8, or holds what [`find`] never routes (`;`, `#`, `%`, a
/// backslash, an empty or dot segment, a character some server reads as ASCII).
fn canonical_glob(text: &str) -> Result<String> {
    let shown = || text.escape_debug().to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        // The escapes' bytes, decoded together: a character may take several (`%C3%A9`).
        let escapes = rest.as_bytes()[at..]
            .chunks(3)
            .take_while(|c| {
                c.len() == 3 && c[0] == b'%' && c[1..].iter().all(u8::is_ascii_hexdigit)
            })
            .count();
        if escapes == 0 {
            bail!(
                "path: '{}' holds a '%' that begins no escape, and no path holding one is routed: write it as %25 only if it is no path a request could take",
                shown()
            );
        }
        let run = &rest[at..at + 3 * escapes];
        let bytes = crate::token::percent_decoded(run.as_bytes()).unwrap_or_default();
        let Ok(chars) = std::str::from_utf8(&bytes) else {
            bail!("path: '{}' does not decode to UTF-8", shown());
        };
        if chars.contains('/') {
            bail!(
                "path: '{}' encodes a '/', and no request path holding one is routed",
                shown()
            );
        }
        if let Some(c) = chars.chars().find(|c| "*?[]!-".contains(*c)) {
            bail!(
                "path: '{}' encodes {c:?}, a glob character: write it as it is ('[{c}]' for a literal one)",
                shown()
            );
        }
        out.push_str(chars);
        rest = &rest[at + 3 * escapes..];
    }
    out.push_str(rest);
    let never = out
        .chars()
        .find(|&c| matches!(c, ';' | '#' | '%' | '\\') || c.is_control() || reads_as_ascii(c))
        .map(|c| format!("{c:?}"))
        .or_else(|| out.contains("//").then(|| "an empty segment".to_owned()))
        .or_else(|| {
            out.split('/')
                .any(|segment| segment == "." || segment == "..")
                .then(|| "a dot segment".to_owned())
        });
    if let Some(what) = never {
        bail!(
            "path: '{}' holds {what}, and no request path holding it is routed (docs/api.md)",
            shown()
        );
    }
    Ok(out.nfkc().collect())
}

/// A route's glob, compiled for matching in time linear in the path for each of its stars
/// (the `glob` crate's matcher backtracks: `/**/*_*_*.json` against a path of 12 KB took it
/// 96 s). Segments are split at `/`; `**` alone in a segment crosses any number of them; in a
/// segment, `*` is any run of characters, `?` one character, `[...]` one of a set (`[!...]`
/// none of it), anything else itself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    segments: Vec<Segment>,
}

/// One segment of a [`Glob`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: any number of segments, none included.
    Any,
    /// A segment's pattern.
    One(Vec<Token>),
}

/// One part of a segment's pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `*`.
    Star,
    /// `?`.
    AnyChar,
    /// A character, itself.
    Char(char),
    /// `[...]`: the ranges (a single character is a range of one), and whether it is `[!...]`.
    Class(bool, Vec<(char, char)>),
}

impl Glob {
    /// Compiles `text`, which [`Pattern::new`] has accepted (so `**` is alone in its segment
    /// and every `[` is closed).
    fn new(text: &str) -> Glob {
        // `**/` at the end is `**`, as the crate reads it (its `**` takes the `/` after it).
        let text = text
            .strip_suffix("**/")
            .map_or(text, |rest| &text[..rest.len() + 2]);
        // Split at the separators only after the classes are read: a class may hold `/`
        // (`[!/]` is any character but `/`, as the crate reads it), which is not a separator.
        let segments = tokens(text)
            .split(|token| *token == Token::Char('/'))
            .map(|segment| match segment {
                [Token::Star, Token::Star] => Segment::Any,
                _ => {
                    let mut segment = segment.to_vec();
                    // Stars in a row are one.
                    segment.dedup_by(|a, b| *a == Token::Star && *b == Token::Star);
                    Segment::One(segment)
                }
            })
            .collect();
        Glob { segments }
    }

    /// Whether `path` ([`segments`]) matches: the segments by the same greedy walk as the
    /// characters of a segment ([`wildcard`]), `**` standing for a star over segments.
    fn matches(&self, path: &[Vec<char>]) -> bool {
        wildcard(
            &self.segments,
            path,
            |segment| matches!(segment, Segment::Any),
            |segment, part| match segment {
                Segment::Any => true,
                Segment::One(tokens) => wildcard(
                    tokens,
                    part,
                    |token| matches!(token, Token::Star),
                    |token, &c| token.takes(c),
                ),
            },
        )
    }
}

/// `path`'s segments, each as its characters: what [`Glob::matches`] reads, made once for all
/// the routes.
fn segments(path: &str) -> Vec<Vec<char>> {
    path.split('/').map(|part| part.chars().collect()).collect()
}

impl Token {
    /// Whether this token, which is not a star, takes character `c`.
    fn takes(&self, c: char) -> bool {
        match self {
            Token::Star | Token::AnyChar => true,
            Token::Char(own) => *own == c,
            Token::Class(negated, ranges) => {
                ranges.iter().any(|(low, high)| (*low..=*high).contains(&c)) != *negated
            }
        }
    }
}

/// The tokens of a glob, as `glob` parses them: `[` opens a class, in which a `!` first
/// negates, a `]` first (after any `!`) is a member, and `a-z` is a range; a `/` is a
/// separator only outside a class.
fn tokens(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        match chars[at] {
            '*' => {
                tokens.push(Token::Star);
                at += 1;
            }
            '?' => {
                tokens.push(Token::AnyChar);
                at += 1;
            }
            '[' => {
                let mut i = at + 1;
                let negated = chars.get(i) == Some(&'!');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                while i < chars.len() && (first || chars[i] != ']') {
                    first = false;
                    let low = chars[i];
                    if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|c| *c != ']')
                    {
                        ranges.push((low, chars[i + 2]));
                        i += 3;
                    } else {
                        ranges.push((low, low));
                        i += 1;
                    }
                }
                tokens.push(Token::Class(negated, ranges));
                at = i + 1;
            }
            c => {
                tokens.push(Token::Char(c));
                at += 1;
            }
        }
    }
    tokens
}

/// Whether `items` match `pattern`, where `is_star(p)` stands for any run of items and every
/// other part takes one item if `takes(p, item)`: the greedy walk that goes back only to the
/// last star, moving its run on by one, so that it makes at most `pattern.len() x items.len()`
/// comparisons.
fn wildcard<P, I>(
    pattern: &[P],
    items: &[I],
    is_star: impl Fn(&P) -> bool,
    takes: impl Fn(&P, &I) -> bool,
) -> bool {
    let (mut p, mut i) = (0, 0);
    // The last star seen, and the item its run ends before.
    let mut star: Option<(usize, usize)> = None;
    while i < items.len() {
        if p < pattern.len() && is_star(&pattern[p]) {
            star = Some((p, i));
            p += 1;
        } else if p < pattern.len() && takes(&pattern[p], &items[i]) {
            p += 1;
            i += 1;
        } else if let Some((at, from)) = star {
            p = at + 1;
            i = from + 1;
            star = Some((at, from + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(is_star)
}

/// A route table as written (`[[route]]`, `[[upstream.NAME.route]]`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    method: Option<String>,
    path: String,
    action: String,
}

impl RouteFile {
    /// The route it describes.
    pub fn parse(&self) -> Result<Route> {
        Route::parse(self.method.as_deref(), &self.path, &self.action)
    }

    /// Its path as written, for messages.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// One `[[route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The method, upper case; `None` for `*` (any method).
    pub method: Option<String>,
    /// The glob on the request's path, as written (for messages and the trail).
    written: String,
    /// The glob, percent-decoded ([`canonical_glob`]), and the same folded ([`fold`]).
    path: [Glob; 2],
    /// The action a request on this route needs.
    pub action: Action,
}

impl Route {
    /// Parses one route's fields; `method` defaults to `*`.
    pub fn parse(method: Option<&str>, path: &str, action: &str) -> Result<Route> {
        let method = match method.unwrap_or("*") {
            "*" => None,
            m if !m.is_empty() && m.chars().all(|c| c.is_ascii_alphabetic()) => {
                Some(m.to_ascii_uppercase())
            }
            m => bail!("method: '{}' is not an HTTP method or *", m.escape_debug()),
        };
        if !path.starts_with('/') {
            bail!("path: '{}' must start with /", path.escape_debug());
        }
        // The `glob` crate's parser says what is a glob (and why not); the matching is ours.
        let glob = |text: &str| -> Result<[Glob; 2]> {
            let compile = |text: &str| {
                Pattern::new(text).map_err(|err| anyhow::anyhow!("path: {err}"))?;
                Ok::<_, anyhow::Error>(Glob::new(text))
            };
            Ok([compile(text)?, compile(&fold(text))?])
        };
        let canonical = canonical_glob(path)?;
        let action = Action::parse(action).map_err(|err| anyhow::anyhow!("action: {err:#}"))?;
        Ok(Route {
            method,
            written: path.to_owned(),
            path: glob(&canonical)?,
            action,
        })
    }

    /// The text the trail and the log show for this route: `GET /articles/**`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.method.as_deref().unwrap_or("*"), self.written)
    }

    /// Whether the route takes `method` on `path` (decoded, in [`segments`]), or on `path`
    /// folded with `folded`.
    fn matches(&self, method: &str, path: &[Vec<char>], folded: bool) -> bool {
        let form = usize::from(folded);
        // A HEAD is a GET without the body: a GET route allows it. Methods are case-sensitive
        // (RFC 9110 9.1): `get` is not `GET` to the server behind, so no route allows it.
        self.method
            .as_deref()
            .is_none_or(|m| m == method || (m == "GET" && method == "HEAD"))
            && self.path[form].matches(path)
    }
}

/// Whether a `%` in `path` is not followed by two hex digits.
fn has_a_stray_percent(path: &str) -> bool {
    let bytes = path.as_bytes();
    let percents = bytes.iter().enumerate().filter(|(_, b)| **b == b'%');
    percents.map(|(at, _)| at).any(|at| {
        !bytes
            .get(at + 1..at + 3)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    })
}

/// Whether `c`, past ASCII, is read as ASCII by a server that normalizes a path (Unicode's
/// compatibility normalization, NFKC: fullwidth `ｐ` and `．`, the ligature `ﬁ`, `º`, `‥`, the
/// Kelvin sign) or ignores its case (the dotless `ı` is `I` in upper case, `ſ` is `S`): such a
/// path is another path to that server than to the routes, and may be one a stricter route was
/// written for.
fn reads_as_ascii(c: char) -> bool {
    // A case mapping to an ASCII letter, alone or with marks (`İ` is `i` and a dot above); not
    // one to several (`ß` is `SS` in upper case, which no server takes for `ß`).
    fn case(mut mapped: impl Iterator<Item = char>) -> bool {
        mapped.next().is_some_and(|first| first.is_ascii()) && mapped.all(|rest| !rest.is_ascii())
    }
    !c.is_ascii()
        && (std::iter::once(c).nfkc().any(|d| d.is_ascii())
            || case(c.to_lowercase())
            || case(c.to_uppercase()))
}

/// Characters a server may drop before it reads a path (Unicode's default-ignorable ones that
/// can hide between two dots: soft hyphen, zero-width space and joiners, word joiner, BOM).
const IGNORABLE: &[char] = &[
    '\u{ad}', '\u{200b}', '\u{200c}', '\u{200d}', '\u{2060}', '\u{feff}',
];

/// Whether `segment` is `.` or `..` to some server: up to a path parameter (`..;x`, Tomcat
/// and Spring), percent-decoded, without the characters in [`IGNORABLE`], it is dots and
/// spaces only (`...`, `..%20`, `.%20.`, `..%C2%A0`: Windows and IIS drop a segment's trailing
/// dots and spaces, and a server that normalizes reads a no-break space as a space).
fn is_a_dot_segment(segment: &str) -> bool {
    let segment = segment.split(';').next().unwrap_or("");
    let decoded = crate::token::percent_decoded(segment.as_bytes());
    let text = String::from_utf8_lossy(decoded.as_deref().map_or(segment.as_bytes(), |b| &b[..]));
    let kept: String = text.chars().filter(|c| !IGNORABLE.contains(c)).collect();
    kept.contains('.') && kept.chars().all(|c| c == '.' || c.is_whitespace())
}

/// The ways the servers behind may read `path` (percent-decoded): as it is, without its
/// segments' path parameters (`/a;x/b` is `/a/b` to Tomcat and Spring), without a segment's
/// trailing dots and spaces (`/admin./x` and `/admin /x` are `/admin/x` to Windows and IIS),
/// and without both.
fn readings(path: &str) -> Vec<String> {
    let without_parameters = |path: &str| -> String {
        path.split('/')
            .map(|segment| segment.split(';').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("/")
    };
    let trimmed = |path: &str| -> String {
        path.split('/')
            .map(|segment| {
                let mut segment = segment;
                while let Some(shorter) = segment
                    .strip_suffix('.')
                    .or_else(|| segment.strip_suffix(' '))
                {
                    segment = shorter;
                }
                segment
            })
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut readings: Vec<String> = Vec::new();
    for reading in [
        without_parameters(path),
        trimmed(path),
        trimmed(&without_parameters(path)),
        path.to_owned(),
    ] {
        if !readings.contains(&reading) {
            readings.push(reading);
        }
    }
    readings
}

/// The first route that matches `method` and `uri` (its query string ignored, its path
/// percent-decoded), if every reading of the path ([`readings`], in any case) reaches that
/// same route.
pub fn find<'a>(routes: &'a [Route], method: &str, uri: &str) -> Option<&'a Route> {
    position(routes, method, uri).map(|at| &routes[at])
}

/// [`find`]'s route, by its place in `routes`.
pub fn position(routes: &[Route], method: &str, uri: &str) -> Option<usize> {
    let path = uri.split('?').next().unwrap_or("");
    // A path that climbs (`/a/../b`), hides a dot segment or a separator behind percent
    // encoding (`%2e%2e`, `%2f`, `%5c`), uses a backslash or an empty segment, or is not
    // absolute, is not matched at all: the web server may or may not have normalized it, the
    // application behind it may decode it, and a route must never be escaped that way.
    // `%25` is a percent sign encoded: what it hides is decoded a second time behind us, and
    // so is what follows a `%` that begins no escape (`%%32%65` is `%2e` once decoded, a dot
    // twice). `..;x` is a dot segment to servers that strip path parameters (Tomcat, Spring),
    // and `%3b` is that `;` encoded. `%u002e` is IIS's encoding of a dot.
    let lower = path.to_ascii_lowercase();
    let encoded = ["%2e", "%2f", "%5c", "%25", "%3b", "%u"]
        .iter()
        .any(|s| lower.contains(s))
        || has_a_stray_percent(path)
        || path.contains('\\')
        || path.contains("//")
        // A fragment is never sent; a server that gets `#` takes what follows as the path.
        || path.contains('#');
    // Decoded once, as the server behind will: bytes that are not UTF-8 (overlong forms such
    // as `%c0%ae`, a dot to a lax decoder), a control character (`%00` ends a C string), or a
    // character some server reads as ASCII mean no path a route was written for.
    let decoded = crate::token::percent_decoded(path.as_bytes());
    let decoded = decoded
        .as_deref()
        .map_or(path.as_bytes(), |bytes| &bytes[..]);
    let text = std::str::from_utf8(decoded)
        .ok()
        .filter(|text| !text.chars().any(|c| c.is_control() || reads_as_ascii(c)))?;
    if !path.starts_with('/') || encoded || path.split('/').any(is_a_dot_segment) {
        return None;
    }
    // Read as it is and, past ASCII, in Unicode's compatibility form too (a server may
    // normalize: `e` and a combining accent are `é`, half-width `ｶ` is `カ`).
    let normal: Option<String> = (!text.is_ascii())
        .then(|| text.nfkc().collect())
        .filter(|normal: &String| normal != text);
    let mut found = None;
    for reading in readings(text)
        .into_iter()
        .chain(normal.as_deref().map(readings).unwrap_or_default())
    {
        for (reading, folded) in [(fold(&reading), true), (reading, false)] {
            let path = segments(&reading);
            let at = routes
                .iter()
                .position(|route| route.matches(method, &path, folded));
            match (found, at) {
                (_, None) => return None,
                (None, Some(at)) => found = Some(at),
                (Some(first), Some(at)) if first != at => return None,
                (Some(_), Some(_)) => {}
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Vec<Route> {
        vec![
            Route::parse(Some("GET"), "/articles/**", "read:articles").expect("valid"),
            Route::parse(Some("post"), "/drafts/*", "write:draft").expect("valid"),
            Route::parse(None, "/health", "read:health").expect("valid"),
        ]
    }

    fn action(method: &str, uri: &str) -> Option<String> {
        let routes = routes();
        find(&routes, method, uri).map(|r| r.action.as_str().to_owned())
    }

    #[test]
    fn the_first_matching_route_names_the_action() {
        assert_eq!(
            action("GET", "/articles/1").as_deref(),
            Some("read:articles")
        );
        assert_eq!(
            action("GET", "/articles/a/b?x=1").as_deref(),
            Some("read:articles")
        );
        assert_eq!(action("POST", "/drafts/7").as_deref(), Some("write:draft"));
        assert_eq!(action("DELETE", "/health").as_deref(), Some("read:health"));
        assert_eq!(
            action("HEAD", "/articles/1").as_deref(),
            Some("read:articles"),
            "a GET route allows a HEAD"
        );
        // Percent-encoding itself is fine: a name with a space or an accent still matches.
        for encoded in [
            "/articles/a%20b",
            "/articles/caf%C3%A9",
            "/articles/%e6%97%a5",
            "/articles/v1.2",
            "/articles/.well-known",
            "/articles/a..b",
            "/articles/%20",
        ] {
            assert_eq!(
                action("GET", encoded).as_deref(),
                Some("read:articles"),
                "{encoded}"
            );
        }
    }

    #[test]
    fn anything_else_matches_no_route() {
        assert_eq!(action("POST", "/articles/1"), None);
        assert_eq!(action("POST", "/drafts/7/x"), None);
        assert_eq!(action("GET", "/articlesX"), None);
        assert_eq!(action("GET", "/articles/../admin"), None);
        assert_eq!(action("GET", "/articles/./1"), None);
        assert_eq!(action("GET", "articles/1"), None);
        assert_eq!(action("GET", ""), None);
        assert_eq!(action("GET", "/articles/%2e%2e/admin"), None);
        assert_eq!(action("GET", "/articles/%2E%2E/admin"), None);
        assert_eq!(action("GET", "/articles/..%2fadmin"), None);
        assert_eq!(action("GET", "/articles/..%5cadmin"), None);
        assert_eq!(action("GET", "/articles\\..\\admin"), None);
        assert_eq!(action("GET", "/articles//x"), None);
        assert_eq!(action("GET", "/articles/%252e%252e/admin"), None);
        assert_eq!(action("GET", "/articles/..;/admin"), None);
        assert_eq!(
            action("HEAD", "/drafts/1"),
            None,
            "only a GET route allows a HEAD"
        );
        assert_eq!(
            action("get", "/articles/1"),
            None,
            "methods are case-sensitive"
        );
        assert_eq!(action("head", "/articles/1"), None);
        assert_eq!(action("GET", "/articles/..;x=1/admin"), None);
        for disguised in [
            "/articles/..%3b/admin",
            "/articles/..%3B/admin",
            "/articles/..%00/admin",
            "/articles/1%00.txt",
            "/articles/..%09/admin",
            "/articles/%7f",
            "/articles/%C0%AE%C0%AE/admin",
            "/articles/%c1%9c",
            "/articles/%u002e%u002e/admin",
            "/articles/%e0%80%ae%e0%80%ae/admin",
            "/articles/%F0%80%80%AE/admin",
            "/articles/%%32%65%%32%65/admin",
            "/articles/%zz",
            "/articles/%",
            "/articles/%4",
            "/articles/%ef%bc%8e%ef%bc%8e/admin",
            "/articles/%EF%BC%8F..%EF%BC%8Fadmin",
            "/articles/．．/admin",
            "/articles/x／..／admin",
            "/articles/%e2%80%a4%e2%80%a4/admin",
            "/articles/‥/admin",
            "/articles/%E2%80%A5/admin",
            "/articles/%ef%b8%b0/admin",
            "/articles/..%ef%b9%a8admin",
            "/articles/%ef%bc%85%32%65",
            "/articles/%c2%85",
            "/articles/%ff",
            "/articles/..%20/admin",
            "/articles/%20../admin",
            "/articles/.../admin",
            "/articles/.%20./admin",
            "/articles/.%c2%ad./admin",
            "/articles/.%e2%80%8b./admin",
        ] {
            assert_eq!(action("GET", disguised), None, "{disguised}");
        }
        // Encoded characters that hide nothing still match.
        assert_eq!(
            action("GET", "/articles/caf%C3%A9%20au%20lait").as_deref(),
            Some("read:articles")
        );
    }

    /// A class may hold `/` (`[!/]` is any character but `/`): it is one character of a
    /// segment, not a separator, so such a stricter route takes what it says, no more, no less.
    #[test]
    fn a_class_that_holds_a_slash_is_one_character_of_a_segment() {
        let routes = vec![
            Route::parse(None, "/admin/[!/]*", "admin:site").expect("valid"),
            Route::parse(None, "/[a/b]/**", "admin:ab").expect("valid"),
            Route::parse(None, "/**", "read:public").expect("valid"),
        ];
        let action = |uri: &str| find(&routes, "GET", uri).map(|r| r.action.as_str().to_owned());
        assert_eq!(action("/admin/users").as_deref(), Some("admin:site"));
        assert_eq!(action("/admin/x/]y").as_deref(), Some("read:public"));
        assert_eq!(action("/a/x").as_deref(), Some("admin:ab"));
        assert_eq!(action("/b").as_deref(), Some("admin:ab"));
        assert_eq!(action("/a/b]").as_deref(), Some("admin:ab"));
        assert_eq!(action("/x/b]").as_deref(), Some("read:public"));
    }

    /// A stricter route before a looser one, as tables are written: a path that some server
    /// behind reads as reaching the stricter one (it decodes `%70`, ignores case, drops a
    /// path parameter or a segment's trailing dots and spaces, takes `#` as part of the path,
    /// or normalizes a fullwidth letter) reaches neither.
    #[test]
    fn a_path_read_otherwise_by_the_server_behind_skips_no_route() {
        let routes = vec![
            Route::parse(None, "/articles/private/**", "admin:site").expect("valid"),
            Route::parse(Some("GET"), "/articles/**", "read:articles").expect("valid"),
            Route::parse(None, "/admin/**", "admin:site").expect("valid"),
            Route::parse(None, "/**", "read:public").expect("valid"),
        ];
        let action = |uri: &str| find(&routes, "GET", uri).map(|r| r.action.as_str().to_owned());
        assert_eq!(action("/articles/private/x").as_deref(), Some("admin:site"));
        assert_eq!(action("/articles/x").as_deref(), Some("read:articles"));
        // A glob that ends in `/**` covers the directory itself too.
        assert_eq!(action("/admin").as_deref(), Some("admin:site"));
        assert_eq!(action("/articles/private").as_deref(), Some("admin:site"));
        assert_eq!(action("/articles").as_deref(), Some("read:articles"));
        // An encoded letter is the letter: the stricter route's.
        for encoded in ["/articles/%70rivate/x", "/%61dmin/secret", "/admin%2Fx"] {
            let expected = (!encoded.contains("%2F")).then_some("admin:site");
            assert_eq!(action(encoded).as_deref(), expected, "{encoded}");
        }
        for read_otherwise in [
            "/articles/%70RIVATE/x",
            "/articles/Private/x",
            "/articles/private;x/y",
            "/articles/private./x",
            "/articles/private%20/x",
            "/articles/private.%20./x",
            "/articles/a#/../../admin/x",
            "/articles/a#/%2e%2e/admin",
            "/articles/%EF%BD%90rivate/x",
            "/articles/\u{ff50}rivate/x",
            "/articles/%EF%AC%81le",
            "/%E2%84%AAeys/x",
            "/articles/pr%C4%B1vate/x",
            "/articles/%C5%BFecret",
            "/%C4%B0tems",
            "/articles/private /x",
            "/articles/private. /x",
            "/admin /x",
            "/admin;",
            "/articles/..%C2%A0/admin",
            "/articles/%C2%A0../admin",
            "/articles/.%E3%80%80./admin",
            "/ADMIN/secret",
            "/Admin/secret",
            "/admin;x/secret",
            "/admin./secret",
            "/admin%20/secret",
        ] {
            assert_eq!(action(read_otherwise), None, "{read_otherwise}");
        }
        // Readings that all reach the same route are fine: a trailing dot in a name, a path
        // parameter, case, where every reading is on the same route.
        for same_everywhere in [
            "/wiki/U.S.",
            "/articles/a;b",
            "/public/README",
            "/caf%C3%A9",
            "/a%7Eb",
            "/%2Dadmin",
            "/articles/%78",
            "/stra%C3%9Fe",
        ] {
            assert!(action(same_everywhere).is_some(), "{same_everywhere}");
        }
        assert_eq!(action("/articles/a;b").as_deref(), Some("read:articles"));
    }

    /// A glob and a path are matched as the server behind reads them, decoded: a route whose
    /// glob holds a reserved character, a space or a letter past ASCII takes the path with that
    /// character encoded too, in either case of the escape's digits, whichever way the route
    /// was written; in any case of the letter, no route (a case-insensitive server reads `É` as
    /// `é`).
    #[test]
    fn globs_and_paths_are_matched_decoded() {
        let routes = vec![
            Route::parse(None, "/users/me:settings/**", "admin:users").expect("valid"),
            Route::parse(None, "/caf%C3%A9/**", "admin:cafe").expect("valid"),
            Route::parse(None, "/thé/**", "admin:tea").expect("valid"),
            Route::parse(None, "/files/a b/**", "admin:files").expect("valid"),
            Route::parse(None, "/straße/**", "admin:street").expect("valid"),
            Route::parse(None, "/カタログ/**", "admin:catalog").expect("valid"),
            Route::parse(None, "/**", "read:public").expect("valid"),
        ];
        let action = |uri: &str| find(&routes, "GET", uri).map(|r| r.action.as_str().to_owned());
        for (path, expected) in [
            ("/users/me:settings/x", "admin:users"),
            ("/users/me%3Asettings/x", "admin:users"),
            ("/users/me%3asettings/x", "admin:users"),
            ("/users/me%3Asettings", "admin:users"),
            ("/café/x", "admin:cafe"),
            ("/caf%C3%A9/x", "admin:cafe"),
            ("/caf%c3%a9/x", "admin:cafe"),
            ("/th%C3%A9/x", "admin:tea"),
            ("/thé/x", "admin:tea"),
            ("/files/a%20b/x", "admin:files"),
            ("/files/a b/x", "admin:files"),
            ("/stra%C3%9Fe/x", "admin:street"),
            ("/%E3%82%AB%E3%82%BF%E3%83%AD%E3%82%B0/x", "admin:catalog"),
            ("/users/me/x", "read:public"),
        ] {
            assert_eq!(action(path).as_deref(), Some(expected), "{path}");
        }
        for other_case in [
            "/CAF%C3%89/x",
            "/caf%C3%89/x",
            "/cafÉ/x",
            "/TH%C3%89/x",
            "/USERS/me%3Asettings/x",
            "/Files/a%20b/x",
            // `ẞ` is the capital of `ß` (Unicode folds both to `ss`).
            "/stra%E1%BA%9Ee/x",
            "/STRA%E1%BA%9EE/x",
            // Not in Unicode's compatibility form: `e` and a combining acute accent, half-width
            // katakana. A server that normalizes reads the stricter route's path.
            "/cafe%CC%81/x",
            "/%EF%BD%B6%EF%BE%80%EF%BE%9B%EF%BD%B8%EF%BE%9E/x",
        ] {
            assert_eq!(action(other_case), None, "{other_case}");
        }
        assert_eq!(
            routes[1].describe(),
            "* /caf%C3%A9/**",
            "the trail shows the route as written"
        );
    }

    /// The matcher takes the paths the `glob` crate's does (`*` stops at `/`, `**` crosses it,
    /// case counts, a leading dot is no different), and `/a/**` takes `/a` too; in time linear
    /// in the path for each star, where the crate's backtracks.
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        const CRATE: glob::MatchOptions = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };

        fn segment() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("**".to_owned()),
                // A class may hold `/`, which is no separator there.
                "([ab.*?-]|\\[!?[ab/\\]-]{1,3}\\]){1,5}",
            ]
        }

        proptest! {
            #[test]
            fn the_matcher_takes_what_the_glob_crate_takes(
                pattern in proptest::collection::vec(segment(), 1..5),
                path in "(/[ab.\\[\\]!*?-]{0,4}){1,6}",
            ) {
                // `**/**` is `**` (the crate's `/a/**/**` takes `/a/` and not `/a`, which its
                // bare form `/a/**` does not take either: a table says `/a/**`).
                let mut pattern = pattern;
                pattern.dedup_by(|a, b| a == "**" && b == "**");
                let pattern = format!("/{}", pattern.join("/"));
                // Route::parse refuses an empty segment (no routed path has one).
                prop_assume!(Pattern::new(&pattern).is_ok() && !pattern.contains("//"));
                let theirs = |text: &str| Pattern::new(text).expect("valid").matches_with(&path, CRATE);
                // `/a/**` (and `/a/**/`, which the crate reads as `/a/**`) takes `/a` too.
                let bare = pattern.strip_suffix("/**").or_else(|| pattern.strip_suffix("/**/"));
                let expected = theirs(&pattern)
                    || bare.is_some_and(|bare| !bare.is_empty() && theirs(bare));
                prop_assert_eq!(Glob::new(&pattern).matches(&segments(&path)), expected, "{} {}", pattern, path);
            }
        }

        #[test]
        fn a_long_path_is_matched_in_linear_time() {
            let path = segments(&format!("/{}/x", "a_".repeat(30_000)));
            let started = std::time::Instant::now();
            for pattern in ["/**/*_*_*.json", "/**/a*b*c*d/**/x", "/*-*.tar.gz"] {
                assert!(!Glob::new(pattern).matches(&path));
            }
            assert!(Glob::new("/**/*_*_*/**").matches(&path));
            // Many segments: the walk over segments is as bounded as the one over characters.
            let path = segments(&"/a_".repeat(20_000));
            for pattern in ["/**/a/**/b/**/x", "/**/*_/**/*b/**/*_*_*.json"] {
                assert!(!Glob::new(pattern).matches(&path));
            }
            assert!(Glob::new("/**/a_/**/a_").matches(&path));
            // The crate took 96 s for a fifth of this path with the first pattern.
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
        }
    }

    #[test]
    fn bad_routes_are_refused() {
        assert!(Route::parse(Some("GE T"), "/a", "a:b").is_err());
        assert!(Route::parse(None, "a", "a:b").is_err());
        assert!(Route::parse(None, "/a[", "a:b").is_err());
        assert!(Route::parse(None, "/a", "").is_err());
        // Globs no routed path could match, and escapes of what would change a glob's meaning.
        for never in [
            "/a%2Fb/**",
            "/a%2fb",
            "/a%5Cb",
            "/a%00",
            "/a%FF/**",
            "/a%C3",
            "/100%/x",
            "/100%25/x",
            "/a%3Bb/**",
            "/a;b/**",
            "/a#b",
            "/a//b",
            "/a/../b",
            "/./b",
            "/\u{ff50}rivate/**",
            "/lit%2A/**",
            "/[%5D]",
            "/[%21a]",
            "/[a%2Dz]",
        ] {
            let err = Route::parse(None, never, "a:b").expect_err(never);
            assert!(err.to_string().starts_with("path: "), "{never}: {err}");
        }
        assert!(Route::parse(None, "/caf%C3%A9/[*]/v1.2/**", "a:b").is_ok());
    }
}
