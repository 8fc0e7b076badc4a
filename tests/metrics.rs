//! The metrics registry and its endpoint: the exposition is strict OpenMetrics, the endpoint
//! speaks just enough HTTP, and a real Prometheus server scrapes it and sees values move.

mod support;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use scored::decide::TurnOutcome;
use scored::hypervisor::AbortReason;
use scored::metrics::{
    CONTENT_TYPE, ConnectionDrop, DirectionLabels, DropLabels, EndpointLimits, Metrics,
    MetricsServer, MigrationDirection, ReasonLabels,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::openmetrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn levels() -> Vec<String> {
    ["rack", "aggregation", "core"].map(String::from).to_vec()
}

fn registry() -> (Registry, Metrics) {
    let mut r = Registry::default();
    let m = Metrics::register(&mut r, &levels());
    (r, m)
}

/// Moves a few values the way a working daemon would.
fn exercise(m: &Metrics) {
    m.token.held.set(1);
    m.token.passes.inc_by(3);
    m.token.handoff_latency.observe(0.003);
    m.token.epoch.set(2);
    m.decided(TurnOutcome::Migrated, Duration::from_micros(80));
    m.decided(TurnOutcome::NoBenefit, Duration::from_micros(40));
    m.migrations.started.inc();
    m.migrations.succeeded.inc();
    m.migrations
        .aborted
        .get_or_create(&ReasonLabels {
            reason: AbortReason::Stalled,
        })
        .inc();
    m.migrations
        .in_flight
        .get_or_create(&DirectionLabels {
            direction: MigrationDirection::Incoming,
        })
        .set(1);
    m.migrations.duration.observe(4.2);
    m.migrations.downtime.observe(0.021);
    m.migrations.transferred.observe(127.0 * 1024.0 * 1024.0);
    m.set_levels(&levels(), &[10.0, 27.2, 0.5], &[10.0, 10.0, 0.1]);
    m.flows.entries.set(42);
    m.flows.packets.inc_by(1000);
    m.peers.connected.set(7);
}

#[test]
fn exposition_is_strict_openmetrics() {
    let (r, m) = registry();
    let fresh = openmetrics::check(&scored::metrics::encode(&r)).unwrap();
    exercise(&m);
    let text = scored::metrics::encode(&r);
    let e = openmetrics::check(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    assert_eq!(
        e.families, fresh.families,
        "families appear before any value moves"
    );

    for (name, kind) in &e.families {
        assert!(
            name.starts_with("scored_") || name.starts_with("process_"),
            "{name} is neither scored_* nor the standard process_*"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
        if kind == "histogram" {
            // A quotient of two like quantities has no unit: Prometheus names it `_ratio`.
            assert!(
                name.ends_with("_seconds") || name.ends_with("_bytes") || name.ends_with("_ratio"),
                "{name}: histograms carry their unit"
            );
        }
    }
    let expect = [
        ("scored_token_held", "gauge"),
        ("scored_token_passes", "counter"),
        ("scored_token_handoff_latency_seconds", "histogram"),
        ("scored_token_epoch", "gauge"),
        ("scored_token_regenerations", "counter"),
        ("scored_token_skipped_hosts", "counter"),
        ("scored_token_turn_panics", "counter"),
        ("scored_token_statistics_gather_seconds", "histogram"),
        ("scored_decisions", "counter"),
        ("scored_migrations_started", "counter"),
        ("scored_migrations_succeeded", "counter"),
        ("scored_migrations_failed", "counter"),
        ("scored_migrations_aborted", "counter"),
        ("scored_migration_duration_seconds", "histogram"),
        ("scored_migration_downtime_seconds", "histogram"),
        ("scored_migration_transferred_bytes", "histogram"),
        ("scored_migration_forecast_bytes_ratio", "histogram"),
        ("scored_migration_forecast_seconds_ratio", "histogram"),
        ("scored_migrations_by_mode", "counter"),
        ("scored_communication_cost_bytes_per_second", "gauge"),
        ("scored_flow_entries", "gauge"),
        ("scored_flow_evictions", "counter"),
        ("scored_flow_packets", "counter"),
        ("scored_flow_drops", "counter"),
        ("scored_flow_unattributed", "counter"),
        ("scored_peers_connected", "gauge"),
        ("scored_hypervisor_up", "gauge"),
        ("scored_peers_refused", "counter"),
        ("process_cpu_seconds", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
    ];
    for (name, kind) in expect {
        assert_eq!(
            e.families.get(name).map(String::as_str),
            Some(kind),
            "{name}"
        );
    }
    // Every decision outcome is a series from the start.
    for o in TurnOutcome::ALL {
        assert!(
            e.value("scored_decisions_total", &[("outcome", o.name())])
                .is_some()
        );
    }
    assert_eq!(e.value("scored_token_passes_total", &[]), Some(3.0));
    assert_eq!(
        e.value("scored_decisions_total", &[("outcome", "migrated")]),
        Some(1.0)
    );
    assert_eq!(
        e.value("scored_migrations_aborted_total", &[("reason", "stalled")]),
        Some(1.0)
    );
    assert_eq!(
        e.value(
            "scored_communication_cost_bytes_per_second",
            &[("level", "aggregation")]
        ),
        Some(27.2)
    );
    assert_eq!(
        e.value("scored_migration_downtime_seconds_count", &[]),
        Some(1.0)
    );
    assert!(e.value("process_resident_memory_bytes", &[]).unwrap() > 0.0);
}

#[test]
fn libp2p_metrics_share_the_registry() {
    let mut r = Registry::default();
    let _scored = Metrics::register(&mut r, &levels());
    let _p2p = libp2p::metrics::Metrics::new(&mut r);
    let text = scored::metrics::encode(&r);
    let e = openmetrics::check(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    assert!(e.families.keys().any(|f| f.starts_with("libp2p_")));
    assert!(e.families.contains_key("scored_token_passes"));
}

#[test]
fn checker_refuses_broken_expositions() {
    let ok = "# TYPE a counter\na_total 1\n# EOF\n";
    assert!(openmetrics::check(ok).is_ok());
    let bad = [
        ("# TYPE a counter\na_total 1\n", "EOF"),
        ("# TYPE a counter\na 1\n# EOF\n", "does not fit"),
        ("# TYPE a counter\na_total -1\n# EOF\n", "below zero"),
        (
            "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\n# EOF\n",
            "split",
        ),
        ("# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n# EOF\n", "repeated"),
        ("# TYPE a gauge\na{x=1} 1\n# EOF\n", "quoted"),
        ("# TYPE a gauge\na one\n# EOF\n", "not a number"),
        (
            "# TYPE a_seconds gauge\n# UNIT a_seconds bytes\n# EOF\n",
            "unit",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 1\n# EOF\n",
            "cumulative",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n# EOF\n",
            "+Inf",
        ),
        ("# TYPE a gauge\na 1\na 2\n# EOF\n", "duplicate"),
    ];
    for (text, fragment) in bad {
        let err = openmetrics::check(text)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"));
        assert!(
            err.contains(fragment),
            "`{err}` should mention `{fragment}`"
        );
    }
}

#[test]
fn promql_names_are_extracted() {
    let names = openmetrics::metric_names_in(
        r#"sum by (outcome) (rate(scored_decisions_total{outcome!="no_traffic", job=~"a.*"}[$__rate_interval])) / ignoring(level) scored_vms > 0.5 and on(instance) up"#,
    );
    assert_eq!(names, vec!["scored_decisions_total", "scored_vms", "up"]);
    let names = openmetrics::metric_names_in(
        "histogram_quantile(0.99, sum by (le, instance) (rate(scored_migration_downtime_seconds_bucket[5m])))",
    );
    assert_eq!(names, vec!["scored_migration_downtime_seconds_bucket"]);
}

/// One raw HTTP/1.0 exchange: (status, head, body).
async fn http(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("endpoint answered in time")
        .unwrap();
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8(out[..end].to_vec()).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, out[end + 4..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Serves `r` on a free port of 127.0.0.1 within `limits`, counted in `m`'s endpoint metrics.
async fn serve(r: Registry, m: &Metrics, limits: EndpointLimits) -> MetricsServer {
    MetricsServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(r),
        limits,
        m.endpoint.clone(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn endpoint_serves_metrics_and_nothing_else() {
    let (r, m) = registry();
    exercise(&m);
    let server = serve(r, &m, EndpointLimits::default()).await;
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    let (status, head, body) = http(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "content-type"), Some(CONTENT_TYPE));
    assert_eq!(
        header(&head, "content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        body.len()
    );
    let e = openmetrics::check(std::str::from_utf8(&body).unwrap()).unwrap();
    assert_eq!(e.value("scored_peers_connected", &[]), Some(7.0));

    let (status, head, body) = http(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n").await;
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(header(&head, "content-type"), Some(CONTENT_TYPE));
    let length: usize = header(&head, "content-length").unwrap().parse().unwrap();
    assert!(
        length > 1000,
        "HEAD announces the GET body length, got {length}"
    );
    let (status, _, _) = http(addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 404);
    let (status, _, _) = http(addr, b"GET /metrics/../etc HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 404);
    let (status, head, _) =
        http(addr, b"POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(status, 405);
    assert_eq!(header(&head, "allow"), Some("GET, HEAD"));
    let (status, _, _) = http(addr, b"garbage\r\n\r\n").await;
    assert_eq!(status, 400);

    // A request head larger than the bound is refused without reading it all.
    let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
    for i in 0..400 {
        huge.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(40)).as_bytes());
    }
    huge.extend_from_slice(b"\r\n");
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may close while we still write: ignore write errors, read its answer.
    let _ = s.write_all(&huge).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&out)
    );

    // The endpoint still answers after all that.
    let (status, _, _) = http(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200);

    drop(server);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if TcpStream::connect(addr).await.is_err() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still listening after drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bind_failure_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (r, m) = registry();
    let err = MetricsServer::bind(addr, Arc::new(r), EndpointLimits::default(), m.endpoint)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_the_endpoint() {
    let (r, m) = registry();
    let server = serve(r, &m, EndpointLimits::default()).await;
    let Some(prom) = support::prometheus::Prometheus::start(server.local_addr(), "scored").await
    else {
        return;
    };

    // First scrape: the service is up and the families are there with their initial values.
    prom.wait_for(r#"up{job="scored"}"#, |v| v == 1.0).await;
    prom.wait_for("scored_token_passes_total", |v| v == 0.0)
        .await;

    // Values move as a working daemon moves them; Prometheus sees the new values.
    exercise(&m);
    m.token.passes.inc_by(4);
    prom.wait_for("scored_token_passes_total", |v| v == 7.0)
        .await;
    prom.wait_for(r#"scored_decisions_total{outcome="migrated"}"#, |v| {
        v == 1.0
    })
    .await;
    prom.wait_for("scored_migration_downtime_seconds_count", |v| v == 1.0)
        .await;
    prom.wait_for(
        r#"scored_communication_cost_bytes_per_second{level="core"}"#,
        |v| v == 0.5,
    )
    .await;
    prom.wait_for("process_resident_memory_bytes", |v| v > 0.0)
        .await;
    // The unit metadata reached Prometheus from the OpenMetrics descriptors.
    let meta = prom.metadata("scored_migration_transferred_bytes").await;
    assert!(meta.contains("\"type\":\"histogram\""), "{meta}");
    assert!(meta.contains("\"unit\":\"bytes\""), "{meta}");
    drop(server);
}

/// Clients that hold connections without ever completing a request, as many as the endpoint
/// allows and more: idle sockets, slowloris clients trickling header lines, and one that sends
/// its request but never reads the (large) answer. Dropping the value closes them all.
struct Hostile {
    sockets: Vec<TcpStream>,
    // Dropping it stops the trickling clients.
    _trickle: tokio::task::JoinSet<()>,
}

impl Hostile {
    async fn open(addr: SocketAddr, idle: usize, slow: usize) -> Hostile {
        let mut sockets = Vec::new();
        for _ in 0..idle {
            sockets.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut trickle = tokio::task::JoinSet::new();
        for _ in 0..slow {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
            // One header line every 100 ms, for at most two minutes: never the blank line.
            trickle.spawn(async move {
                for i in 0..1200 {
                    if s.write_all(format!("X-{i}: y\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        sockets.push(never_reads(addr).await);
        Hostile {
            sockets,
            _trickle: trickle,
        }
    }
}

/// A client that asks for the metrics and never reads them, with a small receive window so
/// that a large answer cannot all sit in its buffers.
async fn never_reads(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    s
}

/// A registry as large as a busy host's (many series), so that an answer (about 8 MB)
/// outgrows the socket buffers of a client that does not read it.
fn large_registry() -> (Registry, Metrics) {
    let (mut r, m) = registry();
    exercise(&m);
    let per_vm: Family<Vec<(String, String)>, Counter> = Default::default();
    for i in 0..200_000u32 {
        let vm = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff);
        per_vm.get_or_create(&vec![("vm".to_string(), vm)]).inc();
    }
    r.register("test_per_vm", "Filler series", per_vm);
    (r, m)
}

/// At most `max_connections` at once; a request head and an answer each get `timeout`.
fn limits(max_connections: usize, timeout: Duration) -> EndpointLimits {
    EndpointLimits {
        max_connections,
        header_timeout: timeout,
        write_timeout: timeout,
    }
}

/// Scrapes `addr`, failing with `what` unless the answer comes within 20 s.
async fn scrape_within_20s(addr: SocketAddr, what: &str) -> (u16, String, Vec<u8>) {
    tokio::time::timeout(
        Duration::from_secs(20),
        http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await
    .expect(what)
}

fn dropped(m: &Metrics, reason: ConnectionDrop) -> u64 {
    m.endpoint
        .dropped
        .get_or_create(&DropLabels { reason })
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_is_answered_while_hostile_clients_hold_connections() {
    let (r, m) = large_registry();
    let server = serve(r, &m, limits(4, Duration::from_secs(120))).await;
    let addr = server.local_addr();
    // Twice as many hostile connections as the endpoint keeps.
    let mut hostile = Hostile::open(addr, 4, 3).await;
    // Far below the endpoint's timeouts: an answer in time was served, not freed by a hostile
    // client's timeout.
    let (status, head, body) = scrape_within_20s(
        addr,
        "the scrape is answered while hostile clients hold connections",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.ends_with("# EOF\n"), "the whole exposition");
    assert!(text.contains("\nscored_peers_connected 7\n"));
    // Room was made by closing hostile connections, none of them by a timeout.
    assert!(dropped(&m, ConnectionDrop::Shed) >= 1);
    assert_eq!(dropped(&m, ConnectionDrop::HeaderTimeout), 0);
    assert_eq!(dropped(&m, ConnectionDrop::WriteTimeout), 0);
    assert!(m.endpoint.connections.get() <= 4);
    // The first idle socket, the oldest without a request, was closed for the newer ones (long
    // before its header timeout).
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), hostile.sockets[0].read(&mut buf))
        .await
        .expect("the oldest idle socket is closed")
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_is_answered_while_clients_do_not_read_their_answers() {
    let (r, m) = large_registry();
    let server = serve(r, &m, limits(4, Duration::from_secs(120))).await;
    let addr = server.local_addr();
    let mut readers = Vec::new();
    for _ in 0..8 {
        readers.push(never_reads(addr).await);
    }
    // Far below the endpoint's timeouts, as above.
    let (status, head, _) = scrape_within_20s(
        addr,
        "the scrape is answered while clients do not read their answers",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(dropped(&m, ConnectionDrop::Shed) >= 1);
    assert_eq!(dropped(&m, ConnectionDrop::WriteTimeout), 0);
    drop(readers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_closed_at_their_timeouts() {
    let (r, m) = large_registry();
    let server = serve(r, &m, limits(16, Duration::from_millis(300))).await;
    // One silent client, one trickling header lines, one that never reads its answer.
    let mut hostile = Hostile::open(server.local_addr(), 1, 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while dropped(&m, ConnectionDrop::HeaderTimeout) < 2
        || dropped(&m, ConnectionDrop::WriteTimeout) < 1
        || m.endpoint.connections.get() > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "header timeouts {}, write timeouts {}, open {}",
            dropped(&m, ConnectionDrop::HeaderTimeout),
            dropped(&m, ConnectionDrop::WriteTimeout),
            m.endpoint.connections.get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dropped(&m, ConnectionDrop::Shed), 0);
    // The silent client sees its connection closed.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), hostile.sockets[0].read(&mut buf))
        .await
        .expect("closed")
        .unwrap();
    assert_eq!(n, 0);
}
