//! Free TCP ports on the loopback interface.

/// A port that was free a moment ago (the OS picks it; a clash is retried by the caller).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
