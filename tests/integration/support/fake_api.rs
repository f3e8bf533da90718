//! A local Kubernetes API server for Events: the real REST paths
//! (`/apis/events.k8s.io/v1/namespaces/{ns}/events[/{name}]`, POST, GET and PATCH), real status
//! codes and Status bodies, scripted failures, and a log of every request. It keeps what was
//! created, as an API server does: a second POST of one name is 409 AlreadyExists, GET
//! returns the object with the series PATCHed onto it, 404 when there is none.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub body: serde_json::Value,
    pub at: Instant,
    /// When the request's body had been read: wall clock, to compare with containerd's.
    pub received: chrono::DateTime<chrono::Utc>,
}

/// A scripted answer; when the script is empty, writes succeed (201 / 200).
#[derive(Clone)]
pub enum Answer {
    Status(u16, &'static str),
    TooMany { retry_after: u32 },
}

#[derive(Clone, Default)]
pub struct FakeApi {
    pub requests: Arc<Mutex<Vec<Req>>>,
    pub script: Arc<Mutex<VecDeque<Answer>>>,
    /// Keep only `regarding.name` of each body: a long load run then measures the agent's
    /// memory, not the log of what this server received.
    pub lean: bool,
    /// Connections accepted.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Events created, by `namespace/name`: metadata, eventTime and series.
    pub objects: Arc<Mutex<std::collections::HashMap<String, serde_json::Value>>>,
}

/// `namespace/name` of an Event path, and whether it names one object.
fn object_key(path: &str, body: &serde_json::Value) -> Option<(String, bool)> {
    let p = path.split('?').next()?;
    let rest = p.strip_prefix("/apis/events.k8s.io/v1/namespaces/")?;
    let mut parts = rest.split('/');
    let ns = parts.next()?;
    parts.next().filter(|s| *s == "events")?;
    match parts.next() {
        Some(name) => Some((format!("{ns}/{name}"), true)),
        None => Some((
            format!("{ns}/{}", body["metadata"]["name"].as_str()?),
            false,
        )),
    }
}

fn status_body(code: u16, reason: &str, retry: Option<u32>) -> String {
    let mut v = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": reason, "reason": reason, "code": code});
    if let Some(r) = retry {
        v["details"] = serde_json::json!({"retryAfterSeconds": r});
    }
    v.to_string()
}

impl FakeApi {
    pub fn start() -> (FakeApi, String) {
        Self::start_with(FakeApi::default())
    }

    /// [`FakeApi::start`], keeping only `regarding.name` of each body.
    #[allow(dead_code)]
    pub fn start_lean() -> (FakeApi, String) {
        Self::start_with(FakeApi {
            lean: true,
            ..FakeApi::default()
        })
    }

    fn start_with(api: FakeApi) -> (FakeApi, String) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", l.local_addr().unwrap());
        let a = api.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                a.connections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let a = a.clone();
                std::thread::spawn(move || a.serve(conn));
            }
        });
        (api, addr)
    }

    fn serve(&self, conn: TcpStream) {
        let mut w = conn.try_clone().unwrap();
        let mut r = BufReader::new(conn);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                if h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            let body: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            let kept = if self.lean {
                serde_json::json!({"regarding": {"name": body["regarding"]["name"]}})
            } else {
                body.clone()
            };
            self.requests.lock().unwrap().push(Req {
                method: method.clone(),
                path: path.clone(),
                body: kept,
                at: Instant::now(),
                received: chrono::Utc::now(),
            });
            let answer = self.script.lock().unwrap().pop_front();
            let key = object_key(&path, &body);
            let stored = key
                .as_ref()
                .and_then(|(k, _)| self.objects.lock().unwrap().get(k).cloned());
            let (code, extra, text) = match answer {
                Some(Answer::Status(c, reason)) => (c, String::new(), status_body(c, reason, None)),
                Some(Answer::TooMany { retry_after }) => (
                    429,
                    format!("Retry-After: {retry_after}\r\n"),
                    status_body(429, "TooManyRequests", Some(retry_after)),
                ),
                None if method == "POST" && stored.is_some() => {
                    (409, String::new(), status_body(409, "AlreadyExists", None))
                }
                None if method == "POST" => {
                    if let Some((k, _)) = &key {
                        let mut kept = serde_json::json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": body["metadata"].clone(), "eventTime": body["eventTime"].clone()});
                        if !body["series"].is_null() {
                            kept["series"] = body["series"].clone();
                        }
                        self.objects.lock().unwrap().insert(k.clone(), kept);
                    }
                    (201, String::new(), body.to_string())
                }
                None if method == "GET" => match stored {
                    Some(o) => (200, String::new(), o.to_string()),
                    None => (404, String::new(), status_body(404, "NotFound", None)),
                },
                None => {
                    if let (Some((k, true)), Some(mut o)) = (&key, stored) {
                        o["series"] = body["series"].clone();
                        self.objects.lock().unwrap().insert(k.clone(), o);
                    }
                    // PATCH: answer with an Event carrying the merged series.
                    let name = path
                        .rsplit('/')
                        .next()
                        .unwrap_or("x")
                        .split('?')
                        .next()
                        .unwrap_or("x")
                        .to_string();
                    let mut ev = serde_json::json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": name}, "eventTime": "2026-11-25T00:00:00.000000Z"});
                    ev["series"] = body["series"].clone();
                    (200, String::new(), ev.to_string())
                }
            };
            let resp = format!("HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{text}", text.len());
            if w.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    }

    pub fn requests(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }
}

/// A kubeconfig that points at the fake API server at `url`, without credentials.
#[allow(dead_code)]
pub fn kubeconfig(url: &str) -> String {
    format!("apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\ncurrent-context: c\n")
}
