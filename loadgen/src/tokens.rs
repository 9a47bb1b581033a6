//! Tokens shaped like the News Nexus API's (HS256, `{id, iat}`) for a range of user ids, or read
//! from a file (one per line).

use std::ops::RangeInclusive;

pub fn mint(secret: &str, id: i64) -> String {
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({"id": id, "iat": iat});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )
    .expect("HS256 signing")
}

/// `1..=100` or `7`.
pub fn parse_range(s: &str) -> anyhow::Result<RangeInclusive<i64>> {
    let (a, b) = match s.split_once("..=") {
        Some((a, b)) => (a.trim().parse()?, b.trim().parse()?),
        None => {
            let n = s.trim().parse()?;
            (n, n)
        }
    };
    anyhow::ensure!(a >= 1 && a <= b, "user id range must be like 1..=100");
    Ok(a..=b)
}

/// The tokens to use, round-robin.
pub fn load(secret: Option<&str>, ids: &str, file: Option<&str>) -> anyhow::Result<Vec<String>> {
    if let Some(path) = file {
        let tokens: Vec<String> = std::fs::read_to_string(path)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        anyhow::ensure!(!tokens.is_empty(), "{path} holds no tokens");
        return Ok(tokens);
    }
    let secret =
        secret.ok_or_else(|| anyhow::anyhow!("give --secret (or JWT_SECRET) or --token-file"))?;
    Ok(parse_range(ids)?.map(|id| mint(secret, id)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_tokens() {
        assert_eq!(parse_range("1..=3").unwrap(), 1..=3);
        assert_eq!(parse_range("5").unwrap(), 5..=5);
        assert!(parse_range("0..=2").is_err());
        assert!(parse_range("3..=1").is_err());
        let t = load(Some("s"), "1..=2", None).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].split('.').count(), 3);
    }
}
