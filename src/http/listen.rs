//! Listening sockets for Poda's HTTP servers.

use std::net::SocketAddr;

/// Connections a listener holds before they are accepted. A burst of new connections is
/// normal: Monime opens many at once when its deliveries back up, and a worker whose calls
/// slow down opens hundreds to Monime (the sandbox). With Tokio's default of 1,024 the kernel
/// drops the SYNs past it, and each dropped client waits out a second or more of TCP
/// retransmission before it is even accepted. The kernel caps this at
/// `net.core.somaxconn`.
pub const ACCEPT_BACKLOG: u32 = 4_096;

/// Binds `addr` and listens with [`ACCEPT_BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}
