//! The control socket's transport: a Unix socket, one task per client,
//! bounded request lines. The service lock is held only while a request is
//! carried out, never across socket I/O, so a slow or vanished client
//! blocks no one.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Mutex,
};

use super::{protocol::*, service::Service};

/// How long a client may take to accept a response before it is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the control socket: creates its directory, refuses to take over a
/// socket another agent is serving, and restricts it to root (mode 0600)
/// or to root and an operator group (0660).
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another lb-agent serves the control socket {}",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    let mode = if let Some(group) = group {
        let gid = group_id(group)?;
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {group}", path.display()))?;
        0o660
    } else {
        0o600
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

fn group_id(name: &str) -> Result<u32> {
    let c_name = std::ffi::CString::new(name).context("group name contains NUL")?;
    // SAFETY: getgrnam reads a NUL-terminated string; the returned record is
    // read before any other call that could overwrite it.
    let entry = unsafe { libc::getgrnam(c_name.as_ptr()) };
    if entry.is_null() {
        bail!("control.group: no group named {name:?}");
    }
    // SAFETY: non-null pointer to a valid group record.
    Ok(unsafe { (*entry).gr_gid })
}

/// Serves clients until the task is dropped.
pub async fn serve(listener: UnixListener, service: Arc<Mutex<Service>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let service = Arc::clone(&service);
                tokio::spawn(async move {
                    if let Err(e) = client(stream, service).await {
                        log::debug!("control client: {e:#}");
                    }
                });
            }
            Err(e) => {
                log::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Removes the socket file (at shutdown).
pub fn unlink(path: &PathBuf) {
    let _ = std::fs::remove_file(path);
}

async fn client(stream: UnixStream, service: Arc<Mutex<Service>>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    // Reads at most one byte past the limit, so a huge line costs nothing.
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let limit = (MAX_REQUEST_BYTES + 1) as u64;
        let n = (&mut reader)
            .take(limit)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            if line.len() as u64 >= limit {
                let e = ApiError::new(
                    ErrorCode::RequestTooLarge,
                    format!("request lines are limited to {MAX_REQUEST_BYTES} bytes; closing the connection"),
                );
                send(&mut write, &Response::failure(e)).await?;
            }
            // Too long, or the client went away mid-request: nothing applied.
            return Ok(());
        }
        line.pop();
        let response = match parse_request(&line) {
            Ok(request) => {
                let mut service = service.lock().await;
                handle_off_the_runtime(|| service.handle(request))
            }
            Err(e) => Response::failure(e),
        };
        send(&mut write, &response).await?;
    }
}

/// Runs a request's work where it cannot stall the runtime: some requests
/// walk the whole connection table or fsync the state file, and probes and
/// other clients must go on meanwhile. On a multi-threaded runtime the
/// worker hands its other tasks to another worker first.
pub(crate) fn handle_off_the_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, response: &Response) -> Result<()> {
    let mut text = serde_json::to_string(response)?;
    text.push('\n');
    tokio::time::timeout(WRITE_TIMEOUT, write.write_all(text.as_bytes()))
        .await
        .context("client too slow to read its response")??;
    Ok(())
}

/// Parses a request line into a [`Request`], with the error code the
/// problem deserves.
pub fn parse_request(line: &[u8]) -> Result<Request, ApiError> {
    let text = std::str::from_utf8(line)
        .map_err(|_| ApiError::new(ErrorCode::BadJson, "the request is not UTF-8"))?;
    let mut value: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::new(ErrorCode::BadJson, format!("not JSON: {e}")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "a request is a JSON object",
        ));
    };
    if let Some(v) = object.remove("v") {
        if v.as_u64() != Some(PROTOCOL_VERSION as u64) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedVersion,
                format!("protocol version {v} is not supported; this agent speaks version {PROTOCOL_VERSION}"),
            ));
        }
    }
    match object.get("op") {
        None => return Err(ApiError::new(ErrorCode::BadRequest, "missing field `op`")),
        Some(Value::String(op)) if !OPERATIONS.contains(&op.as_str()) => {
            return Err(ApiError::new(
                ErrorCode::UnknownOp,
                format!(
                    "unknown operation {op:?}; operations: {}",
                    OPERATIONS.join(", ")
                ),
            ))
        }
        Some(Value::String(_)) => {}
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "`op` must be a string",
            ))
        }
    }
    serde_path_to_error::deserialize::<_, Request>(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let code =
            if message.contains("invalid IP address") || message.contains("invalid IPv4 address") {
                ErrorCode::InvalidAddress
            } else if message.contains("out of range") || message.contains("invalid value") {
                ErrorCode::InvalidValue
            } else {
                ErrorCode::BadRequest
            };
        let message = if path == "." {
            message
        } else {
            format!("{path}: {message}")
        };
        ApiError::new(code, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> ErrorCode {
        parse_request(line.as_bytes())
            .expect_err("must be refused")
            .code
    }

    #[test]
    fn every_operation_name_parses() {
        for op in OPERATIONS {
            let e = parse_request(format!(r#"{{"op":"{op}"}}"#).as_bytes());
            assert!(
                !matches!(
                    e,
                    Err(ApiError {
                        code: ErrorCode::UnknownOp,
                        ..
                    })
                ),
                "{op}"
            );
        }
    }

    #[test]
    fn errors_get_their_codes() {
        assert_eq!(code("{"), ErrorCode::BadJson);
        assert_eq!(code("[1]"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"vip":1}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":"explode"}"#), ErrorCode::UnknownOp);
        assert_eq!(
            code(r#"{"op":"version","v":2}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(code(r#"{"op":"version","extra":1}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":"remove_vip"}"#), ErrorCode::BadRequest);
        let vip = r#""vip":{"address":"198.18.0.10","port":80,"protocol":"tcp"}"#;
        // An IPv6 backend of an IPv4 VIP is a request like any other.
        assert!(parse_request(
            format!(r#"{{"op":"add_backend",{vip},"backend":"2001:db8::1"}}"#).as_bytes()
        )
        .is_ok());
        assert_eq!(
            code(&format!(
                r#"{{"op":"add_backend",{vip},"backend":"198.19.1"}}"#
            )),
            ErrorCode::InvalidAddress
        );
        assert_eq!(
            code(&format!(
                r#"{{"op":"set_weight",{vip},"backend":"198.19.1.2","weight":-1}}"#
            )),
            ErrorCode::InvalidValue
        );
        assert_eq!(
            code(&format!(
                r#"{{"op":"set_weight",{vip},"backend":"198.19.1.2","weight":"3"}}"#
            )),
            ErrorCode::BadRequest
        );
        assert!(parse_request(br#"{"op":"version","v":1}"#).is_ok());
    }
}
