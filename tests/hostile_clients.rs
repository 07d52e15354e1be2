//! Every sidecar listener (outbound, inbound, admin) survives clients that
//! hold connections without finishing a request: silent ones that never
//! send a byte, slowloris ones that send part of a head and stop, and ones
//! that stop inside the HTTP/2 preface. Each
//! is closed at the idle timeout (`MESH_PROXY_IDLE_TIMEOUT_MS`, here
//! 600 ms), never before it, and real requests are served all the while.
//! RFC 9112 §9.8: a server "SHOULD" close idle connections it no longer
//! wants; nothing obliges it to wait for ever.

mod support;

use meshctl::traffic::burst;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::Mesh;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IDLE: Duration = Duration::from_millis(600);
/// Per listener: silent connections, slowloris ones (a head begun and
/// never finished, or a TLS ClientHello cut short) and ones stopped inside
/// the HTTP/2 preface.
const SILENT: usize = 1000;
const SLOWLORIS: usize = 500;
const PREFACE: usize = 100;

/// `SILENT` connections that send nothing, `SLOWLORIS` that send
/// `slowloris`, and `PREFACE` that send `preface` (if any), interleaved.
fn mix(slowloris: &'static [u8], preface: Option<&'static [u8]>) -> Vec<&'static [u8]> {
    let mut out = Vec::new();
    for i in 0..SILENT.max(SLOWLORIS) {
        if i < SILENT {
            out.push(&b""[..]);
        }
        if i < SLOWLORIS {
            out.push(slowloris);
        }
        if let Some(p) = preface
            && i < PREFACE
        {
            out.push(p);
        }
    }
    out
}

/// Opens one connection and sends `prefix` (maybe nothing).
async fn open(addr: SocketAddr, prefix: &'static [u8]) -> (tokio::net::TcpStream, Instant) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let opened = Instant::now();
    if !prefix.is_empty() {
        s.write_all(prefix).await.expect("sending the prefix");
    }
    (s, opened)
}

