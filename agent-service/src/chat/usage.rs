//! The usage ledger and daily quotas. Every LLM call and tool call is written to `usage_events`
//! in the agent's store (shared by all replicas on PostgreSQL), built from the very status-log
//! entries the client receives (`llm_response`, `tool_success` / `tool_error`), so the ledger and
//! the status log always agree. Reports: `GET /api/usage` (the caller's) and `GET /api/admin/usage`
//! (everyone's, admins only). Quotas (`AGENT_USAGE_DAILY_*`, per UTC day) are checked from the
//! ledger before each LLM call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{Datelike, Duration as Days, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;
use shared::status_log::Progress;

use crate::chat::store::{Store, StoreError};
use crate::config::ScaleConfig;
use crate::metrics::Metrics;
use db::with_pool;

/// Longest error text kept in the ledger.
const MAX_ERROR_CHARS: usize = 200;
/// Longest report range, in days.
pub const MAX_RANGE_DAYS: i64 = 366;

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageEvent {
    pub kind: &'static str,
    pub provider: String,
    pub model: String,
    pub tool: Option<String>,
    pub prompt_chars: i64,
    pub response_chars: i64,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub output_length: Option<i64>,
    pub duration_ms: i64,
    pub ok: bool,
    pub error: Option<String>,
}

fn int(p: &Progress, key: &str) -> Option<i64> {
    p.detail(key).and_then(Value::as_i64)
}

fn text(p: &Progress, key: &str) -> Option<String> {
    p.detail(key).and_then(Value::as_str).map(str::to_string)
}

fn short(e: String) -> String {
    e.chars().take(MAX_ERROR_CHARS).collect()
}

impl UsageEvent {
    /// The ledger row of a status-log entry, if the entry is an LLM or tool outcome.
    /// `provider`/`model` name the connection's LLM (for tool rows, which carry neither).
    pub fn from_progress(p: &Progress, provider: &str, model: &str) -> Option<UsageEvent> {
        match p.stage.as_str() {
            "llm_response" => {
                let error = text(p, "error").map(short);
                Some(UsageEvent {
                    kind: "llm",
                    provider: text(p, "provider").unwrap_or_else(|| provider.to_string()),
                    model: text(p, "model").unwrap_or_else(|| model.to_string()),
                    tool: None,
                    prompt_chars: int(p, "prompt_chars").unwrap_or(0),
                    response_chars: int(p, "response_chars").unwrap_or(0),
                    prompt_tokens: int(p, "prompt_tokens"),
                    completion_tokens: int(p, "completion_tokens"),
                    output_length: None,
                    duration_ms: int(p, "duration_ms").unwrap_or(0),
                    ok: error.is_none(),
                    error,
                })
            }
            "tool_success" | "tool_error" => Some(UsageEvent {
                kind: "tool",
                provider: provider.to_string(),
                model: model.to_string(),
                tool: text(p, "tool"),
                output_length: Some(int(p, "output_length").unwrap_or(0)),
                duration_ms: int(p, "duration_ms").unwrap_or(0),
                ok: p.stage == "tool_success",
                error: text(p, "error").map(short),
                ..Default::default()
            }),
            _ => None,
        }
    }
}

/// Sums over a set of ledger rows, in the JSON shape of the reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub llm_calls: i64,
    pub prompt_chars: i64,
    pub response_chars: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub tool_calls: i64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.llm_calls += o.llm_calls;
        self.prompt_chars += o.prompt_chars;
        self.response_chars += o.response_chars;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.tool_calls += o.tool_calls;
    }
}

