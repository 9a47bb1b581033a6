//! The operator's status page, `GET /status` on the admin listener: one server-rendered HTML page
//! (no scripts, no build step) that reloads itself every few seconds. It shows the tunnels open,
//! handshakes and refusals per reason over the last minutes, the user cache's hit ratio, the
//! database's and the upstream's health, the drain state, and a form to add a revocation
//! (`POST /status/revocations`, form-encoded, checked against the admin token; only shown when the
//! admin API is enabled). The stored revocations (user ids, `jti`s, reasons) are listed only to a
//! caller that proves the admin token (`Authorization: Bearer`, HTTP Basic with the token as the
//! password, or the cookie a browser gets from the sign-in or the revocation form): the admin port
//! is reachable by anyone in the cluster.
//!
//! Pure: [`StatusSnapshot`] is read from the state by the admin listener; [`render`] turns it into
//! HTML. Every value is escaped. Each number has a stable `id` so tools (and the browser test) can
//! read it.

use std::fmt::Write;

/// The revocations part of the page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Revocations {
    /// The admin API (and with it the form) is off.
    #[default]
    Off,
    /// The caller has not proved the admin token: the form, but no list.
    Hidden,
    /// The stored revocations, newest first (one line each), and the form.
    Listed(Vec<String>),
}

use crate::admin::recent::Counts;

/// Seconds between the page's own reloads.
pub const REFRESH_SECS: u64 = 2;
/// The windows shown, in minutes.
pub const WINDOWS: [u64; 3] = [1, 5, 15];
/// Sent with the page: no scripts, no framing, nothing loaded from elsewhere.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'";

/// Everything the page shows, read at one moment.
#[derive(Debug, Clone, Default)]
pub struct StatusSnapshot {
    pub version: &'static str,
    pub uptime_secs: u64,
    pub draining: bool,
    pub database_ok: bool,
    pub upstream_ok: bool,
    pub upstream: String,
    pub tunnels_open: i64,
    pub in_flight: i64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Counts per `(route, outcome)` for each of [`WINDOWS`].
    pub recent: Vec<Counts>,
    /// The stored revocations, as this caller may see them.
    pub revocations: Revocations,
    /// The answer to the last form post, shown once above the form.
    pub notice: Option<String>,
}

/// What the revocation form asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationForm {
    pub admin_token: String,
    /// `user`, `jti` or `all`.
    pub kind: String,
    /// The user id or the `jti` (ignored for `all`).
    pub value: String,
    pub reason: String,
}

/// Parses the form body (`application/x-www-form-urlencoded`).
pub fn parse_form(body: &[u8]) -> RevocationForm {
    let mut f = RevocationForm {
        admin_token: String::new(),
        kind: String::new(),
        value: String::new(),
        reason: String::new(),
    };
    for (k, v) in form_urlencoded::parse(body) {
        let v = v.trim().to_string();
        match k.as_ref() {
            "admin_token" => f.admin_token = v,
            "kind" => f.kind = v,
            "value" => f.value = v,
            "reason" => f.reason = v,
            _ => {}
        }
    }
    f
}

/// The admin API's request for a form, or why it cannot be one.
pub fn form_request(
    f: &RevocationForm,
) -> Result<crate::live::revocations::RevocationRequest, &'static str> {
    let mut r = crate::live::revocations::RevocationRequest {
        reason: Some(f.reason.clone()).filter(|r| !r.is_empty()),
        ..Default::default()
    };
    match f.kind.as_str() {
        "user" => {
            r.user_id = Some(
                f.value
                    .parse()
                    .map_err(|_| "the user id must be a positive integer")?,
            )
        }
        "jti" => r.jti = Some(f.value.clone()),
        "all" => r.all = true,
        _ => return Err("choose user, jti or all"),
    }
    Ok(r)
}

