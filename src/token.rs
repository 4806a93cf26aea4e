//! Tokens: minting, their format, and the hash the store knows them by.
//!
//! A token is `agt_` followed by 48 base64url characters: 32 bytes from the operating system's
//! CSPRNG and a 4-byte checksum of them (the first bytes of their SHA-256), as GitHub's `ghp_`
//! tokens carry a CRC32. The checksum lets `verify` reject a mistyped or truncated token as
//! `malformed` without touching the store, and lets secret scanners match lease tokens with few
//! false positives. The store only ever sees the token's SHA-256; the lease id is the first 48
//! bits of that hash in hex, so a record can be found from a token in one step, while an id
//! (which is printed, listed and logged) reveals nothing that leads back to the token.

use std::borrow::Cow;
use std::fmt;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRng;
use rand::rngs::SysRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// What every lease token starts with, so people and secret scanners can recognise one.
pub const PREFIX: &str = "agt_";

/// The one spelling of why a token that is not a lease token (its checksum fails) opens
/// nothing, for the two constants below.
macro_rules! not_a_lease_token {
    () => {
        "the token given is not a lease token"
    };
}

/// Why a token that is not a lease token opens nothing: a denial's detail.
pub const MALFORMED_DETAIL: &str = not_a_lease_token!();

/// The reason and the detail, as every answer about such a token says them.
pub const MALFORMED: &str = concat!("malformed: ", not_a_lease_token!());
/// Random bytes in a token.
const RANDOM_BYTES: usize = 32;
/// Checksum bytes after the random part.
const CHECKSUM_BYTES: usize = 4;
/// Characters after the prefix: base64 of 36 bytes, which needs no padding.
pub const BODY_LEN: usize = (RANDOM_BYTES + CHECKSUM_BYTES) / 3 * 4;
/// Bytes of the token hash that make up the lease id.
const ID_BYTES: usize = 6;

/// A secret bearer token. It never prints itself (`Debug` and `Display` show `agt_***`), and
/// its memory is zeroed when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Zeroizing<String>);

impl Token {
    /// Mints a new random token from the OS CSPRNG.
    pub fn mint() -> Result<Token> {
        let mut bytes = Zeroizing::new([0u8; RANDOM_BYTES + CHECKSUM_BYTES]);
        let (random, checksum) = bytes.split_at_mut(RANDOM_BYTES);
        SysRng
            .try_fill_bytes(random)
            .context("reading the system random number generator")?;
        checksum.copy_from_slice(&checksum_of(random));
        let mut text = Zeroizing::new(String::with_capacity(PREFIX.len() + BODY_LEN));
        text.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(&bytes[..], &mut text);
        Ok(Token(text))
    }

    /// Wraps a token presented by a caller (from the environment or stdin). Any string is
    /// accepted here; [`Token::is_well_formed`] tells whether it can be a lease token at all.
    pub fn presented(text: String) -> Token {
        Token(Zeroizing::new(text))
    }

    /// Whether this has the shape of a lease token: the prefix, 48 base64url characters, and a
    /// checksum that matches. A typo or a truncated copy fails this without any lookup.
    pub fn is_well_formed(&self) -> bool {
        let Some(body) = self.0.strip_prefix(PREFIX) else {
            return false;
        };
        if body.len() != BODY_LEN {
            return false;
        }
        let mut bytes = Zeroizing::new([0u8; RANDOM_BYTES + CHECKSUM_BYTES]);
        match URL_SAFE_NO_PAD.decode_slice(body, &mut bytes[..]) {
            Ok(n) if n == bytes.len() => {}
            _ => return false,
        }
        let (random, checksum) = bytes.split_at(RANDOM_BYTES);
        checksum == checksum_of(random)
    }

    /// The secret itself, for the few places that must hand it on: the child's environment
    /// and the output of `lease issue`.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 of the token, which is all the store keeps.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({PREFIX}***)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}***")
    }
}

fn checksum_of(random: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let digest = Sha256::digest(random);
    let mut checksum = [0u8; CHECKSUM_BYTES];
    checksum.copy_from_slice(&digest[..CHECKSUM_BYTES]);
    checksum
}

