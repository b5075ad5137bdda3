//! The test bed's backend server.
//!
//! `lb-backend-server --name NAME --port P [--port P2 ...] [--bind ADDR]
//!  [--health-port P --health-file PATH]`
//!
//! On every port, over TCP and UDP:
//! - TCP: on accept, writes `NAME\n`, then echoes every byte it receives
//!   until EOF (one thread per connection);
//! - UDP: answers each datagram with `NAME ` followed by its payload, from
//!   the address the datagram was sent to (IPV6_PKTINFO), so that replies to
//!   a VIP configured on `lo` come from the VIP (direct server return).
//!
//! Every socket is an IPv6 socket that takes IPv4 too (IPV6_V6ONLY off,
//! IPv4 peers seen as `::ffff:a.b.c.d`), bound to `--bind` (default `::`,
//! every address of both families; an IPv4 address binds its mapped form,
//! so only IPv4 reaches it): one code path serves both families.
//!
//! With `--health-port`, an HTTP endpoint on that port answers every request
//! with `200 OK` and body `ok NAME`, or `503 Service Unavailable` and body
//! `down NAME` while the file `--health-file` exists: tests make a backend
//! sick at the application level while its service port stays open.
//!
//! All sockets are bound before the first connection is accepted, so once a
//! TCP connection to every port succeeds, the UDP sockets are ready too.
//! SIGTERM ends the process (default disposition).

use std::{
    io::{Read, Write},
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::ExitCode,
    sync::Arc,
    thread,
};

use socket2::{Domain, Socket, Type};

const USAGE: &str =
    "usage: lb-backend-server --name NAME --port PORT [--port PORT ...] [--bind ADDR] \
                     [--health-port PORT --health-file PATH]";
const CONNECTION_STACK: usize = 64 * 1024;

struct Args {
    name: String,
    ports: Vec<u16>,
    bind: IpAddr,
    health: Option<(u16, std::path::PathBuf)>,
}

fn parse_args() -> Result<Args, String> {
    let mut name = None;
    let mut ports = Vec::new();
    let mut bind = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let mut health_port = None;
    let mut health_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().ok_or_else(|| format!("{what} needs a value"));
        match arg.as_str() {
            "--name" => name = Some(value("--name")?),
            "--port" => {
                let v = value("--port")?;
                let port: u16 = v.parse().map_err(|_| format!("bad port {v:?}"))?;
                if port == 0 {
                    return Err("port 0 is not allowed".into());
                }
                ports.push(port);
            }
            "--bind" => {
                let v = value("--bind")?;
                bind = v.parse().map_err(|_| format!("bad IP address {v:?}"))?;
            }
            "--health-port" => {
                let v = value("--health-port")?;
                health_port = Some(v.parse::<u16>().map_err(|_| format!("bad port {v:?}"))?);
            }
            "--health-file" => {
                health_file = Some(std::path::PathBuf::from(value("--health-file")?))
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let name = name.ok_or("--name is required")?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("bad name {name:?}: no blanks allowed"));
    }
    if ports.is_empty() {
        return Err("at least one --port is required".into());
    }
    ports.sort_unstable();
    ports.dedup();
    let health = match (health_port, health_file) {
        (Some(port), Some(file)) => Some((port, file)),
        (None, None) => None,
        _ => return Err("--health-port and --health-file go together".into()),
    };
    Ok(Args {
        name,
        ports,
        bind,
        health,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("lb-backend-server: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let name: Arc<str> = Arc::from(args.name.as_str());

    // Bind everything first: UDP before TCP, so a successful TCP connection
    // proves the whole server is ready.
    let mut udp = Vec::new();
    for port in &args.ports {
        match udp_socket(args.bind, *port) {
            Ok(s) => udp.push(s),
            Err(e) => {
                eprintln!("lb-backend-server {name}: UDP {}:{port}: {e}", args.bind);
                return ExitCode::FAILURE;
            }
        }
    }
    let mut tcp = Vec::new();
    for port in &args.ports {
        match tcp_listener(args.bind, *port) {
            Ok(l) => tcp.push(l),
            Err(e) => {
                eprintln!("lb-backend-server {name}: TCP {}:{port}: {e}", args.bind);
                return ExitCode::FAILURE;
            }
        }
    }

    let mut workers = Vec::new();
    if let Some((port, file)) = args.health.clone() {
        match tcp_listener(args.bind, port) {
            Ok(listener) => {
                let name = name.clone();
                workers.push(thread::spawn(move || serve_health(&listener, &name, &file)));
            }
            Err(e) => {
                eprintln!("lb-backend-server {name}: health {}:{port}: {e}", args.bind);
                return ExitCode::FAILURE;
            }
        }
    }
    for socket in udp {
        let name = name.clone();
        workers.push(thread::spawn(move || serve_udp(&socket, &name)));
    }
    for listener in tcp {
        let name = name.clone();
        workers.push(thread::spawn(move || serve_tcp(&listener, &name)));
    }
    for worker in workers {
        let _ = worker.join();
    }
    ExitCode::FAILURE
}

/// A socket of both families bound to `bind:port`.
fn dual_stack(ty: Type, bind: IpAddr, port: u16) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, ty, None)?;
    // Explicitly: the default comes from net.ipv6.bindv6only.
    socket.set_only_v6(false)?;
    let addr = match bind {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    // As std's TcpListener::bind: a restarted server must get its port
    // back while old connections linger in TIME_WAIT.
    if ty == Type::STREAM {
        socket.set_reuse_address(true)?;
    }
    socket.bind(&SocketAddr::from((addr, port)).into())?;
    Ok(socket)
}

fn tcp_listener(bind: IpAddr, port: u16) -> std::io::Result<TcpListener> {
    let socket = dual_stack(Type::STREAM, bind, port)?;
    // Deep enough for the tests' bursts of hundreds of connections.
    socket.listen(1024)?;
    Ok(socket.into())
}

fn udp_socket(bind: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    let socket: UdpSocket = dual_stack(Type::DGRAM, bind, port)?.into();
    enable_pktinfo(&socket)?;
    Ok(socket)
}

/// The HTTP health endpoint: one short-lived connection per probe.
fn serve_health(listener: &TcpListener, name: &Arc<str>, sick_file: &std::path::Path) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let name = name.clone();
        let sick = sick_file.exists();
        let _ = thread::Builder::new().stack_size(CONNECTION_STACK).spawn(move || {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            // Read the request head (up to the blank line, or 8 KiB).
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let (status, body) = if sick { ("503 Service Unavailable", format!("down {name}")) } else { ("200 OK", format!("ok {name}")) };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        });
    }
}

