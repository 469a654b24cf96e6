//! The PROXY protocol (HAProxy's, versions 1 and 2) in front of the HTTP and HTTPS listeners,
//! so an edge behind an L4 load balancer sees, limits and logs the real client address.
//!
//! A parser of our own rather than a crate: the two header formats are small and fixed
//! (a text line of at most 107 bytes; a 16-byte binary prefix and a length), we need only the
//! source address, and this keeps the exact bounds (header size, read timeout, what is
//! refused) in one short file. The header is read with a timeout and at most
//! [`MAX_HEADER`] bytes; bytes read past it (the client's first bytes) are handed back to the
//! connection through `Guarded::with_prefix`. `LOCAL` (v2) and `UNKNOWN` (v1) headers, sent by load
//! balancers for their own health checks, keep the peer address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 prefix.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 line, CRLF included (from the specification).
const V1_MAX: usize = 107;
/// The longest v2 header accepted: the 16-byte prefix and up to 1 KiB of addresses and TLVs
/// (a load balancer's TLVs take tens of bytes).
pub const MAX_HEADER: usize = 16 + 1024;

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("connection closed before the PROXY protocol header ended")]
    Truncated,
}

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The client's address; `None` for `LOCAL` / `UNKNOWN` (use the peer's).
    pub source: Option<SocketAddr>,
    /// Header length in bytes.
    pub len: usize,
}

