//! The egress proxy: the only way out of an isolated local sandbox's network namespace.
//!
//! Commands in a sandbox see only their own loopback. Their `HTTPS_PROXY` points at a port
//! on that loopback which is bridged to this proxy's Unix socket (bound into the sandbox).
//! The proxy runs in the platform, outside the sandbox, and speaks HTTP `CONNECT` only
//! (RFC 9110 §9.3.6): the registries a build needs are HTTPS.
//!
//! A `CONNECT host:port` is allowed when
//! 1. the host is on the allow-list ([`EgressPolicy::allow_hosts`]: exact names, or
//!    `.suffix` for a domain and its subdomains) and the port is 443 or 80, and
//! 2. every address the host resolves to is public: no loopback, unspecified, private
//!    (RFC 1918), shared/CGNAT (RFC 6598), link-local (cloud metadata at 169.254.169.254
//!    included), unique-local (fc00::/7), multicast or broadcast address, also not in
//!    IPv4-mapped or NAT64 form ([`refused_ip`]).
//!
//! The connection is then made to a resolved address (the one checked: no second lookup to
//! rebind). Anything else is answered `403 Forbidden` with the reason, and no connection is
//! opened.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};

/// npm's registry: what a Nitro build installs from.
pub const DEFAULT_ALLOWED_HOSTS: &[&str] = &["registry.npmjs.org"];

/// Which destinations a sandbox may open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Host names allowed (lower case); `.example.com` allows `example.com` and its
    /// subdomains.
    pub allow_hosts: Vec<String>,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy {
            allow_hosts: DEFAULT_ALLOWED_HOSTS
                .iter()
                .map(|h| h.to_string())
                .collect(),
        }
    }
}

impl EgressPolicy {
    /// Whether `host` (a name, not an address) is on the allow-list.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.parse::<IpAddr>().is_ok() {
            return false; // addresses are never on a list of names
        }
        self.allow_hosts.iter().any(|allowed| {
            let allowed = allowed.to_ascii_lowercase();
            match allowed.strip_prefix('.') {
                Some(domain) => host == domain || host.ends_with(&allowed),
                None => host == allowed,
            }
        })
    }

    /// Why `host:port` is refused before any lookup, or `None`.
    pub fn name_refusal(&self, host: &str, port: u16) -> Option<String> {
        if !self.host_allowed(host) {
            return Some(format!("{host} is not on the sandbox's egress allow-list"));
        }
        if port != 443 && port != 80 {
            return Some(format!("port {port} is not allowed (only 443 and 80)"));
        }
        None
    }

    /// Why a `CONNECT` to `host:port` resolving to `addrs` is refused, or `None` if allowed.
    pub fn refusal(&self, host: &str, port: u16, addrs: &[SocketAddr]) -> Option<String> {
        if let Some(why) = self.name_refusal(host, port) {
            return Some(why);
        }
        if addrs.is_empty() {
            return Some(format!("{host} does not resolve"));
        }
        addrs.iter().find_map(|a| {
            refused_ip(a.ip()).map(|why| format!("{host} resolves to {} ({why})", a.ip()))
        })
    }
}

/// Why a sandbox may not reach `ip`, or `None` for a public address.
pub fn refused_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return refused_v4(v4);
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("unique local")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if s[0] & 0xff00 == 0xff00 {
                Some("multicast")
            } else if s[0] == 0x64 && s[1] == 0xff9b {
                // NAT64 (RFC 6052): the embedded IPv4 address decides.
                let v4 =
                    Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                refused_v4(v4)
            } else if s[0..6] == [0, 0, 0, 0, 0, 0] {
                Some("IPv4-compatible")
            } else {
                None
            }
        }
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if o[0] == 0 {
        Some("this network")
    } else if ip.is_private() {
        Some("private")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared address space (CGNAT)")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if ip.is_multicast() || ip.is_broadcast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else {
        None
    }
}

/// Name resolution and outbound connections: the system's, or a test's.
#[async_trait]
pub trait Network: Send + Sync + 'static {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream>;
}

/// The host's resolver and TCP.
pub struct SystemNetwork;

#[async_trait]
impl Network for SystemNetwork {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        TcpStream::connect(addr).await
    }
}

/// A running proxy on a Unix socket; dropping it stops the proxy and removes the socket.
#[derive(Debug)]
pub struct EgressProxy {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: tokio::runtime::Handle,
    policy: Arc<EgressPolicy>,
    network: NetworkHandle,
}

/// The proxy's [`Network`], shared with the listeners it serves.
#[derive(Clone)]
struct NetworkHandle(Arc<dyn Network>);

impl std::fmt::Debug for NetworkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Network")
    }
}