/// The SHA-256 of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The lease id this hash files under.
    pub fn id(&self) -> LeaseId {
        LeaseId(hex(&self.0[..ID_BYTES]))
    }

    /// Lower-case hex, as stored in a record.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Compares with a stored hex hash in constant time.
    pub fn matches_hex(&self, stored: &str) -> bool {
        let ours = self.to_hex();
        ours.len() == stored.len()
            && ours
                .bytes()
                .zip(stored.bytes())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

/// A short public name for a lease: 12 lower-case hex digits. Stored and printed as that
/// text; anything else where an id belongs fails to parse (a record holding one is corrupt).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct LeaseId(String);

impl TryFrom<String> for LeaseId {
    type Error = String;

    fn try_from(text: String) -> Result<LeaseId, String> {
        LeaseId::parse(&text).ok_or_else(|| "not a lease id (12 lower-case hex digits)".to_owned())
    }
}

impl std::ops::Deref for LeaseId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<LeaseId> for String {
    fn from(id: LeaseId) -> String {
        id.0
    }
}

impl LeaseId {
    /// Parses an id given by a user; `None` when it cannot be a lease id.
    pub fn parse(text: &str) -> Option<LeaseId> {
        let valid = text.len() == ID_BYTES * 2
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| LeaseId(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `text` is shaped like a lease token, or holds one: it starts with the prefix, or the
/// prefix appears in it followed by what could be a token's body. Such text is refused where an
/// id, an action, a variable name or a scope is expected, so that it is never echoed or logged.
pub fn is_token_shaped(text: &str) -> bool {
    holds_token(text.as_bytes())
}

/// [`is_token_shaped`] for bytes that need not be UTF-8 (an environment variable): the prefix
/// and a token's body are ASCII, so invalid UTF-8 around them hides nothing.
pub fn holds_token(bytes: &[u8]) -> bool {
    // Nearly every variable is UTF-8 without the prefix: the standard library's vectorised
    // search says so (see `redact`), where the scan below costs ~20x more a byte (a run's
    // environment went through it: 76,000 instructions of a run's 770,000).
    if std::str::from_utf8(bytes).is_ok_and(|text| !text.contains(PREFIX)) {
        return false;
    }
    bytes.starts_with(PREFIX.as_bytes()) || token_spans(bytes).next().is_some()
}

/// Whether `bytes` hold a whole lease token (the prefix, then a body whose checksum holds), not
/// just something shaped like one: for text where a lookalike is legitimate (a URL's path may
/// name `agt_tools`), but a real token must not pass.
pub fn holds_whole_token(bytes: &[u8]) -> bool {
    // Percent-encoding hides nothing from the server behind, which decodes it (and a double
    // encoding, `%2561`, twice): each decoded form is searched too, a few layers deep.
    if whole_token_in(bytes) {
        return true;
    }
    let mut decoded = percent_decoded(bytes);
    for _ in 0..4 {
        let Some(text) = decoded else {
            return false;
        };
        if whole_token_in(&text) {
            return true;
        }
        decoded = percent_decoded(&text);
    }
    false
}

fn whole_token_in(bytes: &[u8]) -> bool {
    // Wherever the prefix is, including inside a longer run of a token's characters
    // (`agt_x-agt_TOKEN`): the checksum says whether a token starts there. (A plain scan of
    // short text: see `redact` on `memchr`.)
    prefix_positions(bytes).any(|start| {
        bytes
            .get(start..start + PREFIX.len() + BODY_LEN)
            .and_then(|text| std::str::from_utf8(text).ok())
            .is_some_and(|text| Token::presented(text.to_owned()).is_well_formed())
    })
}

/// `bytes` with each `%XX` decoded, or `None` when there is none to decode.
pub(crate) fn percent_decoded(bytes: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if !bytes.contains(&b'%') {
        return None;
    }
    let hex = |byte: u8| char::from(byte).to_digit(16);
    let mut out = Zeroizing::new(Vec::with_capacity(bytes.len()));
    let mut decoded_any = false;
    let mut i = 0;
    while i < bytes.len() {
        let pair = bytes
            .get(i + 1)
            .and_then(|&h| hex(h))
            .zip(bytes.get(i + 2).and_then(|&l| hex(l)));
        match (bytes[i], pair) {
            (b'%', Some((high, low))) => {
                out.push((high * 16 + low) as u8);
                decoded_any = true;
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    decoded_any.then_some(out)
}

/// `text` with everything shaped like a token replaced by `agt_***`: the last guard before a
/// message that may quote user input (a clap error, say) is printed.
pub fn redact(text: &str) -> Cow<'_, str> {
    // Most text holds no prefix at all (every line of the trail goes through here): the
    // standard library's substring search (SSE2, vectorised) says so, where the scan below
    // would cost ~20x more. Not `memchr::memmem`: its first use asks the CPU what it has
    // (`cpuid`), which a virtual machine answers in about 9 µs a question.
    if !text.contains(PREFIX) {
        return Cow::Borrowed(text);
    }
    let mut spans = token_spans(text.as_bytes()).peekable();
    if spans.peek().is_none() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end) in spans {
        out.push_str(&text[copied..start]);
        out.push_str(PREFIX);
        out.push_str("***");
        copied = end;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Every offset in `bytes` where the prefix begins, overlapping ones included. A plain scan:
/// the texts are short (variables, arguments, messages, paths), where setting up a substring
/// searcher costs more than it saves (and `memchr`'s asks the CPU what it has; see `redact`).
fn prefix_positions(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let prefix = PREFIX.as_bytes();
    bytes
        .windows(prefix.len())
        .enumerate()
        .filter(move |(_, window)| *window == prefix)
        .map(|(start, _)| start)
}

/// Where a token could stand in `bytes`: the prefix followed by at least a few characters of a
/// token's body, as (start, end) byte ranges. Both ends sit next to ASCII bytes, so they are
/// char boundaries when `bytes` is a `str`.
fn token_spans(bytes: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    /// Fewer body characters than this after the prefix cannot be (a useful part of) a token.
    const MIN_BODY: usize = 8;
    let is_body = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    let mut from = 0;
    prefix_positions(bytes).filter_map(move |start| {
        // A prefix inside the body of the last one found is part of it.
        if start < from {
            return None;
        }
        let body = bytes[start + PREFIX.len()..]
            .iter()
            .take_while(|b| is_body(b))
            .count();
        from = start + PREFIX.len() + body;
        (body >= MIN_BODY).then_some((start, from))
    })
}

/// Lower-case hex, two digits a byte: by table, since it runs on every decision (a `write!`
/// per byte went through the formatting machinery 32 times a hash).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_have_the_documented_format() {
        let token = Token::mint().expect("mint");
        let body = token.expose().strip_prefix(PREFIX).expect("prefix");
        assert_eq!(
            body.len(),
            48,
            "32 random bytes and a 4-byte checksum, in base64"
        );
        assert!(token.is_well_formed());
        assert!(
            body.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(Token::mint().expect("mint"), token);
    }

    #[test]
    fn typos_and_truncations_are_malformed() {
        let token = Token::mint().expect("mint");
        let text = token.expose();
        let truncated = &text[..text.len() - 1];
        let mut typo: Vec<char> = text.chars().collect();
        typo[10] = if typo[10] == 'A' { 'B' } else { 'A' };
        let typo: String = typo.into_iter().collect();
        let renamed = text.replace("agt_", "agx_");
        for bad in [truncated, &typo, "agt_", "", "ghp_abc", &renamed] {
            assert!(!Token::presented(bad.to_owned()).is_well_formed(), "{bad}");
        }
    }

    /// Compiles only for a type that zeroes its memory when dropped.
    fn zeroed_when_dropped<T: zeroize::ZeroizeOnDrop>(_: &T) {}

    #[test]
    fn the_token_text_lives_in_memory_that_is_zeroed_on_drop() {
        // Reading the freed buffer would be undefined behaviour; instead the token's storage
        // must be a `ZeroizeOnDrop` type (zeroize wipes it, spare capacity included, before
        // freeing it). A plain `String` here does not compile.
        let minted = Token::mint().expect("mint");
        zeroed_when_dropped(&minted.0);
        let presented = Token::presented(minted.expose().to_owned());
        zeroed_when_dropped(&presented.0);
        // And what zeroize does to it, seen through a copy that is not freed yet.
        let mut copy = minted.0.clone();
        zeroize::Zeroize::zeroize(&mut copy);
        assert!(copy.is_empty());
    }

    #[test]
    fn token_never_prints_itself() {
        let token = Token::mint().expect("mint");
        assert!(!format!("{token}").contains(token.expose()));
        assert!(!format!("{token:?}").contains(token.expose()));
        assert!(!format!("{token:#?}").contains(token.expose()));
        // What it prints instead, so that a log still shows a token was there.
        assert_eq!(format!("{token}"), "agt_***");
        assert_eq!(format!("{token:?}"), "Token(agt_***)");
    }

    #[test]
    fn hex_is_two_lower_case_digits_a_byte_in_order() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0x10, 0xa5, 0xff]), "000f10a5ff");
        let every: Vec<u8> = (0..=255).collect();
        let expected: String = every.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&every), expected);
    }

    #[test]
    fn id_comes_from_the_hash_and_parses_back() {
        let token = Token::mint().expect("mint");
        let id = token.hash().id();
        assert_eq!(LeaseId::parse(id.as_str()), Some(id.clone()));
        assert!(token.hash().to_hex().starts_with(id.as_str()));
        assert!(token.hash().matches_hex(&token.hash().to_hex()));
        assert!(
            !Token::mint()
                .expect("mint")
                .hash()
                .matches_hex(&token.hash().to_hex())
        );
        // Differences that cancel out when XORed together still differ: a fold that XORs the
        // differences instead of ORing them would take this hash for the stored one.
        let stored = token.hash().to_hex();
        let mut cancelling = stored.clone().into_bytes();
        cancelling[0] ^= 1;
        cancelling[1] ^= 1;
        let cancelling = String::from_utf8(cancelling).expect("ascii");
        assert!(!token.hash().matches_hex(&cancelling), "{cancelling}");
        assert!(!token.hash().matches_hex(&stored[1..]));
        for bad in ["", "xyz", "ABCDEF012345", "../etc/passw", "0123456789abc"] {
            assert_eq!(LeaseId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_whole_token_is_told_from_a_lookalike() {
        let token = Token::mint().expect("mint");
        let text = token.expose();
        for holding in [
            text.to_owned(),
            format!("/repos/{text}/x"),
            format!("access_token={text}&a=1"),
            format!("x{text}-more"),
            format!("q=agt_x-{text}"),
            format!("agt_{text}"),
            // Percent-encoded, once or twice over, in part or in whole.
            format!("/x/%61gt_{}", &text[4..]),
            format!("q=%2561%67t_{}", &text[4..]),
            text.bytes()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>(),
        ] {
            assert!(holds_whole_token(holding.as_bytes()), "{holding}");
        }
        let mut wrong = text.to_owned();
        let last = if wrong.ends_with('A') { "B" } else { "A" };
        wrong.replace_range(wrong.len() - 1.., last);
        for lookalike in [
            "/repos/acme/agt_tools",
            "agt_short",
            "/a%2Fb%zz%4",
            &text[..text.len() - 1],
            &wrong,
        ] {
            assert!(!holds_whole_token(lookalike.as_bytes()), "{lookalike}");
        }
    }

    #[test]
    fn token_shaped_text_is_recognised_and_redacted() {
        let token = Token::mint().expect("mint");
        let text = token.expose();
        for shaped in [text, "agt_", "agt_short", &format!("read:{text}")] {
            assert!(is_token_shaped(shaped), "{shaped}");
        }
        for plain in ["read:articles", "LEASE_TOKEN", "3f9a2b1c4d5e", "x agt_ab y"] {
            assert!(!is_token_shaped(plain), "{plain}");
        }
        let message = format!("invalid value '{text}' for '--ttl': and '{text}x' again");
        let redacted = redact(&message);
        assert!(!redacted.contains(text), "{redacted}");
        assert_eq!(
            redacted,
            "invalid value 'agt_***' for '--ttl': and 'agt_***' again"
        );
        assert_eq!(redact("nothing here"), "nothing here");
        // A variable need not be UTF-8: a token in one that is not is found all the same.
        assert!(holds_token(
            &[b"\xff ".as_slice(), text.as_bytes()].concat()
        ));
        assert!(!holds_token(b"\xff read:articles"));
        // A token at the very start, as when the whole value is one, and then another.
        assert_eq!(redact(text), "agt_***");
        assert_eq!(redact(&format!("{text} {text}")), "agt_*** agt_***");
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

        proptest! {
            #[test]
            fn any_one_character_changed_is_malformed(position in 0usize..BODY_LEN, replacement in 0usize..64) {
                let token = Token::mint().expect("mint");
                let mut bytes = token.expose().as_bytes().to_vec();
                let index = PREFIX.len() + position;
                prop_assume!(bytes[index] != ALPHABET[replacement]);
                bytes[index] = ALPHABET[replacement];
                let changed = String::from_utf8(bytes).expect("ascii");
                prop_assert!(!Token::presented(changed).is_well_formed());
            }

            #[test]
            fn any_truncation_or_extension_is_malformed(cut in 0usize..BODY_LEN, extra in "[A-Za-z0-9_-]{1,4}") {
                let token = Token::mint().expect("mint");
                let text = token.expose();
                prop_assert!(!Token::presented(text[..PREFIX.len() + cut].to_owned()).is_well_formed());
                let extended = format!("{text}{extra}");
                prop_assert!(!Token::presented(extended).is_well_formed());
            }

            #[test]
            fn arbitrary_text_is_not_a_token(text in "\\PC{0,80}") {
                prop_assert!(!Token::presented(text.clone()).is_well_formed() || text.starts_with(PREFIX));
            }

            /// The quick answer for text without the prefix agrees with the scan, UTF-8 or not.
            #[test]
            fn holding_a_token_is_what_the_scan_finds(
                before in proptest::collection::vec(any::<u8>(), 0..24),
                middle in prop::sample::select(vec!["", "agt_", "agt_abcdefgh", "agt_abc", "ag", "xagt_12345678_-"]),
                after in proptest::collection::vec(any::<u8>(), 0..24),
            ) {
                let bytes: Vec<u8> = [&before[..], middle.as_bytes(), &after[..]].concat();
                let scanned = bytes.starts_with(PREFIX.as_bytes()) || token_spans(&bytes).next().is_some();
                prop_assert_eq!(holds_token(&bytes), scanned);
            }
        }
    }
}
