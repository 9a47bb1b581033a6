//! How a client request changes on its way to the agent, one policy for every codec: the token
//! stripped from the target, client identity, forwarding and upgrade headers dropped, `Connection`
//! tokens naming them cleaned, the signed identity, request id and forwarded headers added.
//! [`Edge::upstream_edits`] computes it; pingora's header map gets it from [`apply_edits`], the
//! lean path's head writer from [`crate::accept::head::write_upstream_request`].

use pingora::http::RequestHeader;
use pingora::prelude::*;
use shared::identity::{BoundRequest, Identity};

use crate::auth::token;
use crate::clock::now_unix;
use crate::decide::headers;
use crate::decide::{Edge, RequestCtx};

/// How a client request changes on its way to the agent (see [`Edge::upstream_edits`]). One policy
/// for both codecs: pingora's header map and the lean path's head writer ([`crate::accept::head`]).
pub struct UpstreamEdits {
    /// The target to forward instead of the client's (the token stripped); `None` keeps it.
    pub target: Option<String>,
    /// `Authorization` is dropped (the default; `forward_credentials` keeps it).
    pub strip_authorization: bool,
    /// The peer is a trusted proxy: its forwarding headers are kept.
    pub peer_trusted: bool,
    /// Headers the edge sets; any the client sent under these names are dropped.
    pub added: Vec<(&'static str, String)>,
}

impl UpstreamEdits {
    /// True for a client header that must not reach the agent: a reserved identity header (any
    /// spelling), `Authorization` when stripped, a forwarding header only the edge or a trusted
    /// proxy may send, an upgrade header (only the tunnel upgrades, and it sets its own), or one
    /// the edge sets itself.
    pub fn drops(&self, name: &str) -> bool {
        (self.strip_authorization && name.eq_ignore_ascii_case("authorization"))
            || shared::identity::is_reserved_header(name)
            || headers::forwarding_dropped(name, self.peer_trusted)
            || headers::is_upgrade_header(name)
            || self.added.iter().any(|(n, _)| name.eq_ignore_ascii_case(n))
    }
}

impl Edge {
    /// The request the upstream gets: the token and `Authorization` stripped (unless
    /// `forward_credentials`), client identity and upgrade headers deleted, the signed identity,
    /// request id and forwarded headers added ([`Edge::upstream_edits`], applied to pingora's
    /// header map by [`apply_edits`]).
    pub(crate) fn prepare_upstream_request(
        &self,
        upstream: &mut RequestHeader,
        method: &http::Method,
        ctx: &RequestCtx,
    ) -> Result<()> {
        let edits = self.upstream_edits(
            method.as_str(),
            upstream.uri.path(),
            upstream.uri.query(),
            ctx,
        );
        apply_edits(upstream, edits)
    }

    /// How a request changes on its way to the agent, whichever codec writes it: the target
    /// without the token, the client headers to drop, and the headers the edge sets (the signed
    /// identity bound to method, path and the forwarded query; request id; forwarded headers).
    pub(crate) fn upstream_edits(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        ctx: &RequestCtx,
    ) -> UpstreamEdits {
        let strip = !self.state.config.forward_credentials;
        let stripped_query = if strip {
            query.and_then(token::strip_token)
        } else {
            None
        };
        let (target, query) = match (strip, query) {
            (true, Some(_)) => (
                Some(token::forwarded_uri_of(path, stripped_query.as_deref())),
                stripped_query.as_deref(),
            ),
            _ => (None, query),
        };
        let mut added: Vec<(&'static str, String)> = Vec::with_capacity(7);
        if let Some(user) = &ctx.user {
            let identity = Identity {
                user_id: user.id,
                username: user.username.clone(),
                is_admin: user.is_admin,
            };
            let bound = BoundRequest::new(method, path, query);
            let signed = self.state.signer.sign(&identity, bound, now_unix());
            added.extend(signed.into_pairs());
        }
        added.push(("x-request-id", ctx.request_id.clone()));
        if let Some(peer) = ctx.peer {
            let xff =
                headers::forwarded_for(peer, ctx.forwarded_for.as_deref(), &self.state.trusted);
            added.push(("x-forwarded-for", xff));
        }
        added.push(("x-forwarded-proto", "http".to_string()));
        UpstreamEdits {
            target,
            strip_authorization: strip,
            peer_trusted: ctx
                .peer
                .is_some_and(|p| headers::in_networks(p, &self.state.trusted)),
            added,
        }
    }
}

/// Applies [`UpstreamEdits`] to pingora's header map: the target, the client headers they drop,
/// `Connection` tokens naming identity or upgrade headers, then the headers the edge sets.
pub(crate) fn apply_edits(upstream: &mut RequestHeader, edits: UpstreamEdits) -> Result<()> {
    if let Some(target) = &edits.target {
        upstream.set_uri(
            target
                .parse()
                .map_err(|_| Error::explain(HTTPStatus(400), "bad request URI"))?,
        );
    }
    let dropped: Vec<String> = upstream
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| edits.drops(k))
        .map(str::to_string)
        .collect();
    for name in dropped {
        upstream.remove_header(&name);
    }
    clean_connection_header(upstream)?;
    for (name, value) in edits.added {
        upstream.insert_header(name, value)?;
    }
    Ok(())
}

/// Drops any `Connection` token naming a reserved identity header (and the header when nothing is
/// left): a client must not make a proxy on the way delete the edge's identity headers.
fn clean_connection_header(upstream: &mut RequestHeader) -> Result<()> {
    if let Some(conn) = upstream
        .headers
        .get("connection")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    {
        match headers::clean_connection(&conn) {
            Some(clean) if clean != conn => {
                upstream.insert_header("connection", clean)?;
            }
            Some(_) => {}
            None => {
                upstream.remove_header("connection");
            }
        }
    }
    Ok(())
}
