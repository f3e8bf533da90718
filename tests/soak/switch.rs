//! The API server's availability, between the agent and the fake API server: a TCP
//! forwarder that goes down the two ways a kube-apiserver does.
//!
//! - [`Mode::Refuse`]: the process is gone. The listening socket is closed (a new connection
//!   is refused) and every open connection is closed under the client.
//! - [`Mode::Silent`]: the process hangs. Connections are accepted and requests taken, but
//!   nothing is answered, on old connections and new ones alike. When it comes back
//!   (restarted, or its request timeout fires) the connections it held are closed.
//!
//! Back [`Mode::Up`], new connections are forwarded again on the same port. With
//! [`Switch::keep_hung`], the connections held while hanging are not closed but stay silent
//! for good, as a half-open connection does when a proxy or load balancer in between keeps
//! the client's side and has lost the server's: only a client-side timeout gets a client out.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Up,
    Refuse,
    Silent,
}

/// One client connection: both sockets, to close them from outside.
struct Conn {
    client: TcpStream,
    upstream: Mutex<Option<TcpStream>>,
    closed: AtomicBool,
    /// Held while the server hung, and never answered since.
    hung: AtomicBool,
}

impl Conn {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(u) = self.upstream.lock().unwrap().as_ref() {
            let _ = u.shutdown(Shutdown::Both);
        }
    }
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
    /// Whether nothing passes now.
    fn silent(&self, shared: &Shared) -> bool {
        shared.mode() == Mode::Silent || self.hung.load(Ordering::SeqCst)
    }
}

struct Shared {
    mode: Mutex<Mode>,
    conns: Mutex<Vec<Arc<Conn>>>,
    stop: AtomicBool,
    keep_hung: AtomicBool,
    upstream: SocketAddr,
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }
    /// Closes the open connections; those held for good by a hang (see [`Switch::keep_hung`])
    /// only with `hung`.
    fn close_all(&self, hung: bool) {
        self.conns.lock().unwrap().retain(|c| {
            if hung || !c.hung.load(Ordering::SeqCst) {
                c.close();
                false
            } else {
                true
            }
        });
    }
}

pub struct Switch {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    control: Option<JoinHandle<()>>,
}

impl Switch {
    /// Forwards a fresh loopback port to `upstream`.
    pub fn start(upstream: SocketAddr) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the switch");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Up),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            keep_hung: AtomicBool::new(false),
            upstream,
        });
        let s = shared.clone();
        let control = std::thread::spawn(move || control(s, addr, listener));
        Switch {
            addr,
            shared,
            control: Some(control),
        }
    }

    /// After a hang, leave the connections it held open and silent (see the module docs).
    pub fn keep_hung(&self, keep: bool) {
        self.shared.keep_hung.store(keep, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the mode; see the module documentation for what each change does to open
    /// connections.
    pub fn set(&self, new: Mode) {
        {
            // Held while closing: no connection thread sees the new mode before that.
            let mut m = self.shared.mode.lock().unwrap();
            let old = *m;
            if old == new {
                return;
            }
            // Gone, or back from a hang: what was open is closed.
            if old == Mode::Silent && self.shared.keep_hung.load(Ordering::SeqCst) {
                for c in self.shared.conns.lock().unwrap().iter() {
                    c.hung.store(true, Ordering::SeqCst);
                }
            } else if new == Mode::Refuse || old == Mode::Silent {
                self.shared.close_all(false);
            }
            *m = new;
        }
        if new == Mode::Up {
            // The control thread binds again; wait until the port takes connections.
            for _ in 0..200 {
                if TcpStream::connect(self.addr)
                    .map(|s| s.shutdown(Shutdown::Both))
                    .is_ok()
                {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            panic!("the switch could not listen on {} again", self.addr);
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all(true);
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
    }
}

fn control(shared: Arc<Shared>, addr: SocketAddr, first: TcpListener) {
    first.set_nonblocking(true).unwrap();
    let mut listener = Some(first);
    while !shared.stop.load(Ordering::SeqCst) {
        let mode = shared.mode();
        if mode == Mode::Refuse {
            listener = None;
        } else if listener.is_none() {
            // std binds with SO_REUSEADDR: the port is ours again at once.
            match TcpListener::bind(addr) {
                Ok(l) => {
                    l.set_nonblocking(true).unwrap();
                    listener = Some(l);
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            }
        }
        let accepted = match &listener {
            Some(l) => match l.accept() {
                Ok((c, _)) => Some(c),
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                Err(_) => None,
            },
            None => None,
        };
        match accepted {
            Some(c) => connection(&shared, c),
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn connection(shared: &Arc<Shared>, client: TcpStream) {
    let _ = client.set_nonblocking(false);
    let conn = Arc::new(Conn {
        client: client.try_clone().unwrap(),
        upstream: Mutex::new(None),
        closed: AtomicBool::new(false),
        hung: AtomicBool::new(false),
    });
    {
        let mut conns = shared.conns.lock().unwrap();
        conns.retain(|c| !c.is_closed());
        conns.push(conn.clone());
    }
    let shared = shared.clone();
    std::thread::spawn(move || {
        // A hung server takes the connection and answers nothing until it is back.
        while conn.silent(&shared) && !conn.is_closed() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if conn.is_closed() || shared.mode() == Mode::Refuse {
            conn.close();
            return;
        }
        let Ok(upstream) = TcpStream::connect(shared.upstream) else {
            conn.close();
            return;
        };
        *conn.upstream.lock().unwrap() = Some(upstream.try_clone().unwrap());
        let back = {
            let (conn, shared) = (conn.clone(), shared.clone());
            let (from, to) = (upstream.try_clone().unwrap(), client.try_clone().unwrap());
            std::thread::spawn(move || pump(&shared, &conn, from, to))
        };
        pump(&shared, &conn, client, upstream);
        let _ = back.join();
    });
}

/// Copies `from` to `to` while the server answers; holds the bytes while it is silent.
fn pump(shared: &Shared, conn: &Conn, mut from: TcpStream, mut to: TcpStream) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if conn.is_closed() || shared.mode() == Mode::Refuse {
            break;
        }
        if conn.silent(shared) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                while conn.silent(shared) && !conn.is_closed() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if conn.is_closed() || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    conn.close();
}
