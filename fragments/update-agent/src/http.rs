//! Downloading a bundle over plain HTTP/1.1 (GET, redirects to http://, Content-Length,
//! chunked or until close) into a file, streamed. No TLS: the bundle's signature is what
//! makes a download trustworthy. Network and file I/O.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

/// A parsed `http://host[:port]/path` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (default 80).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Parses an `http://` URL; `https://` is refused with the reason.
pub fn parse_url(url: &str) -> Result<Url, String> {
    if url.starts_with("https://") {
        return Err(format!("`{}`: https is not supported (the agent has no TLS); serve the signed bundle over http:// or copy it to the machine — the signature protects it either way", url));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{}` is not an http:// URL", url))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = path.split('#').next().unwrap_or("/");
    if authority.contains('@') {
        return Err(format!("`{}`: user names in URLs are not supported", url));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{}`: unclosed `[`", url))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("`{}`: bad authority", url)),
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("`{}`: bad port `{}`", url, p))?,
        None => 80,
    };
    if host.is_empty() {
        return Err(format!("`{}` has no host", url));
    }
    Ok(Url {
        host,
        port,
        path: path.to_string(),
    })
}

fn read_line(reader: &mut dyn BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    reader.take(16 * 1024).read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\n") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the server's response ended early or has an over-long line",
        ));
    }
    let text = String::from_utf8_lossy(&line);
    Ok(text.trim_end_matches(&['\r', '\n'][..]).to_string())
}

/// Downloads `url` to `dest` (written to `dest.part`, fsynced, renamed); returns the bytes.
pub fn download(url: &str, dest: &Path, progress: &mut dyn FnMut(&str)) -> Result<u64, String> {
    let mut current = url.to_string();
    for _ in 0..5 {
        match get(&current, dest)? {
            Fetched::Done(n) => return Ok(n),
            Fetched::Redirect(to) => {
                let next = if to.starts_with('/') {
                    let u = parse_url(&current)?;
                    format!(
                        "http://{}:{}{}",
                        if u.host.contains(':') {
                            format!("[{}]", u.host)
                        } else {
                            u.host.clone()
                        },
                        u.port,
                        to
                    )
                } else {
                    to
                };
                progress(&format!("redirected to {}", next));
                current = next;
            }
        }
    }
    Err(format!("`{}`: too many redirects", url))
}

enum Fetched {
    Done(u64),
    Redirect(String),
}

fn get(url: &str, dest: &Path) -> Result<Fetched, String> {
    let u = parse_url(url)?;
    let addrs: Vec<_> = (u.host.as_str(), u.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{}`: {}", u.host, e))?
        .collect();
    let mut stream = None;
    let mut last_err = String::from("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(30)) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = format!("{}: {}", addr, e),
        }
    }
    let stream =
        stream.ok_or_else(|| format!("cannot connect to {}:{}: {}", u.host, u.port, last_err))?;
    let fail = |e: io::Error| format!("`{}`: {}", url, e);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(fail)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(60)))
        .map_err(fail)?;
    let host = if u.host.contains(':') {
        format!("[{}]", u.host)
    } else {
        u.host.clone()
    };
    let host = if u.port == 80 {
        host
    } else {
        format!("{}:{}", host, u.port)
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kubesolo-update/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        u.path,
        host,
        env!("CARGO_PKG_VERSION")
    );
    (&stream).write_all(request.as_bytes()).map_err(fail)?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let status_line = read_line(&mut reader).map_err(fail)?;
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") {
        return Err(format!(
            "`{}`: not an HTTP/1 response: `{}`",
            url, status_line
        ));
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut location = None;
    loop {
        let line = read_line(&mut reader).map_err(fail)?;
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    length = Some(
                        value
                            .parse()
                            .map_err(|_| format!("`{}`: bad Content-Length `{}`", url, value))?,
                    )
                }
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "location" => location = Some(value.to_string()),
                _ => {}
            }
        }
    }
    match code {
        "200" => {}
        "301" | "302" | "303" | "307" | "308" => {
            return location
                .map(Fetched::Redirect)
                .ok_or_else(|| format!("`{}`: redirect without Location", url));
        }
        _ => return Err(format!("`{}`: the server answered `{}`", url, status_line)),
    }
    let part = dest.with_extension("part");
    let mut file = fs::File::create(&part)
        .map_err(|e| format!("cannot create `{}`: {}", part.display(), e))?;
    let write_err = |e: io::Error| format!("downloading `{}` to `{}`: {}", url, part.display(), e);
    let total = if chunked {
        let mut total = 0u64;
        loop {
            let line = read_line(&mut reader).map_err(fail)?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_text, 16)
                .map_err(|_| format!("`{}`: bad chunk size `{}`", url, line))?;
            if size == 0 {
                while !read_line(&mut reader).map_err(fail)?.is_empty() {}
                break;
            }
            let n = io::copy(&mut (&mut reader).take(size), &mut file).map_err(write_err)?;
            if n != size {
                return Err(format!("`{}`: the connection closed inside a chunk", url));
            }
            total += n;
            if !read_line(&mut reader).map_err(fail)?.is_empty() {
                return Err(format!("`{}`: a chunk is not followed by CRLF", url));
            }
        }
        total
    } else if let Some(len) = length {
        let n = io::copy(&mut (&mut reader).take(len), &mut file).map_err(write_err)?;
        if n != len {
            return Err(format!(
                "`{}`: the connection closed after {} of {} bytes",
                url, n, len
            ));
        }
        n
    } else {
        io::copy(&mut reader, &mut file).map_err(write_err)?
    };
    file.sync_all().map_err(write_err)?;
    drop(file);
    fs::rename(&part, dest).map_err(|e| {
        format!(
            "cannot rename `{}` to `{}`: {}",
            part.display(),
            dest.display(),
            e
        )
    })?;
    Ok(Fetched::Done(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            parse_url("http://h/x?y").unwrap(),
            Url {
                host: "h".into(),
                port: 80,
                path: "/x?y".into()
            }
        );
        assert_eq!(
            parse_url("http://h:8080").unwrap(),
            Url {
                host: "h".into(),
                port: 8080,
                path: "/".into()
            }
        );
        assert_eq!(
            parse_url("http://[::1]:81/b").unwrap(),
            Url {
                host: "::1".into(),
                port: 81,
                path: "/b".into()
            }
        );
        assert!(parse_url("https://h/").unwrap_err().contains("no TLS"));
        assert!(parse_url("ftp://h/").is_err());
        assert!(parse_url("http://h:x/").is_err());
        assert!(parse_url("http:///x").is_err());
    }
}