/// One grouped row from the ledger: a user's use on one day with one provider and model.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub user_id: i64,
    pub day: String,
    pub provider: String,
    pub model: String,
    pub totals: Totals,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayUsage {
    pub day: String,
    #[serde(flatten)]
    pub totals: Totals,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelUsage {
    pub provider: String,
    pub model: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// One user's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub user_id: i64,
    pub from: String,
    pub to: String,
    pub totals: Totals,
    pub by_day: Vec<DayUsage>,
    pub by_model: Vec<ModelUsage>,
}

/// Folds grouped rows into one report per user (ordered by user id; days and models sorted).
pub fn reports(buckets: &[Bucket], from: &str, to: &str) -> Vec<Report> {
    type PerUser = (
        Totals,
        BTreeMap<String, Totals>,
        BTreeMap<(String, String), Totals>,
    );
    let mut users: BTreeMap<i64, PerUser> = BTreeMap::new();
    for b in buckets {
        let (totals, days, models) = users.entry(b.user_id).or_default();
        totals.add(&b.totals);
        days.entry(b.day.clone()).or_default().add(&b.totals);
        models
            .entry((b.provider.clone(), b.model.clone()))
            .or_default()
            .add(&b.totals);
    }
    users
        .into_iter()
        .map(|(user_id, (totals, days, models))| Report {
            user_id,
            from: from.to_string(),
            to: to.to_string(),
            totals,
            by_day: days
                .into_iter()
                .map(|(day, totals)| DayUsage { day, totals })
                .collect(),
            by_model: models
                .into_iter()
                .map(|((provider, model), totals)| ModelUsage {
                    provider,
                    model,
                    totals,
                })
                .collect(),
        })
        .collect()
}

/// An empty report for a user with no use in the range.
pub fn empty_report(user_id: i64, from: &str, to: &str) -> Report {
    Report {
        user_id,
        from: from.to_string(),
        to: to.to_string(),
        totals: Totals::default(),
        by_day: Vec::new(),
        by_model: Vec::new(),
    }
}

/// The report range from `?from=YYYY-MM-DD&to=YYYY-MM-DD`: `to` defaults to today (UTC), `from`
/// to the first day of `to`'s month. Errors are messages for a 400.
pub fn parse_range(
    from: Option<&str>,
    to: Option<&str>,
    today: NaiveDate,
) -> Result<(NaiveDate, NaiveDate), String> {
    let day = |name: &str, v: &str| {
        NaiveDate::parse_from_str(v, "%Y-%m-%d")
            .map_err(|_| format!("{name} must be a date like 2026-11-26"))
    };
    let to = match to {
        Some(v) => day("to", v)?,
        None => today,
    };
    let from = match from {
        Some(v) => day("from", v)?,
        None => to.with_day(1).unwrap_or(to),
    };
    if from > to {
        return Err("from must not be after to".into());
    }
    if (to - from).num_days() >= MAX_RANGE_DAYS {
        return Err(format!("the range may span at most {MAX_RANGE_DAYS} days"));
    }
    Ok((from, to))
}

/// Today's date (UTC) as the ledger writes it.
pub fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn day_string(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// Which daily quota refused a call, and when it resets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub quota: &'static str,
    pub limit: u64,
    pub used: u64,
    pub resets_at: String,
}

impl QuotaExceeded {
    /// What the user reads.
    pub fn message(&self) -> String {
        let what = match self.quota {
            "llm_calls" => format!("{} LLM calls", self.limit),
            _ => format!("{} prompt characters", self.limit),
        };
        format!(
            "Your daily quota of {what} is used up; it resets at {}.",
            self.resets_at
        )
    }
}

/// The next UTC midnight after `today`, RFC 3339.
pub fn reset_time(today: NaiveDate) -> String {
    let next = today + Days::days(1);
    format!("{}T00:00:00Z", day_string(next))
}

/// Whether one more LLM call sending `prompt_chars` fits today's quotas, given today's
/// `(llm_calls, prompt_chars)` so far. A limit of 0 is off.
pub fn check_quota(
    limits: (u64, u64),
    used: (u64, u64),
    prompt_chars: u64,
    today: NaiveDate,
) -> Result<(), QuotaExceeded> {
    let (max_calls, max_chars) = limits;
    let (calls, chars) = used;
    if max_calls > 0 && calls + 1 > max_calls {
        return Err(QuotaExceeded {
            quota: "llm_calls",
            limit: max_calls,
            used: calls,
            resets_at: reset_time(today),
        });
    }
    if max_chars > 0 && chars + prompt_chars > max_chars {
        return Err(QuotaExceeded {
            quota: "prompt_chars",
            limit: max_chars,
            used: chars,
            resets_at: reset_time(today),
        });
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The ledger over the agent's store.
#[derive(Clone)]
pub struct Ledger {
    store: Store,
}

const SUMS: &str = "COALESCE(CAST(SUM(CASE WHEN kind = 'llm' THEN 1 ELSE 0 END) AS BIGINT), 0), \
     COALESCE(CAST(SUM(prompt_chars) AS BIGINT), 0), COALESCE(CAST(SUM(response_chars) AS BIGINT), 0), \
     COALESCE(CAST(SUM(COALESCE(prompt_tokens, 0)) AS BIGINT), 0), \
     COALESCE(CAST(SUM(COALESCE(completion_tokens, 0)) AS BIGINT), 0), \
     COALESCE(CAST(SUM(CASE WHEN kind = 'tool' THEN 1 ELSE 0 END) AS BIGINT), 0)";

type BucketRow = (i64, String, String, String, i64, i64, i64, i64, i64, i64);

impl Ledger {
    pub fn new(store: Store) -> Ledger {
        Ledger { store }
    }

    /// Writes one row (committed when this returns).
    pub async fn record(
        &self,
        user_id: i64,
        session_id: &str,
        e: &UsageEvent,
    ) -> Result<(), StoreError> {
        let q = "INSERT INTO usage_events (user_id, session_id, kind, provider, model, tool, prompt_chars, response_chars, \
             prompt_tokens, completion_tokens, output_length, duration_ms, ok, error, day, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";
        let day = day_string(today());
        macro_rules! run {
            ($p:expr) => {
                sqlx::query(q)
                    .bind(user_id)
                    .bind(session_id)
                    .bind(e.kind)
                    .bind(&e.provider)
                    .bind(&e.model)
                    .bind(&e.tool)
                    .bind(e.prompt_chars)
                    .bind(e.response_chars)
                    .bind(e.prompt_tokens)
                    .bind(e.completion_tokens)
                    .bind(e.output_length)
                    .bind(e.duration_ms)
                    .bind(i64::from(e.ok))
                    .bind(&e.error)
                    .bind(&day)
                    .bind(now_ms())
                    .execute($p)
                    .await
            };
        }
        with_pool!(self.store.pool(), p => run!(p).map(|_| ()))?;
        Ok(())
    }

    /// Today's `(llm_calls, prompt_chars)` of a user.
    pub async fn today(&self, user_id: i64) -> Result<(u64, u64), StoreError> {
        let q = format!("SELECT {SUMS} FROM usage_events WHERE user_id = $1 AND day = $2");
        let day = day_string(today());
        let row: (i64, i64, i64, i64, i64, i64) = with_pool!(self.store.pool(), p => {
            sqlx::query_as(&q).bind(user_id).bind(&day).fetch_one(p).await
        })?;
        Ok((row.0.max(0) as u64, row.1.max(0) as u64))
    }

    /// Grouped rows for a range, for one user or everyone.
    pub async fn buckets(
        &self,
        user: Option<i64>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<Bucket>, StoreError> {
        let filter = if user.is_some() {
            " AND user_id = $3"
        } else {
            ""
        };
        let q = format!(
            "SELECT user_id, day, COALESCE(provider, ''), COALESCE(model, ''), {SUMS} FROM usage_events \
             WHERE day >= $1 AND day <= $2{filter} GROUP BY user_id, day, provider, model"
        );
        let (from, to) = (day_string(from), day_string(to));
        macro_rules! run {
            ($p:expr) => {{
                let mut query = sqlx::query_as::<_, BucketRow>(&q).bind(&from).bind(&to);
                if let Some(u) = user {
                    query = query.bind(u);
                }
                query.fetch_all($p).await
            }};
        }
        let rows: Vec<BucketRow> = with_pool!(self.store.pool(), p => run!(p))?;
        Ok(rows
            .into_iter()
            .map(|r| Bucket {
                user_id: r.0,
                day: r.1,
                provider: r.2,
                model: r.3,
                totals: Totals {
                    llm_calls: r.4,
                    prompt_chars: r.5,
                    response_chars: r.6,
                    prompt_tokens: r.7,
                    completion_tokens: r.8,
                    tool_calls: r.9,
                },
            })
            .collect())
    }
}

/// One connection's accounting: records its events and checks its user's quotas.
#[derive(Clone)]
pub struct Account {
    pub ledger: Ledger,
    pub metrics: Arc<Metrics>,
    pub user_id: i64,
    pub session_id: String,
    pub provider: String,
    pub model: String,
    /// `(daily_llm_calls, daily_prompt_chars)`; 0 = off.
    pub limits: (u64, u64),
}

impl Account {
    pub fn new(
        ledger: Ledger,
        metrics: Arc<Metrics>,
        scale: &ScaleConfig,
        user_id: i64,
        session_id: &str,
        provider: &str,
        model: &str,
    ) -> Account {
        Account {
            ledger,
            metrics,
            user_id,
            session_id: session_id.to_string(),
            provider: provider.to_string(),
            model: model.to_string(),
            limits: (
                scale.daily_llm_calls_per_user,
                scale.daily_prompt_chars_per_user,
            ),
        }
    }

    /// Refuses a call that would go over a daily quota. A ledger that cannot be read does not
    /// stop chat (logged); quotas are then not enforced for that call.
    pub async fn check(&self, prompt_chars: usize) -> Result<(), QuotaExceeded> {
        if self.limits == (0, 0) {
            return Ok(());
        }
        let used = match self.ledger.today(self.user_id).await {
            Ok(u) => u,
            Err(e) => {
                tracing::error!("usage ledger unreadable, quota not checked: {e}");
                return Ok(());
            }
        };
        let verdict = check_quota(self.limits, used, prompt_chars as u64, today());
        if let Err(q) = &verdict {
            self.metrics
                .quota_refusals
                .with_label_values(&[q.quota])
                .inc();
        }
        verdict
    }

    /// Writes the ledger row of a status-log entry (if it is one) and counts it in the metrics.
    pub async fn record(&self, p: &Progress) {
        let Some(e) = UsageEvent::from_progress(p, &self.provider, &self.model) else {
            return;
        };
        if e.kind == "llm" {
            let m = &self.metrics;
            let model = m.model_label(&e.model);
            let outcome = if e.ok { "ok" } else { "error" };
            m.usage_llm_calls
                .with_label_values(&[&e.provider, &model, outcome])
                .inc();
            m.usage_prompt_chars
                .with_label_values(&[&e.provider, &model])
                .inc_by(e.prompt_chars.max(0) as u64);
            m.usage_response_chars
                .with_label_values(&[&e.provider, &model])
                .inc_by(e.response_chars.max(0) as u64);
            for (kind, n) in [
                ("prompt", e.prompt_tokens),
                ("completion", e.completion_tokens),
            ] {
                if let Some(n) = n {
                    m.usage_tokens
                        .with_label_values(&[&e.provider, &model, kind])
                        .inc_by(n.max(0) as u64);
                }
            }
        }
        if let Err(err) = self.ledger.record(self.user_id, &self.session_id, &e).await {
            tracing::error!("usage ledger write failed: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn ledger_rows_come_from_status_log_entries() {
        let p = Progress::new("llm_response", "x")
            .with("provider", "openai")
            .with("model", "gpt-4o-mini")
            .with("prompt_chars", 120)
            .with("response_chars", 40)
            .with("prompt_tokens", 30)
            .with("duration_ms", 12);
        let e = UsageEvent::from_progress(&p, "offline", "offline").unwrap();
        assert_eq!(e.kind, "llm");
        assert_eq!(
            (e.provider.as_str(), e.model.as_str()),
            ("openai", "gpt-4o-mini")
        );
        assert_eq!((e.prompt_chars, e.response_chars), (120, 40));
        assert_eq!((e.prompt_tokens, e.completion_tokens), (Some(30), None));
        assert!(e.ok);
        let failed = Progress::new("llm_response", "x").with("error", "x".repeat(500));
        let e = UsageEvent::from_progress(&failed, "offline", "m").unwrap();
        assert!(!e.ok);
        assert_eq!(e.error.unwrap().len(), MAX_ERROR_CHARS);
        let tool = Progress::new("tool_success", "x")
            .with("tool", "search_articles")
            .with("output_length", 99)
            .with("duration_ms", 3);
        let e = UsageEvent::from_progress(&tool, "offline", "m").unwrap();
        assert_eq!(
            (e.kind, e.output_length, e.duration_ms),
            ("tool", Some(99), 3)
        );
        assert!(UsageEvent::from_progress(&Progress::new("llm_request", "x"), "o", "m").is_none());
    }

    #[test]
    fn reports_fold_by_day_and_model() {
        let t = |calls, chars| Totals {
            llm_calls: calls,
            prompt_chars: chars,
            ..Default::default()
        };
        let b = |user, day: &str, model: &str, totals| Bucket {
            user_id: user,
            day: day.into(),
            provider: "openai".into(),
            model: model.into(),
            totals,
        };
        let r = reports(
            &[
                b(2, "2026-11-02", "a", t(1, 10)),
                b(1, "2026-11-02", "b", t(2, 5)),
                b(1, "2026-11-01", "a", t(1, 7)),
                b(1, "2026-11-02", "a", t(1, 1)),
            ],
            "2026-11-01",
            "2026-11-30",
        );
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].user_id, 1);
        assert_eq!(r[0].totals, t(4, 13));
        assert_eq!(r[0].by_day.len(), 2);
        assert_eq!(r[0].by_day[0].day, "2026-11-01");
        assert_eq!(r[0].by_day[1].totals, t(3, 6));
        assert_eq!(r[0].by_model[0].totals, t(2, 8));
        let json = serde_json::to_value(&r[1]).unwrap();
        assert_eq!(json["by_model"][0]["model"], "a");
        assert_eq!(json["by_day"][0]["llm_calls"], 1);
        assert_eq!(json["totals"]["tool_calls"], 0);
    }

    #[test]
    fn ranges() {
        let today = d("2026-11-26");
        assert_eq!(
            parse_range(None, None, today).unwrap(),
            (d("2026-11-01"), today)
        );
        assert_eq!(
            parse_range(Some("2026-10-05"), Some("2026-10-06"), today).unwrap(),
            (d("2026-10-05"), d("2026-10-06"))
        );
        assert!(parse_range(Some("2026-13-01"), None, today).is_err());
        assert!(parse_range(Some("2026-11-27"), Some("2026-11-26"), today).is_err());
        assert!(parse_range(Some("2020-01-01"), None, today).is_err());
        assert!(parse_range(Some("x' OR 1=1"), None, today).is_err());
    }

    #[test]
    fn quotas() {
        let today = d("2026-11-26");
        assert!(check_quota((0, 0), (1000, 1000), 10, today).is_ok());
        assert!(check_quota((2, 0), (1, 0), 10, today).is_ok());
        let q = check_quota((1, 0), (1, 0), 10, today).unwrap_err();
        assert_eq!(q.quota, "llm_calls");
        assert_eq!(q.resets_at, "2026-11-27T00:00:00Z");
        assert!(
            q.message().contains("2026-11-27T00:00:00Z"),
            "{}",
            q.message()
        );
        assert!(check_quota((0, 100), (0, 90), 10, today).is_ok());
        assert_eq!(
            check_quota((0, 100), (0, 90), 11, today).unwrap_err().quota,
            "prompt_chars"
        );
    }
}
