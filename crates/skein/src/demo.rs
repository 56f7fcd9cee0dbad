//! `skein demo`: Skein, the shop (`examples/shop`), a Redis for its cart and a traffic
//! generator, in one command; everything stops cleanly on Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use shop::{Break, Shop, ShopConfig};
use skein_server::Config;

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Storage directory; by default a temporary one, removed when the demo stops.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// UI and query API address.
    #[arg(long, default_value = "127.0.0.1:16686")]
    http_addr: SocketAddr,
    /// OTLP/gRPC receiver (the shop's services export here).
    #[arg(long, default_value = "127.0.0.1:4317")]
    otlp_grpc_addr: SocketAddr,
    /// OTLP/HTTP receiver.
    #[arg(long, default_value = "127.0.0.1:4318")]
    otlp_http_addr: SocketAddr,
    /// Requests per second sent to the shop.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Share of requests whose payment is declined (0–1).
    #[arg(long, default_value_t = 0.1)]
    fail_ratio: f64,
    /// Share of requests that run a slow SQL query (0–1).
    #[arg(long, default_value_t = 0.1)]
    slow_ratio: f64,
    /// Stop sending after this many requests (Skein keeps serving until Ctrl-C).
    #[arg(long)]
    requests: Option<u64>,
    /// Lose the trace context on purpose, as a classic pitfall does: `spawn` (a task spawned
    /// without the context), `middleware` (a middleware that starts from an empty context),
    /// `client` (a client that does not inject `traceparent`).
    #[arg(long = "break", value_parser = parse_break)]
    break_mode: Option<Break>,
    /// Redis for the cart: a URL, or `auto` to start a `redis-server` from PATH (when there is
    /// one), or `off`.
    #[arg(long, default_value = "auto")]
    redis: String,
    /// Protect the demo's Skein with the tokens of this file (one per line) for sending and
    /// reading, as `--ingest-token-file` and `--query-token-file` do; the shop sends the first
    /// one, and the UI asks for one.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

fn parse_break(s: &str) -> Result<Break, String> {
    s.parse()
}

/// A `redis-server` child on a free loopback port, stopped on drop.
struct RedisChild(Child);

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

fn start_redis(exe: &Path) -> anyhow::Result<(RedisChild, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(exe)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let child = RedisChild(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "redis-server did not accept connections within 10s");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, format!("redis://127.0.0.1:{port}/")))
}

pub(crate) async fn run(
    args: DemoArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be above 0");
    anyhow::ensure!((0.0..=1.0).contains(&args.fail_ratio), "--fail-ratio must be between 0 and 1");
    anyhow::ensure!((0.0..=1.0).contains(&args.slow_ratio), "--slow-ratio must be between 0 and 1");

    let temp;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("skein-demo-")
                .tempdir()
                .context("making a temporary data directory")?;
            temp.path().to_path_buf()
        }
    };
    let config = Config {
        data_dir,
        http_addr: args.http_addr,
        otlp_grpc_addr: args.otlp_grpc_addr,
        otlp_http_addr: args.otlp_http_addr,
        ingest_token_file: args.token_file.clone(),
        query_token_file: args.token_file.clone(),
        ..Config::default()
    };
    let otlp_token = args.token_file.as_deref().map(skein_bench::read_token_file).transpose()?;
    let server = skein_server::bind(config).await.context("starting Skein")?;
    let (grpc, http) = (server.otlp_grpc_addr(), server.http_addr());
    let listening = server.listening_line();
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = server_stopped.await;
    }));

    let mut redis_child = None;
    let redis_url = match args.redis.as_str() {
        "off" => None,
        "auto" => match find_on_path("redis-server") {
            Some(exe) => {
                let (child, url) = start_redis(&exe)?;
                redis_child = Some(child);
                Some(url)
            }
            None => {
                eprintln!(
                    "skein demo: redis-server is not on PATH, so the cart runs without its cache.\n\
                     To see Redis spans, install it (Debian/Ubuntu: sudo apt-get install redis-server; \
                     macOS: brew install redis) and run the demo again."
                );
                None
            }
        },
        url => Some(url.to_owned()),
    };

    let shop = Shop::start(ShopConfig {
        otlp_endpoint: format!("http://{grpc}"),
        redis_url,
        break_mode: args.break_mode,
        otlp_token,
    })
    .await
    .context("starting the shop")?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "{listening}")?;
    writeln!(
        out,
        "skein demo: shop running (frontend {}, checkout grpc://{}, cart {}{}){}",
        shop.frontend_url,
        shop.checkout_addr,
        shop.cart_url,
        if shop.cart_cache { " with Redis" } else { " without Redis" },
        match args.break_mode {
            Some(b) => format!("; context deliberately lost: --break {}", format!("{b:?}").to_lowercase()),
            None => String::new(),
        }
    )?;
    writeln!(
        out,
        "skein demo: sending {} requests/s ({:.0}% declined payments, {:.0}% slow queries){}",
        args.rate,
        args.fail_ratio * 100.0,
        args.slow_ratio * 100.0,
        args.requests.map(|n| format!(", {n} in all")).unwrap_or_default()
    )?;
    writeln!(
        out,
        "skein demo: open the UI at http://{http}/search?service=frontend&lookback=15m  (Ctrl-C stops){}",
        if args.token_file.is_some() { "; it asks for a token of --token-file" } else { "" }
    )?;
    out.flush()?;
    drop(out);

    let (stop_traffic, traffic_stopped) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(shop::traffic::run(
        shop.frontend_url.clone(),
        shop::traffic::TrafficConfig {
            rate: args.rate,
            fail_ratio: args.fail_ratio,
            slow_ratio: args.slow_ratio,
            requests: args.requests,
        },
        traffic_stopped,
    ));

    // Spans are exported in batches; flush every second so new traces show up in the UI quickly.
    let mut flush_tick = tokio::time::interval(Duration::from_secs(1));
    let mut traffic = Some(traffic);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = flush_tick.tick() => shop.flush().await,
            stats = async { traffic.as_mut().expect("polled only while running").await }, if traffic.is_some() => {
                traffic = None;
                // The last requests' confirmations may still be on their way.
                shop.settle(Duration::from_secs(10)).await;
                shop.flush().await;
                let stats = stats.context("the traffic generator failed")?;
                println!(
                    "skein demo: sent {} requests ({} ok, {} failed, {} unanswered); all their spans are in Skein (Ctrl-C stops)",
                    stats.sent, stats.ok, stats.failed, stats.unreachable
                );
            }
        }
    }

    eprintln!("skein demo: stopping");
    let _ = stop_traffic.send(true);
    if let Some(t) = traffic {
        let _ = t.await;
    }
    shop.shutdown().await;
    let _ = stop_server.send(());
    serving.await.context("the server task")?.context("serving")?;
    drop(redis_child);
    Ok(())
}