/// Parses a header at the start of `buf`: `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return if n < V1_PREFIX.len() {
            Ok(None)
        } else {
            parse_v1(buf)
        };
    }
    Err(ProxyError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::Malformed("v1 line longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end])
        .map_err(|_| ProxyError::Malformed("v1 line is not ASCII"))?;
    let len = end + 2;
    let mut fields = line.split(' ');
    let proto = fields.next().unwrap_or_default();
    if proto == "UNKNOWN" {
        return Ok(Some(Header { source: None, len }));
    }
    let fields: Vec<&str> = fields.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(ProxyError::Malformed(
            "v1 needs 4 fields after the protocol",
        ));
    };
    let (ip, dst): (IpAddr, Result<IpAddr, _>) = match proto {
        "TCP4" => (
            src.parse::<Ipv4Addr>()
                .map_err(|_| ProxyError::Malformed("v1 TCP4 source is not an IPv4 address"))?
                .into(),
            dst.parse::<Ipv4Addr>().map(IpAddr::V4),
        ),
        "TCP6" => (
            src.parse::<Ipv6Addr>()
                .map_err(|_| ProxyError::Malformed("v1 TCP6 source is not an IPv6 address"))?
                .into(),
            dst.parse::<Ipv6Addr>().map(IpAddr::V6),
        ),
        _ => {
            return Err(ProxyError::Malformed(
                "v1 protocol must be TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    dst.map_err(|_| ProxyError::Malformed("v1 destination is not an address of the protocol"))?;
    let port = |field: &str| {
        field
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| field.parse::<u16>().ok())
            .flatten()
            .ok_or(ProxyError::Malformed(
                "v1 port is not a number from 0 to 65535",
            ))
    };
    let port_src = port(sport)?;
    port(dport)?;
    let port = port_src;
    Ok(Some(Header {
        source: Some(SocketAddr::new(ip, port)),
        len,
    }))
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let version = buf[12] >> 4;
    let command = buf[12] & 0x0f;
    if version != 2 {
        return Err(ProxyError::Malformed("v2 version must be 2"));
    }
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + payload;
    if len > MAX_HEADER {
        return Err(ProxyError::Malformed("v2 header longer than 1040 bytes"));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[16..len];
    let source = match (command, buf[13]) {
        // LOCAL: the proxy's own connection (health checks); addresses are ignored.
        (0x0, _) => None,
        // PROXY over TCP/IPv4: src 4, dst 4, src port 2, dst port 2.
        (0x1, 0x11) => {
            let b = body
                .get(..12)
                .ok_or(ProxyError::Malformed("v2 TCP4 addresses too short"))?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([b[8], b[9]])))
        }
        // PROXY over TCP/IPv6: src 16, dst 16, src port 2, dst port 2.
        (0x1, 0x21) => {
            let b = body
                .get(..36)
                .ok_or(ProxyError::Malformed("v2 TCP6 addresses too short"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([b[32], b[33]]),
            ))
        }
        // PROXY with an unspecified family: no address to take.
        (0x1, 0x00) => None,
        (0x1, _) => {
            return Err(ProxyError::Malformed(
                "v2 family must be TCP over IPv4 or IPv6",
            ));
        }
        _ => return Err(ProxyError::Malformed("v2 command must be LOCAL or PROXY")),
    };
    Ok(Some(Header { source, len }))
}

/// Reads a header from `io`: the header and the bytes read after it. The caller bounds the
/// time; the size is bounded here.
pub async fn read_header<T: AsyncRead + Unpin>(io: &mut T) -> Result<(Header, Bytes), ProxyError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        if let Some(header) = parse(&buf)? {
            let rest = Bytes::from(buf).slice(header.len..);
            return Ok((header, rest));
        }
        if buf.len() >= MAX_HEADER {
            return Err(ProxyError::Malformed("header too long"));
        }
        let mut chunk = [0u8; 256];
        let want = (MAX_HEADER - buf.len()).min(chunk.len());
        let n = io
            .read(&mut chunk[..want])
            .await
            .map_err(|_| ProxyError::Truncated)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ProxyError::Missing
            } else {
                ProxyError::Truncated
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let h = parse(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\nGET /")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Some("192.0.2.7:40000".parse().unwrap()));
        assert_eq!(h.len, 45);
        let h = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Some("[2001:db8::7]:40000".parse().unwrap()));
        let h = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!(h.source, None);
        assert_eq!(parse(b"PROXY TCP4 192.0.2.7"), Ok(None));
        assert_eq!(parse(b"PRO"), Ok(None));
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n"[..],
            b"PROXY TCP4 192.0.2.7 192.0.2.1 70000 2\r\n",
            b"PROXY TCP4 192.0.2.7 192.0.2.1 +1 2\r\n",
            b"PROXY TCP4 192.0.2.7 192.0.2.1 1\r\n",
            b"PROXY UDP4 192.0.2.7 192.0.2.1 1 2\r\n",
            b"PROXY TCP4  192.0.2.7 192.0.2.1 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyError::Malformed(_))),
                "{bad:?}"
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), Err(ProxyError::Malformed(_))));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
        assert_eq!(parse(&[0x16, 0x03, 0x01]), Err(ProxyError::Missing));
    }

    #[test]
    fn v2_tcp4_tcp6_local_and_bounds() {
        let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1];
        body.extend_from_slice(&40000u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xAA]); // a TLV, skipped
        let header = v2(1, 0x11, &body);
        let h = parse(&header).unwrap().unwrap();
        assert_eq!(h.source, Some("192.0.2.7:40000".parse().unwrap()));
        assert_eq!(h.len, header.len());
        assert_eq!(parse(&header[..header.len() - 1]), Ok(None));

        let mut body = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb]);
        let h = parse(&v2(1, 0x21, &body)).unwrap().unwrap();
        assert_eq!(h.source, Some("[2001:db8::7]:40000".parse().unwrap()));

        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap().unwrap().source, None);
        assert!(matches!(
            parse(&v2(1, 0x11, &[1, 2, 3])),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(1, 0x12, &[0; 12])),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(2, 0x11, &[0; 12])),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(1, 0x11, &[0; 2000])),
            Err(ProxyError::Malformed(_))
        ));
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert!(matches!(
            parse(&wrong_version),
            Err(ProxyError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn read_header_keeps_the_bytes_after_it() {
        let mut input: &[u8] = b"PROXY TCP4 192.0.2.7 192.0.2.1 5 80\r\nGET / HTTP/1.1\r\n";
        let (header, rest) = read_header(&mut input).await.unwrap();
        assert_eq!(header.source, Some("192.0.2.7:5".parse().unwrap()));
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\n");
        let mut empty: &[u8] = b"";
        assert_eq!(
            read_header(&mut empty).await.unwrap_err(),
            ProxyError::Missing
        );
        let mut cut: &[u8] = b"PROXY TCP4 1.2";
        assert_eq!(
            read_header(&mut cut).await.unwrap_err(),
            ProxyError::Truncated
        );
    }
}
