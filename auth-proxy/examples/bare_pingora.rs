//! The benchmark's reference row: a bare pingora-proxy pass-through (no authentication, no header
//! work, no metrics, no access log) with the same allocator, thread count and release profile as
//! auth-proxy, so BENCHMARKS.md shows what pingora itself costs and what the edge's own work adds.
//!
//! Usage: `bare_pingora <listen> <upstream>` (one worker thread).

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct PassThrough {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_pingora <listen> <upstream>");
        std::process::exit(2);
    };
    let Ok(upstream) = upstream.parse() else {
        eprintln!("upstream: not an address: {upstream}");
        std::process::exit(2);
    };
    // Stops at once on SIGTERM (pingora's default grace is a minute): the benchmark scripts wait
    // for their targets to exit.
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy =
        pingora::proxy::http_proxy_service(&server.configuration, PassThrough { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