/// `hits / (hits + misses)` as a percentage, or `None` before any lookup.
pub fn hit_ratio(hits: u64, misses: u64) -> Option<f64> {
    let total = hits + misses;
    (total > 0).then(|| hits as f64 * 100.0 / total as f64)
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn state_cell(id: &str, ok: bool, good: &str, bad: &str) -> String {
    let (class, text) = if ok { ("ok", good) } else { ("bad", bad) };
    format!(r#"<td id="{id}" class="{class}">{text}</td>"#)
}

/// Handshakes accepted on the WebSocket route within a window.
fn handshakes(counts: &Counts) -> u64 {
    counts.get(&("ws", "ok")).copied().unwrap_or(0)
}

/// Refusals (anything but ok, public and preflight) within a window.
fn refusals(counts: &Counts) -> u64 {
    counts
        .iter()
        .filter(|((_, o), _)| !matches!(*o, "ok" | "public" | "preflight" | ""))
        .map(|(_, n)| n)
        .sum()
}

/// What a caller that has not proved the admin token sees instead of the revocations.
const SIGN_IN: &str = r#"<p id="revocations" class="muted">Listed to admin-token callers only: sign in, or send <code>Authorization: Bearer</code>.</p>
<form id="signin" method="post" action="/status/signin">
<input name="admin_token" type="password" placeholder="admin token" size="24" autocomplete="off">
<button type="submit">Sign in</button>
</form>
"#;

/// Posts to the admin listener itself; the admin token is the form's credential (and its CSRF
/// defence: a page elsewhere cannot know it).
const REVOCATION_FORM: &str = r#"
<form id="revoke" method="post" action="/status/revocations">
<select name="kind"><option value="user">user id</option><option value="jti">token jti</option><option value="all">all tokens</option></select>
<input name="value" placeholder="user id or jti" size="20">
<input name="reason" placeholder="reason" size="24">
<input name="admin_token" type="password" placeholder="admin token" size="24" autocomplete="off">
<button type="submit">Revoke</button>
</form>
"#;

/// The page.
pub fn render(s: &StatusSnapshot) -> String {
    let mut h = String::with_capacity(8192);
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}; url=/status">
<title>auth-proxy status</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}}
h1{{font-size:20px;margin:0 0 .2em}} h2{{font-size:16px;margin:1.4em 0 .4em}}
table{{border-collapse:collapse;background:#fff;min-width:28em}}
th,td{{border:1px solid #ccc;padding:.25em .7em;text-align:left}}
td.n{{text-align:right;font-variant-numeric:tabular-nums}}
.ok{{background:#dff3df}} .bad{{background:#f8d7d7}} .muted{{color:#777}}
</style></head><body>
<h1>auth-proxy status</h1>
<p class="muted">version {version} · up {uptime} s · this page reloads every {REFRESH_SECS} s</p>
<h2>Now</h2>
<table>
<tr><th>drain</th>{drain}</tr>
<tr><th>database (Users table)</th>{db}</tr>
<tr><th>upstream {upstream}</th>{up}</tr>
<tr><th>WebSocket tunnels open</th><td id="tunnels-open" class="n">{tunnels}</td></tr>
<tr><th>requests in flight</th><td id="in-flight" class="n">{in_flight}</td></tr>
<tr><th>user cache hit ratio</th><td id="cache-hit-ratio" class="n">{ratio}</td></tr>
<tr><th>user cache hits / misses</th><td class="n"><span id="cache-hits">{hits}</span> / <span id="cache-misses">{misses}</span></td></tr>
</table>
"#,
        version = escape(s.version),
        refresh = if s.notice.is_some() { 10 } else { REFRESH_SECS },
        uptime = s.uptime_secs,
        drain = state_cell("drain", !s.draining, "serving", "draining"),
        db = state_cell("database", s.database_ok, "up", "down"),
        upstream = escape(&s.upstream),
        up = state_cell("upstream", s.upstream_ok, "up", "down"),
        tunnels = s.tunnels_open,
        in_flight = s.in_flight,
        ratio = hit_ratio(s.cache_hits, s.cache_misses)
            .map_or_else(|| "–".to_string(), |r| format!("{r:.1} %")),
        hits = s.cache_hits,
        misses = s.cache_misses,
    );

    h.push_str("<h2>Last minutes</h2>\n<table>\n<tr><th></th>");
    for w in WINDOWS {
        let _ = write!(h, "<th>{w} min</th>");
    }
    h.push_str("</tr>\n<tr><th>WebSocket handshakes accepted</th>");
    for (w, c) in WINDOWS.iter().zip(&s.recent) {
        let _ = write!(
            h,
            r#"<td id="handshakes-{w}m" class="n">{}</td>"#,
            handshakes(c)
        );
    }
    h.push_str("</tr>\n<tr><th>refusals</th>");
    for (w, c) in WINDOWS.iter().zip(&s.recent) {
        let _ = write!(
            h,
            r#"<td id="refusals-{w}m" class="n">{}</td>"#,
            refusals(c)
        );
    }
    h.push_str("</tr>\n</table>\n");

    h.push_str("<h2>By route and outcome</h2>\n<table>\n<tr><th>route</th><th>outcome</th>");
    for w in WINDOWS {
        let _ = write!(h, "<th>{w} min</th>");
    }
    h.push_str("</tr>\n");
    let widest = s.recent.last().cloned().unwrap_or_default();
    if widest.is_empty() {
        h.push_str(r#"<tr><td colspan="5" class="muted">no requests yet</td></tr>"#);
        h.push('\n');
    }
    for (route, outcome) in widest.keys() {
        let _ = write!(
            h,
            r#"<tr><td>{}</td><td>{}</td>"#,
            escape(route),
            escape(outcome)
        );
        for (w, c) in WINDOWS.iter().zip(&s.recent) {
            let n = c.get(&(*route, *outcome)).copied().unwrap_or(0);
            let _ = write!(
                h,
                r#"<td id="{}-{}-{w}m" class="n">{n}</td>"#,
                escape(route),
                escape(outcome)
            );
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");

    h.push_str("<h2>Revocations</h2>\n");
    match &s.revocations {
        Revocations::Off => h.push_str(
            r#"<p id="revocations" class="muted">The admin API is off (set admin_token / AUTH_PROXY_ADMIN_TOKEN to list and add revocations here).</p>"#,
        ),
        Revocations::Hidden | Revocations::Listed(_) => {
            match &s.revocations {
                Revocations::Listed(list) if list.is_empty() => {
                    h.push_str(r#"<p id="revocations" class="muted">none</p>"#)
                }
                Revocations::Listed(list) => {
                    h.push_str(r#"<ul id="revocations">"#);
                    for r in list {
                        let _ = write!(h, "<li>{}</li>", escape(r));
                    }
                    h.push_str("</ul>");
                }
                _ => h.push_str(SIGN_IN),
            }
            if let Some(n) = &s.notice {
                let _ = write!(h, r#"<p id="notice"><b>{}</b></p>"#, escape(n));
            }
            h.push_str(REVOCATION_FORM);
        }
    }
    h.push_str("\n<p class=\"muted\">Raw numbers: <a href=\"/metrics\">/metrics</a> · <a href=\"/readyz\">/readyz</a></p>\n</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> StatusSnapshot {
        let mut one = Counts::new();
        one.insert(("ws", "ok"), 3);
        one.insert(("ws", "token_expired"), 2);
        one.insert(("public", "public"), 7);
        StatusSnapshot {
            version: "0.1.0",
            upstream: "127.0.0.1:8000".into(),
            database_ok: true,
            upstream_ok: false,
            tunnels_open: 4,
            cache_hits: 3,
            cache_misses: 1,
            recent: vec![one.clone(), one.clone(), one],
            ..StatusSnapshot::default()
        }
    }

    #[test]
    fn the_page_shows_every_number_with_an_id() {
        let html = render(&snapshot());
        assert!(html.contains(r#"<meta http-equiv="refresh" content="2; url=/status">"#));
        assert!(html.contains(r#"id="tunnels-open" class="n">4<"#));
        assert!(html.contains(r#"id="handshakes-1m" class="n">3<"#));
        assert!(
            html.contains(r#"id="refusals-5m" class="n">2<"#),
            "public requests are not refusals"
        );
        assert!(html.contains(r#"id="ws-token_expired-15m" class="n">2<"#));
        assert!(html.contains(r#"id="cache-hit-ratio" class="n">75.0 %<"#));
        assert!(html.contains(r#"id="upstream" class="bad">down<"#));
        assert!(html.contains(r#"id="drain" class="ok">serving<"#));
        assert!(html.contains("The admin API is off"));
        assert!(!html.contains(r#"<form id="revoke""#));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn values_are_escaped_and_empty_states_are_shown() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let s = StatusSnapshot {
            upstream: "<b>".into(),
            recent: vec![Counts::new(); 3],
            revocations: Revocations::Listed(vec!["user <7>".into()]),
            ..StatusSnapshot::default()
        };
        let html = render(&s);
        assert!(html.contains("&lt;b&gt;") && !html.contains("<b>"));
        assert!(html.contains("no requests yet"));
        assert!(html.contains("<li>user &lt;7&gt;</li>"));
        assert!(html.contains(r#"<form id="revoke" method="post" action="/status/revocations">"#));
        assert!(html.contains(r#"id="cache-hit-ratio" class="n">–<"#));
        assert_eq!(hit_ratio(0, 0), None);
        let hidden = render(&StatusSnapshot {
            recent: vec![Counts::new(); 3],
            revocations: Revocations::Hidden,
            ..StatusSnapshot::default()
        });
        assert!(
            hidden.contains(r#"action="/status/signin""#)
                && hidden.contains(r#"<form id="revoke""#)
        );
        assert!(!hidden.contains("<li>"));
    }

    #[test]
    fn the_form_becomes_an_admin_api_request() {
        let f = parse_form(b"kind=user&value=+7+&reason=left+the+company&admin_token=t%26k");
        assert_eq!(f.admin_token, "t&k");
        let r = form_request(&f).unwrap();
        assert_eq!(r.user_id, Some(7));
        assert_eq!(r.reason.as_deref(), Some("left the company"));
        assert!(form_request(&parse_form(b"kind=user&value=x")).is_err());
        assert!(form_request(&parse_form(b"kind=all")).unwrap().all);
        assert_eq!(
            form_request(&parse_form(b"kind=jti&value=abc"))
                .unwrap()
                .jti
                .as_deref(),
            Some("abc")
        );
        assert!(form_request(&parse_form(b"kind=drop")).is_err());
    }
}
