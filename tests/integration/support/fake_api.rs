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
    /// Events kept as the API server keeps them (see [`Store`]).
    pub store: Arc<Mutex<Store>>,
}

/// Events as kube-apiserver keeps them: by namespace and name, each write (create or
/// update) giving the object a fresh `--event-ttl` lease, after which it is gone. Answers
/// 409 AlreadyExists to a create of a live name, 404 NotFound to a patch or get of a gone
/// one, and merges a patch's `series`.
pub struct Store {
    pub ttl: std::time::Duration,
    pub objects: std::collections::HashMap<String, (Instant, serde_json::Value)>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            ttl: std::time::Duration::from_secs(365 * 24 * 3600),
            objects: Default::default(),
        }
    }
}

impl Store {
    fn live(&mut self, key: &str) -> Option<&mut serde_json::Value> {
        let ttl = self.ttl;
        if self
            .objects
            .get(key)
            .is_some_and(|(at, _)| at.elapsed() > ttl)
        {
            self.objects.remove(key);
        }
        self.objects.get_mut(key).map(|(_, v)| v)
    }

    /// `(status, body)` for a request on `/apis/events.k8s.io/v1/namespaces/{ns}/events[/{name}]`.
    fn answer(&mut self, method: &str, path: &str, body: &serde_json::Value) -> (u16, String) {
        let path = path.split('?').next().unwrap_or(path);
        let key_of = |name: &str| {
            let base = path.rsplit_once("/events").map(|(b, _)| b).unwrap_or(path);
            format!("{base}/{name}")
        };
        match method {
            "POST" => {
                let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
                let key = key_of(&name);
                if self.live(&key).is_some() {
                    return (409, status_body(409, "AlreadyExists", None));
                }
                let mut obj = body.clone();
                obj["metadata"]["resourceVersion"] = "1".into();
                self.objects.insert(key, (Instant::now(), obj.clone()));
                (201, obj.to_string())
            }
            "PATCH" | "GET" => {
                let name = path.rsplit('/').next().unwrap_or("");
                let key = key_of(name);
                let Some(obj) = self.live(&key) else {
                    return (404, status_body(404, "NotFound", None));
                };
                if method == "PATCH" {
                    if let Some(series) = body.get("series") {
                        obj["series"] = series.clone();
                    }
                    let obj = obj.clone();
                    self.objects.insert(key, (Instant::now(), obj.clone()));
                    return (200, obj.to_string());
                }
                (200, obj.to_string())
            }
            _ => (405, status_body(405, "MethodNotAllowed", None)),
        }
    }

    /// The live Events, by name.
    pub fn events(&mut self) -> Vec<serde_json::Value> {
        let keys: Vec<String> = self.objects.keys().cloned().collect();
        keys.iter().filter_map(|k| self.live(k).cloned()).collect()
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
    /// Events never expire (longer than any test).
    pub fn start() -> (FakeApi, String) {
        Self::start_with(FakeApi::default())
    }

    /// [`FakeApi::start`] expiring each Event `ttl` after its last write (kube-apiserver's
    /// `--event-ttl`, 1 h by default).
    pub fn start_stateful(ttl: std::time::Duration) -> (FakeApi, String) {
        let api = FakeApi::default();
        api.store.lock().unwrap().ttl = ttl;
        Self::start_with(api)
    }

    /// The live Event `name` in namespace `ns`.
    pub fn object(&self, ns: &str, name: &str) -> Option<serde_json::Value> {
        self.store
            .lock()
            .unwrap()
            .live(&format!("/apis/events.k8s.io/v1/namespaces/{ns}/{name}"))
            .cloned()
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
            let (code, extra, text) = match answer {
                Some(Answer::Status(c, reason)) => (c, String::new(), status_body(c, reason, None)),
                Some(Answer::TooMany { retry_after }) => (
                    429,
                    format!("Retry-After: {retry_after}\r\n"),
                    status_body(429, "TooManyRequests", Some(retry_after)),
                ),
                None => {
                    let (c, text) = self.store.lock().unwrap().answer(&method, &path, &body);
                    (c, String::new(), text)
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
