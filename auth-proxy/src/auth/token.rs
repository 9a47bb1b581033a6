//! Finding the client's token: the `token` query parameter first (browsers cannot set headers on a
//! WebSocket handshake), then `Authorization: Bearer <t>`. Also strips the token from the query
//! string that is forwarded, keeping every other parameter as it was, in order.

use std::borrow::Cow;

/// Why no usable token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// Neither place holds a non-empty token.
    Missing,
    /// The query and the header (or two query parameters) hold different tokens.
    Ambiguous,
    /// Longer than the configured cap; not parsed.
    Oversized,
}

/// The token of a request, given its raw query string and `Authorization` header value.
pub fn extract(
    query: Option<&str>,
    authorization: Option<&[u8]>,
    max_bytes: usize,
) -> Result<String, TokenProblem> {
    let from_query = query_token(query.unwrap_or(""))?;
    let from_header = authorization.and_then(bearer);
    let token = match (from_query, from_header) {
        (Some(q), Some(h)) if q != h => return Err(TokenProblem::Ambiguous),
        (Some(q), _) => q,
        (None, Some(h)) => h.to_string(),
        (None, None) => return Err(TokenProblem::Missing),
    };
    if token.len() > max_bytes {
        return Err(TokenProblem::Oversized);
    }
    Ok(token)
}

/// The non-empty `token` parameter(s) of a query; two different ones are ambiguous.
fn query_token(query: &str) -> Result<Option<String>, TokenProblem> {
    let mut found: Option<Cow<'_, str>> = None;
    for (_, (key, value)) in pairs(query) {
        if key != "token" || value.is_empty() {
            continue;
        }
        match &found {
            Some(prev) if *prev != value => return Err(TokenProblem::Ambiguous),
            Some(_) => {}
            None => found = Some(value),
        }
    }
    Ok(found.map(Cow::into_owned))
}

/// The non-empty `&`-separated pairs of a query, each as written and decoded the way
/// `form_urlencoded` decodes it (`+` is a space, `%XX` a byte, bad UTF-8 replaced). A pair with
/// neither `%` nor `+` is its own decoding and is borrowed, not copied: the common case.
fn pairs(query: &str) -> impl Iterator<Item = (&str, (Cow<'_, str>, Cow<'_, str>))> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let decoded = if pair.bytes().any(|b| b == b'%' || b == b'+') {
                form_urlencoded::parse(pair.as_bytes())
                    .next()
                    .unwrap_or_default()
            } else {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (Cow::Borrowed(key), Cow::Borrowed(value))
            };
            (pair, decoded)
        })
}

/// The credentials of `Bearer <t>` (scheme case-insensitive); `None` for other schemes or empty.
fn bearer(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then_some(token)
}

/// The query string without its `token` parameters, other parameters kept byte for byte and in
/// order; `None` when nothing is left.
pub fn strip_token(query: &str) -> Option<String> {
    let kept: Vec<&str> = pairs(query)
        .filter(|(_, (key, _))| key != "token")
        .map(|(pair, _)| pair)
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// `path` plus the stripped query, ready to forward.
pub fn forwarded_uri(path: &str, query: Option<&str>) -> String {
    forwarded_uri_of(path, query.and_then(strip_token).as_deref())
}

/// `path` plus an already stripped query.
pub fn forwarded_uri_of(path: &str, stripped_query: Option<&str>) -> String {
    match stripped_query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: usize = 8192;

    #[test]
    fn query_first_then_bearer() {
        assert_eq!(
            extract(Some("token=abc&provider=x"), None, CAP),
            Ok("abc".into())
        );
        assert_eq!(extract(None, Some(b"Bearer abc"), CAP), Ok("abc".into()));
        assert_eq!(
            extract(None, Some(b"bEaReR   abc  "), CAP),
            Ok("abc".into())
        );
        assert_eq!(
            extract(Some("token=abc"), Some(b"Bearer abc"), CAP),
            Ok("abc".into())
        );
    }

    #[test]
    fn percent_encoded_tokens_are_decoded() {
        assert_eq!(
            extract(Some("token=a%2Eb.c"), None, CAP),
            Ok("a.b.c".into())
        );
    }

    #[test]
    fn missing_and_empty() {
        assert_eq!(extract(None, None, CAP), Err(TokenProblem::Missing));
        assert_eq!(
            extract(Some("token="), None, CAP),
            Err(TokenProblem::Missing)
        );
        assert_eq!(
            extract(Some("provider=x"), Some(b"Bearer "), CAP),
            Err(TokenProblem::Missing)
        );
        assert_eq!(
            extract(None, Some(b"Basic dXNlcjpwYXNz"), CAP),
            Err(TokenProblem::Missing)
        );
        assert_eq!(
            extract(None, Some(b"Bearer"), CAP),
            Err(TokenProblem::Missing)
        );
        assert_eq!(
            extract(None, Some(&[0xff, 0xfe]), CAP),
            Err(TokenProblem::Missing)
        );
    }

    #[test]
    fn ambiguity() {
        assert_eq!(
            extract(Some("token=a"), Some(b"Bearer b"), CAP),
            Err(TokenProblem::Ambiguous)
        );
        assert_eq!(
            extract(Some("token=a&token=b"), None, CAP),
            Err(TokenProblem::Ambiguous)
        );
        assert_eq!(extract(Some("token=a&token=a"), None, CAP), Ok("a".into()));
    }

    #[test]
    fn oversized_is_refused() {
        let big = "a".repeat(CAP + 1);
        assert_eq!(
            extract(Some(&format!("token={big}")), None, CAP),
            Err(TokenProblem::Oversized)
        );
        assert_eq!(
            extract(None, Some(format!("Bearer {big}").as_bytes()), CAP),
            Err(TokenProblem::Oversized)
        );
        assert!(extract(Some(&format!("token={}", "a".repeat(CAP))), None, CAP).is_ok());
    }

    #[test]
    fn pairs_decode_as_form_urlencoded_does() {
        let queries = [
            "token=abc&provider=x",
            "a=1&&b=2&",
            "token",
            "=x&token=",
            "tok%65n=a%2Eb&x=y+z",
            "a+b=c%20d&e=%ff%fe",
            "k=v=w&%=%&+=+",
            "token=a%2",
            "ü=ö&token=é",
        ];
        for q in queries {
            let ours: Vec<(String, String)> = pairs(q)
                .map(|(_, (k, v))| (k.into_owned(), v.into_owned()))
                .collect();
            let theirs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            assert_eq!(ours, theirs, "{q}");
        }
    }

    #[test]
    fn stripping_keeps_other_parameters_in_order() {
        assert_eq!(
            strip_token("token=abc&provider=openai&model=gpt-4o-mini").as_deref(),
            Some("provider=openai&model=gpt-4o-mini")
        );
        assert_eq!(
            strip_token("provider=ollama&token=abc&model=m%20x").as_deref(),
            Some("provider=ollama&model=m%20x")
        );
        assert_eq!(strip_token("token=abc"), None);
        assert_eq!(strip_token("tok%65n=abc&a=1").as_deref(), Some("a=1"));
        assert_eq!(strip_token("token&a=1").as_deref(), Some("a=1"));
        assert_eq!(strip_token("tokens=1").as_deref(), Some("tokens=1"));
        assert_eq!(
            forwarded_uri("/ws/x", Some("token=t&provider=offline")),
            "/ws/x?provider=offline"
        );
        assert_eq!(forwarded_uri("/ws/x", Some("token=t")), "/ws/x");
        assert_eq!(forwarded_uri("/ws/x", None), "/ws/x");
    }
}
