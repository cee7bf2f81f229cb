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
mod input;
mod server;
mod stats;

use std::io::Write;
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

async fn run(opts: args::Options) -> Result<(), String> {
    let stats = Arc::new(stats::Stats::default());
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
            Some(
                axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .map_err(|e| {
                        format!(
                            "--tls-cert {} / --tls-key {}: {e} (expected PEM files: the certificate chain and its private key)",
                            cert.display(),
                            key.display()
                        )
                    })?,
            )
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .map_err(|e| {
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
    let bridge =
        bridge::Bridge::start(&ctx, &opts.publish, &opts.subscribe, out_tx, stats.clone())?;

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
         i2i-web: images published on {}, output from {}, controls to {}",
        if tls.is_some() { "https" } else { "http" },
        bridge.publish_endpoint,
        opts.subscribe,
        opts.control.as_deref().unwrap_or("(none)"),
    );
    let _ = std::io::stdout().flush();

    let app = Arc::new(server::App::new(
        opts,
        stats.clone(),
        bridge.publish.clone(),
        out_rx,
        control,
    ));
    let router = server::router(app.clone());
    let serve = async move {
        match tls {
            None => axum::serve(listener, router).await,
            Some(config) => {
                let listener = listener.into_std()?;
                axum_server::from_tcp_rustls(listener, config)
                    .serve(router.into_make_service())
                    .await
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

async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}
