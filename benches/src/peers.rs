//! The peer proxies we measure against, in the same two-hop topology as a
//! sidecar pair: nginx and haproxy, one worker/thread each, upstream
//! keep-alive on, logging off. Configs are written to a temp dir.

use anyhow::{Context, Result};
use meshctl::procs::Proc;
use std::path::Path;
use tokio::process::Command;

/// Ports one proxy of a pair listens on and forwards to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hop {
    /// HTTP/1.1 listener.
    pub(crate) http: u16,
    /// h2c listener (gRPC).
    pub(crate) grpc: u16,
    /// Where HTTP goes next.
    pub(crate) http_up: u16,
    /// Where gRPC goes next.
    pub(crate) grpc_up: u16,
}

fn nginx_conf(dir: &Path, name: &str, hop: Hop) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;
daemon off;
master_process on;
pid {d}/{name}.pid;
error_log {d}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/{name}-body;
  proxy_temp_path {d}/{name}-proxy;
  fastcgi_temp_path {d}/{name}-fcgi;
  uwsgi_temp_path {d}/{name}-uwsgi;
  scgi_temp_path {d}/{name}-scgi;
  # Keep connections for the whole run: nginx's default of 1,000 requests per
  # connection makes it drop h2 connections with calls in flight under load.
  keepalive_requests 10000000;
  upstream up {{ server 127.0.0.1:{http_up}; keepalive 64; keepalive_requests 10000000; }}
  upstream grpc_up {{ server 127.0.0.1:{grpc_up}; keepalive 64; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{http};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }}
  }}
  server {{
    listen 127.0.0.1:{grpc} http2;
    location / {{ grpc_pass grpc://grpc_up; }}
  }}
}}
",
        http = hop.http,
        grpc = hop.grpc,
        http_up = hop.http_up,
        grpc_up = hop.grpc_up,
    )
}

fn haproxy_conf(hop: Hop) -> String {
    format!(
        "global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend web
  bind 127.0.0.1:{http}
  default_backend web_up
backend web_up
  http-reuse always
  server s1 127.0.0.1:{http_up}
frontend grpc
  bind 127.0.0.1:{grpc} proto h2
  default_backend grpc_up
backend grpc_up
  http-reuse always
  server s1 127.0.0.1:{grpc_up} proto h2
",
        http = hop.http,
        grpc = hop.grpc,
        http_up = hop.http_up,
        grpc_up = hop.grpc_up,
    )
}

/// Starts one nginx (master + 1 worker).
pub(crate) async fn nginx(dir: &Path, name: &str, hop: Hop) -> Result<Proc> {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(&conf, nginx_conf(dir, name, hop))?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join(format!("{name}.stderr.log")));
    Proc::spawn_plain(name, cmd, dir).context("starting nginx (apt-get install nginx-light)")
}

/// Starts one haproxy (1 thread).
pub(crate) async fn haproxy(dir: &Path, name: &str, hop: Hop) -> Result<Proc> {
    let conf = dir.join(format!("{name}.cfg"));
    std::fs::write(&conf, haproxy_conf(hop))?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&conf);
    Proc::spawn_plain(name, cmd, dir).context("starting haproxy (apt-get install haproxy)")
}

/// A free loopback port (bind, read, release).
pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
