// SPDX-License-Identifier: MPL-2.0
//! `i2i-web`: the browser side of the i2i pipelines, on one HTTP port (default 8765).
//!
//! A bridge between browsers and the ZeroMQ world the elements speak, so any pipeline
//! works with it unchanged: images from browsers and seed-001 WebSocket clients go out as
//! msgpack `[timestamp_ms, index, jpg]` on a PUB socket (for `zmqmsgpacksrc`), a
//! pipeline's output (`zmqmsgpacksink`) comes back to browsers, and the control room page
//! drives the settings holder (`i2i-prompt`). See docs/web.md.

mod args;
mod bridge;
mod control;
mod hosts;
mod input;
mod limits;
mod server;
mod stats;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use args::Command;

fn main() -> ExitCode {
    let cmd = match args::parse(std::env::args_os(), std::env::var("I2I_WEB_TOKEN").ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("i2i-web: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = match cmd {
        Command::Help => {
            print!("{}", args::HELP);
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("i2i-web {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Run(o) => *o,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("i2i-web: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("i2i-web: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(mut opts: args::Options) -> Result<(), String> {
    let stats = Arc::new(stats::Stats::default());
    opts.max_connections = limits::fit_descriptor_limit(opts.max_connections);
    let control = match &opts.control {
        Some(ep) => Some(Arc::new(control::Control::new(
            ep,
            opts.key.as_deref(),
            opts.server_key.as_deref(),
        )?)),
        None => None,
    };
    let tls = match &opts.tls {
        Some((cert, key)) => {
            // One process-wide crypto provider (ring); an error means one is already set.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| {
                    format!(
                        "--tls-cert {} / --tls-key {}: {e} (expected PEM files: the certificate chain and its private key)",
                        cert.display(),
                        key.display()
                    )
                })?;
            // HTTP/1.1 only, as over plain TCP (see http_limits).
            let mut server_config = (*config.get_inner()).clone();
            server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
            config.reload_from_config(Arc::new(server_config));
            Some(config)
        }
        None => None,
    };
    let listener = std::net::TcpListener::bind(&opts.listen).map_err(|e| {
        format!(
            "--listen {}: cannot listen: {e} (is another program using the port?)",
            opts.listen
        )
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("--listen {}: {e}", opts.listen))?;
    let ctx = zmq::Context::new();
    let (out_tx, out_rx) = tokio::sync::watch::channel(None);
    let bridge = bridge::Bridge::start(
        &ctx,
        &opts.publish,
        &opts.subscribe,
        out_tx,
        stats.clone(),
        server::max_output_frame(&opts),
    )?;

    let shown_host = if local.ip().is_unspecified() {
        format!("localhost:{}", local.port())
    } else {
        local.to_string()
    };
    let token_query = opts
        .token
        .as_ref()
        .map(|t| format!("?token={t}"))
        .unwrap_or_default();
    println!(
        "i2i-web: page {}://{shown_host}/{token_query}\n\
         i2i-web: images published on {}, output from {}, controls to {}\n\
         i2i-web: listening on {local} ({}), {}; camera frames on {} ({})",
        if tls.is_some() { "https" } else { "http" },
        bridge.publish_endpoint,
        opts.subscribe,
        opts.control.as_deref().unwrap_or("(none)"),
        if local.ip().is_loopback() {
            "this machine only"
        } else {
            "reachable from the network"
        },
        match (&opts.token, tls.is_some()) {
            (Some(_), true) => "token required, TLS",
            (Some(_), false) => "token required (sent in clear text without TLS)",
            (None, _) => "no token: only this machine's host names are accepted",
        },
        bridge.publish_endpoint,
        if publishes_on_loopback(&bridge.publish_endpoint) {
            "this machine only"
        } else {
            "ZeroMQ, no authentication: any machine that reaches the port receives the camera"
        },
    );
    let _ = std::io::stdout().flush();

    let limits = limits::Limits::new(
        opts.max_connections,
        opts.idle_timeout,
        opts.write_timeout,
        stats.clone(),
    );
    let header_timeout = opts.idle_timeout;
    let app = Arc::new(server::App::new(
        opts,
        stats.clone(),
        bridge.publish.clone(),
        out_rx,
        control,
        limits.clone(),
        local.ip(),
    ));
    let service = server::router(app.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let acceptor = limits::LimitAcceptor {
        limits,
        tls: tls.is_some(),
    };
    let serve = async move {
        match tls {
            None => {
                let mut server = axum_server::from_tcp(listener).acceptor(acceptor);
                http_limits(server.http_builder(), header_timeout);
                server.serve(service).await
            }
            Some(config) => {
                let acceptor =
                    axum_server::tls_rustls::RustlsAcceptor::new(config).acceptor(acceptor);
                let mut server = axum_server::from_tcp(listener).acceptor(acceptor);
                http_limits(server.http_builder(), header_timeout);
                server.serve(service).await
            }
        }
    };
    tokio::select! {
        r = serve => r.map_err(|e| format!("the HTTP server stopped: {e}"))?,
        _ = stop_signal() => {}
    }
    eprintln!("i2i-web: stopping; counters: {}", app.stats_json());
    // Open WebSocket connections end with the runtime; the ZeroMQ threads end here.
    bridge.stop();
    Ok(())
}

/// HTTP/1.1 only (WebSocket and MJPEG need nothing else), so that hyper's header-read
/// timeout guards every connection from its first byte: a request head must arrive within
/// `timeout`, and an idle keep-alive connection is closed after it. (The automatic choice
/// between HTTP/1 and 2 first waits for bytes without a limit.)
fn http_limits(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    timeout: std::time::Duration,
) {
    let fresh = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    *builder = std::mem::replace(builder, fresh).http1_only();
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(64 * 1024);
}

/// True when a ZeroMQ endpoint is bound to a loopback address.
fn publishes_on_loopback(endpoint: &str) -> bool {
    let host = endpoint
        .strip_prefix("tcp://")
        .and_then(|a| a.rsplit_once(':'))
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'));
    match host {
        Some("localhost") => true,
        Some(h) => h
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        // ipc:// and inproc:// stay on this machine.
        None => !endpoint.starts_with("tcp://"),
    }
}

async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}