/// How long after `opened` the peer closed `s`, or `None` if it stayed
/// open past a bound well beyond the idle timeout.
async fn closed(mut s: tokio::net::TcpStream, opened: Instant) -> Option<Duration> {
    let mut buf = [0u8; 512];
    let bound = IDLE * 8;
    loop {
        match tokio::time::timeout(bound.saturating_sub(opened.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
            // A 408 or similar before the close is fine; keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

/// Opens every connection of `prefixes` one after another (so the
/// listener's accept backlog, not the sidecar, is never what is tested),
/// each watched for its close in its own task.
async fn hold_all(
    addr: SocketAddr,
    prefixes: Vec<&'static [u8]>,
) -> Vec<tokio::task::JoinHandle<Option<Duration>>> {
    let mut calls = Vec::with_capacity(prefixes.len());
    for prefix in prefixes {
        let (s, opened) = open(addr, prefix).await;
        calls.push(tokio::spawn(closed(s, opened)));
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slowloris_connections_are_closed_at_the_idle_timeout() {
    let idle_ms = IDLE.as_millis().to_string();
    let env = [("MESH_PROXY_IDLE_TIMEOUT_MS", idle_ms.as_str())];
    let mesh = Mesh::start("hostile").await;
    let inst = mesh
        .instance_with("echo", "v1", "echo-v1-a", &[], None, &env)
        .await;
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    let client = mesh.client_with("client-0", &env).await;
    let listeners = [
        ("outbound", client.outbound),
        ("inbound", inst.sidecar.addr("inbound").unwrap()),
        ("admin", inst.admin()),
    ];
    for (name, addr) in listeners {
        // Silent; a head begun and never finished; a part of the HTTP/2
        // preface (RFC 9113 §3.4) and then nothing.
        let calls = hold_all(addr, mix(b"GET / HTTP/1.1\r\nHost: ec", Some(b"PRI * HT"))).await;
        // Real requests still get through while every hostile one is held.
        let t = burst(client.outbound, "echo", 50, 2).await;
        assert_eq!((t.count("v1"), t.failures), (50, 0), "{name}: {t:?}");
        let mut times = Vec::new();
        for (i, c) in calls.into_iter().enumerate() {
            let took = c.await.unwrap();
            let took = took.unwrap_or_else(|| panic!("{name}: connection {i} was never closed"));
            times.push(took);
        }
        let fastest = times.iter().min().unwrap();
        let slowest = times.iter().max().unwrap();
        eprintln!(
            "measured: {name}: {} hostile connections closed between {fastest:?} and {slowest:?} (idle timeout {IDLE:?})",
            times.len()
        );
        assert!(
            *fastest >= IDLE.mul_f64(0.8),
            "{name}: closed before the idle timeout ({fastest:?})"
        );
        assert!(
            *slowest <= IDLE * 5,
            "{name}: the last one closed {slowest:?} after opening"
        );
    }
}

/// A silent connection to `addr`, and whether the sidecar closed it within
/// `within` (it refused it) or kept it.
async fn refused_at_once(addr: SocketAddr, within: Duration) -> (tokio::net::TcpStream, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    );
    (s, closed)
}

/// A listener keeps at most `MESH_PROXY_MAX_CONNECTIONS` open: one more is
/// closed on accept and counted in `mesh_tcp_refused_total`, so idle
/// clients cannot take every descriptor; once they leave, it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_at_its_connection_limit_refuses_the_next_and_counts_it() {
    let mesh = Mesh::start("connlimit").await;
    let _inst = mesh.instance("echo", "v1", "echo-v1-a", &[], None).await;
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    let client = mesh
        .client_with(
            "client-0",
            &[
                ("MESH_PROXY_MAX_CONNECTIONS", "20"),
                ("MESH_PROXY_IDLE_TIMEOUT_MS", "1500"),
            ],
        )
        .await;
    let mut held = Vec::new();
    for _ in 0..20 {
        let (s, closed) = refused_at_once(client.outbound, Duration::from_millis(50)).await;
        assert!(!closed, "a connection within the limit was closed");
        held.push(s);
    }
    for i in 0..10 {
        let (_, closed) = refused_at_once(client.outbound, Duration::from_secs(1)).await;
        assert!(closed, "connection {} beyond the limit was kept", 20 + i);
    }
    let refused = support::metric(
        client.admin,
        "mesh_tcp_refused_total",
        &["direction=\"outbound\"", "peer=\"src\""],
    )
    .await;
    assert_eq!(refused, 10.0);
    // The idle ones time out; the listener serves the next client.
    let started = Instant::now();
    loop {
        let t = burst(client.outbound, "echo", 1, 1).await;
        if t.failures == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never served again: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
}

/// CPU ticks (user + system) a process has used, from /proc (proc(5)).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which ends with ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Out of file descriptors (RLIMIT_NOFILE 256, 300 idle connections) the
/// sidecar's accept loops (outbound and admin) back off instead of spinning
/// on EMFILE (CPU under 5% while saturated), and once the idle connections
/// time out a new client is served within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_sidecar_waits_instead_of_spinning() {
    let mesh = Mesh::start("nofile").await;
    let _inst = mesh.instance("echo", "v1", "echo-v1-a", &[], None).await;
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    // The sidecar exactly as the harness runs it, under util-linux's
    // prlimit(1), which sets RLIMIT_NOFILE and then execs it (same pid).
    let mut sidecar = mesh.sidecar_cmd("client", "", "client-nofile");
    sidecar.env("MESH_PROXY_IDLE_TIMEOUT_MS", "3000");
    let std = sidecar.as_std();
    let mut cmd = tokio::process::Command::new("prlimit");
    cmd.arg("--nofile=256:256").arg("--").arg(std.get_program());
    for (k, v) in std.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let proc = meshctl::procs::Proc::spawn("client-nofile-proxy", cmd, &mesh.logs())
        .await
        .unwrap();
    let admin = proc.addr("admin").unwrap();
    let outbound = proc.addr("outbound").unwrap();
    meshctl::procs::wait_ready(admin, "/ready", support::DEADLINE)
        .await
        .unwrap();
    let pid = proc.pid().unwrap();
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(outbound).await.unwrap());
    }
    // Pending connections on the admin listener too: each accept there
    // fails with EMFILE as well, which is where a loop without back-off spins.
    for _ in 0..5 {
        idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    // Saturated: measure CPU over 2 s, well before the 3 s idle timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (before, at) = (cpu_ticks(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks = cpu_ticks(pid) - before;
    let per_sec = ticks as f64 / 100.0 / at.elapsed().as_secs_f64();
    eprintln!(
        "measured: out of descriptors, the sidecar used {:.1}% CPU over {:?}",
        per_sec * 100.0,
        at.elapsed()
    );
    assert!(
        per_sec < 0.05,
        "the sidecar used {:.1}% CPU while out of descriptors",
        per_sec * 100.0
    );
    // Once the idle connections time out, a new client is served within 1 s.
    let timed_out = opened + Duration::from_secs(3);
    let t = loop {
        let t = burst(outbound, "echo", 1, 1).await;
        if t.failures == 0 {
            break Instant::now();
        }
        assert!(
            Instant::now() < timed_out + Duration::from_secs(5),
            "never served: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "measured: a new client served {:?} after the idle timeout",
        t.saturating_duration_since(timed_out)
    );
    // It really ran out: its accept loop said so (at most once a second).
    let log = std::fs::read_to_string(mesh.logs().join("client-nofile-proxy.log")).unwrap();
    let said = log.matches("accept failed; backing off").count();
    assert!(
        said >= 1,
        "the sidecar never ran out of descriptors:\n{log}"
    );
    assert!(
        said <= 8,
        "logged {said} times in about 3 s: not rate-limited"
    );
    assert!(
        t < timed_out + Duration::from_secs(1),
        "served {:?} after the idle timeout",
        t.saturating_duration_since(timed_out)
    );
    drop(idle);
}

/// mesh-control's own listeners, the sidecars' gRPC port (TLS) and the
/// HTTP `/ready` port, close silent connections and ones stopped inside a
/// TLS ClientHello, the HTTP/2 preface or an HTTP head at
/// `--idle-timeout-ms`, and keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_s_listeners_close_what_never_speaks() {
    let idle_ms = IDLE.as_millis().to_string();
    let mesh = Mesh::start_with_args("cp-hostile", &["--idle-timeout-ms", &idle_ms]).await;
    let http = mesh.control.addr("http").unwrap();
    // The gRPC port speaks only TLS, so plaintext there is refused at once,
    // rightly; on it the slow client is the one that stops inside its
    // ClientHello (a handshake record announcing 512 bytes, 6 of them sent).
    let grpc_hello: &'static [u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    for (name, addr, kinds) in [
        ("grpc", mesh.grpc, mix(grpc_hello, None)),
        (
            "http",
            http,
            mix(b"GET /ready HTTP/1.1\r\nHo", Some(b"PRI * HTTP/2.0\r\n")),
        ),
    ] {
        let calls = hold_all(addr, kinds).await;
        let mut times = Vec::new();
        for (i, c) in calls.into_iter().enumerate() {
            let took = c.await.unwrap();
            times.push(took.unwrap_or_else(|| panic!("{name}: connection {i} was never closed")));
        }
        let (fastest, slowest) = (times.iter().min().unwrap(), times.iter().max().unwrap());
        eprintln!(
            "measured: mesh-control {name}: {} closed between {fastest:?} and {slowest:?}",
            times.len()
        );
        assert!(
            *fastest >= IDLE.mul_f64(0.8),
            "{name}: closed early ({fastest:?})"
        );
        assert!(*slowest <= IDLE * 5, "{name}: closed late ({slowest:?})");
    }
    // Still serving both.
    let (status, _) = meshctl::traffic::get(http, "/ready").await.unwrap();
    assert_eq!(status, 200);
    let out = mesh.meshctl(&["proxy-status"]).await;
    assert!(out.status.success());
}

/// mesh-control's listeners keep at most `--max-connections` open each:
/// one more is closed at once (logged, and counted in
/// `mesh_control_connections_refused_total`), and once the held ones leave
/// it serves new clients again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_s_listeners_have_a_connection_limit() {
    let mesh = Mesh::start_with_args(
        "cp-limit",
        &["--max-connections", "10", "--idle-timeout-ms", "1500"],
    )
    .await;
    let http = mesh.control.addr("http").unwrap();
    for (name, addr) in [("grpc", mesh.grpc), ("http", http)] {
        let mut held = Vec::new();
        for _ in 0..10 {
            let (s, closed) = refused_at_once(addr, Duration::from_millis(50)).await;
            assert!(!closed, "{name}: a connection within the limit was closed");
            held.push(s);
        }
        for i in 0..5 {
            let (_, closed) = refused_at_once(addr, Duration::from_secs(1)).await;
            assert!(
                closed,
                "{name}: connection {} beyond the limit was kept",
                10 + i
            );
        }
        drop(held);
    }
    let log = std::fs::read_to_string(mesh.logs().join("mesh-control.log")).unwrap();
    assert!(log.contains("the listener has its limit open"), "{log}");
    // And counted, per listener, on mesh-control's own /metrics.
    let end = Instant::now() + Duration::from_secs(5);
    let text = loop {
        if let Ok((200, text)) = meshctl::traffic::get(http, "/metrics").await {
            break text;
        }
        assert!(Instant::now() < end, "no /metrics");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let refused = |name: &str| -> u64 {
        let prefix = format!("mesh_control_connections_refused_total{{listener=\"{name}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
    };
    assert_eq!(refused("grpc"), 5, "{text}");
    // The /metrics request itself may have been refused while the held
    // connections were still closing; never fewer than the five.
    assert!(refused("http") >= 5, "{text}");
    // The held ones are gone (closed by us); both listeners serve again.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let ready = meshctl::traffic::get(http, "/ready").await.map(|(s, _)| s);
        let status = mesh.meshctl(&["proxy-status"]).await;
        if ready.as_ref().is_ok_and(|s| *s == 200) && status.status.success() {
            break;
        }
        assert!(Instant::now() < end, "not serving again: {ready:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
