//! Loopback helpers: a free port, a minimal HTTP GET and a static file server.
// Included on its own by benches that need only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port nothing listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Minimal HTTP/1.0 GET against 127.0.0.1:port: (status, body), status 0
/// when unreachable or silent for 2 s.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(text)) => {
            let status = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_default();
            (status, body)
        }
        _ => (0, String::new()),
    }
}

/// Serves the files of `dir` over plain HTTP/1.1 on 127.0.0.1 (GET only, one
/// request per connection; 404 for anything else) from a thread that lives as
/// long as the test process. Returns the port.
pub fn serve_files(dir: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local addr: {e}"))
        .port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            // The headers, up to the empty line: a GET has no body.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let file = match request.split_whitespace().collect::<Vec<_>>()[..] {
                ["GET", path, _]
                    if !path.contains("..") && path.starts_with('/') && path.len() > 1 =>
                {
                    std::fs::read(dir.join(&path[1..])).ok()
                }
                _ => None,
            };
            let (status, body) = match file {
                Some(body) => ("200 OK", body),
                None => ("404 Not Found", b"not found\n".to_vec()),
            };
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
    });
    port
}
