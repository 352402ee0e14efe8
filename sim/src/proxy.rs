//! An HTTP CONNECT proxy on loopback, for the corporate-network tests: it counts what went through
//! it (target, and whether credentials came along), can demand Basic credentials (407 with
//! `Proxy-Authenticate`) and can refuse every CONNECT (403), like an egress proxy whose allow list
//! lacks the host. It tunnels bytes only: TLS stays end to end.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    /// Demand these credentials (user, password).
    pub credentials: Option<(String, String)>,
    /// Answer every CONNECT with 403.
    pub refuse: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// `host:port` asked for.
    pub target: String,
    /// The status the proxy answered.
    pub status: u16,
    /// The user of the `Proxy-Authorization` it got, if any.
    pub user: Option<String>,
}

/// A request sent to the proxy in clear (not a CONNECT tunnel): what a proxy could read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearRequest {
    /// The request line, e.g. `GET http://host/path HTTP/1.1`.
    pub line: String,
    /// Whether it carried an `Authorization` header (a bearer token or PAT, in clear).
    pub authorization: bool,
}

pub struct ProxySim {
    pub addr: SocketAddr,
    pub tunnels: Arc<Mutex<Vec<Tunnel>>>,
    /// Requests sent to the proxy in clear (absolute-form `GET http://…`), answered 405.
    pub clear: Arc<Mutex<Vec<ClearRequest>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl ProxySim {
    pub fn start(config: ProxyConfig) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let tunnels = Arc::new(Mutex::new(vec![]));
        let seen = tunnels.clone();
        let clear = Arc::new(Mutex::new(vec![]));
        let clear_seen = clear.clone();
        let thread = std::thread::Builder::new()
            .name("proxy-sim".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    loop {
                        let Ok((conn, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(handle(
                            conn,
                            config.clone(),
                            seen.clone(),
                            clear_seen.clone(),
                        ));
                    }
                });
            })?;
        Ok(Self {
            addr,
            tunnels,
            clear,
            _thread: thread,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn tunnels(&self) -> Vec<Tunnel> {
        self.tunnels.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) -> Vec<ClearRequest> {
        self.clear.lock().unwrap().clone()
    }
}

async fn handle(
    mut conn: tokio::net::TcpStream,
    config: ProxyConfig,
    seen: Arc<Mutex<Vec<Tunnel>>>,
    clear: Arc<Mutex<Vec<ClearRequest>>>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte).await {
            Ok(1) if head.len() < 16 * 1024 => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let first: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    if first.first() != Some(&"CONNECT") || first.len() < 2 {
        let authorization = text
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .any(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"));
        clear.lock().unwrap().push(ClearRequest {
            line: first.join(" "),
            authorization,
        });
        let _ = conn
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    }
    let target = first[1].to_owned();
    let user_pass = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("proxy-authorization"))
        .and_then(|(_, v)| v.trim().strip_prefix("Basic ").map(str::to_owned))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
    let user = user_pass.as_ref().map(|(u, _)| u.clone());
    let status = if config.refuse {
        403
    } else if config
        .credentials
        .as_ref()
        .is_some_and(|want| user_pass.as_ref() != Some(want))
    {
        407
    } else {
        200
    };
    seen.lock().unwrap().push(Tunnel {
        target: target.clone(),
        status,
        user,
    });
    match status {
        403 => {
            let _ = conn
                .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
        407 => {
            let _ = conn
                .write_all(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                      Proxy-Authenticate: Basic realm=\"simulated proxy\"\r\nContent-Length: 0\r\n\r\n",
                )
                .await;
        }
        _ => {
            let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                let _ = conn
                    .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    .await;
                return;
            };
            if conn
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
        }
    }
}