/// Serves one sandbox's listener until dropped.
#[derive(Debug)]
pub struct ListenerGuard(tokio::task::JoinHandle<()>);

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl EgressProxy {
    /// Starts the proxy on a thread of its own (so it outlives any caller's runtime),
    /// listening on a new socket in a private directory under the system's temp dir.
    pub fn start(policy: EgressPolicy, network: Arc<dyn Network>) -> io::Result<EgressProxy> {
        let dir = private_dir()?;
        let socket = dir.join("egress.sock");
        let std_listener = std::os::unix::net::UnixListener::bind(&socket)?;
        std_listener.set_nonblocking(true)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let policy = Arc::new(policy);
        let runtime_handle = runtime.handle().clone();
        let (thread_policy, thread_network) = (policy.clone(), network.clone());
        std::thread::Builder::new()
            .name("egress-proxy".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match UnixListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("egress proxy cannot listen: {e}");
                            return;
                        }
                    };
                    let listener = &listener;
                    let accept = move || async move { listener.accept().await.map(|(s, _)| s) };
                    let serve = serve(accept, thread_policy, thread_network);
                    tokio::select! {
                        _ = serve => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(EgressProxy {
            socket,
            stop: Some(stop),
            runtime: runtime_handle,
            policy,
            network: NetworkHandle(network),
        })
    }

    /// Serves `listener` (opened inside a sandbox's network namespace) like the socket,
    /// until the guard is dropped.
    pub fn serve_listener(&self, listener: std::net::TcpListener) -> io::Result<ListenerGuard> {
        let _entered = self.runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (policy, network) = (self.policy.clone(), self.network.0.clone());
        Ok(ListenerGuard(self.runtime.spawn(async move {
            let listener = &listener;
            let accept = move || async move { listener.accept().await.map(|(s, _)| s) };
            serve(accept, policy, network).await
        })))
    }

    /// The socket to bind into sandboxes.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// Hands every connection `accept` yields to [`handle`] under `policy`, each on a task of
/// its own; never returns.
async fn serve<S, F, Fut>(mut accept: F, policy: Arc<EgressPolicy>, network: Arc<dyn Network>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<S>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    loop {
        let Ok(stream) = accept().await else {
            continue;
        };
        let (policy, network) = (policy.clone(), network.clone());
        tokio::spawn(async move {
            let _ = handle(stream, &policy, network.as_ref()).await;
        });
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_file(&self.socket);
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A 0700 directory of our own for the socket (Unix socket paths are short, so not under the
/// data directory).
fn private_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("tb-egress-{:016x}", rand::random::<u64>()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// How long a client may take to send its request line and headers.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 8 * 1024;

/// Serves one client connection: one `CONNECT`, then bytes both ways.
pub async fn handle<S>(
    mut client: S,
    policy: &EgressPolicy,
    network: &dyn Network,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => return reply(&mut client, 400, &e.to_string()).await,
        Err(_) => return reply(&mut client, 408, "request head too slow").await,
    };
    let first = head.lines().next().unwrap_or_default();
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !method.eq_ignore_ascii_case("CONNECT") {
        return reply(
            &mut client,
            405,
            "the sandbox's proxy only tunnels HTTPS (CONNECT host:443)",
        )
        .await;
    }
    let Some((host, port)) = split_authority(target) else {
        return reply(&mut client, 400, "CONNECT needs host:port").await;
    };
    // Names off the list are refused before any lookup.
    if let Some(why) = policy.name_refusal(&host, port) {
        return refuse(&mut client, &host, port, &why).await;
    }
    let addrs = network.resolve(&host, port).await.unwrap_or_default();
    if let Some(why) = policy.refusal(&host, port, &addrs) {
        return refuse(&mut client, &host, port, &why).await;
    }
    // Each checked address in turn (IPv6 first may have no route here); never another
    // lookup.
    let mut last = String::from("no address");
    let mut upstream = None;
    for addr in &addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, network.connect(*addr)).await {
            Ok(Ok(s)) => {
                upstream = Some(s);
                break;
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
    }
    let Some(upstream) = upstream else {
        return reply(&mut client, 502, &format!("connecting to {host}: {last}")).await;
    };

    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    let mut upstream = upstream;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

async fn refuse<S: AsyncWrite + Unpin>(
    client: &mut S,
    host: &str,
    port: u16,
    why: &str,
) -> io::Result<()> {
    tracing::info!(host, port, "sandbox egress refused: {why}");
    reply(
        client,
        403,
        &format!("refused by the sandbox's egress policy: {why}"),
    )
    .await
}

async fn reply<S: AsyncWrite + Unpin>(client: &mut S, status: u16, reason: &str) -> io::Result<()> {
    let phrase = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        502 => "Bad Gateway",
        _ => "Gateway Timeout",
    };
    let body = format!("{reason}\n");
    let response = format!(
        "HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await
}

/// Reads up to the blank line ending the request head (and not one byte further).
async fn read_head<S: AsyncRead + Unpin>(client: &mut S) -> io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() >= MAX_HEAD {
            return Err(io::Error::other("request head larger than 8 KiB"));
        }
        if client.read(&mut byte).await? == 0 {
            return Err(io::Error::other(
                "connection closed before the request head ended",
            ));
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).map_err(|_| io::Error::other("request head is not UTF-8"))
}

/// `host:port` or `[v6]:port`.
fn split_authority(target: &str) -> Option<(String, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[test]
    fn private_loopback_link_local_cgnat_and_ula_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.0.0.5",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "::127.0.0.1",
        ] {
            assert!(
                refused_ip(ip.parse().unwrap()).is_some(),
                "{ip} should be refused"
            );
        }
        for ip in [
            "203.0.113.80", // registry.npmjs.org on these machines (TEST-NET-3)
            "104.16.0.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::6810:1",
            "64:ff9b::6810:1",
        ] {
            assert_eq!(refused_ip(ip.parse().unwrap()), None, "{ip} is public");
        }
    }

    #[test]
    fn only_listed_names_are_allowed() {
        let policy = EgressPolicy {
            allow_hosts: vec!["registry.npmjs.org".into(), ".example.org".into()],
        };
        assert!(policy.host_allowed("registry.npmjs.org"));
        assert!(policy.host_allowed("REGISTRY.npmjs.org."));
        assert!(policy.host_allowed("example.org"));
        assert!(policy.host_allowed("cdn.example.org"));
        assert!(!policy.host_allowed("evil-example.org"));
        assert!(!policy.host_allowed("registry.npmjs.org.evil.com"));
        assert!(!policy.host_allowed("127.0.0.1"));
        assert!(!policy.host_allowed("localhost"));
    }

    /// A resolver from a table, and a connector that records every attempt (and never
    /// opens one: these tests send no traffic).
    #[derive(Default)]
    struct FakeNetwork {
        names: HashMap<String, Vec<IpAddr>>,
        resolved: Mutex<Vec<String>>,
        connects: Mutex<Vec<SocketAddr>>,
    }

    #[async_trait]
    impl Network for FakeNetwork {
        async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            self.resolved.lock().unwrap().push(host.to_string());
            Ok(self
                .names
                .get(host)
                .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
                .unwrap_or_default())
        }

        async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
            self.connects.lock().unwrap().push(addr);
            Err(io::Error::other("the fake network opens nothing"))
        }
    }

    async fn ask(policy: &EgressPolicy, network: &FakeNetwork, request: &str) -> String {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(request.as_bytes()).await.unwrap();
        handle(server, policy, network).await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn a_connect_to_a_refused_destination_is_answered_403_without_connecting() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let network = FakeNetwork {
            names: HashMap::from([
                ("registry.npmjs.org".into(), vec![ip("203.0.113.80")]),
                ("metadata.example.org".into(), vec![ip("169.254.169.254")]),
                ("db.example.org".into(), vec![ip("10.1.2.3")]),
                (
                    "split.example.org".into(),
                    vec![ip("104.16.0.1"), ip("127.0.0.1")],
                ),
                ("ula.example.org".into(), vec![ip("fd12::1")]),
                ("cgnat.example.org".into(), vec![ip("100.64.1.1")]),
            ]),
            ..FakeNetwork::default()
        };
        let policy = EgressPolicy {
            allow_hosts: vec!["registry.npmjs.org".into(), ".example.org".into()],
        };
        for (target, reason) in [
            ("metadata.example.org:443", "169.254.169.254 (link-local"),
            ("db.example.org:443", "10.1.2.3 (private)"),
            ("split.example.org:443", "127.0.0.1 (loopback)"),
            ("ula.example.org:443", "fd12::1 (unique local)"),
            ("cgnat.example.org:443", "(shared address space"),
            ("localhost:443", "not on the sandbox's egress allow-list"),
            ("127.0.0.1:5432", "not on the sandbox's egress allow-list"),
            ("[::1]:443", "not on the sandbox's egress allow-list"),
            (
                "169.254.169.254:80",
                "not on the sandbox's egress allow-list",
            ),
            ("registry.npmjs.org:22", "port 22 is not allowed"),
            ("nowhere.example.org:443", "does not resolve"),
        ] {
            let answer = ask(
                &policy,
                &network,
                &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
            )
            .await;
            assert!(
                answer.starts_with("HTTP/1.1 403 Forbidden\r\n"),
                "{target}: {answer}"
            );
            assert!(answer.contains(reason), "{target}: {answer}");
        }
        assert_eq!(
            *network.connects.lock().unwrap(),
            vec![],
            "no connection was attempted"
        );
        let resolved = network.resolved.lock().unwrap().clone();
        assert!(
            !resolved
                .iter()
                .any(|h| h == "localhost" || h.contains("127.0.0.1")),
            "names off the list are not even resolved: {resolved:?}"
        );

        // The allowed registry gets as far as connecting, to the address that was checked.
        let answer = ask(
            &policy,
            &network,
            "CONNECT registry.npmjs.org:443 HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
        assert_eq!(
            *network.connects.lock().unwrap(),
            vec!["203.0.113.80:443".parse::<SocketAddr>().unwrap()]
        );
    }

    #[tokio::test]
    async fn plain_http_requests_are_not_forwarded() {
        let network = FakeNetwork::default();
        let answer = ask(
            &EgressPolicy::default(),
            &network,
            "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        assert!(network.resolved.lock().unwrap().is_empty());
        assert!(network.connects.lock().unwrap().is_empty());
    }
}