fn serve_tcp(listener: &TcpListener, name: &Arc<str>) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let conn_name = name.clone();
                let spawned =
                    thread::Builder::new()
                        .stack_size(CONNECTION_STACK)
                        .spawn(move || {
                            if let Err(e) = echo(stream, &conn_name) {
                                if !is_disconnect(&e) {
                                    eprintln!("lb-backend-server {conn_name}: TCP {peer}: {e}");
                                }
                            }
                        });
                if let Err(e) = spawned {
                    eprintln!("lb-backend-server {name}: no thread for {peer}: {e}");
                }
            }
            Err(e) => {
                eprintln!("lb-backend-server {name}: accept: {e}");
                thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

fn echo(mut stream: TcpStream, name: &str) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.write_all(format!("{name}\n").as_bytes())?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof
    )
}

fn enable_pktinfo(socket: &UdpSocket) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: valid socket and option buffer of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVPKTINFO,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Control buffer for one `in6_pktinfo`, suitably aligned.
#[repr(C, align(8))]
struct ControlBuf([u8; 64]);

fn serve_udp(socket: &UdpSocket, name: &str) {
    let mut buf = vec![0u8; 65536];
    let mut reply = Vec::with_capacity(65536 + name.len() + 1);
    loop {
        let (len, peer, local) = match recv_with_dst(socket, &mut buf) {
            Ok(r) => r,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    eprintln!("lb-backend-server {name}: UDP receive: {e}");
                    thread::sleep(std::time::Duration::from_millis(10));
                }
                continue;
            }
        };
        reply.clear();
        reply.extend_from_slice(name.as_bytes());
        reply.push(b' ');
        reply.extend_from_slice(&buf[..len]);
        if let Err(e) = send_from(socket, &reply, peer, local) {
            eprintln!("lb-backend-server {name}: UDP reply to {peer}: {e}");
        }
    }
}

/// Whether a datagram's destination can be the source of its reply (not
/// multicast or broadcast).
fn unicast(addr: Ipv6Addr) -> bool {
    match addr.to_ipv4_mapped() {
        Some(v4) => !v4.is_broadcast() && !v4.is_multicast(),
        None => !addr.is_multicast(),
    }
}

/// Receives one datagram: (length, sender, local address it was sent to).
/// IPv4 addresses come v4-mapped.
fn recv_with_dst(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddrV6, Option<libc::in6_addr>)> {
    // SAFETY: all-zero is a valid sockaddr_in6 / msghdr.
    let mut src: libc::sockaddr_in6 = unsafe { zeroed() };
    let mut control = ControlBuf([0; 64]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut src as *mut libc::sockaddr_in6).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: every pointer in msg refers to live buffers of the given sizes.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut local = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled in,
    // bounded by msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IPV6 && (*cmsg).cmsg_type == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                if unicast(Ipv6Addr::from(info.ipi6_addr.s6_addr)) {
                    local = Some(info.ipi6_addr);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let peer = SocketAddrV6::new(
        Ipv6Addr::from(src.sin6_addr.s6_addr),
        u16::from_be(src.sin6_port),
        src.sin6_flowinfo,
        src.sin6_scope_id,
    );
    Ok((n as usize, peer, local))
}

/// Sends `data` to `peer` with source address `local` (when known; for an
/// IPv4 peer the kernel takes the mapped address as the IPv4 source).
fn send_from(
    socket: &UdpSocket,
    data: &[u8],
    peer: SocketAddrV6,
    local: Option<libc::in6_addr>,
) -> std::io::Result<()> {
    let Some(local) = local else {
        return socket.send_to(data, peer).map(|_| ());
    };
    // SAFETY: all-zero is a valid sockaddr_in6 / msghdr / in6_pktinfo.
    let mut dst: libc::sockaddr_in6 = unsafe { zeroed() };
    dst.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    dst.sin6_port = peer.port().to_be();
    dst.sin6_addr.s6_addr = peer.ip().octets();
    dst.sin6_flowinfo = peer.flowinfo();
    dst.sin6_scope_id = peer.scope_id();
    let mut info: libc::in6_pktinfo = unsafe { zeroed() };
    info.ipi6_addr = local;
    let mut control = ControlBuf([0; 64]);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut dst as *mut libc::sockaddr_in6).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) } as usize;
    assert!(space <= control.0.len(), "control buffer too small");
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer holds one in6_pktinfo message (space
    // checked above); the pointers refer to live buffers.
    let n = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
        (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
        libc::sendmsg(socket.as_raw_fd(), &msg, 0)
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
