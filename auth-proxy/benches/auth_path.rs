//! The auth hot path of every handshake: token extraction, HS256 verification with the claim
//! checks (a remembered token, and with the token cache off), and the user cache hit. Goal: at most 5 µs per handshake for extraction + verification
//! + cache hit, measured here against a baseline of the bare HS256 signature check in the same run.
//!
//! Also the uncached Users query (SQLite, and PostgreSQL when reachable), the cost of a cache miss.

use std::sync::Arc;

use auth_proxy::bench::{token, JwtVerifier, Metrics, Users};
use auth_proxy::{Config, UsersConfig};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const SECRET: &str = "bench-secret-that-is-at-least-32-bytes-long";

fn config(database_url: String) -> Config {
    let mut c = Config::default();
    c.jwt.secret = SECRET.into();
    c.identity.secret = SECRET.into();
    c.users = UsersConfig {
        database_url,
        ..UsersConfig::default()
    };
    c
}

fn news_nexus_token() -> String {
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"id": 1, "iat": iat});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(test_support::sqlite_fixture(dir.path(), "nn.db"));
    let config = config(test_support::sqlite_url(&db));
    let verifier = JwtVerifier::new(&config.jwt).unwrap();
    let users = Users::new(&config.users, Arc::new(Metrics::new()));
    rt.block_on(users.get(1)).unwrap().expect("user 1 exists");
    let tok = news_nexus_token();
    let query = format!("token={tok}&provider=offline&model=offline-demo");
    let now = auth_proxy::now_unix();

    // Baseline: the HS256 signature check alone, as jsonwebtoken does it.
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
    c.bench_function("baseline: jsonwebtoken HS256 decode", |b| {
        b.iter(|| jsonwebtoken::decode::<serde_json::Value>(black_box(&tok), &key, &v).unwrap())
    });
    c.bench_function("token extraction (query)", |b| {
        b.iter(|| token::extract(black_box(Some(&query)), None, 8192).unwrap())
    });
    // The same token again and again: after the first, a hit in the verified-token cache
    // (`verified.rs`: lookup by the whole token, time claims checked again).
    c.bench_function("JWT verify + claim checks (remembered token)", |b| {
        b.iter(|| verifier.verify(black_box(&tok), now).unwrap())
    });
    let mut no_cache = config.clone();
    no_cache.jwt.verified_cache_capacity = 0;
    let every_time = JwtVerifier::new(&no_cache.jwt).unwrap();
    c.bench_function("JWT verify + claim checks (token cache off)", |b| {
        b.iter(|| every_time.verify(black_box(&tok), now).unwrap())
    });
    c.bench_function("user cache hit", |b| {
        b.to_async(&rt)
            .iter(|| async { users.get(black_box(1)).await.unwrap() })
    });
    c.bench_function("auth hot path: extract + verify + cache hit", |b| {
        b.to_async(&rt).iter(|| async {
            let t = token::extract(black_box(Some(&query)), None, 8192).unwrap();
            let id = verifier.verify(&t, now).unwrap().user_id;
            users.get(id).await.unwrap()
        })
    });
    c.bench_function("strip token from the forwarded URI", |b| {
        b.iter(|| token::forwarded_uri(black_box("/ws/abc"), black_box(Some(&query))))
    });
    c.bench_function("user lookup without cache (SQLite)", |b| {
        b.to_async(&rt)
            .iter(|| async { users.db().fetch(black_box(1)).await.unwrap() })
    });
    if let Some(pg) = rt.block_on(test_support::PgTestDb::with_fixture()) {
        let users = Users::new(&config_pg(&pg.url), Arc::new(Metrics::new()));
        rt.block_on(users.db().fetch(1))
            .unwrap()
            .expect("user 1 exists");
        c.bench_function("user lookup without cache (PostgreSQL)", |b| {
            b.to_async(&rt)
                .iter(|| async { users.db().fetch(black_box(1)).await.unwrap() })
        });
    }
}

fn config_pg(url: &str) -> UsersConfig {
    config(url.to_string()).users
}

criterion_group!(benches, bench);
criterion_main!(benches);
